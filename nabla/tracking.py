"""Optional experiment tracking: a run's train_log.csv and eval_log.csv, mirrored as TensorBoard
scalars (TrainConfig ``tracker: tensorboard``; off by default, ``tracker: none``).

The CSV logs stay the record; the tracker only mirrors them, in the run folder's ``tensorboard/``:
every numeric column but ``step`` (the x axis) of a train row is the scalar ``train/<column>``,
of an eval row ``eval/<split>/<column>``. At every start, fresh or resumed, the folder is rebuilt
from the CSV logs as they are then (a resumed run's logs are already cut back to its checkpoint),
so the event files hold exactly the CSV's rows, once each, after a crash too, and switching the
tracker on part-way through a run still shows the run from its first update. Each row is flushed
as it is written, as the CSV rows are. TensorBoard stores scalars as float32.

Install with ``pip install -e '.[track]'`` (or requirements-cpu.txt, which pins it).
"""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path
from typing import Any, Protocol

TRACKERS = ("none", "tensorboard")
FOLDER = "tensorboard"


class Log(Protocol):
    def write(self, row: dict) -> None: ...


def _number(value: Any) -> float | None:
    """A row's value as a float scalar, or None for what is not one (the split's name, a blank)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)  # a value read back from the CSV
    except (TypeError, ValueError):
        return None


def scalars(row: dict, kind: str) -> dict[str, float]:
    """The TensorBoard scalars of one CSV row (``kind`` "train" or "eval"), by tag."""
    prefix = "train/" if kind == "train" else f"eval/{row['split']}/"
    found = {}
    for key, value in row.items():
        if key in ("step", "split"):
            continue
        number = _number(value)
        if number is not None:
            found[prefix + key] = number
    return found


class TensorBoardTracker:
    """One SummaryWriter for a run folder; ``wrap`` makes a CSV log write to it too."""

    def __init__(self, run_folder: Path, logs: dict[str, Path]):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # torch's writer needs the tensorboard package
            raise ImportError("tracker: tensorboard needs the tensorboard package: pip install -e '.[track]' "
                              "(requirements-cpu.txt pins it)") from error
        folder = Path(run_folder) / FOLDER
        shutil.rmtree(folder, ignore_errors=True)  # rebuilt from the CSV logs below
        self.writer = SummaryWriter(log_dir=str(folder))
        for kind, path in logs.items():  # what the run has logged so far (none on a fresh start)
            if path.exists():
                with path.open(newline="") as f:
                    for row in csv.DictReader(f):
                        self._add(row, kind, flush=False)
        self.writer.flush()

    def _add(self, row: dict, kind: str, flush: bool = True) -> None:
        step = int(float(row["step"]))
        for tag, value in scalars(row, kind).items():
            self.writer.add_scalar(tag, value, global_step=step)
        if flush:
            self.writer.flush()

    def wrap(self, log: Log, kind: str) -> "TrackedLog":
        return TrackedLog(log, self, kind)

    def close(self) -> None:
        self.writer.close()


class TrackedLog:
    """A CSV log whose every row also goes to the tracker."""

    def __init__(self, log: Log, tracker: TensorBoardTracker, kind: str):
        self.log, self.tracker, self.kind = log, tracker, kind

    def write(self, row: dict) -> None:
        self.log.write(row)
        self.tracker._add(row, self.kind)


def start_tracking(tracker: str, run_folder: Path, train_log: Log, eval_log: Log) -> tuple[Log, Log, Any]:
    """The run's two logs, mirrored to ``tracker`` where it is not "none", and the tracker (or None)
    to close at the end. Call after the CSV logs are opened (and, on resume, cut back)."""
    if tracker == "none":
        return train_log, eval_log, None
    if tracker != "tensorboard":
        raise ValueError(f"unknown tracker {tracker!r} (one of {', '.join(TRACKERS)})")
    run_folder = Path(run_folder)
    board = TensorBoardTracker(run_folder, {"train": run_folder / "train_log.csv", "eval": run_folder / "eval_log.csv"})
    return board.wrap(train_log, "train"), board.wrap(eval_log, "eval"), board


def read_scalars(run_folder: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a run folder's tensorboard/ events, by tag: (step, value) in written order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(Path(run_folder) / FOLDER), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)] for tag in accumulator.Tags()["scalars"]}


def same(a: float, b: float) -> bool:
    """Equal as TensorBoard stores them (float32), NaN equal to NaN."""
    import numpy as np

    a32, b32 = np.float32(a), np.float32(b)
    return bool(a32 == b32 or (math.isnan(a32) and math.isnan(b32)))
