"""A real SLURM: a single-node cluster on this machine (munged, slurmctld, slurmd on localhost, its config in a
temporary directory) runs the tiny chains through LAUNCH="srun ..." with make -j2; results equal the local runs',
and a job cancelled with scancel is resumed by the next make.

Where SLURM is installed these tests run (as root); where it is not, they skip and say so. They install Debian's
slurm-wlm and munge themselves (apt-get, as root) only when asked to: in CI (the variable CI set) or under
`make test-slurm` (SLURM_INSTALL=1), never on a machine that merely runs `make test`."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import TINY_CC359, TINY_PROSTATE, run_make

DAEMONS = ["munged", "slurmctld", "slurmd", "srun", "scancel", "squeue", "sinfo"]
# system packages are installed only where asked: CI, or make test-slurm (SLURM_INSTALL=1)
INSTALL_ASKED = bool(os.environ.get("CI") or os.environ.get("SLURM_INSTALL"))

pytestmark = pytest.mark.slow
# decided before any fixture: the tiny chains the tests compare against take minutes to build
if os.geteuid() != 0:
    pytest.skip("a single-node SLURM cluster needs root (slurmd runs jobs as their users)", allow_module_level=True)
if not INSTALL_ASKED and not all(shutil.which(d) for d in DAEMONS):
    pytest.skip(f"SLURM is not installed (missing: {' '.join(d for d in DAEMONS if not shutil.which(d))}); "
                "`make test-slurm` (or CI=1) installs Debian's slurm-wlm and munge with apt-get, as root",
                allow_module_level=True)


def install_slurm() -> None:
    """SLURM as found, or (where asked: the module is skipped elsewhere) Debian's slurm-wlm and munge installed now."""
    if all(shutil.which(d) for d in DAEMONS):
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and cannot be: installing Debian's slurm-wlm and munge needs root and apt-get")
    out = subprocess.run("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge",
                         shell=True, capture_output=True, text=True, timeout=900)
    if out.returncode != 0 or not all(shutil.which(d) for d in DAEMONS):
        pytest.skip(f"apt-get could not install slurm-wlm and munge: {out.stderr.strip()[-400:]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def slurm_conf(d: Path, host: str) -> str:
    return "\n".join([
        "ClusterName=maketest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}",
        "AuthType=auth/munge", f"AuthInfo=socket={d}/munge/socket",
        f"StateSaveLocation={d}/state", f"SlurmdSpoolDir={d}/spool",
        f"SlurmctldPidFile={d}/slurmctld.pid", f"SlurmdPidFile={d}/slurmd.pid",
        f"SlurmctldLogFile={d}/slurmctld.log", f"SlurmdLogFile={d}/slurmd.log",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU", "ReturnToService=2",
        "AccountingStorageType=accounting_storage/none",            # no database: a job-completion text log instead
        "JobCompType=jobcomp/filetxt", f"JobCompLoc={d}/jobcomp.txt",
        f"NodeName={host} CPUs={os.cpu_count()} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""])


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """The environment that points srun at a fresh single-node cluster; the daemons stop afterwards. Session-scoped
    and first in each test's arguments, so that it is set up (or skips) before the tiny chains are built."""
    install_slurm()
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o755)
    key = d / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = subprocess.run(["hostname", "-s"], capture_output=True, text=True, check=True).stdout.strip()
    (d / "slurm.conf").write_text(slurm_conf(d, host))
    env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
    m = d / "munge"
    subprocess.run(["munged", "--force", f"--socket={m}/socket", f"--key-file={key}", f"--log-file={m}/log",
                    f"--pid-file={m}/pid", f"--seed-file={m}/seed"], check=True)
    subprocess.run(["slurmctld", "-i"], env=env, check=True)
    subprocess.run(["slurmd"], env=env, check=True)
    deadline = time.time() + 60
    while time.time() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"the test cluster's node did not come up (sinfo: {state!r}); see {d}/slurmctld.log, slurmd.log")
    yield env
    subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True)
    for pid_file in (d / "slurmd.pid", d / "slurmctld.pid", m / "pid"):
        if pid_file.is_file():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass


def completed_jobs(env: dict, name: str) -> int:
    log = Path(env["SLURM_CONF"]).parent / "jobcomp.txt"
    lines = log.read_text().splitlines() if log.is_file() else []
    return sum(f"Name={name} " in line and "JobState=COMPLETED" in line for line in lines)


# a tiny prostate chain: the source model, two adaptations of it and a ProtoSeg analysis of one (the whole chain runs
# locally in the tiny_prostate fixture; every one of its recipes goes through the same LAUNCH prefix)
PROSTATE_CHAIN = ["cesource", "adabn", "sfda", "protoseg/sfda"]


def test_chains_run_on_slurm_and_equal_the_local_runs(slurm, tiny_prostate, tiny_cc359, tmp_path):
    launch = "LAUNCH=srun -c 1 -J maketest"
    pr = tmp_path / "results" / "prostate"
    out = run_make("prostate.make", tmp_path, "-j2", *TINY_PROSTATE, launch, *[str(pr / t) for t in PROSTATE_CHAIN],
                   data=tiny_prostate, env=slurm)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    jobs = len(PROSTATE_CHAIN)                                        # every main.py run and ProtoSeg analysis: a job
    assert completed_jobs(slurm, "maketest") == jobs
    local_root = tiny_prostate / "results" / "seed0" / "prostate"
    for run in PROSTATE_CHAIN[:-1]:
        pd.testing.assert_frame_equal(pd.read_csv(pr / run / "IMG_target_metrics.csv"),
                                      pd.read_csv(local_root / run / "IMG_target_metrics.csv"), obj=run)
    pd.testing.assert_frame_equal(pd.read_csv(pr / "protoseg" / "sfda" / "images.csv"),
                                  pd.read_csv(local_root / "protoseg" / "sfda" / "images.csv"), obj="protoseg/sfda")
    cc = tmp_path / "cc"
    runs = ["baseline/2", "ft_all/2_5_n8"]
    out = run_make("cc359.make", cc, "-j2", *TINY_CC359, launch, *[f"{cc}/results/cc359/{r}" for r in runs],
                   data=tiny_cc359, env=slurm)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert completed_jobs(slurm, "maketest") == jobs + len(runs)
    for run, table in zip(runs, ["IMG_target_metrics.csv", "test_metrics.csv"]):     # the baseline is not tested
        pd.testing.assert_frame_equal(pd.read_csv(cc / "results" / "cc359" / run / table),
                                      pd.read_csv(tiny_cc359 / "results" / "cc359" / run / table), obj=run)


def test_a_cancelled_job_leaves_its_tmp_and_the_next_make_resumes_it(slurm, tiny_prostate, tmp_path):
    run = tmp_path / "results" / "prostate" / "cesource"
    args = ["NET=Dimwit", "DEBUG=--debug", "THREADS=1", "EPC=30", "LAUNCH=srun -c 1 -J cancelme", str(run)]
    proc = subprocess.Popen(["make", "-f", "prostate.make", f"CC={sys.executable}", f"RD={tmp_path}/results",
                             f"DATA={tiny_prostate}/data", f"SIZES={tiny_prostate}/sizes", *args],
                            cwd=Path(__file__).resolve().parent.parent, env=slurm, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    state = Path(f"{run}_tmp") / "resume.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline:
        time.sleep(0.2)
    assert state.exists(), "the job saved no epoch within 2 minutes"
    subprocess.run(["scancel", "--name", "cancelme"], env=slurm, check=True)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0 and not run.exists() and state.exists(), output[-2000:]
    out = run_make("prostate.make", tmp_path, *args, data=tiny_prostate, env=slurm)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert ">> resumed" in out.stdout and "cesource_tmp after epoch" in out.stdout
    metrics = pd.read_csv(run / "IMG_target_metrics.csv")
    assert metrics["epoch"].tolist() == list(range(30)) and not Path(f"{run}_tmp").exists()
