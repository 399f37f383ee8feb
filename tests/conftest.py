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


CHAINS = {"tiny_prostate", "tiny_cc359"}


def pytest_collection_modifyitems(config, items):
    """A test that needs a tiny chain is slow wherever it lives (make test-fast, -m "not slow", leaves it out), marked
    or not: the chains run make for real for minutes."""
    for item in items:
        if CHAINS & set(getattr(item, "fixturenames", ())) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


def picture(png: Path):
    """A PNG as RGB floats in [0, 1] (matplotlib.image.imread)."""
    from matplotlib.image import imread
    image = imread(png)
    return image[..., :3] if image.ndim == 3 else image[..., None].repeat(3, axis=-1)


def assert_drawn(png: Path, series: int = 0) -> None:
    """The picture holds a plot: not one flat colour, ink on a visible share of it, some of it in colour (a data series,
    boxes, a colour map; axes and text alone are black and grey); ``series``: as many curves, one per colour of the
    cycle: C0 ... C<series - 1> appear (in the curve or its legend entry) and no later one (C7, grey, is not told
    from anti-aliased text and is left out)."""
    import numpy as np
    from matplotlib import rcParams
    from matplotlib.colors import to_rgb
    rgb = picture(png)
    assert rgb.shape[0] >= 100 and rgb.shape[1] >= 100, f"{png}: {rgb.shape[:2]} pixels"
    colours, counts = np.unique(rgb.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()]
    ink = (np.abs(rgb - background).max(-1) > 0.1).mean()
    assert ink > 0.005, f"{png}: blank ({100 * ink:.2f} % of the pixels differ from the background)"
    coloured = int(((rgb.max(-1) - rgb.min(-1)) > 0.15).sum())
    assert coloured >= 50, f"{png}: nothing drawn in colour ({coloured} pixels), only axes and text"
    if series:
        cycle = [np.array(to_rgb(c)) for c in rcParams["axes.prop_cycle"].by_key()["color"]]
        told = [i for i, c in enumerate(cycle) if c.max() - c.min() > 0.15]
        found = [i for i in told if (np.abs(rgb - cycle[i]).max(-1) < 0.04).sum() >= 10]
        expected = [i for i in told if i < series]
        assert found == expected, f"{png}: colours {['C%d' % i for i in found]}, expected {['C%d' % i for i in expected]}"


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
