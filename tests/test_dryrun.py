"""The experiments the makefiles define: every run that `make -Bn` prints, with its options, equals the recorded set
(tests/golden, written by tests/make_golden.py), so a makefile can be rewritten without changing any experiment."""
import tempfile
from pathlib import Path

import dryrun
import pytest
from conftest import run_make
from make_golden import VARIANTS

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_make_runs_the_recorded_experiments(name):
    makefile, extra = VARIANTS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = run_make(makefile, Path(tmp), "-Bn", *extra)
        assert out.returncode == 0, out.stderr
        actual = dryrun.runs(out.stdout, tmp)
    assert dryrun.differences(dryrun.load(GOLDEN / f"{name}.json.gz"), actual) == []


def test_the_parser_reads_options_as_argparse_does():
    text = ("python main.py --workdir r/a_tmp --l_rate 1 --target_losses=\"[('CE', {})]\" --dice_3d --do_hd 90 \\\n"
            "  --l_rate 2 --tau $(awk -F, 'NR == 2 {print $2}' r/spottune_tau.csv) --flag\n"
            "python main.py --workdir r/b_tmp --l_rate 2 --chosen r/spottune_tau.csv --hd95 --flag\n"
            "python report.py choose --runs r/a r/b --out r/x.csv\n")
    table = dryrun.runs(text, "")
    assert table["main.py r/a"] == [{"--workdir": "r/a_tmp", "--l_rate": "2", "--target_losses": "[('CE', {})]",
                                     "--hd95": "", "--tau": "chosen:r/spottune_tau.csv", "--flag": ""}]
    assert table["report.py choose r/x.csv"] == [{"--runs": "r/a r/b", "--out": "r/x.csv"}]
    b = table["main.py r/b"][0]
    assert b["--tau"] == "chosen:r/spottune_tau.csv" and "--chosen" not in b
