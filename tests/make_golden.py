"""Writes tests/golden/: the runs and options that make -n prints for each chain variant (python tests/make_golden.py [VARIANT...]).

Run it only to record an intended change of the experiments; test_dryrun.py compares the makefiles against it."""
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import dryrun  # noqa: E402
from conftest import run_make  # noqa: E402

VARIANTS = {
    "cc359": ("cc359.make", []),
    "cc359_paper": ("cc359.make", ["PRESET=paper"]),
    "cc359_seeds_sourcefree": ("cc359.make", ["SEEDS=0 1", "SEED_GOAL=sourcefree"]),
    "cc359_transfer_targets": ("cc359.make", ["transfer", "TE_TARGETS=0 3", "TE_VOXEL_SEED=1"]),
    "prostate": ("prostate.make", []),
    "prostate_hard": ("prostate.make", ["SHIFT=hard", "all", "lrgrid"]),
    "prostate_seeds": ("prostate.make", ["SEEDS=0 1"]),
    "prostate_studies": ("prostate.make", ["lrgrid", "{root}/results/prostate/fn_soft_ratio/sfda",
                                           "{root}/results/prostate/fn_soft_ratio/sfda_truesize"]),
    "prostate_recipe_seed": ("prostate.make", ["RECIPE=seed", "SEEDS=0 1"]),
    "whs": ("whs.make", []),
    "ivd": ("ivd.make", []),
}


def dry_run(name: str) -> dict:
    """The runs and options of one variant ({root}: the temporary output root the paths are read relative to)."""
    makefile, extra = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = run_make(makefile, Path(tmp), "-Bn", *(e.format(root=tmp) for e in extra))
        assert out.returncode == 0, out.stderr
        return dryrun.runs(out.stdout, tmp)


def main(names: list) -> None:
    for name in names or VARIANTS:
        table = dry_run(name)
        dryrun.save(table, Path(__file__).parent / "golden" / f"{name}.json.gz")
        print(name, len(table), sum(len(v) for v in table.values()))


if __name__ == "__main__":
    main(sys.argv[1:])
