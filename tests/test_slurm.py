"""A real run of the workflow through SLURM: a one-node cluster started here, the slurm profile.

Needs Debian's slurm daemons and munge and root (`.ci/run` installs them where it can:
`apt-get install slurmctld slurmd slurm-client munge`); skipped elsewhere. The workflow runs in
a copy of the repository's Snakefile, rules, configs and profiles, so results/ is not touched.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        any(shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists() for d in DAEMONS) or os.geteuid() != 0,
        reason="needs root and Debian's slurmctld, slurmd, slurm-client and munge",
    ),
]


def _binary(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _slurm_conf(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    mem_mb = int(Path("/proc/meminfo").read_text().split()[1]) // 1024
    spool = folder / "spool"
    for name in ("slurmd", "slurmctld", "log"):
        (spool / name).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        f"""ClusterName=nablatest
SlurmctldHost={host}
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmdSpoolDir={spool}/slurmd
StateSaveLocation={spool}/slurmctld
SlurmUser=root
SlurmctldLogFile={spool}/log/slurmctld.log
SlurmdLogFile={spool}/log/slurmd.log
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
MpiDefault=none
NodeName={host} CPUs={os.cpu_count()} RealMemory={mem_mb * 9 // 10} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """Start munged, slurmctld and slurmd on this machine; stop exactly those processes after."""
    # Job steps (srun inside a job) read the default config path, whatever SLURM_CONF says: the
    # cluster's config goes there for the test, and only where this machine has none.
    system_conf = Path("/etc/slurm/slurm.conf")
    if system_conf.exists():
        pytest.skip(f"{system_conf} exists: this machine has its own SLURM, left untouched")
    folder = tmp_path_factory.mktemp("slurm")
    conf = _slurm_conf(folder)
    system_conf.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(conf, system_conf)
    env = {**os.environ, "SLURM_CONF": str(system_conf)}
    started = []
    try:
        if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
            Path("/run/munge").mkdir(parents=True, exist_ok=True)
            if not Path("/etc/munge/munge.key").exists():
                subprocess.run([_binary("mungekey"), "--create"], check=True)
            subprocess.run([_binary("munged"), "--force", "--pid-file", str(folder / "munged.pid")], check=True)
            started.append(folder / "munged.pid")
        subprocess.run([_binary("slurmctld")], env=env, check=True)
        started.append(folder / "slurmctld.pid")
        subprocess.run([_binary("slurmd")], env=env, check=True)
        started.append(folder / "slurmd.pid")
        deadline = time.time() + 60
        while time.time() < deadline:
            state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout
            if "idle" in state:
                break
            time.sleep(1)
        else:
            pytest.fail(f"the one-node SLURM cluster did not come up: sinfo says {state!r}")
        yield env
    finally:
        for pid_file in reversed(started):
            if pid_file.exists():
                subprocess.run(["kill", pid_file.read_text().strip()])
        system_conf.unlink()


def test_minimal_workflow_runs_through_sbatch(slurm_cluster, tmp_path):
    for name in ("Snakefile", "workflow", "config", "profiles", "environment.yml"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, tmp_path / name)
    train = yaml.safe_load((ROOT / "config/train/toy2d.yaml").read_text())
    train.update(rounds=4, trajectories_per_round=32, eval_every=0, eval_samples_per_prompt=64,
                 sampler={"num_steps": 10, "eta": 1.0, "guidance_scale": 1.0})
    (tmp_path / "config/train/toy2d.yaml").write_text(yaml.safe_dump(train))
    config = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    config.update(scales=["toy2d"])
    config["toy2d"].update(methods=["residual_nabla_db", "ddpo"], rewards=["linear"], seeds=[0], protocols=["release"],
                           prior={"seed": 0, "steps": 100}, evaluation={"samples": 256})
    (tmp_path / "minimal.yaml").write_text(yaml.safe_dump(config))
    # This cluster has one partition, no accounting daemon: the profile's site settings, overridden.
    profile = yaml.safe_load((tmp_path / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"].update(slurm_partition="debug", mem_mb=1000, cpus_per_task=1)
    profile.pop("set-resources")  # its 64 GB training jobs would not fit this node
    profile.update({"slurm-no-account": True, "slurm-status-command": "squeue", "latency-wait": 5,
                    "seconds-between-status-checks": 2, "slurm-init-seconds-before-status-checks": 1})
    (tmp_path / "profiles/slurm/config.yaml").write_text(yaml.safe_dump(profile))

    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "runs/results/toy2d/release/summary.csv", "--profile", "profiles/slurm",
         "--configfile", "minimal.yaml"],  # --configfile takes several values: it goes last
        cwd=tmp_path, env=slurm_cluster, capture_output=True, text=True, timeout=900,
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-5000:]
    submitted = [line for line in log.splitlines() if "submitted" in line.lower() and "slurm" in line.lower()]
    # the prior, one job per method (its runs trained and evaluated), the prior's reference row; the
    # config check and the tables run locally
    assert len(submitted) == 4, "\n".join(submitted) or log[-3000:]
    summary = (tmp_path / "runs/results/toy2d/release/summary.csv").read_text()
    assert "residual_nabla_db" in summary and "ddpo" in summary
    print(f"{len(submitted)} jobs through sbatch; e.g. {submitted[0].strip()}")
