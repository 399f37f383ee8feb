"""prostate.make end to end: the recipe chain (make -n) and a tiny real run with the dummy network."""
import subprocess
import sys
import tarfile
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TINY_PROSTATE, run_make

ROOT = Path(__file__).resolve().parent.parent
RUNS = ["cesource", "noadapt", "adabn", "sfda", "sfda_truesize", "adaent", "fs"]
TRAININGS = len(RUNS) + 1          # and cesource_online, the source training with the online ProtoSeg term
ANALYSES = 9                       # ProtoSeg: both source models on both domains, every adapted model


def make(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_make("prostate.make", tmp, *extra)


def test_dry_run_shows_the_whole_chain(tmp_path):
    out = make(tmp_path, "-n")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    for run in RUNS:
        assert f"--workdir {tmp_path}/results/prostate/{run}_tmp" in text
        assert f"mv {tmp_path}/results/prostate/{run}_tmp {tmp_path}/results/prostate/{run}" in text
    for piece in ["synth.py prostate --domain source", "synth.py prostate --domain target", "sizes.py",
                  "plot.py", "moustache.py", "report.py", "tar cf -", "-prostate-seed0.tar.gz"]:
        assert piece in text
    assert "predcol':'val_gt_size'" in text and "predcol':'dumbpredwtags'" in text
    # the source model comes first, the adaptation runs start from it
    assert text.index("cesource_tmp") < text.index("sfda_tmp")


def test_cflags_and_debug_reach_every_command(tmp_path):
    out = make(tmp_path, "-n", "CFLAGS=-O", "NET=Dimwit", "EPC=5", "DEBUG=--debug")
    mains = [line for line in out.stdout.splitlines() if "main.py" in line]
    assert len(mains) == TRAININGS
    assert all(f"{sys.executable} -O main.py" in line for line in mains)
    text = out.stdout
    analyses = [line for line in text.splitlines() if "protoseg.py --network" in line]
    assert len(analyses) == ANALYSES and all(f"{sys.executable} -O protoseg.py" in line for line in analyses)
    assert text.count("--network Dimwit") == TRAININGS + ANALYSES and text.count("--debug") == TRAININGS + ANALYSES
    assert text.count("--n_epoch 5") == TRAININGS          # noadapt/adabn override it with --n_epoch 0
    assert text.count("--n_epoch 0") == 2


def test_precision_and_layout_reach_every_command(tmp_path):
    default = make(tmp_path, "-n").stdout
    assert default.count("--precision fp32") == TRAININGS and "--channels_last" not in default
    fast = make(tmp_path, "-n", "PREC=bf16", "CL=1").stdout
    assert fast.count("--precision bf16 --channels_last") == TRAININGS


def test_hard_shift_shares_the_source_model_and_options_reach_the_runs(tmp_path):
    text = make(tmp_path, "-n", "SHIFT=hard", "SFDA_FN=soft_ratio", "THREADS=1", "DATA_SEED=7", "SEED=3").stdout
    hard = f"{tmp_path}/results/prostate_hard"
    for run in RUNS[1:]:
        assert f"--workdir {hard}/{run}_tmp --target_dataset {tmp_path}/data/prostate_target_hard" in text
    assert f"--workdir {tmp_path}/results/prostate/cesource_tmp" in text          # one source model for both shifts
    assert f"--model_weights {tmp_path}/results/prostate/cesource/best_3d.pkl" in text
    assert "synth.py prostate --domain target_hard" in text and text.count("--seed 7") == 2   # the two data folders
    assert text.count("--seed 3") == TRAININGS and text.count("--threads 1") == TRAININGS + ANALYSES
    assert text.count("'soft_ratio',1)]") == 2 and f"sizefile':'{tmp_path}/sizes/prostate_hard.csv'" in text
    assert "-prostate_hard-seed3.tar.gz" in text
    grid = make(tmp_path, "-n", "lrgrid", "LR_GRID=1e-5 5e-6", "GRID_EPC=30").stdout
    for lr in ("1e-5", "5e-6"):
        assert f"--workdir {tmp_path}/results/prostate/lrgrid/sfda_lr{lr}_tmp" in grid and f"--l_rate {lr}" in grid
    grid_runs = [line for line in grid.splitlines() if "main.py" in line and "/lrgrid/" in line]
    assert len(grid_runs) == 2 and all("--n_epoch 30" in line for line in grid_runs)
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
    for name in ["val_dice_3d.png", "boxplot.png", "report.md"]:
        assert (pr / name).stat().st_size > 0
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
    assert all(f"| {name} |" in text for name in analysed) and (ps / "sa_layers.png").stat().st_size > 1000
    assert "Online ProtoSeg (seed 003, Table 1)" in text and "| cesource_online_on_source | " in text
    online = pd.read_csv(pr / "cesource_online" / "IMG_target_metrics.csv")
    assert online["tra_loss_cons"].iloc[0] > 0                           # the SA term of the online training
    for run in ("sfda", "sfda_truesize", "adaent"):                     # label-free choice: mu every epoch
        assert pd.read_csv(pr / run / "IMG_target_metrics.csv")["mu"].between(0, 1).all()
        assert (pr / run / "best_mu.pkl").is_file() and (pr / run / "mubestepoch.txt").is_file()
    selection = pd.read_csv(pr / "selection.csv")
    assert [Path(r).name for r in selection["run"]] == ["sfda", "sfda_truesize", "adaent"]
    assert "mu - label" in (pr / "selection.md").read_text()


def test_archive_holds_the_results_and_nothing_else(tiny_run):
    archives = sorted((tiny_run / "archives").glob("*-prostate-seed*.tar.gz"))
    assert [a.name[-len("seed0.tar.gz"):] for a in archives] == ["seed0.tar.gz", "seed1.tar.gz"]
    with tarfile.open(archives[0]) as tar:
        names = tar.getnames()
    prefix = str(tiny_run).lstrip("/")
    assert all(n.startswith(prefix) for n in names)
    assert any(n.endswith("sfda/best_3d.pkl") for n in names) and any(n.endswith("report.md") for n in names)
    assert any(n.endswith("sizes/prostate.csv") for n in names)


def test_second_make_has_nothing_to_do(tiny_run):
    out = make(tiny_run, "-n", "SEEDS=0 1", *TINY_PROSTATE)
    assert out.returncode == 0 and "main.py" not in out.stdout, out.stdout[-2000:]


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
    text = make(tmp_path, "-n", "SEEDS=0 1 2", "NET=Dimwit").stdout
    sizes = text.index("sizes.py --source")
    subs = [text.index(f"SEEDS= SEED={s} RD={tmp_path}/results/seed{s} ") for s in (0, 1, 2)]
    assert sizes < min(subs)
    assert text.index(f"report.py seeds --roots {tmp_path}/results/seed0/prostate {tmp_path}/results/seed1/prostate "
                      f"{tmp_path}/results/seed2/prostate --at_epochs 20 --out {tmp_path}/results/seeds/prostate.md") > max(subs)


def test_source_rd_adapts_another_roots_source_model_and_still_trains_this_roots(tmp_path):
    """PREC=bf16 RD=bf16 SOURCE_RD=fp32: the adaptation runs start from the fp32 source models, seed by seed."""
    for s in (0, 1):
        (tmp_path / "fp32" / f"seed{s}" / "prostate" / "cesource").mkdir(parents=True)
    text = make(tmp_path, "-n", "SEEDS=0 1", "PREC=bf16", f"RD={tmp_path}/bf16", f"SOURCE_RD={tmp_path}/fp32").stdout
    for s in (0, 1):
        assert f"--workdir {tmp_path}/bf16/seed{s}/prostate/cesource_tmp" in text       # a whole training, compared
        weights = {line.split("--model_weights ")[1].split()[0] for line in text.splitlines()
                   if f"--workdir {tmp_path}/bf16/seed{s}/prostate/" in line and "--model_weights" in line}
        assert weights == {f"{tmp_path}/fp32/seed{s}/prostate/cesource/best_3d.pkl"}
