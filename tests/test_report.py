"""report.py compare: two modes' result roots paired by seed, the rule a faster mode must pass; the prostate claims."""
import importlib
from pathlib import Path

import pandas as pd
import pytest

import report


def write_tested_run(root: Path, name: str, sdice: list, dice: list, seconds: float) -> None:
    run = root / name
    run.mkdir(parents=True)
    pd.DataFrame({"patient": [f"CC{i:04d}" for i in range(len(sdice))], "dice": dice, "sdice": sdice}) \
        .to_csv(run / "test_metrics.csv", index=False)
    pd.DataFrame({"name": ["total"], "value": [seconds], "unit": ["s"]}).to_csv(run / "run_stats.csv", index=False)


def write_trained_run(root: Path, name: str, val_dice_3d: list) -> None:
    run = root / name
    run.mkdir(parents=True)
    pd.DataFrame({"epoch": range(len(val_dice_3d)), "val_dice_3d": val_dice_3d}) \
        .to_csv(run / "IMG_target_metrics.csv", index=False)


@pytest.fixture
def roots(tmp_path):
    ref, cand = tmp_path / "fp32", tmp_path / "bf16"
    write_tested_run(ref, "ft_all/2_5_n8", [0.90, 0.80], [0.95, 0.97], 100)
    write_tested_run(cand, "ft_all/2_5_n8", [0.91, 0.80], [0.95, 0.96], 40)      # sdice +0.5 points
    write_tested_run(ref, "oracle/5/fold0", [0.50, 0.70], [0.9, 0.9], 60)
    write_tested_run(cand, "oracle/5/fold0", [0.50, 0.64], [0.9, 0.9], 20)       # sdice -3 points
    write_tested_run(cand, "oracle/5/fold1_tmp", [0.1], [0.1], 5)           # incomplete run: ignored
    return ref, cand


def test_compare_gives_per_run_differences_in_points(roots):
    ref, cand = roots
    table = report.compare([ref], [cand])
    sdice = table[table["score"] == "sdice"].set_index("run")
    assert sdice.loc["ft_all/2_5_n8", "delta"] == pytest.approx(0.5)
    assert sdice.loc["oracle/5/fold0", "delta"] == pytest.approx(-3.0)
    assert table[table["score"] == "dice"].set_index("run").loc["ft_all/2_5_n8", "delta"] == pytest.approx(-0.5)
    text = report.compare_report(table, [ref], [cand], tolerance=1.0)
    assert "failing: **1**\n  - oracle/5/fold0: sdice -3.0" in text
    assert "160 s against 60 s (2.67x)" in text
    assert "every run passes: **no** (fails: oracle/5/fold0)" in text
    assert "every run passes: **yes**" in report.compare_report(table, [ref], [cand], tolerance=5.0)


def test_compare_reads_last_and_best_validation_dice_of_trained_runs(tmp_path):
    write_trained_run(tmp_path / "a", "sfda", [0.5, 0.8, 0.7])
    write_trained_run(tmp_path / "b", "sfda", [0.5, 0.75, 0.72])
    table = report.compare([tmp_path / "a"], [tmp_path / "b"]).set_index("score")
    assert table.loc["last 3D Dice", "delta"] == pytest.approx(2.0)
    assert table.loc["best 3D Dice", "delta"] == pytest.approx(-5.0)


def test_compare_refuses_roots_with_different_runs(roots, capsys):
    ref, cand = roots
    write_tested_run(cand, "hm/2_5", [0.9], [0.9], 1)
    with pytest.raises(ValueError, match="in one only: hm/2_5"):
        report.compare([ref], [cand])
    assert report.main(["compare", "--reference", str(ref), "--candidate", str(ref.parent / "nowhere"),
                        "--out", str(ref.parent / "c.md")]) == 1
    assert "nowhere: no such results directory" in capsys.readouterr().err
    assert not (ref.parent / "c.md").exists()


def test_compare_pairs_roots_by_seed_and_leaves_collapsed_pairs_out(tmp_path):
    """Seed k of the candidate against seed k of the reference; a pair where either side collapsed leaves the mean
    difference, and a candidate that collapses more often fails whatever its difference."""
    for k, (ref_last, cand_last) in enumerate([(0.60, 0.62), (0.70, 0.71), (0.50, 0.02)]):
        write_trained_run(tmp_path / f"fp32_s{k}", "sfda", [0.5, ref_last])
        write_trained_run(tmp_path / f"bf16_s{k}", "sfda", [0.5, cand_last])
        write_trained_run(tmp_path / f"fp32_s{k}", "fs", [0.5, 0.80 + k / 100])
        write_trained_run(tmp_path / f"bf16_s{k}", "fs", [0.5, 0.79 + k / 100])
    refs = [tmp_path / f"fp32_s{k}" for k in range(3)]
    cands = [tmp_path / f"bf16_s{k}" for k in range(3)]
    table = report.compare(refs, cands)
    row = table[table["score"] == "last 3D Dice"].set_index("run").loc["sfda"]
    assert row["delta"] == pytest.approx(1.5) and row["pairs"] == 2          # (2 + 1) / 2: seed 2 collapsed in bf16
    assert (row["reference_collapses"], row["candidate_collapses"]) == (0, 1)
    fs = table[table["score"] == "last 3D Dice"].set_index("run").loc["fs"]
    assert fs["delta"] == pytest.approx(-1.0) and fs["pairs"] == 3 and fs["reference"] == pytest.approx(81.0)
    text = report.compare_report(table, refs, cands, tolerance=1.5)
    assert "| sfda | last 3D Dice | 60.0 ± 10.0 | 45.0 ± 37.5 | +1.5 (2) | 10.0 | 0 / 1 |" in text
    assert "  - sfda: more collapses" in text and "every run passes: **no** (fails: sfda)" in text
    with pytest.raises(ValueError, match="roots pair by position"):
        report.compare(refs, cands[:2])


def _row(run: str, best: float, last: float, epochs: int = 20) -> dict:
    return {"run": run, "dice3d": best, "last_dice3d": last, "epochs": epochs}


def test_prostate_claims_on_best_and_last_epoch_count_a_collapse():
    rows = [_row("cesource", 0.95, 0.90, 30), _row("noadapt", 0.04, 0.04, 0), _row("adabn", 0.28, 0.28, 0),
            _row("sfda", 0.72, 0.01), _row("sfda_truesize", 0.70, 0.30), _row("adaent", 0.2, 0.1), _row("fs", 0.9, 0.8)]
    assert report.collapsed(rows) == ["sfda"]
    text = report.claims(rows)
    line = next(l for l in text.splitlines() if l.startswith("| sfda - adabn >= 5"))
    assert line == "| sfda - adabn >= 5 points | +44.0 | yes | -27.0 | **no** |"
    assert "| 1 collapsed: sfda | **no** |" in text
    rows[3] = _row("sfda", 0.72, 0.60)
    assert report.collapsed(rows) == [] and "| 0 collapsed | yes |" in report.claims(rows)
    rows.append(_row("cesource_online", 0.96, 0.95, 30))          # a source training: not a target run
    line = next(l for l in report.claims(rows).splitlines() if l.startswith("| fs highest"))
    assert line == "| fs highest of the target runs | +18.0 | yes | +20.0 | yes |"


@pytest.mark.parametrize("script", ["report", "plot", "moustache"])
def test_missing_or_malformed_run_gives_one_error_line(tmp_path, capsys, script):
    module = importlib.import_module(script)
    out = tmp_path / "out.png"
    assert module.main(["--runs", str(tmp_path / "nowhere"), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "nowhere" in err and "\n" not in err
    run = tmp_path / "sfda"
    run.mkdir()
    (run / "IMG_target_metrics.csv").write_text('epoch,val_dice_3d\n0,"0.5\n')      # an unclosed quote
    (run / "val_dice_3d_per_patient.csv").write_text('patient,dice_3d_c1\n"Case00,0.5\n')
    (run / "3dbestepoch.txt").write_text("zero")
    assert module.main(["--runs", str(run), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(run) in err and "\n" not in err
    assert not out.exists()


def test_compare_only_the_named_runs(roots):
    ref, cand = roots
    write_tested_run(ref, "hm/2_5", [0.9], [0.9], 1)                           # in the reference only: left out
    table = report.compare([ref], [cand], only=["ft_all/2_5_n8"])
    assert table["run"].unique().tolist() == ["ft_all/2_5_n8"]
    with pytest.raises(ValueError, match="no complete run hm/2_5"):
        report.compare([ref], [cand], only=["hm/2_5"])


def rule_roots(tmp_path, last_moves):
    """Two runs per mode over one pair: each reference swings 4 points over its last 5 epochs; the candidate keeps
    the best epoch and moves the last one by the given points."""
    ref, cand = tmp_path / "fp32", tmp_path / "bf16"
    for name, move in last_moves.items():
        curve = [0.5, 0.8, 0.78, 0.82, 0.80, 0.79, 0.80]                      # last 5: 0.78..0.82, a 4-point swing
        write_trained_run(ref, name, curve)
        write_trained_run(cand, name, curve[:-1] + [curve[-1] + move / 100])
    table = report.compare([ref], [cand])
    return report.judge(table, tolerance=1.5).set_index("run")["fails"], report.compare_report(table, [ref], [cand], 1.5)


def test_a_noisy_last_epoch_within_the_runs_own_swing_is_accepted_when_moves_go_both_ways(tmp_path):
    fails, text = rule_roots(tmp_path, {"sfda": 2.0, "adaent": -1.8})
    assert (fails == "").all() and "every run passes: **yes**" in text and "| 4.0 |" in text


def test_one_sided_last_epoch_moves_are_refused_even_within_the_swing(tmp_path):
    fails, text = rule_roots(tmp_path, {"sfda": 2.0, "adaent": 1.8})
    assert fails["sfda"] == "last +2.0: every run beyond 1.5 moves the same way"
    assert fails["adaent"] == "last +1.8: every run beyond 1.5 moves the same way"
    assert "every run passes: **no** (fails: adaent, sfda)" in text


def test_a_last_epoch_move_beyond_the_runs_own_swing_fails_and_an_unjudged_run_is_only_reported(tmp_path):
    fails, _ = rule_roots(tmp_path, {"sfda": -5.0, "adaent": 2.0})
    assert fails["sfda"] == "last -5.0 beyond its own swing 4.0" and fails["adaent"] == ""
    table = report.compare([tmp_path / "fp32"], [tmp_path / "bf16"])
    assert list(report.judge(table, 1.5, unjudged=["sfda"])["run"]) == ["adaent"]


def _validation_scores(sdice: dict) -> pd.DataFrame:
    """collect()'s rows for the validation pairs 0_3 and 1_4, two volumes each, one surface Dice per candidate."""
    rows = []
    for (method, lr), value in sdice.items():
        for source, target in ((0, 3), (1, 4)):
            for patient in ("a", "b"):
                rows.append({"method": method, "source": source, "target": target, "lr": lr, "patient": patient,
                             "sdice": value, "dice": value})
    return pd.DataFrame(rows)


def test_the_source_free_choice_falls_back_to_adabn_when_every_rate_loses():
    from cc359_report import choose_source_free
    scores = _validation_scores({("sfda_val", 5e-5): 0.60, ("sfda_val", 5e-4): 0.40,
                                 ("adabn_val", float("nan")): 0.70, ("noadapt_val", float("nan")): 0.65})
    choice = choose_source_free(scores)
    assert choice["method"].item() == "adabn" and choice["lr"].item() == 5e-5 and choice["val_sdice"].item() == 0.7
    assert choice["grid"].item() == "noadapt:0.6500 adabn:0.7000 sfda@5e-05:0.6000 sfda@0.0005:0.4000"
    scores = _validation_scores({("sfda_val", 5e-5): 0.80, ("adabn_val", float("nan")): 0.70,
                                 ("noadapt_val", float("nan")): 0.65})
    assert choose_source_free(scores)["method"].item() == "sfda"
    tie = _validation_scores({("sfda_val", 5e-5): 0.70, ("adabn_val", float("nan")): 0.70,
                              ("noadapt_val", float("nan")): 0.65})
    assert choose_source_free(tie)["method"].item() == "adabn"            # a tie keeps the model it started from
