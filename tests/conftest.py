import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def run_make(makefile: str, tmp: Path, *extra: str, timeout: int = 2400, data: Path = None, env: dict = None):
    """``make -f makefile`` with every output root (results, data, sizes, archives) under ``tmp``; ``data``: take
    the data and size files from that root instead (another test's, already built)."""
    import subprocess
    paths = [f"RD={tmp}/results", f"DATA={data or tmp}/data", f"SIZES={data or tmp}/sizes", f"ARCH={tmp}/archives"]
    return subprocess.run(["make", "-f", makefile, f"CC={sys.executable}", *paths, *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


import pytest  # noqa: E402
import torch  # noqa: E402

# the tests' own tensors are tiny: one thread is faster, and immune to the oversubscription that two OpenMP threads
# suffer when other work shares the two cores (a SpotTUnet resume test took 381 s so, 10 s with one thread)
torch.set_num_threads(1)

# the tiny chains every end-to-end test reads: the dummy network, one epoch, debug-sized sets, one thread per job
# so that two jobs share the two cores (make -j2) and any THREADS=1 run of the same command gives the same numbers
TINY_PROSTATE = ["NET=Dimwit", "EPC=1", "DEBUG=--debug", "CFLAGS=-O", "THREADS=1"]
TINY_CC359 = ["NET=Dimwit", "EPC=1", "DEBUG=--debug", "CFLAGS=-O", "THREADS=1", "NPD=4", "VAL=1", "NADD=2", "TE_DOMAINS=0 2",
              "VAL_PAIRS=0_3", "TEST_PAIRS=2_5", "BUDGETS=8 45", "TAUS=0.1", "LAMBDAS=0 0.01", "IT_BASE=2", "IT_FT=2"]


@pytest.fixture(scope="session")
def tiny_prostate(tmp_path_factory):
    """prostate.make for two training seeds side by side (SEEDS="0 1", make -j2): results/seed<s>/prostate."""
    tmp = tmp_path_factory.mktemp("prostate")
    out = run_make("prostate.make", tmp, "-j2", "SEEDS=0 1", *TINY_PROSTATE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp


@pytest.fixture(scope="session")
def tiny_cc359(tmp_path_factory):
    """cc359.make's whole chain on one validation and one test pair (make -j2): results/cc359."""
    tmp = tmp_path_factory.mktemp("cc359")
    out = run_make("cc359.make", tmp, "-j2", *TINY_CC359)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return tmp
