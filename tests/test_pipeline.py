"""prostate.make end to end: the runs the chain defines (make -n, read by tests/dryrun.py) and a tiny real run with
the dummy network (slow)."""
import ast
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import dryrun
import pandas as pd
import pytest
import synth
import torch
from conftest import TINY_PROSTATE, assert_drawn, run_make

ROOT = Path(__file__).resolve().parent.parent
RUNS = ["cesource", "noadapt", "adabn", "sfda", "sfda_truesize", "adaent", "fs"]
TRAININGS = len(RUNS) + 1          # and cesource_online, the source training with the online ProtoSeg term
ANALYSES = 9                       # ProtoSeg: both source models on both domains, every adapted model
PR = "results/prostate"


def make(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_make("prostate.make", tmp, *extra)


def dry(tmp: Path, *extra: str) -> tuple[str, dict]:
    """make's output and its runs {run: [options]}, paths relative to ``tmp``; give -n or -Bn in ``extra``."""
    out = make(tmp, *extra)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout, dryrun.runs(out.stdout, str(tmp))


def only(runs: dict, run: str) -> dict:
    """The options of a run the dry run holds once (one option set)."""
    assert run in runs, f"no run {run}; runs: {sorted(runs)}"
    assert len(runs[run]) == 1, f"{run} runs with {len(runs[run])} option sets"
    return runs[run][0]


def trainings(runs: dict, under: str = "") -> dict:
    """{run: options} of the main.py runs (under a folder)."""
    return {k: only(runs, k) for k in runs if k.startswith(f"main.py {under}")}


def analyses(runs: dict) -> dict:
    """{run: options} of the ProtoSeg analyses (protoseg.py without a subcommand)."""
    return {k: only(runs, k) for k in runs if k.startswith("protoseg.py ") and len(k.split()) == 2}


def loss(options: dict) -> tuple:
    """The first term of --target_losses, a literal: (name, params, bounds, bounds params, function, weight)."""
    return ast.literal_eval(options["--target_losses"])[0]


def renamed(text: str, run: str) -> bool:
    """Some command besides the run itself names both run_tmp and run: the rename when the run is complete."""
    return any(f"{run}_tmp" in line.split() and run in line.split() for line in text.replace("\\\n", " ").splitlines()
               if not re.search(r"\S+\.py\b", line))


def test_dry_run_shows_the_whole_chain(tmp_path):
    text, runs = dry(tmp_path, "-Bn")
    for run in RUNS:                           # each run writes run_tmp, renamed to run when complete
        assert only(runs, f"main.py {PR}/{run}")["--workdir"] == f"{PR}/{run}_tmp"
        assert renamed(text, f"{tmp_path}/{PR}/{run}"), run
    for domain in ("source", "target"):
        assert only(runs, f"synth.py prostate data/prostate_{domain}")["--domain"] == domain
    sizes = only(runs, "sizes.py sizes/prostate.csv")
    assert (sizes["--source"], sizes["--target"]) == ("data/prostate_source", "data/prostate_target")
    every = " ".join(f"{PR}/{run}" for run in RUNS)
    assert only(runs, f"plot.py {PR}/val_dice_3d.png")["--runs"] == every
    assert only(runs, f"moustache.py {PR}/boxplot.png")["--runs"] == " ".join(f"{PR}/{run}" for run in RUNS[1:])
    assert only(runs, f"report.py {PR}/report.md")["--runs"] == every
    assert re.search(rf"{tmp_path}/archives/\S+-prostate-seed0\.tar\.gz\b", text)
    # the size prior: sfda reads the estimate column, sfda_truesize the true sizes (its upper bound)
    for run, column in (("sfda", "dumbpredwtags"), ("sfda_truesize", "val_gt_size")):
        name, _, bounds, params, _, _ = loss(only(runs, f"main.py {PR}/{run}"))
        assert (name, bounds, params["predcol"], params["sizefile"]) == \
            ("EntKLProp", "PredictionBounds", column, "sizes/prostate.csv"), run
    # the source model comes first, the adaptation runs start from it; the size prior before the runs that read it
    for run in RUNS[1:-1]:
        assert only(runs, f"main.py {PR}/{run}")["--model_weights"] == f"{PR}/cesource/best_3d.pkl", run
    assert text.index(f"--workdir {tmp_path}/{PR}/cesource_tmp") < text.index(f"--workdir {tmp_path}/{PR}/sfda_tmp")
    assert text.index(f"--out {tmp_path}/sizes/prostate.csv") < text.index(f"--workdir {tmp_path}/{PR}/sfda_tmp")


def test_cflags_and_debug_reach_every_command(tmp_path):
    text, runs = dry(tmp_path, "-Bn", "CFLAGS=-O", "NET=Dimwit", "EPC=5", "DEBUG=--debug")
    mains, analysed = trainings(runs), analyses(runs)
    assert len(mains) == TRAININGS and len(analysed) == ANALYSES
    prefixes = dryrun.prefixes(text, str(tmp_path))
    assert all(prefix == {(sys.executable, "-O")} for prefix in prefixes.values()), prefixes
    for run, options in {**mains, **analysed}.items():
        assert options["--network"] == "Dimwit" and "--debug" in options, run
    for run, options in mains.items():              # noadapt/adabn evaluate the source model: no epoch of training
        assert options["--n_epoch"] == ("0" if run.endswith(("/noadapt", "/adabn")) else "5"), run


def test_precision_and_layout_reach_every_command(tmp_path):
    mains = trainings(dry(tmp_path, "-Bn")[1])
    assert len(mains) == TRAININGS
    assert all(o["--precision"] == "fp32" and "--channels_last" not in o for o in mains.values())
    mains = trainings(dry(tmp_path, "-Bn", "PREC=bf16", "CL=1")[1])
    assert len(mains) == TRAININGS
    assert all(o["--precision"] == "bf16" and "--channels_last" in o for o in mains.values())


def test_hard_shift_shares_the_source_model_and_options_reach_the_runs(tmp_path):
    text, runs = dry(tmp_path, "-Bn", "SHIFT=hard", "SFDA_FN=soft_ratio", "THREADS=1", "DATA_SEED=7", "SEED=3")
    hard = "results/prostate_hard"
    for run in RUNS[1:]:
        assert only(runs, f"main.py {hard}/{run}")["--target_dataset"] == "data/prostate_target_hard", run
    # one source model for both shifts: trained in results/prostate, and the hard shift's runs start from it
    assert f"main.py {PR}/cesource" in runs and f"main.py {hard}/cesource" not in runs
    weights = {o.get("--model_weights") for o in trainings(runs, hard).values()}
    assert weights == {f"{PR}/cesource/best_3d.pkl", None}                            # None: fs, from scratch
    synth = {k: only(runs, k) for k in runs if k.startswith("synth.py ")}             # the two data folders
    assert sorted(synth) == ["synth.py prostate data/prostate_source", "synth.py prostate data/prostate_target_hard"]
    assert only(runs, "synth.py prostate data/prostate_target_hard")["--domain"] == "target_hard"
    assert all(o["--seed"] == "7" for o in synth.values())
    mains = trainings(runs)
    assert len(mains) == TRAININGS and all(o["--seed"] == "3" for o in mains.values())
    assert len(analyses(runs)) == ANALYSES
    assert all(o["--threads"] == "1" for o in [*mains.values(), *analyses(runs).values()])
    for run in ("sfda", "sfda_truesize"):
        _, _, _, params, function, _ = loss(only(runs, f"main.py {hard}/{run}"))
        assert (function, params["sizefile"]) == ("soft_ratio", "sizes/prostate_hard.csv"), run
    assert re.search(rf"{tmp_path}/archives/\S+-prostate_hard-seed3\.tar\.gz\b", text)
    grid = trainings(dry(tmp_path, "-Bn", "lrgrid", "LR_GRID=1e-5 5e-6", "GRID_EPC=30")[1], f"{PR}/lrgrid/")
    assert sorted(grid) == [f"main.py {PR}/lrgrid/sfda_lr{lr}" for lr in ("1e-5", "5e-6")]
    assert all(o["--l_rate"] == k.rpartition("_lr")[2] and o["--n_epoch"] == "30" for k, o in grid.items())
    assert make(tmp_path, "-n", "SHIFT=harder").returncode != 0


def test_hard_shift_is_deterministic_per_seed(tmp_path):
    import numpy as np
    from PIL import Image
    import synth

    def first_image(seed: int, name: str) -> np.ndarray:
        out = tmp_path / name
        assert synth.main(["prostate", "--domain", "target_hard", "--out", str(out), "--seed", str(seed),
                           "--size", "32", "--n_train", "1", "--n_val", "1"]) == 0
        return np.asarray(Image.open(out / "train" / "IMG" / "Case00_5.png"))
    a, b, c = first_image(0, "a"), first_image(0, "b"), first_image(1, "c")
    assert np.array_equal(a, b) and not np.array_equal(a, c)


@pytest.fixture
def tiny_run(tiny_prostate):
    return tiny_prostate


@pytest.mark.slow
def test_every_output_file(tiny_run):
    pr = tiny_run / "results" / "seed0" / "prostate"
    for run in RUNS:
        d = pr / run
        for name in ["params.txt", "best_3d.pkl", "last.pkl", "IMG_target_metrics.csv", "3dbestepoch.txt",
                     "val_dice_3d_per_patient.csv", "command.txt", "git_commit.txt", "git_diff.patch",
                     "versions.txt", "run_stats.csv"]:
            assert (d / name).is_file(), f"{run}/{name}"
        assert len(list((d / "best_epoch_3d" / "val").glob("*.png"))) == 10
        assert not (pr / f"{run}_tmp").exists()
        metrics = pd.read_csv(d / "IMG_target_metrics.csv")
        assert list(metrics.columns[:17]) == [
            "epoch", "tra_loss_s", "tra_loss_cons", "tra_loss_tot", "tra_size_mean", "tra_size_mean_pos",
            "val_loss_s", "val_loss_cons", "val_loss_tot", "val_size_mean", "val_size_mean_pos",
            "val_gt_size_mean", "val_gt_size_mean_pos", "tra_dice", "val_dice", "val_dice_3d_sd", "val_dice_3d"]
        epoch, dice = (d / "3dbestepoch.txt").read_text().split(",")
        assert float(dice) == pytest.approx(metrics.loc[metrics.epoch == int(epoch), "val_dice_3d"].item(), abs=1e-4)
    sfda = pd.read_csv(pr / "sfda" / "IMG_target_metrics.csv")
    assert sfda["tra_loss_cons"].iloc[0] > 0            # the KL term is logged (0 in the seed's code)
    assert (pr / "sfda" / "best_epoch_3d" / "entmap").is_dir()
    assert "python" in (pr / "sfda" / "versions.txt").read_text() and "torch==" in (pr / "sfda" / "versions.txt").read_text()
    assert_drawn(pr / "val_dice_3d.png", series=len(RUNS))                   # one curve (or level line) per run
    assert_drawn(pr / "boxplot.png")
    report = (pr / "report.md").read_text()
    assert all(f"| {run} |" in report for run in RUNS)
    ps = pr / "protoseg"                  # ProtoSeg: the source model on both domains, every adapted model
    analysed = ["cesource_on_source", "cesource_online_on_source", "cesource", "cesource_online", "adabn", "sfda",
                "sfda_truesize", "adaent", "fs"]
    for name in analysed:
        assert {f.name for f in (ps / name).iterdir()} == {"sa_layers.csv", "sa_units.csv", "images.csv",
                                                           "patients.csv", "sa_noise.csv", "summary.md"}, name
    assert pd.read_csv(ps / "sfda" / "sa_layers.csv")["layer"].tolist() == ["conv"]                # Dimwit
    text = (ps / "report.md").read_text()
    assert all(f"| {name} |" in text for name in analysed)
    assert_drawn(ps / "sa_layers.png", series=len(analysed))                  # one line per analysed model
    assert "Online ProtoSeg (seed 003, Table 1)" in text and "| cesource_online_on_source | " in text
    online = pd.read_csv(pr / "cesource_online" / "IMG_target_metrics.csv")
    assert online["tra_loss_cons"].iloc[0] > 0                           # the SA term of the online training
    for run in ("sfda", "sfda_truesize", "adaent"):                     # label-free choice: mu every epoch
        assert pd.read_csv(pr / run / "IMG_target_metrics.csv")["mu"].between(0, 1).all()
        assert (pr / run / "best_mu.pkl").is_file() and (pr / run / "mubestepoch.txt").is_file()
    selection = pd.read_csv(pr / "selection.csv")
    assert [Path(r).name for r in selection["run"]] == ["sfda", "sfda_truesize", "adaent"]
    assert "mu - label" in (pr / "selection.md").read_text()


@pytest.mark.slow
def test_archive_holds_the_results_and_nothing_else(tiny_run):
    archives = sorted((tiny_run / "archives").glob("*-prostate-seed*.tar.gz"))
    assert [a.name[-len("seed0.tar.gz"):] for a in archives] == ["seed0.tar.gz", "seed1.tar.gz"]
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
    prefix = str(tiny_run).lstrip("/")
    assert all(n.startswith(prefix) for n in names)
    assert any(n.endswith("sfda/best_3d.pkl") for n in names) and any(n.endswith("report.md") for n in names)
    assert any(n.endswith("sizes/prostate.csv") for n in names)


@pytest.mark.slow
def test_second_make_has_nothing_to_do(tiny_run):
    out = make(tiny_run, "-n", "SEEDS=0 1", *TINY_PROSTATE)
    assert out.returncode == 0, out.stderr[-2000:]
    assert not [run for run in dryrun.runs(out.stdout, str(tiny_run)) if run.startswith("main.py ")], out.stdout[-2000:]


@pytest.mark.slow
def test_noadapt_is_the_source_model_unchanged(tiny_run):
    pr = tiny_run / "results" / "seed0" / "prostate"
    import torch
    src = torch.load(pr / "cesource" / "best_3d.pkl", weights_only=True)["state_dict"]
    noadapt = torch.load(pr / "noadapt" / "last.pkl", weights_only=True)["state_dict"]
    adabn = torch.load(pr / "adabn" / "last.pkl", weights_only=True)["state_dict"]
    assert all(torch.equal(src[k], noadapt[k]) for k in src)
    # AdaBN changes BatchNorm statistics only
    changed = {k for k in src if not torch.equal(src[k], adabn[k])}
    assert changed and all("running_" in k or "num_batches" in k for k in changed)


@pytest.mark.slow
def test_killed_run_leaves_only_tmp_and_make_finishes_it(tmp_path):
    import os
    import signal
    import time
    target = f"{tmp_path}/results/prostate/cesource"
    args = ["make", "-f", "prostate.make", f"CC={sys.executable}", f"RD={tmp_path}/results", f"DATA={tmp_path}/data",
            f"SIZES={tmp_path}/sizes", f"ARCH={tmp_path}/archives", "NET=Dimwit", "DEBUG=--debug", target]
    proc = subprocess.Popen(args + ["EPC=500"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    metrics = Path(target + "_tmp") / "IMG_target_metrics.csv"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert metrics.exists() and not Path(target).exists()
    out = subprocess.run(args + ["EPC=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert (Path(target) / "last.pkl").is_file() and not Path(target + "_tmp").exists()


@pytest.mark.slow
def test_seeds_run_the_chain_per_seed_on_one_dataset_and_report_over_them(tiny_run):
    roots = [tiny_run / "results" / f"seed{s}" / "prostate" for s in (0, 1)]
    for root in roots:
        assert all((root / run / "IMG_target_metrics.csv").is_file() for run in RUNS)
        assert "--seed " + root.parent.name[4:] in (root / "sfda" / "command.txt").read_text()
        assert f"--target_dataset {tiny_run}/data/prostate_target " in (root / "sfda" / "command.txt").read_text()
    weights = [torch.load(r / "cesource" / "last.pkl", weights_only=True)["state_dict"] for r in roots]
    assert any(not torch.equal(weights[0][k], weights[1][k]) for k in weights[0])      # two trainings, not one
    text = (tiny_run / "results" / "seeds" / "prostate.md").read_text()
    assert "mean ± sd over 2 training seeds" in text and all(f"| {run} |" in text for run in RUNS)
    selection = pd.read_csv(tiny_run / "results" / "seeds" / "prostate_selection.csv")
    assert len(selection) == 4 and f"| {tiny_run}/results/prostate/sfda | 2 |" in \
        (tiny_run / "results" / "seeds" / "prostate_selection.md").read_text()


def test_seeds_build_the_shared_data_before_any_seed_starts(tmp_path):
    text, runs = dry(tmp_path, "-Bn", "SEEDS=0 1 2", "NET=Dimwit")
    seeds = [f"results/seed{s}/prostate" for s in (0, 1, 2)]
    for s, root in enumerate(seeds):                  # the whole chain per training seed, all on the one dataset
        mains = trainings(runs, f"{root}/")
        assert sorted(mains) == sorted(f"main.py {root}/{run}" for run in [*RUNS, "cesource_online"]), root
        assert all(o["--seed"] == str(s) for o in mains.values()), root
        assert {o["--target_dataset"] for o in mains.values()} == {"data/prostate_source", "data/prostate_target"}
    assert all(o["--seed"] == "0" for k in runs if k.startswith("synth.py ") for o in runs[k])     # DATA_SEED's data
    first = min(text.index(f"--workdir {tmp_path}/{root}/") for root in seeds)
    last = max(text.rindex(f"--workdir {tmp_path}/{root}/") for root in seeds)
    assert text.index(f"--out {tmp_path}/sizes/prostate.csv") < first         # shared: built before any seed starts
    report = only(runs, "report.py seeds results/seeds/prostate.md")
    assert report["--roots"] == " ".join(seeds) and report["--at_epochs"] == "20"
    assert text.index(f"--out {tmp_path}/results/seeds/prostate.md") > last  # after every seed's runs


def test_source_rd_adapts_another_roots_source_model_and_still_trains_this_roots(tmp_path):
    """PREC=bf16 RD=bf16 SOURCE_RD=fp32: the adaptation runs start from the fp32 source models, seed by seed."""
    for s in (0, 1):
        (tmp_path / "fp32" / f"seed{s}" / "prostate" / "cesource").mkdir(parents=True)
    _, runs = dry(tmp_path, "-n", "SEEDS=0 1", "PREC=bf16", f"RD={tmp_path}/bf16", f"SOURCE_RD={tmp_path}/fp32")
    for s in (0, 1):
        mains = trainings(runs, f"bf16/seed{s}/prostate/")
        assert f"main.py bf16/seed{s}/prostate/cesource" in mains                # a whole training, compared
        assert all(o["--precision"] == "bf16" for o in mains.values())
        weights = {o["--model_weights"] for o in mains.values() if "--model_weights" in o}
        assert weights == {f"fp32/seed{s}/prostate/cesource/best_3d.pkl"}


def test_clean_deletes_the_embedded_data_and_never_a_users_own(tmp_path):
    for name in ("prostate_source", "prostate_target"):
        synth.mark_embedded(tmp_path / "data" / name, "test")
    (tmp_path / "data" / "prostate_target_hard" / "train").mkdir(parents=True)      # the user's own, no marker
    (tmp_path / "results" / "prostate").mkdir(parents=True)
    out = run_make("Makefile", tmp_path, "clean")
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["prostate_target_hard"]
    assert not (tmp_path / "results").exists()


def test_recipe_seed_runs_seed_004s_own_schedule_unguarded_from_the_same_source_model(tmp_path):
    runs = dryrun.runs(make(tmp_path, "-Bn", "RECIPE=seed").stdout, str(tmp_path))
    assert sorted(k for k in runs if k.startswith("main.py")) == [
        "main.py results/prostate/cesource", "main.py results/prostate_recipe_seed/sfda",
        "main.py results/prostate_recipe_seed/sfda_truesize"]
    for run in ("sfda", "sfda_truesize"):
        options = runs[f"main.py results/prostate_recipe_seed/{run}"][0]
        assert (options["--l_rate"], options["--n_epoch"], options["--lr_decay"], options["--batch_size"]) == \
            ("1e-6", "100", "0.9", "10")
        assert "--collapse_guard" not in options and "--mu_images" in options
        assert options["--model_weights"] == "results/prostate/cesource/best_3d.pkl"
    assert runs["main.py results/prostate/cesource"][0]["--batch_size"] == "16"     # the default's source model
    out = make(tmp_path, "-n", "RECIPE=paper")
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "RECIPE=paper: expected project" in out.stderr
