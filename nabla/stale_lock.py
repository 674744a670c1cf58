"""Clear the stale lock a killed Snakemake leaves behind, so the same command again finishes the work.

Snakemake locks its working directory (files under ``.snakemake/locks/``) while it runs and removes
the lock when it ends. A Snakemake killed outright (``kill -9``, a reboot, the OOM killer) cannot:
the next run then stops with ``LockException: Directory cannot be locked`` until
``snakemake --unlock``. The Snakefile calls :func:`clear_stale_lock` first thing; Snakemake 9 parses
the Snakefile before it locks (snakemake/api.py: ``DAGApi`` parses the workflow; only
``Workflow.execute`` takes ``persistence.lock()``), so a lock found then is another run's.

A lock is cleared only when nothing can be holding it:

- no other process on this machine is a Snakemake working in this directory (its command line is
  Snakemake's, and its working directory, or its ``--directory``, is this one); a process whose
  working directory cannot be read counts as working here if it runs as the lock files' owner;
- the lock was taken on this machine: each run that finds no lock records its host in
  ``.snakemake/nabla-lock-host`` before locking, and a lock taken from another host (a shared file
  system) is never cleared here, nor one whose host is unknown (taken before this check existed).

Only the main Snakemake process of a command that takes the lock does anything: not a dry run
(``-n``; Snakemake only warns of a lock there), ``--nolock``, ``--unlock``, nor the Snakemake
process of a job (``workflow.is_main_process`` is false there). Standard library only: the
Snakemake process under ``--use-conda`` may lack the package's dependencies.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from pathlib import Path

LOCKS = Path(".snakemake") / "locks"
HOST_MARKER = Path(".snakemake") / "nabla-lock-host"
#: a command line with one of these takes no lock (a dry run only warns of one)
NO_LOCK_FLAGS = ("--nolock", "--unlock", "--dry-run", "--dryrun", "-n")


def lock_files(workdir: Path) -> list[Path]:
    folder = workdir / LOCKS
    return sorted(folder.glob("*.lock")) if folder.is_dir() else []


def is_snakemake(argv: list[str]) -> bool:
    """Whether a command line runs Snakemake: ``snakemake ...``, ``python /…/bin/snakemake ...``,
    ``python -m snakemake ...`` or ``python -c '… snakemake …'``."""
    head = argv[:3]
    if any(Path(arg).name in ("snakemake", "snakemake.cli") for arg in head):
        return True
    return len(argv) > 2 and argv[1] == "-c" and "snakemake" in argv[2]


def takes_lock(argv: list[str]) -> bool:
    """Whether this Snakemake command line locks the directory (not a dry run, --nolock, --unlock)."""
    for arg in argv[1:]:
        if arg in NO_LOCK_FLAGS or arg.split("=")[0] in NO_LOCK_FLAGS:
            return False
        if re.fullmatch(r"-[A-Za-z]*n[A-Za-z]*", arg):  # -n among combined short flags (-np)
            return False
    return True


def directory_arg(argv: list[str]) -> str | None:
    """The ``--directory`` (``-d``) a Snakemake command line names, if any."""
    for i, arg in enumerate(argv):
        if arg in ("--directory", "-d") and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--directory="):
            return arg.split("=", 1)[1]
    return None


def working_here(workdir: Path, proc: Path = Path("/proc"), me: int | None = None) -> list[int]:
    """The other Snakemake processes on this machine that work in ``workdir``."""
    me = os.getpid() if me is None else me
    here = os.path.realpath(workdir)
    owners = {f.stat().st_uid for f in lock_files(workdir)}
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = [part.decode(errors="replace") for part in (entry / "cmdline").read_bytes().split(b"\0") if part]
        except OSError:  # gone, or unreadable
            continue
        if not is_snakemake(argv):
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except FileNotFoundError:  # gone meanwhile
            continue
        except OSError:  # another user's process: unknown, so working here if it could own the lock
            try:
                if entry.stat().st_uid in owners:
                    found.append(int(entry.name))
            except OSError:
                pass
            continue
        named = directory_arg(argv)
        places = {os.path.realpath(cwd)} | ({os.path.realpath(os.path.join(cwd, named))} if named else set())
        if here in places:
            found.append(int(entry.name))
    return found


def clear_stale_lock(main_process: bool = True, workdir: str | Path | None = None, argv: list[str] | None = None,
                     host: str | None = None, proc: Path = Path("/proc")) -> bool:
    """Remove ``workdir``'s Snakemake lock if no Snakemake can be holding it (see the module); True
    when it removed one. Call from the Snakefile with ``workflow.is_main_process``."""
    argv = sys.argv if argv is None else argv
    if not main_process or not takes_lock(argv):
        return False
    workdir = Path.cwd() if workdir is None else Path(workdir)
    host = socket.gethostname() if host is None else host
    marker = workdir / HOST_MARKER
    locks = lock_files(workdir)
    if not locks:
        try:  # this run will lock next: record where it runs
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(host + "\n")
        except OSError:
            pass
        return False
    locked_on = marker.read_text().strip() if marker.exists() else None
    if locked_on != host:
        return False  # taken on another host, or unknown: Snakemake's own message names --unlock
    if working_here(workdir, proc):
        return False  # a live run's lock
    for lock in locks:
        lock.unlink(missing_ok=True)
    marker.write_text(host + "\n")
    print(f"Cleared a stale Snakemake lock in {workdir.resolve()}/{LOCKS}: no Snakemake process works in this "
          "directory (the run that held it was killed).", file=sys.stderr)
    return True
