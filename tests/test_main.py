"""main.py as a user runs it: the seed's recipe verbatim on NIfTI slices, and clear errors on bad input."""
import argparse

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import losses
import main
import sizes
from checkpoints import load_checkpoint, network_from_checkpoint, save_checkpoint
from dataloader import SliceSet, load_slices, parse_folders
from metrics import surface_dice
from networks import build_network
from spottune import SpotTUnet
from training import PassResult, reestimate_batchnorm
from utils import OptionError

# seed 004's SFDA_TrueSize recipe and TT_DATA, verbatim but for the size file path
TT_DATA = "[('IMG', nii_transform2, False), ('GT', nii_gt_transform2, False), ('GT', nii_gt_transform2, False)]"
TRUESIZE = ("[('EntKLProp', {'lamb_se':1,'lamb_consprior':1,'ivd':True,'weights_se':[0.1,0.9],'idc_c': [1],"
            "'curi':True,'power': 1},'PredictionBounds', {'margin':0,'dir':'high','idc':[0,1],"
            "'predcol':'val_gt_size','power': 1, 'mode':'percentage','sizefile':'SIZEFILE'},'norm_soft_size',1)]")
L_OR = "[('CrossEntropy', {'idc': [0,1], 'weights':[1,1]}, None, None, None, 1)]"


def write_nii_dataset(root, spacing=(0.5, 0.5, 3.0)):
    rng = np.random.default_rng(0)
    for split, cases in (("train", [0, 1]), ("val", [2])):
        for folder in ("IMG", "GT"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for case in cases:
            for m in range(4):
                gt = np.zeros((12, 12), np.uint8)
                if 0 < m < 3:
                    gt[3:3 + 2 * m, 4:8] = 1
                img = rng.normal(0.2, 0.05, (12, 12)).astype(np.float32) + gt
                affine = np.diag([*spacing, 1.0])
                nib.save(nib.Nifti1Image(img, affine), root / split / "IMG" / f"Case{case:02d}_{m}.nii")
                nib.save(nib.Nifti1Image(gt, affine), root / split / "GT" / f"Case{case:02d}_{m}.nii")


def base_args(data, workdir, losses):
    return ["--target_dataset", str(data), "--workdir", str(workdir), "--network", "Dimwit", "--n_class", "2",
            "--metric_axis", "1", "--grp_regex", r"Case\d+_\d+", "--target_folders", TT_DATA,
            "--val_target_folders", TT_DATA, "--target_losses", losses, "--cpu"]


@pytest.fixture(scope="module")
def nii_data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nii")
    write_nii_dataset(tmp / "data")
    assert sizes.main(["--source", str(tmp / "data"), "--target", str(tmp / "data"), "--out", str(tmp / "sizes.csv")]) == 0
    assert main.main(base_args(tmp / "data", tmp / "src", L_OR) + ["--n_epoch", "2", "--batch_size", "4"]) == 0
    return tmp


def test_seed_truesize_recipe_runs_verbatim(nii_data):
    losses = TRUESIZE.replace("SIZEFILE", str(nii_data / "sizes.csv"))
    workdir = nii_data / "truesize"
    args = base_args(nii_data / "data", workdir, losses) + [
        "--l_rate", "0.000001", "--n_epoch", "2", "--lr_decay", "0.9", "--batch_size", "10",
        "--model_weights", str(nii_data / "src" / "last.pkl"), "--do_hd", "90", "--saveim", "True", "--entmap"]
    assert main.main(args) == 0
    metrics = pd.read_csv(workdir / "IMG_target_metrics.csv")
    assert len(metrics) == 2 and (metrics["tra_loss_cons"] > 0).all()
    params = (workdir / "params.txt").read_text()
    assert "'l_rate': 1e-06" in params and "'batch_size': 10" in params
    per_patient = pd.read_csv(workdir / "val_dice_3d_per_patient.csv")
    assert per_patient["patient"].tolist() == ["Case02"]
    assert sorted(p.name for p in (workdir / "best_epoch_3d" / "val").iterdir()) == [f"Case02_{m}.png" for m in range(4)]


def test_same_seed_same_metrics(nii_data):
    for name in ("a", "b"):
        assert main.main(base_args(nii_data / "data", nii_data / name, L_OR) + ["--n_epoch", "2", "--seed", "3"]) == 0
    assert (nii_data / "a" / "IMG_target_metrics.csv").read_text() == (nii_data / "b" / "IMG_target_metrics.csv").read_text()


def test_n_epoch_zero_evaluates_the_given_weights(nii_data):
    workdir = nii_data / "eval"
    assert main.main(base_args(nii_data / "data", workdir, L_OR) +
                     ["--n_epoch", "0", "--model_weights", str(nii_data / "src" / "last.pkl")]) == 0
    metrics = pd.read_csv(workdir / "IMG_target_metrics.csv")
    assert len(metrics) == 1 and metrics["tra_loss_tot"].isna().all()


@pytest.mark.parametrize("change, message", [
    (("--target_losses", "[('CrossEntropy', {'idc': [0,1]}, None, None, None, __import__('os'))]"), "not allowed"),
    (("--target_folders", "[('IMG', nii_transform7, False), ('GT', gt_transform, False)]"), "unknown name"),
    (("--model_weights", "/nonexistent/w.pkl"), "does not exist"),
    (("--grp_regex", r"Patient\d+"), "does not match --grp_regex"),
    (("--n_class", "1"), "gray levels span"),
])
def test_bad_input_exits_with_a_clear_message(nii_data, tmp_path, capsys, change, message):
    args = base_args(nii_data / "data", tmp_path / "run_tmp", L_OR) + ["--n_epoch", "1", "--metric_axis", "0"]
    args += list(change)
    assert main.main(args) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_existing_result_is_not_overwritten(nii_data, capsys):
    before = (nii_data / "src" / "IMG_target_metrics.csv").read_text()
    assert main.main(base_args(nii_data / "data", nii_data / "src", L_OR) + ["--n_epoch", "1"]) == 1
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (nii_data / "src" / "IMG_target_metrics.csv").read_text() == before


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_weights(nii_data, tmp_path, capsys, monkeypatch):

    def nan_terms(self, probs, target, bounds):
        value = (probs * float("nan")).sum()
        return value, torch.zeros_like(value)
    workdir = tmp_path / "nan_tmp"
    monkeypatch.setattr(losses.CrossEntropy, "terms", nan_terms)
    assert main.main(base_args(nii_data / "data", workdir, L_OR) + ["--n_epoch", "2"]) == 1
    assert "non-finite" in capsys.readouterr().err
    assert not (workdir / "last.pkl").exists() and not (workdir / "best_3d.pkl").exists()


def _slice_set(images):
    n, _, h, w = images.shape
    return SliceSet(root=None, filenames=[f"Case{i // 2:02d}_{i % 2}" for i in range(n)], images=images,
                    labels=torch.zeros(n, h, w, dtype=torch.uint8), patients=[f"Case{i // 2:02d}" for i in range(n)],
                    slice_numbers=[i % 2 for i in range(n)],
                    spacings={f"Case{i:02d}": (1.0, 1.0, 1.0) for i in range(n // 2)})


def test_adabn_statistics_are_those_of_the_whole_set_not_a_mean_of_batch_statistics():
    """Three patients of two slices whose intensities differ in level: batches of 2 (one patient each,
    in file order) see almost none of the between-patient variance, which AdaBN must include."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.BatchNorm2d(1), torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3))
    images = torch.rand(6, 1, 8, 8) + torch.tensor([0.0, 0.0, 5.0, 5.0, 10.0, 10.0]).view(6, 1, 1, 1)
    reestimate_batchnorm(net, _slice_set(images), batch_size=2, device=torch.device("cpu"), precision="fp32")
    first, second = net[0], net[2]
    assert torch.allclose(first.running_mean, images.mean().reshape(1), atol=1e-5)
    assert torch.allclose(first.running_var, images.var(unbiased=True).reshape(1), rtol=1e-5)   # ~17, batches ~0.1
    assert net.training and first.momentum == 0.1          # modes and momenta are left as they were
    with torch.no_grad():       # the second layer sees the input normalised with the *new* first statistics
        features = net[1](net.eval()[0](images))
    assert torch.allclose(second.running_mean, features.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(second.running_var, features.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)


# ---------------------------------------------------------------- CC359 protocol options (seed 000)

def test_test_folder_writes_dice_and_surface_dice_per_volume(nii_data, tmp_path):
    """The val split doubles as the test split here: one volume, Case02, 4 slices of 12 x 12."""
    data = tmp_path / "data"
    write_nii_dataset(data)
    (data / "test").symlink_to(data / "val")
    workdir = tmp_path / "run"
    args = base_args(data, workdir, L_OR) + ["--n_epoch", "0", "--model_weights", str(nii_data / "src" / "last.pkl"),
                                             "--test_folder", "test", "--sdice_tol", "1"]
    assert main.main(args) == 0
    table = pd.read_csv(workdir / "test_metrics.csv")
    assert table["patient"].tolist() == ["Case02"] and set(table.columns) >= {"dice", "sdice", "dice_c1", "sdice_c1"}
    # the same numbers from the predictions saved by a second, identical evaluation
    net = network_from_checkpoint(nii_data / "src" / "last.pkl", "Dimwit", 2)
    val = load_slices(data / "val", parse_folders(TT_DATA, "t"), 2, r"Case\d+_\d+")
    with torch.no_grad():
        pred = net.eval()(val.images).argmax(dim=1).numpy()
    volume, gt = pred[np.argsort(val.slice_numbers)], val.labels.numpy()[np.argsort(val.slice_numbers)]
    dice = 2 * ((volume == 1) & (gt == 1)).sum() / ((volume == 1).sum() + (gt == 1).sum())
    assert table["dice"].iloc[0] == pytest.approx(dice, abs=1e-4)
    expected = surface_dice(gt == 1, volume == 1, (3.0, 0.5, 0.5), 1.0)   # (slice, row, column) spacing
    assert table["sdice"].iloc[0] == pytest.approx(expected, abs=1e-4)


def test_trainable_first_freezes_every_other_block_and_bad_names_are_refused(nii_data):
    args = main.get_args(base_args(nii_data / "data", nii_data / "x", L_OR) + ["--network", "ResUNet", "--trainable", "first"])
    net = main.build_model(args)
    trainable = {n.split(".weight")[0].split(".bias")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("init_path.0", "init_path.1")) for n in trainable)
    assert any(n.startswith("init_path.1.body") for n in trainable)
    args.trainable = "init_path.9"
    with pytest.raises(OptionError, match="ResUNet has no block 'init_path.9'"):
        main.build_model(args)


def test_spottune_trains_the_policy_and_writes_the_policy_table(nii_data, tmp_path):
    workdir = tmp_path / "spot"
    data = tmp_path / "data"
    write_nii_dataset(data)
    (data / "test").symlink_to(data / "val")
    args = base_args(data, workdir, L_OR) + [
        "--model_weights", str(nii_data / "src" / "last.pkl"), "--spottune", "--k_reg", "0.5", "--tau", "0.5",
        "--optimizer", "sgd", "--n_epoch", "2", "--iterations", "3", "--batch_size", "4", "--test_folder", "test"]
    assert main.main(args) == 0
    policy = pd.read_csv(workdir / "policy.csv")
    assert policy["unit"].tolist() == ["conv", "head"]
    assert ((policy["p_finetuned"] >= 0) & (policy["p_finetuned"] <= 1)).all()
    ckpt = network_from_checkpoint(workdir / "last.pkl", "SpotTUnet", 2)      # a checkpoint that rebuilds
    assert isinstance(ckpt, SpotTUnet) and ckpt.tau == 0.5
    metrics = pd.read_csv(workdir / "IMG_target_metrics.csv")
    assert (metrics["tra_loss_cons"] >= 0).all()       # lambda x share of fine-tuned units, logged as the cons term


def test_spottune_needs_weights(nii_data, capsys):
    with pytest.raises(SystemExit):
        main.get_args(base_args(nii_data / "data", nii_data / "y", L_OR) + ["--spottune"])
    assert "--spottune needs --model_weights" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, message", [
    ("--grp_regex", r"Case(\d+_\d+", "--grp_regex 'Case(\\\\d+_\\\\d+' is not a valid regular expression"),
    ("--metric_axis", None, "--metric_axis needs at least one class")])
def test_bad_options_give_one_error_line_and_no_run(nii_data, tmp_path, capsys, option, value, message):
    args = base_args(nii_data / "data", tmp_path / "run_tmp", L_OR)
    at = args.index(option)
    args[at + 1: at + 2] = [value] if value is not None else []
    assert main.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "run_tmp").exists()


@pytest.mark.parametrize("extra", [[], ["--mu_images", "4"],
                                   ["--spottune", "--iterations", "3", "--optimizer", "sgd", "--tau", "0.5"]],
                         ids=["adam", "adam_mu", "spottune"])
def test_a_killed_run_resumes_to_byte_identical_metrics(nii_data, tmp_path, monkeypatch, capsys, extra):
    """Killed after its second epoch, the same command resumes from the saved state (weights, optimizers,
    schedule, every generator incl. SpotTUnet's Gumbel noise and --iterations sampling) and ends as if never
    stopped; different options restart instead."""
    spottune = "--spottune" in extra
    network = ["--network", "ResUNet", "--net_width", "4"] if spottune else []
    ckpt = []
    if spottune:
        src = tmp_path / "src_tmp"
        assert main.main(base_args(nii_data / "data", src, L_OR) + network + ["--n_epoch", "1", "--batch_size", "4"]) == 0
        ckpt = ["--model_weights", str(src / "last.pkl")]
    args = base_args(nii_data / "data", tmp_path / "x", L_OR) + network + ckpt + extra + \
        ["--n_epoch", "4", "--batch_size", "2", "--lr_decay_epoch", "1", "--lr_decay", "0.5", "--test_folder", "val"]
    whole, cut = tmp_path / "whole_tmp", tmp_path / "cut_tmp"
    assert main.main([*args, "--workdir", str(whole)]) == 0
    real_pass, calls = main.run_pass, []

    def killed_in_third_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 5:                 # train 0, val 0, train 1, val 1, train 2: the kill
            raise KeyboardInterrupt
        return real_pass(*a, **k)
    monkeypatch.setattr(main, "run_pass", killed_in_third_epoch)
    assert main.main([*args, "--workdir", str(cut)]) == 130
    assert (cut / main.RESUME).is_file() and "resumes it" in capsys.readouterr().err
    monkeypatch.setattr(main, "run_pass", real_pass)
    assert main.main([*args, "--workdir", str(cut)]) == 0
    assert "resumed" in capsys.readouterr().out and not (cut / main.RESUME).exists()
    mu_files = ["mubestepoch.txt", "test_metrics_best_mu.csv", "test_metrics_best_3d.csv"] if "--mu_images" in extra else []
    for name in ["IMG_target_metrics.csv", "3dbestepoch.txt", "val_dice_3d_per_patient.csv", "test_metrics.csv", *mu_files]:
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name
    (cut / main.RESUME).write_bytes(b"")             # a state that does not match (here: unreadable) restarts
    assert main.main([*args, "--workdir", str(cut), "--seed", "1"]) == 0 and "resumed" not in capsys.readouterr().out


def test_collapse_guard_stops_and_falls_back_to_the_adabn_model(nii_data, tmp_path, monkeypatch):
    sfda = TRUESIZE.replace("SIZEFILE", str(nii_data / "sizes.csv"))
    args = base_args(nii_data / "data", tmp_path / "x", sfda) + ["--model_weights", str(nii_data / "src" / "last.pkl"),
                                                                 "--batch_size", "4"]
    adabn = tmp_path / "adabn_tmp"
    assert main.main([*args, "--workdir", str(adabn), "--n_epoch", "0", "--adabn"]) == 0
    ratios = iter([1.0, 0.01, 1.0])           # epoch 1 loses its foreground
    monkeypatch.setattr(main, "size_ratios", lambda tra: np.array([next(ratios)]))
    guarded = tmp_path / "guarded_tmp"
    assert main.main([*args, "--workdir", str(guarded), "--n_epoch", "3", "--collapse_guard", "0.25"]) == 0
    assert (guarded / "collapse.txt").read_text().startswith("1,")
    metrics = pd.read_csv(guarded / "IMG_target_metrics.csv")
    assert metrics["epoch"].tolist() == [0, 1]
    assert metrics["val_dice_3d"].iloc[-1] == pd.read_csv(adabn / "IMG_target_metrics.csv")["val_dice_3d"].iloc[0]
    last = torch.load(guarded / "last.pkl", weights_only=True)["state_dict"]
    reference = torch.load(adabn / "last.pkl", weights_only=True)["state_dict"]
    assert all(torch.equal(last[k], reference[k]) for k in reference)


def test_size_ratio_is_predicted_over_prior_foreground():
    pred = torch.zeros(2, 4, 4, dtype=torch.uint8)
    pred[0, :2, :2] = 1                                  # 4 px, then 0 px: mean 2
    tra = PassResult(0.0, 0.0, pred, torch.tensor([True, True]), None, 0.0, prior_size=8.0,
                     prior_class_size=torch.tensor([8.0], dtype=torch.float64))
    assert main.size_ratios(tra).tolist() == [0.25]
    tra.prior_class_size = None
    assert np.isnan(main.size_ratios(tra)).all()


def test_the_guard_reads_each_structure_so_one_that_vanishes_is_a_collapse():
    pred = torch.zeros(2, 4, 4, dtype=torch.uint8)
    pred[:, :2, :2] = 1                                  # class 1: 4 px per slice; class 2 gone; class 3: 2 px per slice
    pred[:, 3, :2] = 3
    tra = PassResult(0.0, 0.0, pred, torch.tensor([True, True]), None, 0.0,
                     prior_class_size=torch.tensor([4.0, 2.0, 0.0], dtype=torch.float64))
    ratios = main.size_ratios(tra)
    assert ratios[:2].tolist() == [1.0, 0.0] and np.isnan(ratios[2])      # class 3: no prior, no ratio
    band = argparse.Namespace(collapse_guard=0.25, overgrowth_guard=2.0)
    assert main.guard_side(ratios, band) == ("below", 0.0, 2)
    assert main.guard_side(np.array([1.0, 0.5, 3.0]), band) == ("above", 3.0, 3)
    assert main.guard_side(np.array([1.0, 0.5, 1.5]), band) == (None, 0.5, 2)
    assert main.guard_side(np.array([float("nan")]), band)[0] is None
    never = np.array([False, False, True])                                 # class 2 was never predicted: not watched
    assert main.guard_side(np.array([1.0, 0.0, 0.9]), band, held=np.array([True, False, True])) == (None, 0.0, 2)
    assert main.guard_side(np.array([1.0, 0.0, 0.1]), band, held=never) == ("below", 0.1, 3)


@pytest.mark.parametrize("native, precision, channels_last", [(True, "bf16", True), (False, "fp32", False)])
def test_precision_auto_is_bf16_with_channels_last_only_on_native_bf16_hardware(monkeypatch, native, precision,
                                                                                channels_last):
    monkeypatch.setattr(main, "native_bf16", lambda device: native)
    args = argparse.Namespace(cpu=True, precision="auto", channels_last=False)
    assert main.pick_device(args).type == "cpu"
    assert (args.precision, args.channels_last) == (precision, channels_last)      # what params.txt records
    args = argparse.Namespace(cpu=True, precision="fp32", channels_last=False)
    main.pick_device(args)
    assert (args.precision, args.channels_last) == ("fp32", False)                # explicit choices stay


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    for flag, expected in {"amx_bf16": True, "avx512_bf16": True, "avx2": False}.items():
        cpuinfo = tmp_path / flag
        cpuinfo.write_text(f"processor : 0\nflags : fpu sse {flag} fma\n")
        assert main.native_bf16(torch.device("cpu"), cpuinfo) is expected, flag
    assert main.native_bf16(torch.device("cpu"), tmp_path / "absent") is False


# ---------------------------------------------------------------- ProtoSeg in training (seed 003)

def test_mu_selection_logs_mu_saves_the_best_mu_epoch_and_tests_both_chosen_checkpoints(nii_data, tmp_path):
    """--mu_images: mu every validated epoch (no label read), best_mu.pkl at its highest, the label-chosen and
    mu-chosen checkpoints tested beside the last; scrambling the training labels leaves mu unchanged."""
    data = tmp_path / "data"
    write_nii_dataset(data)
    (data / "test").symlink_to(data / "val")
    args = base_args(data, tmp_path / "run", L_OR) + ["--n_epoch", "3", "--batch_size", "4", "--mu_images", "4",
                                                       "--test_folder", "test", "--model_weights",
                                                       str(nii_data / "src" / "last.pkl")]
    assert main.main(args) == 0
    run = tmp_path / "run"
    metrics = pd.read_csv(run / "IMG_target_metrics.csv")
    assert metrics["mu"].between(0, 1).all() and metrics["mu_empty_share"].between(0, 1).all()
    epoch, mu = (run / "mubestepoch.txt").read_text().split(",")
    assert int(epoch) == metrics["epoch"][metrics["mu"].idxmax()] and float(mu) == pytest.approx(metrics["mu"].max(), abs=1e-4)
    assert load_checkpoint(run / "best_mu.pkl")["epoch"] == int(epoch)
    for name in ("test_metrics.csv", "test_metrics_best_3d.csv", "test_metrics_best_mu.csv"):
        assert pd.read_csv(run / name)["patient"].tolist() == ["Case02"]
    assert "mu" in pd.read_csv(run / "run_stats.csv").set_index("name").index
    for gt in (data / "train" / "GT").iterdir():                      # other training labels: the same mu
        nib.save(nib.Nifti1Image(np.ones((12, 12), np.uint8), np.eye(4)), gt)
    args[args.index(str(run))] = str(tmp_path / "scrambled")
    assert main.main(args[:args.index("--n_epoch") + 1] + ["0"] + args[args.index("--n_epoch") + 2:]) == 0
    again = pd.read_csv(tmp_path / "scrambled" / "IMG_target_metrics.csv")
    args[args.index(str(tmp_path / "scrambled"))] = str(tmp_path / "original0")
    write_nii_dataset(data)
    assert main.main(args[:args.index("--n_epoch") + 1] + ["0"] + args[args.index("--n_epoch") + 2:]) == 0
    assert again["mu"].tolist() == pd.read_csv(tmp_path / "original0" / "IMG_target_metrics.csv")["mu"].tolist()


def test_the_online_protoseg_loss_trains_and_an_unknown_layer_is_one_error(nii_data, tmp_path, capsys):
    online = L_OR[:-1] + ", ('ProtoSegLoss', {'layers': ['conv']}, None, None, None, 0.5)]"
    assert main.main(base_args(nii_data / "data", tmp_path / "on", online) + ["--n_epoch", "1"]) == 0
    cons = pd.read_csv(tmp_path / "on" / "IMG_target_metrics.csv")["tra_loss_cons"].iloc[0]
    assert 0 < cons <= 0.5                                           # 0.5 x (1 - soft Dice)
    last = online.replace("['conv']", "'last'")                      # Dimwit's last feature layer: conv
    assert main.main(base_args(nii_data / "data", tmp_path / "last", last) + ["--n_epoch", "1"]) == 0
    assert pd.read_csv(tmp_path / "last" / "IMG_target_metrics.csv")["tra_loss_cons"].iloc[0] == cons
    bad = online.replace("'conv'", "'up9'")
    assert main.main(base_args(nii_data / "data", tmp_path / "bad", bad) + ["--n_epoch", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "'up9'" in err and "conv" in err and "\n" not in err


def test_chosen_epochs_are_saved_and_network_checkpoint_reads_the_architecture(nii_data, tmp_path, capsys):
    args = base_args(nii_data / "data", tmp_path / "run", L_OR) + ["--n_epoch", "3", "--save_epochs", "0", "2"]
    assert main.main(args) == 0
    assert load_checkpoint(tmp_path / "run" / "epoch0.pkl")["epoch"] == 0
    assert load_checkpoint(tmp_path / "run" / "epoch2.pkl")["epoch"] == 2
    assert not (tmp_path / "run" / "epoch1.pkl").exists()
    tuned = base_args(nii_data / "data", tmp_path / "ft", L_OR) + ["--network", "checkpoint", "--n_epoch", "1",
                                                                    "--model_weights", str(tmp_path / "run" / "epoch0.pkl")]
    assert main.main(tuned) == 0 and "Dimwit" in (tmp_path / "ft" / "params.txt").read_text()
    assert main.main(base_args(nii_data / "data", tmp_path / "x", L_OR) + ["--network", "checkpoint"]) == 1
    assert "--network checkpoint reads the architecture from --model_weights" in capsys.readouterr().err


@pytest.fixture(scope="module")
def resunet_weights(nii_data):
    net = build_network("ResUNet", 1, 2, width=4)
    save_checkpoint(nii_data / "resunet.pkl", net)
    return nii_data / "resunet.pkl"


def test_lwft_trains_the_top_stages_at_two_learning_rates_and_freezes_the_rest(nii_data, resunet_weights):
    args = main.get_args(base_args(nii_data / "data", nii_data / "x", L_OR) + [
        "--network", "ResUNet", "--model_weights", str(resunet_weights), "--reuse", "lwft:2", "--l_rate", "0.01",
        "--optimizer", "sgd"])
    net = main.build_model(args)
    (optimizer,) = main.build_optimizers(net, args)
    head, low = optimizer.param_groups
    assert head["lr"] == 0.01 and low["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(p) for p in net.out_path[3].parameters()}
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = [n for n, p in net.named_parameters() if id(p) not in trained]
    assert frozen and all(not net.get_parameter(n).requires_grad for n in frozen)
    assert all(n.split(".")[0] in ("init_path", "down1", "down2", "bottleneck", "up2", "shortcut2") for n in frozen)
    x = torch.randn(2, 1, 16, 16)
    net(x).sum().backward()
    assert all(net.get_parameter(n).grad is None for n in frozen)
    assert all(p.grad is not None for p in low["params"])


@pytest.mark.parametrize("reuse", ["ttl:1", "transfusion:0"])
def test_ttl_and_transfusion_runs_train_and_save_a_network_that_reloads(nii_data, resunet_weights, tmp_path, reuse):
    workdir = tmp_path / "run"
    args = base_args(nii_data / "data", workdir, L_OR) + [
        "--network", "ResUNet", "--model_weights", str(resunet_weights), "--reuse", reuse, "--n_epoch", "1",
        "--batch_size", "4"]
    assert main.main(args) == 0
    net = network_from_checkpoint(workdir / "last.pkl", "ResUNet", 2)
    assert (net.depth, net.init_kwargs.get("halved_above")) == ((1, None) if reuse == "ttl:1" else (3, 0))


@pytest.mark.parametrize("value, message", [("ttl", "expected METHOD:K"), ("cut:1", "expected METHOD:K"),
                                            ("ttl:7", "ttl 7: the residual U-Net has no such level; valid: 0, 1, 2, 3")])
def test_a_bad_reuse_is_one_error_naming_the_valid_choices(nii_data, resunet_weights, tmp_path, capsys, value, message):
    args = base_args(nii_data / "data", tmp_path / "bad", L_OR) + [
        "--network", "ResUNet", "--model_weights", str(resunet_weights), "--reuse", value, "--n_epoch", "1"]
    code = None
    try:
        code = main.main(args)
    except SystemExit as e:
        code = e.code
    assert code not in (0, None) and message in capsys.readouterr().err


def test_the_guard_stops_on_either_side_of_its_band(nii_data, tmp_path, monkeypatch):
    """A run whose foreground grows to 3x the prior stops at that epoch with the over-segmentation side recorded;
    a stable run (ratios 0.9-1.4) is never stopped by the same band."""
    sfda = TRUESIZE.replace("SIZEFILE", str(nii_data / "sizes.csv"))
    args = base_args(nii_data / "data", tmp_path / "x", sfda) + ["--model_weights", str(nii_data / "src" / "last.pkl"),
                                                                 "--batch_size", "4", "--n_epoch", "3",
                                                                 "--collapse_guard", "0.25", "--overgrowth_guard", "2"]
    growing = iter([1.2, 3.0, 4.0])
    monkeypatch.setattr(main, "size_ratios", lambda tra: np.array([next(growing)]))
    assert main.main([*args, "--workdir", str(tmp_path / "growing_tmp")]) == 0
    assert (tmp_path / "growing_tmp" / "collapse.txt").read_text() == "1,3.0000,above\n"
    stable = iter([0.9, 1.4, 1.1])
    monkeypatch.setattr(main, "size_ratios", lambda tra: np.array([next(stable)]))
    assert main.main([*args, "--workdir", str(tmp_path / "stable_tmp")]) == 0
    assert not (tmp_path / "stable_tmp" / "collapse.txt").exists()
    assert pd.read_csv(tmp_path / "stable_tmp" / "IMG_target_metrics.csv")["epoch"].tolist() == [0, 1, 2]


@pytest.mark.parametrize("low, high", [("0.25", "0.9"), ("0.25", "-1")])
def test_a_guard_band_that_is_not_one_is_refused(low, high, capsys):
    with pytest.raises(SystemExit):
        main.get_args(["--workdir", "w", "--target_dataset", "d", "--collapse_guard", low, "--overgrowth_guard", high])
    assert "--overgrowth_guard" in capsys.readouterr().err
