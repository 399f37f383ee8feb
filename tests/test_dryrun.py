"""The experiments the makefiles define: every run that `make -Bn` prints, with its options, equals the recorded set
(tests/golden, written by tests/make_golden.py), so a makefile can be rewritten without changing any experiment."""
import tempfile
from pathlib import Path

import dryrun
import pytest
from conftest import run_make
from make_golden import VARIANTS, dry_run

GOLDEN = Path(__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_make_runs_the_recorded_experiments(name):
    assert dryrun.differences(dryrun.load(GOLDEN / f"{name}.json.gz"), dry_run(name)) == []


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


def test_selectors_name_the_row_a_run_reads_in_both_spellings_and_prefixes_the_interpreter():
    text = ("python -O main.py --workdir r/a_tmp --tau $(awk -F, '$1 == 45 {print $2}' r/spottune_params.csv) "
            "--k_reg $(awk -F, '$1 == 45 {print $3}' r/spottune_params.csv) --reuse ttl:$(awk -F, '$1 == \"ttl\" "
            "{print $2}' r/reuse_params.csv)\n"
            "srun -c 1 python main.py --workdir r/b_tmp --spottune --chosen r/spottune_params.csv:budget=45\n"
            "python main.py --workdir r/c_tmp --reuse ttl --chosen r/reuse_params.csv:method=ttl\n")
    a, b, c = (dryrun.runs(text, "", selectors=True)[f"main.py r/{r}"][0] for r in "abc")
    assert a["--tau"] == a["--k_reg"] == b["--tau"] == b["--k_reg"] == "chosen:r/spottune_params.csv:budget=45"
    assert a["--reuse"] == c["--reuse"] == "ttl:chosen:r/reuse_params.csv:method=ttl"
    assert dryrun.runs(text)["main.py r/b"][0]["--tau"] == "chosen:r/spottune_params.csv"      # the golden's form
    assert dryrun.prefixes(text) == {"main.py r/a": {("python", "-O")}, "main.py r/b": {("srun", "-c", "1", "python")},
                                     "main.py r/c": {("python",)}}
