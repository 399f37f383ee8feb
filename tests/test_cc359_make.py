"""cc359.make end to end: the runs the chain defines (make -n, read by tests/dryrun.py) and a tiny real run with the
dummy network (slow)."""
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import cc359
import routes
import dryrun
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import TINY_CC359, assert_drawn, run_make
from tables import read_params

TESTED = ["oracle/5/fold0", "oracle/5/fold1", "oracle/5/fold2", "hm/2_5", "noadapt/2_5", "adabn/2_5", "sfda/2_5",
          "sfda_truesize/2_5"] + [f"{m}/2_5_n{n}" for m in ("ft_all", "ft_first", "ft_last", "spottune") for n in (8, 45)]
CR = "results/cc359"
SETS = "data/cc359_sets"


def make(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_make("cc359.make", tmp, *extra)


def dry(tmp: Path, *extra: str) -> tuple[str, dict]:
    """make's output and its runs {run: [options]}, paths relative to ``tmp``, a chosen option naming the row it reads
    (chosen:<csv>:budget=45); give -n or -Bn in ``extra``."""
    out = make(tmp, *extra)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, dryrun.runs(out.stdout, str(tmp), selectors=True)


def only(runs: dict, run: str) -> dict:
    """The options of a run the dry run holds once (one option set)."""
    assert run in runs, f"no run {run}"
    assert len(runs[run]) == 1, f"{run} runs with {len(runs[run])} option sets"
    return runs[run][0]


def named(runs: dict, pattern: str) -> list[str]:
    """The groups of ``pattern`` (a regex over run names, e.g. main.py's with one group) in the runs, sorted."""
    return sorted({m.group(1) for run in runs if (m := re.fullmatch(pattern, run))})


def test_dry_run_shows_the_protocol(tmp_path):
    text, runs = dry(tmp_path, "-Bn")
    cr = f"{tmp_path}/{CR}"
    for run in ["baseline/0", "baseline/2", "baseline/4", "oracle/5/fold2", "oracle/1/fold0", "ft_first/2_5_n8",
                "ft_last/4_1_n45", "spottune/4_1_n45", "spottune_val/0_3_n45_tau1_lam0", "spottune_val/0_3_n8_lam0.01",
                "hm/2_5", "sfda_truesize/4_1"]:
        assert only(runs, f"main.py {CR}/{run}")["--workdir"] == f"{CR}/{run}_tmp", run
    for part in ("first", "last"):
        tuned = [only(runs, k) for k in runs if k.startswith(f"main.py {CR}/ft_{part}/")]
        assert tuned and all(o["--trainable"] == part for o in tuned), part
    # test runs read the validation's choice when they run (their budget's row); the baselines come before what
    # starts from them, the choice before the runs that read it
    for n in (8, 45):
        spot = only(runs, f"main.py {CR}/spottune/2_5_n{n}")
        chosen = f"chosen:{CR}/spottune_params.csv:budget={n}"
        assert (spot["--tau"], spot["--k_reg"], spot["--model_weights"]) == (chosen, chosen, f"{CR}/baseline/2/last.pkl")
    assert only(runs, f"report.py choose {CR}/spottune_params.csv")["--tau_file"] == f"{CR}/spottune_tau.csv"
    assert text.index(f"--workdir {cr}/baseline/2_tmp") < text.index(f"--workdir {cr}/ft_all/2_5_n8_tmp")
    assert text.index(f"--out {cr}/spottune_params.csv") < text.index(f"--workdir {cr}/spottune/2_5_n8_tmp")
    for run in ["synth.py cc359 data/cc359", "cc359.py prep data/cc359_prep", f"report.py cc359 {CR}/report.md"]:
        assert run in runs, run
    assert "--gt_dir" in only(runs, "sizes.py sizes/cc359.csv")
    assert "--scores" in only(runs, f"moustache.py {CR}/violin.png")
    assert "--lambda_runs" in only(runs, f"plot.py {CR}/lambda_val.png")
    assert "--policy_runs" in only(runs, f"plot.py {CR}/policy.png")
    assert re.search(rf"{tmp_path}/archives/\S+-cc359-seed0\.tar\.gz\b", text)


def test_the_default_bank_holds_every_other_domain_early_and_late_a_narrow_a_random_and_a_cross_task_model(tmp_path):
    _, runs = dry(tmp_path, "-Bn", "transfer")
    for target, others in (("5", "01234"), ("1", "02345")):
        scored = [o["--model"] for k in runs if k.startswith("transfer.py score ") for o in runs[k]
                  if o["--voxels"].startswith(f"{CR}/transfer/{target}/")]
        expected = [f"{CR}/baseline/{d}/{e}.pkl" for d in others for e in ("last", "epoch1")]
        expected += [f"{CR}/baseline_narrow/{others[0]}/last.pkl", f"{CR}/random/last.pkl",
                     "results/prostate/cesource/best_3d.pkl"]
        assert sorted(scored) == sorted(expected), target
        assert len(named(runs, rf"main\.py {CR}/transfer/{target}/ft/(\S+_s[01])")) == 2 * len(expected), target
        assert only(runs, f"main.py {CR}/baseline_narrow/{others[0]}")["--net_width"] == "8"
        assert all(only(runs, f"main.py {CR}/baseline/{d}")["--save_epochs"] == "1" for d in others)
    assert "main.py results/prostate/cesource" in runs            # the cross-task model: prostate's source model
    assert make(tmp_path, "-n", "transfer", "TE_TARGETS=6").returncode != 0       # CC359 has domains 0..5


def test_a_target_no_test_pair_reaches_takes_its_pool_from_the_first_other_domains_pair(tmp_path):
    text, runs = dry(tmp_path, "-Bn", "transfer", "TE_TARGETS=0 3")
    sample = only(runs, f"transfer.py sample {CR}/transfer/0/voxels.npz")
    assert (sample["--pool"], sample["--seed"], sample["--slices_per_case"]) == (f"{SETS}/pair_1_0_all/train", "0", "16")
    assert only(runs, f"transfer.py sample {CR}/transfer/3/voxels.npz")["--pool"] == f"{SETS}/pair_0_3_all/train"  # 0_3: validation
    tuned = [only(runs, k) for k in runs if k.startswith(f"main.py {CR}/transfer/0/ft/")]
    assert tuned and all(o["--target_dataset"] == f"{SETS}/pair_1_0_all" for o in tuned)
    assert f"main.py {CR}/baseline_narrow/1" in runs                          # target 0's narrow baseline
    assert not re.findall(r"^rm (?!-).*", text, re.M)       # nothing made on the way is deleted as intermediate
    _, runs = dry(tmp_path, "-Bn", "transfer", "TE_TARGETS=0", "TE_SLICES=all")
    sample = only(runs, f"transfer.py sample {CR}/transfer/0/voxels_slicesall.npz")
    assert sample["--seed"] == "0" and "--slices_per_case" not in sample
    assert "from all slices per case" in only(runs, f"transfer.py report {CR}/transfer/report_slicesall.md")["--title"]


def test_tau_is_chosen_once_then_lambda_per_budget_with_it(tmp_path):
    """The tau grid runs only at TAU_BUDGET (default: the largest budget) with lambda 0; the lambda grid reads tau."""
    text, runs = dry(tmp_path, "-Bn", "BUDGETS=45 8")
    cr = f"{tmp_path}/{CR}"
    assert named(runs, rf"main\.py {CR}/spottune_val/(\S+)") == \
        ["0_3_n45_lam0.01", "0_3_n45_tau0.1_lam0", "0_3_n45_tau1_lam0", "0_3_n8_lam0", "0_3_n8_lam0.01"]
    choice = only(runs, f"report.py choose_tau {CR}/spottune_tau.csv")
    assert choice["--runs"].split() == [f"{CR}/spottune_val/0_3_n45_tau0.1_lam0", f"{CR}/spottune_val/0_3_n45_tau1_lam0"]
    assert choice["--budget"] == "45"
    lam_run = only(runs, f"main.py {CR}/spottune_val/0_3_n8_lam0.01")
    assert (lam_run["--tau"], lam_run["--k_reg"]) == (f"chosen:{CR}/spottune_tau.csv", "0.01")
    assert text.index(f"--out {cr}/spottune_tau.csv") < text.index(f"--workdir {cr}/spottune_val/0_3_n8_lam0_tmp")
    _, runs = dry(tmp_path, "-Bn", "TAU_BUDGET=8")
    assert f"main.py {CR}/spottune_val/0_3_n8_tau1_lam0" in runs and f"main.py {CR}/spottune_val/0_3_n45_lam0" in runs


def test_spottunes_policy_learns_at_ten_times_the_networks_rate_as_in_the_reference(tmp_path):
    _, runs = dry(tmp_path, "-Bn", "LR=2e-2")
    spot = [o for k, o in runs.items() if k.startswith(f"main.py {CR}/spottune") for o in [only(runs, k)]]
    assert spot and all((o["--l_rate"], o["--policy_lr"]) == ("2e-2", "0.2") for o in spot)
    _, runs = dry(tmp_path, "-Bn", "LR=2e-2", "POLICY_LR=0.05")
    assert {only(runs, k)["--policy_lr"] for k in runs if k.startswith(f"main.py {CR}/spottune")} == {"0.05"}


def test_lr_drops_once_and_budget_sets_name_their_pair(tmp_path):
    _, runs = dry(tmp_path, "-Bn")
    sgd = [only(runs, k) for k in runs if k.startswith("main.py ") and only(runs, k).get("--optimizer") == "sgd"]
    assert sgd and all(o["--lr_schedule"] == "step_once" for o in sgd)
    split = only(runs, f"cc359.py split {SETS}/pair_2_5_n8")
    assert {f: split[f] for f in ("--kind", "--source", "--target", "--n_val", "--budget", "--budget_from")} == \
        {"--kind": "pair", "--source": "2", "--target": "5", "--n_val": "2", "--budget": "8", "--budget_from": "scan"}
    for method in ("noadapt", "adabn", "sfda", "sfda_truesize"):                   # the source-free runs' pool
        assert only(runs, f"main.py {CR}/{method}/4_1")["--target_dataset"] == f"{SETS}/pair_4_1_all", method
    _, runs = dry(tmp_path, "-Bn", "BUDGET_FROM=pool")
    budgets = [only(runs, k) for k in runs if k.startswith("cc359.py split ") and "--budget" in only(runs, k)]
    assert budgets and all(o["--budget_from"] == "pool" for o in budgets)
    out = make(tmp_path, "-n", "BUDGET_FROM=slices")
    assert out.returncode != 0 and "BUDGET_FROM=slices: scan (the paper's) or pool" in out.stderr


def test_paper_preset_sets_the_protocol_in_one_switch(tmp_path):
    _, runs = dry(tmp_path, "-Bn", "PRESET=paper")
    base = only(runs, f"main.py {CR}/baseline/1")
    expected = {"--spacing": "1,0.95,0.95", "--sdice_tol": "1", "--l_rate": "1e-3", "--n_epoch": "100",
                "--iterations": "100", "--lr_decay_epoch": "80", "--lr_schedule": "step_once"}
    assert {f: base.get(f) for f in expected} == expected
    ft = only(runs, f"main.py {CR}/ft_all/1_0_n800")
    assert (ft["--n_epoch"], ft["--lr_decay_epoch"]) == ("60", "45")
    split = only(runs, f"cc359.py split {SETS}/baseline_0")
    assert (split["--kind"], split["--source"], split["--n_val"]) == ("baseline", "0", "4")
    split = only(runs, f"cc359.py split {SETS}/pair_0_1_n8")
    assert (split["--kind"], split["--source"], split["--target"], split["--n_val"]) == ("pair", "0", "1", "2")
    prep = only(runs, "cc359.py prep data/cc359_prep")
    assert "--meta" in prep and prep["--spacing"] == "1,0.95,0.95"
    val = set(named(runs, rf"main\.py {CR}/spottune_val/(\S+)"))
    assert len(val) == 5 * 6 + 5 * (7 * 9 - 1)                   # 5 pairs: 6 taus at N = 270, then 7 x 9 lambdas
    assert {f"0_{t}_n270_tau0.01_lam0" for t in range(1, 6)} <= val and "0_5_n8_lam0.02" in val
    tested = set(named(runs, rf"main\.py {CR}/spottune/(\d_\d)_n8"))
    assert tested == {f"{s}_{t}" for s in range(1, 6) for t in range(6) if s != t}
    assert only(runs, f"report.py choose_tau {CR}/spottune_tau.csv")["--budget"] == "270"
    out = make(tmp_path, "-Bn", "PRESET=paper", "BUDGETS=8 270")                                 # overridable
    assert out.returncode == 0, out.stderr[-2000:]
    # only the spottune runs are read: the whole paper protocol takes seconds to parse
    spot = dryrun.runs("\n".join(c for c in dryrun.commands(out.stdout) if f"{tmp_path}/{CR}/spottune/" in c),
                       str(tmp_path))
    assert named(spot, rf"main\.py {CR}/spottune/1_0_n(\d+)") == ["270", "8"]
    out = make(tmp_path, "-n", "PRESET=fast")
    assert out.returncode != 0 and "PRESET=fast: the only preset is paper" in out.stderr


@pytest.fixture
def tiny_run(tiny_cc359):
    return tiny_cc359


@pytest.mark.slow
def test_every_run_tests_its_volumes(tiny_run):
    cr = tiny_run / "results" / "cc359"
    for run in TESTED:
        table = pd.read_csv(cr / run / "test_metrics.csv")
        assert list(table.columns[:1]) == ["patient"] and {"dice", "sdice"} <= set(table.columns), run
        assert table["dice"].between(0, 1).all(), run
        assert not (cr / f"{run}_tmp").exists()
    assert (cr / "spottune" / "2_5_n8" / "policy.csv").is_file()
    params = pd.read_csv(cr / "spottune_params.csv")
    assert params.columns[:3].tolist() == ["budget", "tau", "lambda"]
    assert params["budget"].tolist() == [8, 45] and set(params["lambda"]) <= {0, 0.01}
    tau = pd.read_csv(cr / "spottune_tau.csv")
    assert tau["budget"].tolist() == [45] and params["tau"].tolist() == [tau["tau"].iloc[0]] * 2   # one tau for all
    sf = pd.read_csv(cr / "sfda_params.csv")                           # the SFDA rate, chosen on the validation pair
    assert len(sf) == 1 and sf["lr"].iloc[0] in (5e-5, 5e-4)
    for lr in ("5e-5", "5e-4"):
        assert (cr / "sfda_val" / f"0_3_lr{lr}" / "test_metrics.csv").is_file()
    assert read_params(cr / "sfda" / "2_5")["l_rate"] == sf["lr"].iloc[0]           # --chosen read it
    scores = pd.read_csv(cr / "scores.csv")
    assert set(scores["method"]) == {"oracle", "hm", "noadapt", "adabn", "sfda", "sfda_truesize",
                                     "ft_all", "ft_first", "ft_last", "spottune"}


@pytest.mark.slow
def test_report_plots_and_archive(tiny_run):
    cr = tiny_run / "results" / "cc359"
    text = (cr / "report.md").read_text()
    for piece in ["## Surface Dice", "| method | N = 8 | N = 45 |", "| baseline (no adaptation) |", "| oracle |",
                  "| spottune |", "## Targets checked on this run", "What the label-free adaptation is worth",
                  "tau chosen once, at N = 45 with lambda = 0", "## Statistics (the paper's one-sided Wilcoxon",
                  "SpotTUnet > the better of ft_all / ft_first", "cannot reach p < 0.05"]:
        assert piece in text, piece
    for png in ["violin.png", "lambda_val.png", "policy.png"]:
        assert_drawn(cr / png)
    assert_drawn(cr / "protoseg" / "2_5" / "sa_layers.png", series=6)         # one line per analysed model
    ps = (cr / "protoseg" / "2_5" / "report.md").read_text()            # ProtoSeg per test pair
    assert all(f"| {m} |" in ps for m in ["baseline_on_source", "baseline", "adabn", "sfda", "sfda_truesize"])
    assert "| baseline_online_on_source |" in ps and "Online ProtoSeg (seed 003, Table 1)" in ps
    for run in ("sfda/2_5", "sfda_truesize/2_5"):                      # validated every epoch, mu logged, 3 tests
        assert (cr / run / "best_mu.pkl").is_file() and "mu" in pd.read_csv(cr / run / "IMG_target_metrics.csv")
        assert all((cr / run / f).is_file() for f in ("test_metrics_best_3d.csv", "test_metrics_best_mu.csv"))
    selection = pd.read_csv(cr / "selection.csv")
    assert {"label_test_sdice", "last_test_sdice", "mu_test_sdice"} <= set(selection.columns) and len(selection) == 2
    archives = list((tiny_run / "archives").glob("*-cc359-seed0.tar.gz"))
    assert len(archives) == 1
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
    assert any(n.endswith("report.md") for n in names) and any(n.endswith("spottune_params.csv") for n in names)
    assert all("/results/" in n or "/sizes/" in n for n in names)
    checkpoints = sorted(n for n in names if n.endswith(".pkl"))      # only the baselines' final weights
    assert len(checkpoints) == 2 and all("/baseline/" in n and n.endswith("/last.pkl") for n in checkpoints)


@pytest.mark.slow
def test_predict_segments_a_pairs_test_scans_on_their_own_grid_and_the_figure_shows_them(tiny_run):
    out = make(tiny_run, *TINY_CC359, "predict")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    pred = tiny_run / "results" / "cc359" / "predict" / "sfda" / "2_5"
    test_ids = {p.name.split("_")[0] for p in (tiny_run / "data/cc359_sets/pair_2_5_all/test/IMG").iterdir()}
    table = pd.read_csv(pred / "predictions.csv")
    assert set(table["volume"]) == test_ids and table["mu"].is_monotonic_increasing
    meta = cc359.read_meta(tiny_run / "data" / "cc359" / "meta.csv").set_index("id")
    for case in test_ids:
        given, seg = nib.load(str(meta.at[case, "image"])), nib.load(str(pred / f"{case}.nii.gz"))
        assert seg.shape == given.shape and np.allclose(seg.affine, given.affine, atol=1e-6)
        assert seg.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(seg.dataobj))) <= {0, 1}
    assert_drawn(tiny_run / "results" / "cc359" / "qualitative_2_5.png")


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda m: m.assign(MRI=m["MRI"].str.replace("CC0002", "CC0999")), "CC0999_ge_3_50_M.nii.gz does not exist"),
    (lambda m: m.assign(tomograph_model=["siemens", "hitachi"]), "unknown domain 'hitachi'"),
])
def test_a_bad_meta_csv_stops_make_with_one_message_and_no_cache(tmp_path, edit, message):
    from test_cc359 import write_case
    release = tmp_path / "release"
    release.mkdir()
    rows = [write_case(release, "CC0001", "siemens", 15), write_case(release, "CC0002", "ge", 3)]
    edit(pd.DataFrame(rows)).to_csv(release / "meta.csv", index=False)
    out = make(tmp_path, f"CCDATA={release}", "NET=Dimwit", "EPC=1")
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "meta.csv line 3 (case CC0002)" in errors[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "data" / "cc359_prep").exists() and not (tmp_path / "results").exists()


@pytest.mark.slow
def test_second_make_has_nothing_to_do(tiny_run):
    out = make(tiny_run, *TINY_CC359, "-n")
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [run for run in dryrun.runs(out.stdout, str(tiny_run)) if run.startswith("main.py ")], out.stdout[-2000:]


@pytest.mark.slow
def test_a_wider_bank_is_scored_and_reported_though_the_report_is_newer(tiny_run):
    """The bank's new files are plain targets, remade when missing (a bare .SECONDARY: made them intermediate, and
    make called the newer report up to date)."""
    _, runs = dry(tiny_run, *TINY_CC359, "TE_DOMAINS=0 2 4", "-n", "transfer")
    scored = [o["--model"] for k in runs if k.startswith("transfer.py score ") for o in runs[k]]
    assert f"{CR}/baseline/4/last.pkl" in scored, sorted(runs)
    assert f"main.py {CR}/transfer/5/ft/baseline_4_epoch0_s1" in runs
    assert any(k.startswith("transfer.py report ") for k in runs)


@pytest.mark.slow
def test_the_transfer_stage_ranks_a_bank_against_its_fine_tuned_truth(tiny_run):
    """Target 5 (the test pair 2_5's): the default bank on TE_DOMAINS 0 and 2 (7 models), one scored row and two
    fine-tunings each, the tables."""
    te = tiny_run / "results" / "cc359" / "transfer"
    scores = pd.read_csv(te / "scores.csv")
    names = {f"baseline_{d}_{e}" for d in (0, 2) for e in ("last", "epoch0")}
    assert set(scores["candidate"]) == names | {"baseline_narrow_0_last", "random_last", "prostate_cesource_best_3d"}
    assert (scores["target"] == 5).all() and scores[["sdice_s0", "sdice_s1"]].notna().all().all()
    assert scores.loc[scores["candidate"] == "prostate_cesource_best_3d", "network"].item() == "Dimwit"
    for name in ["ccfv", "ccfv_code", "logme", "leep", "gbc", "transrate", "ccfv_kl", "ccfv_wo_fv"]:
        assert np.isfinite(scores[name]).all() and (scores[f"{name}_s"] >= 0).all(), name
    with np.load(te / "5" / "voxels.npz") as voxels:
        assert list(voxels["caps"]) == [100, 200, 400] and voxels["scale2"].shape[1] == 5
    text = (te / "report.md").read_text()
    for piece in ["## Table 1: estimators", "| ceiling (seed vs seed) |", "## Table 2: CC-FV ablations",
                  "| ccfv_bhattacharyya |", "| ccfv_unit |", "## The model each estimator picks", "mean regret", "ccfv_unit: features L2-normalised", "CC-FV, paper variant",
                  "Scoring one model"]:
        assert piece in text, piece
    assert_drawn(te / "scatter.png")
    ft = te / "5" / "ft" / "prostate_cesource_best_3d_s1"
    assert "--network checkpoint --new_head --seed 1" in (ft / "command.txt").read_text()


@pytest.mark.slow
def test_another_voxel_draw_scores_the_bank_again_against_the_same_fine_tunings(tiny_run):
    out = make(tiny_run, "-j2", *TINY_CC359, "TE_VOXEL_SEED=1", "TE_SLICES=1", "transfer")
    assert out.returncode == 0, out.stderr[-2000:]
    ran = dryrun.runs("\n".join(c for c in dryrun.commands(out.stdout) if c.lstrip().startswith(sys.executable)),
                     str(tiny_run))
    assert not [run for run in ran if run.startswith("main.py ")], out.stdout[-2000:]
    te = tiny_run / "results" / "cc359" / "transfer"
    sample = only(ran, f"transfer.py sample {CR}/transfer/5/voxels_seed1_slices1.npz")
    assert (sample["--seed"], sample["--slices_per_case"]) == ("1", "1")
    with np.load(te / "5" / "voxels_seed1_slices1.npz") as voxels:
        per_case = pd.DataFrame(voxels["scale2"][:, [0, 3]], columns=["slice", "case"]).groupby("case")["slice"].nunique()
    assert (per_case == 1).all()                     # one slice per case: the brain covers it, background too
    again = pd.read_csv(te / "scores_seed1_slices1.csv")
    first = pd.read_csv(te / "scores.csv")
    assert sorted(again["candidate"]) == sorted(first["candidate"]) and len(list((te / "5").glob("score_*"))) == 1
    merged = first.merge(again, on="candidate")
    assert (merged["sdice_x"] == merged["sdice_y"]).all() and (merged["ccfv_x"] != merged["ccfv_y"]).all()
    assert "voxels drawn with seed 1 from 1 slices per case" in (te / "report_seed1_slices1.md").read_text()
    assert_drawn(te / "scatter_seed1_slices1.png")


# the reuse strategies cut a residual U-Net: a width-4 one, one pair, one budget, a short k grid
TINY_REUSE = [a for a in TINY_CC359 if not a.startswith(("NET=", "BUDGETS="))] + [
    "NET=ResUNet", "EXTRA=--net_width 4", "BUDGETS=8", "KS_ttl=1 3", "KS_lwft=2", "KS_transfusion=1", "LY_AFTER="]


def test_dry_run_searches_k_once_on_the_validation_pairs_and_the_tests_read_it(tmp_path):
    text, runs = dry(tmp_path, "-Bn", "layers")
    cr = f"{tmp_path}/{CR}"
    assert named(runs, rf"main\.py {CR}/((?:ttl|lwft|transfusion)_val/0_3\S+)") == \
        [f"lwft_val/0_3_n45_k{k}" for k in (1, 2, 3, 4)] + [f"transfusion_val/0_3_n45_k{k}" for k in (0, 1, 2)] + \
        [f"ttl_val/0_3_n45_k{k}" for k in (0, 1, 2, 3)]
    for method in ("ttl", "lwft", "transfusion"):                 # the test runs read the level chosen for them
        assert only(runs, f"main.py {CR}/{method}/2_5_n8")["--reuse"] == \
            f"{method}:chosen:{CR}/reuse_params.csv:method={method}", method
    assert text.index(f"--out {cr}/reuse_params.csv") < text.index(f"--workdir {cr}/ttl/2_5_n8_tmp")
    assert f"svcca.py complexity {CR}/layers/complexity.csv" in runs and f"svcca.py anatomy {CR}/layers/anatomy.md" in runs
    _, other = dry(tmp_path, "-Bn", "NET=UNet")                        # the strategies need a residual U-Net
    assert not [k for k in other if "reuse_params" in k or k.startswith("svcca.py ")]
    assert not [k for k in other for o in other[k] if "--reuse" in o or any("reuse_params" in v for v in o.values())]


@pytest.mark.slow
def test_a_tiny_resunet_chain_chooses_k_tests_the_strategies_and_draws_the_layer_anatomy(tiny_cc359, tmp_path):
    cr = tmp_path / "results" / "cc359"
    out = run_make("cc359.make", tmp_path, "-j2", *TINY_REUSE, "layers", data=tiny_cc359)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    chosen = pd.read_csv(cr / "reuse_params.csv")
    assert chosen["method"].tolist() == ["ttl", "lwft", "transfusion"]
    assert chosen.set_index("method")["k"].to_dict() == {"ttl": chosen["k"][0], "lwft": 2, "transfusion": 1}
    assert chosen["k"][0] in (1, 3)
    for method in ("ttl", "lwft", "transfusion"):
        assert read_params(cr / method / "2_5_n8")["reuse"] == (method, chosen.set_index("method")["k"][method])
    cost = pd.read_csv(cr / "layers" / "complexity.csv")
    assert set(cost["method"]) == {"ft_all", "spottune", "ttl", "lwft", "transfusion"}
    assert (cost["params"] > 0).all() and (cost["macs"] > 0).all() and (cost["ms"] > 0).all()
    by = cost.set_index("method")
    assert by.loc["lwft", "params"] == by.loc["ft_all", "params"] and by.loc["transfusion", "params"] < by.loc["ft_all", "params"]
    layers = pd.read_csv(cr / "layers" / "2_5" / "svcca_layers.csv")
    assert set(layers["model"]) == {"random", "ft_all", "ttl", "lwft", "transfusion", "spottune"}
    assert layers["svcca"].dropna().between(0, 1 + 1e-9).all()
    anatomy = pd.read_csv(cr / "layers" / "anatomy.csv")
    assert {"sa_drop", "moved", "p_finetuned_n8"} <= set(anatomy.columns) and len(anatomy) == 28
    text = (cr / "layers" / "anatomy.md").read_text()
    assert "rho" in text and (cr / "layers" / "anatomy.png").is_file()


def test_instnorm_features_score_the_same_bank_into_their_own_tables_and_a_bad_value_is_one_line(tmp_path):
    _, runs = dry(tmp_path, "-n", "transfer", "TE_FEATURES=instnorm", "NET=Dimwit", "EPC=1")
    scores = {k: o for k, o in runs.items() if k.startswith("transfer.py score ")}
    assert scores and all("/score_instnorm/" in k for k in scores)
    assert all(o["--features"] == "instnorm" for opts in scores.values() for o in opts)
    assert any(k.startswith("transfer.py report ") and k.endswith("report_instnorm.md") for k in runs)
    out = make(tmp_path, "-n", "transfer", "TE_FEATURES=postnorm")
    assert out.returncode != 0 and "TE_FEATURES=postnorm: expected raw or instnorm" in out.stderr


@pytest.mark.slow
def test_routes_score_a_spottune_run_four_ways_and_its_policy_is_its_own_test(tiny_run, tmp_path, capsys):
    run = tiny_run / "results" / "cc359" / "spottune" / "2_5_n8"
    assert routes.main(["--run", str(run), "--draws", "2", "--threads", "1", "--out", str(tmp_path / "r")]) == 0
    scores = pd.read_csv(tmp_path / "r" / "scores.csv")
    assert list(scores["mode"].unique()) == list(routes.MODES) and scores["sdice"].between(0, 1).all()
    own = pd.read_csv(run / "test_metrics.csv").set_index("patient")
    policy = scores[scores["mode"] == "policy"].set_index("patient").loc[own.index]
    assert np.allclose(policy["sdice"], own["sdice"], atol=1e-4) and np.allclose(policy["dice"], own["dice"], atol=1e-4)
    usage = pd.read_csv(tmp_path / "r" / "usage.csv")
    assert len(usage) == len(pd.read_csv(run / "policy.csv")) and usage.iloc[:, 1:].stack().between(0, 1).all()
    assert np.allclose(usage["p_finetuned_test"], pd.read_csv(run / "policy.csv")["p_finetuned"], atol=1e-4)
    assert routes.main(["report", "--runs", str(tmp_path / "r"), "--out", str(tmp_path / "routes.md")]) == 0
    assert "| policy |" not in (tmp_path / "routes.md").read_text() and "usage moved" in (tmp_path / "routes.md").read_text()
    capsys.readouterr()
    assert routes.main(["--run", str(tiny_run / "results" / "cc359" / "ft_all" / "2_5_n8"), "--out", str(tmp_path / "x")]) == 1
    assert "not a SpotTUnet run" in capsys.readouterr().err
