"""A killed Snakemake's lock is cleared by the next run, and only where no Snakemake works in the
directory (nabla.stale_lock, called first thing in the Snakefile)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from nabla.stale_lock import HOST_MARKER, LOCKS, clear_stale_lock, is_snakemake, takes_lock, working_here

ROOT = Path(__file__).resolve().parents[1]
RUN = ["snakemake", "--cores", "all"]  # the README's command, as this module's argv


def locked(workdir: Path, host: str | None = "this-host") -> Path:
    """A workdir as a killed run leaves it: its lock files, and (host) the host it ran on."""
    (workdir / LOCKS).mkdir(parents=True)
    (workdir / LOCKS / "0.input.lock").write_text(f"{workdir}/config/config.yaml\n")
    (workdir / LOCKS / "0.output.lock").write_text(f"{workdir}/runs/out.json\n")
    if host:
        (workdir / HOST_MARKER).write_text(host + "\n")
    return workdir


def fake_proc(root: Path, pid: int, argv: list[str], cwd: Path) -> Path:
    """A /proc with one process: its command line and working directory."""
    entry = root / str(pid)
    entry.mkdir(parents=True)
    (entry / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (entry / "cwd").symlink_to(cwd)
    return root


def clear(workdir, proc, argv=RUN, main=True, host="this-host"):
    return clear_stale_lock(main, workdir, argv=argv, host=host, proc=proc)


def test_a_live_snakemake_in_the_directory_keeps_its_lock(tmp_path):
    work = locked(tmp_path / "work")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for argv, cwd in [([sys.executable, "-m", "snakemake", "--cores", "2"], work),  # working here
                      (["/venv/bin/python", "/venv/bin/snakemake", "-d", str(work)], elsewhere),  # --directory
                      (["snakemake", "--directory=../work", "-n"], elsewhere)]:  # a dry run here counts too
        proc = fake_proc(tmp_path / f"proc{len(argv)}", 4242, argv, cwd)
        assert working_here(work, proc, me=1) == [4242]
        assert not clear(work, proc) and len(list((work / LOCKS).glob("*.lock"))) == 2


def test_a_lock_nobody_holds_is_cleared_once_with_one_line(tmp_path, capsys):
    work = locked(tmp_path / "work")
    # what does not count: a non-Snakemake process here, a Snakemake elsewhere, this process itself
    proc = fake_proc(tmp_path / "proc", 10, ["vim", "Snakefile"], work)
    fake_proc(proc, 11, ["snakemake", "--cores", "1"], tmp_path)
    fake_proc(proc, os.getpid(), ["snakemake", "--cores", "all"], work)
    assert clear(work, proc)
    assert not list((work / LOCKS).glob("*.lock"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Cleared a stale Snakemake lock in ")
    assert not clear(work, proc)  # nothing left to clear
    assert (work / HOST_MARKER).read_text() == "this-host\n"


def test_a_real_process_counts_while_it_lives(tmp_path):
    """The real /proc: a live process whose command line is Snakemake's, working in the directory."""
    work = locked(tmp_path / "work")
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)  # snakemake"], cwd=work)
    try:
        deadline = time.time() + 10
        while not Path(f"/proc/{live.pid}/cmdline").read_bytes() and time.time() < deadline:
            time.sleep(0.05)
        assert live.pid in working_here(work)
        assert not clear(work, Path("/proc")) and (work / LOCKS / "0.input.lock").exists()
    finally:
        live.kill()
        live.wait()
    assert clear(work, Path("/proc"))


@pytest.mark.parametrize("argv, main", [(["snakemake", "-n"], True), (["snakemake", "--dry-run"], True),
                                        (["snakemake", "-np", "--cores", "1"], True), (["snakemake", "--nolock"], True),
                                        (["snakemake", "--unlock"], True), (RUN, False)])
def test_commands_that_take_no_lock_and_jobs_own_snakemake_leave_it(tmp_path, argv, main):
    work = locked(tmp_path / "work")
    assert not clear(work, tmp_path / "noproc", argv=argv, main=main)
    assert len(list((work / LOCKS).glob("*.lock"))) == 2


@pytest.mark.parametrize("host", ["another-host", None])
def test_a_lock_taken_on_another_host_or_an_unknown_one_is_kept(tmp_path, host):
    work = locked(tmp_path / "work", host=host)
    (tmp_path / "noproc").mkdir()
    assert not clear(work, tmp_path / "noproc")
    assert len(list((work / LOCKS).glob("*.lock"))) == 2


def test_a_run_that_finds_no_lock_records_its_host(tmp_path):
    assert not clear(tmp_path, tmp_path / "noproc", host="node7")
    assert (tmp_path / HOST_MARKER).read_text() == "node7\n"


def test_command_lines():
    assert is_snakemake(["snakemake", "--cores", "all"]) and is_snakemake(["python3", "-m", "snakemake"])
    assert is_snakemake(["/usr/bin/python3", "/venv/bin/snakemake", "-n"])
    assert not is_snakemake(["vim", "Snakefile"]) and not is_snakemake(["grep", "-r", "x", "snakemake"])
    assert takes_lock(["snakemake", "--cores", "all"]) and takes_lock(["snakemake", "--configfile", "-n.yaml"])
    assert not takes_lock(["x", "-pn"]) and not takes_lock(["x", "--nolock"])


# -- the README's promise, end to end ----------------------------------------------------------------
@pytest.mark.slow
def test_a_killed_snakemake_then_the_same_command_finishes_the_work(tmp_path):
    """`kill -9` of Snakemake's whole process group once it holds its lock and a run has
    checkpointed; a dry run then leaves the stale lock; the same command clears it, says so, and
    finishes (the catalog's .test config, in its own folder)."""
    shutil.copytree(ROOT / ".test" / "config", tmp_path / "config")
    config = yaml.safe_load((tmp_path / "config/config.yaml").read_text())
    config["toy2d"]["methods"] = ["residual_nabla_db"]  # one run: the test stays under two minutes
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "snakemake", "--cores", "all", "--snakefile", str(ROOT / "Snakefile"),
               "--directory", str(tmp_path)]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True)  # its own process group, as a terminal's job
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not list(
            (tmp_path / "runs/toy2d/release").glob("*/*/seed0/checkpoint/state.json")):
        time.sleep(0.1)
    assert first.poll() is None, first.communicate()[0][-3000:]
    assert list((tmp_path / LOCKS).glob("*.lock")), "the running Snakemake holds no lock"
    os.killpg(first.pid, signal.SIGKILL)  # Snakemake and every job it started
    first.communicate(timeout=60)
    assert list((tmp_path / LOCKS).glob("*.lock")), "no stale lock left to clear"
    assert (tmp_path / HOST_MARKER).read_text().strip() == socket.gethostname()

    dry = subprocess.run([*command, "-n"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "Cleared a stale" not in dry.stderr
    assert list((tmp_path / LOCKS).glob("*.lock")), "a dry run cleared the lock"

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    output = again.stdout + again.stderr
    print(output)  # the second command's output (pytest -s shows it)
    assert again.returncode == 0, output[-4000:]
    assert output.count("Cleared a stale Snakemake lock") == 1 and "LockException" not in output
    summary = (tmp_path / "results/toy2d/release/summary.csv").read_text()
    assert "residual_nabla_db" in summary and "pretrained" in summary  # published: the default target's last step
    assert (tmp_path / "runs/toy2d/release/linear/residual_nabla_db/seed0/done.json").exists()
    assert not list((tmp_path / LOCKS).glob("*.lock"))  # and released at the end
