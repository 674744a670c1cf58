"""Publishing: the workflow's last step copies a scale's computed results into ``results/``.

Everything the DAG computes lives under the git-ignored run tree (``runs/results/<scale>``), so a
missing or unfinished run always makes its downstream outputs out of date, and a committed file
can never stand in for a result that was not computed. Publishing replaces each entry of
``results/<scale>`` that the run tree has — a protocol's folder as a whole, ``selected.yaml``, the
prior's grid — and leaves the others (a protocol this config did not run, e.g. an opt-in tuning
at tiny) as they were; then it writes a marker under the run tree, which is the workflow's output:
a committed copy is never itself an output, so it can never look up to date.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from nabla.checkpoint import replace_folder


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _replace(source: Path, target: Path) -> None:
    """``target`` becomes a copy of ``source`` (a file or a folder), copied beside it first."""
    if source.is_dir():
        replace_folder(target, lambda staging: shutil.copytree(source, staging, dirs_exist_ok=True))
        return
    staging = target.with_name(target.name + ".tmp")
    shutil.copy2(source, staging)
    if target.is_dir():
        shutil.rmtree(target)
    staging.replace(target)


def publish(source: str | Path, to: str | Path, marker: str | Path) -> Path:
    """Replace each entry of ``to`` that ``source`` has by a copy of it, then write ``marker``: the
    files published and their SHA-256."""
    source, to, marker = Path(source), Path(to), Path(marker)
    if not source.is_dir():
        raise FileNotFoundError(f"nothing to publish: {source} does not exist")
    to.mkdir(parents=True, exist_ok=True)
    entries = sorted(source.iterdir())
    for entry in entries:
        _replace(entry, to / entry.name)
    files: dict[str, str] = {}
    for entry in entries:
        published = to / entry.name
        if published.is_dir():
            files.update({f"{entry.name}/{k}": v for k, v in checksums(published).items()})
        else:
            files[entry.name] = sha256(published)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"source": str(source), "published": str(to), "files": files}, indent=1))
    return marker
