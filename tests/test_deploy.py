"""deploy.py: which model mu deploys, and how that rule is judged where labels exist; qualitative.py's patients."""
from pathlib import Path

import pandas as pd
import pytest

import deploy
import qualitative


def fake_root(root: Path, dice: dict) -> None:
    """Runs whose metrics csv ends at the given last-epoch 3D Dice (fractions)."""
    for name, value in dice.items():
        (root / name).mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1], "val_dice_3d": [0.01, value]}).to_csv(root / name / "IMG_target_metrics.csv",
                                                                               index=False)


def test_judge_counts_agreement_and_regret_of_each_rule(tmp_path, monkeypatch):
    # root a: mu picks sfda, the labels' pick too; root b: mu picks adabn (80) where sfda (90) is best: regret 10
    fake_root(tmp_path / "a", {"noadapt": 0.2, "adabn": 0.5, "sfda": 0.7})
    fake_root(tmp_path / "b", {"noadapt": 0.1, "adabn": 0.8, "sfda": 0.9})
    mu = {"a": {"noadapt": 0.1, "adabn": 0.3, "sfda": 0.6}, "b": {"noadapt": 0.1, "adabn": 0.5, "sfda": 0.4}}
    monkeypatch.setattr(deploy, "candidate_mu", lambda run, weights, device: mu[run.parent.name][run.name])
    table = deploy.judge([tmp_path / "a", tmp_path / "b"], ["noadapt", "adabn", "sfda"], "last.pkl", "cpu")
    assert table["labels pick"].tolist() == ["sfda", "sfda"] and table["mu: pick"].tolist() == ["sfda", "adabn"]
    assert table["mu: regret"].tolist() == pytest.approx([0.0, 10.0])
    assert table["always adabn: regret"].tolist() == pytest.approx([20.0, 10.0])
    report = " ".join(deploy.judge_report(table, "t").split())
    assert "| mu | 1/2 | 5 | 10 |" in report and "| always sfda | 2/2 | 0 | 0 |" in report


def test_choose_deploys_the_highest_mean_mu(tmp_path, monkeypatch):
    runs = [tmp_path / n for n in ("noadapt", "adabn", "sfda")]
    for run in runs:
        run.mkdir()
    (runs[2] / "collapse.txt").write_text("1,0.0\n")
    monkeypatch.setattr(deploy, "candidate_mu", lambda run, weights, device: {"noadapt": 0.2, "adabn": 0.5,
                                                                              "sfda": 0.4}[run.name])
    table = deploy.choose(runs, "last.pkl", "cpu")
    assert table["deployed"].tolist() == [False, True, False] and table["guard_fired"].tolist() == [False, False, True]


def test_the_qualitative_figure_shows_the_largest_median_and_smallest_gain():
    patients = ["p0", "p1", "p2", "p3", "p4"]
    scores = {"noadapt": pd.DataFrame({"patient": patients, "dice": [0.5, 0.5, 0.5, 0.5, 0.5]}),
              "sfda": pd.DataFrame({"patient": patients, "dice": [0.9, 0.4, 0.6, 0.55, 0.2]})}
    shown = qualitative.shown_patients(scores, "noadapt", "sfda")
    assert [pid for _, pid in shown] == ["p0", "p3", "p4"]
    assert shown[0][0] == "largest gain (+40.0)" and shown[2][0] == "smallest gain (-30.0)"


def test_the_figure_names_runs_by_folder_or_by_method_where_folders_repeat():
    assert qualitative.run_names([Path("r/noadapt"), Path("r/sfda")]) == ["noadapt", "sfda"]
    assert qualitative.run_names([Path("cc/noadapt/2_5"), Path("cc/sfda/2_5")]) == ["noadapt", "sfda"]
