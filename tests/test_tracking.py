"""Optional tracking (TrainConfig.tracker): TensorBoard scalars that equal the run's CSV logs."""

import numpy as np
import pandas as pd
import pytest

from nabla.config import TrainConfig
from nabla.options import ConfigError
from nabla.trainer import Trainer

pytest.importorskip("tensorboard")

from nabla.tracking import read_scalars  # noqa: E402  (needs tensorboard)
from test_trainer import toy_config  # noqa: E402


def expected_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """What the CSV logs say the scalars are: train/<column> and eval/<split>/<column> by step."""
    expected = {}
    train = pd.read_csv(folder / "train_log.csv")
    for column in train.columns.drop("step"):
        expected[f"train/{column}"] = list(zip(train["step"], train[column]))
    evals = pd.read_csv(folder / "eval_log.csv")
    for split, rows in evals.groupby("split", sort=False):
        for column in rows.columns.drop(["step", "split"]):
            expected[f"eval/{split}/{column}"] = list(zip(rows["step"], rows[column]))
    return expected


def assert_events_equal_the_csv(folder) -> None:
    events, expected = read_scalars(folder), expected_scalars(folder)
    assert events.keys() == expected.keys()
    for tag, points in expected.items():
        steps, values = zip(*points)
        assert [s for s, _ in events[tag]] == [int(s) for s in steps], tag  # each row once, in order
        # TensorBoard keeps float32: equal there, NaN equal to NaN
        np.testing.assert_array_equal(np.float32([v for _, v in events[tag]]), np.float32(values), err_msg=tag)


def test_a_tracked_run_writes_the_csv_logs_scalars_as_tensorboard_events(toy_prior_dir, tmp_path):
    cfg = toy_config(toy_prior_dir, rounds=2, eval_every=1, checkpoint_every=1, tracker="tensorboard")
    Trainer(cfg, tmp_path, progress=False).run()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    events = read_scalars(tmp_path)
    assert {"train/loss", "train/lr", "train/train_reward_mean", "eval/validation/reward_mean"} <= set(events)
    assert [step for step, _ in events["train/loss"]] == [1, 2]
    assert_events_equal_the_csv(tmp_path)


def test_a_resumed_run_has_each_logged_row_once_and_tracking_can_start_part_way(toy_prior_dir, tmp_path,
                                                                                monkeypatch):
    """Killed after its round-2 checkpoint (no tracker), resumed with the tracker on: the events
    hold the whole run, each CSV row once; the tracker is no setting of the run (no restart)."""
    original, calls = Trainer._update, {"n": 0}

    def dies_at_update_3(self, micro):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, micro)

    monkeypatch.setattr(Trainer, "_update", dies_at_update_3)
    with pytest.raises(KeyboardInterrupt):
        Trainer(toy_config(toy_prior_dir, rounds=4, eval_every=1), tmp_path, progress=False).run()
    monkeypatch.setattr(Trainer, "_update", original)
    assert not (tmp_path / "tensorboard").exists()
    summary = Trainer(toy_config(toy_prior_dir, rounds=4, eval_every=1, tracker="tensorboard"), tmp_path,
                      progress=False).run()
    assert summary["updates"] == 4
    assert [step for step, _ in read_scalars(tmp_path)["train/loss"]] == [1, 2, 3, 4]
    assert_events_equal_the_csv(tmp_path)


def test_tracking_is_off_by_default_and_a_config_names_an_unknown_tracker(toy_prior_dir, tmp_path):
    assert TrainConfig().tracker == "none"
    Trainer(toy_config(toy_prior_dir, rounds=1, eval_every=0, eval_splits=[]), tmp_path, progress=False).run()
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ConfigError, match="tracker = 'wandb': must be one of none, tensorboard"):
        TrainConfig(tracker="wandb")
