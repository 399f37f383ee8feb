"""ProtoSeg (seed 003): Algorithm 1 on hand cases, SA and mu scores, and the networks' named feature taps."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import protoseg
import prototypes
import selection
from checkpoints import save_checkpoint
from dataloader import gt_transform, load_slices, png_transform
from networks import build_network, tapped


def image(*rows) -> torch.Tensor:
    """A (1, 1, H, W) float tensor from rows of numbers."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def test_two_clusters_segment_into_the_guide():
    gen = torch.Generator().manual_seed(0)
    guide = (torch.rand(2, 1, 8, 9, generator=gen) > 0.5).float()
    centres = torch.tensor([[0.0, 0.0, 0.0], [3.0, -2.0, 1.0]])                 # background, foreground
    features = centres[guide[:, 0].long()].permute(0, 3, 1, 2) + 0.1 * torch.randn(2, 3, 8, 9, generator=gen)
    probs = prototypes.protoseg(features, guide)
    assert probs.shape == (2, 2, 8, 9) and torch.allclose(probs.sum(1), torch.ones(2, 8, 9))
    assert torch.equal(prototypes.segmentation_map(probs), guide[:, 0].bool())
    assert torch.equal(prototypes.sa_scores(features, guide), torch.ones(2, dtype=torch.float64))


def test_a_soft_guide_weights_the_prototypes():
    """Features 0, 2, 4, 10 with guide 0, 0, 0.5, 1: foreground prototype (0.5 x 4 + 10) / 1.5 = 8, background
    (0 + 2 + 0.5 x 4) / 2.5 = 1.6; the pixel at 4 lies 16 from the first and 5.76 from the second."""
    features, guide = image([0, 2, 4, 10]), image([0, 0, 0.5, 1])
    d = prototypes.distances(features, guide)
    assert torch.allclose(d[0, :, 0], torch.tensor([[1.6 ** 2, 0.4 ** 2, 2.4 ** 2, 8.4 ** 2],
                                                    [8.0 ** 2, 6.0 ** 2, 4.0 ** 2, 2.0 ** 2]]))
    probs = prototypes.protoseg(features, guide)
    assert probs[0, 1, 0, 2].item() == pytest.approx(torch.sigmoid(torch.tensor(5.76 - 16.0)).item(), rel=1e-5)
    assert prototypes.segmentation_map(probs)[0, 0].tolist() == [False, False, False, True]


def test_the_mask_shapes_the_prototypes_not_the_map():
    features, guide = image([0, 1, 9, 100]), image([0, 0, 1, 1])
    mask = image([1, 1, 1, 0])                                  # the 100 is outside: foreground prototype 9
    d = prototypes.distances(features, guide, mask)
    assert d[0, 1, 0].tolist() == pytest.approx([81, 64, 0, 91 ** 2])
    assert prototypes.segmentation_map(d, from_distances=True)[0, 0].tolist() == [False, False, True, True]


def test_sa_is_the_dice_of_the_map_and_empty_ground_truths_are_skipped():
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(3, 4, 6, 6, generator=gen)
    gt = (torch.rand(3, 1, 6, 6, generator=gen) > 0.6).float()
    gt[2] = 0                                                             # no foreground: no prototype
    sa = prototypes.sa_scores(features, gt)
    sam = prototypes.segmentation_map(prototypes.protoseg(features, gt))
    for b in range(2):
        inter = (sam[b] & gt[b, 0].bool()).sum().item()
        assert sa[b].item() == pytest.approx(2 * inter / (sam[b].sum().item() + gt[b].sum().item()))
    assert torch.isnan(sa[2]) and int(torch.isnan(sa).sum()) == 1
    units = prototypes.sa_scores(features, gt, per_unit=True)
    assert units.shape == (3, 4) and torch.isnan(units[2]).all()
    for u in range(4):                                                    # a unit = the layer of that one channel
        assert torch.allclose(units[:2, u], prototypes.sa_scores(features[:, u:u + 1], gt)[:2])


@pytest.mark.parametrize("size", [(6, 6), (3, 4), (2, 2, 3)])
@pytest.mark.parametrize("per_unit", [False, True])
def test_the_fast_map_equals_the_map_of_the_explicit_distances(size, per_unit):
    """sam() takes the dot product at the layer's resolution and the prototypes through the resize's adjoint; it
    must give the map of the full-size distances (which round in float32, sam in float64: generic features
    have no near-tie), soft guide, mask and empty guides included."""
    gen = torch.Generator().manual_seed(7)
    full = (6, 6) if len(size) == 2 else (4, 4, 6)
    features = torch.randn(4, 5, *size, generator=gen, dtype=torch.float64)
    guide = (torch.rand(4, 1, *full, generator=gen, dtype=torch.float64) > 0.6).double()
    guide[0] *= torch.rand(1, *full, generator=gen, dtype=torch.float64)          # a soft guide
    guide[3] = 0                                                                   # no foreground prototype
    mask = (torch.rand(4, 1, *full, generator=gen) > 0.2)
    fast = prototypes.sam(features, guide, mask, per_unit)
    slow = prototypes.segmentation_map(prototypes.distances(features, guide, mask, per_unit), from_distances=True)
    assert fast.shape == slow.shape and torch.equal(fast, slow)
    assert not fast[3].any()


def test_a_constant_channel_is_an_exact_tie_and_goes_to_the_background():
    """Both prototypes of a constant channel equal the constant: the tie is exact in sam (float32 distances may
    round either way), and a tie goes to the background."""
    features = torch.full((1, 2, 6, 6), 0.3)
    features[:, 1] = torch.linspace(0, 1, 36).view(6, 6)
    guide = (features[:, 1:] > 0.5).float()
    units = prototypes.sam(features, guide, per_unit=True)
    assert not units[0, 0].any() and torch.equal(units[0, 1], guide[0, 0].bool())


def test_mu_reads_only_the_output_one_when_features_are_the_output_zero_when_empty():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(4, 2, 7, 7, generator=gen)
    probs = torch.softmax(logits, dim=1)
    output = probs.argmax(1, keepdim=True).float()
    one_hot = torch.cat([1 - output, output], dim=1)
    mu = prototypes.mean_sa_score([one_hot, 3 * one_hot], probs)
    assert torch.allclose(mu, torch.ones(4, dtype=torch.float64))
    noisy = prototypes.mean_sa_score([torch.randn(4, 5, 7, 7, generator=gen)], probs)
    assert ((noisy >= 0) & (noisy <= 1)).all() and (noisy < 1).all()
    empty = torch.stack([torch.ones(7, 7), torch.zeros(7, 7)])[None]           # a collapsed model's output
    assert prototypes.mean_sa_score([torch.randn(1, 5, 7, 7, generator=gen)], empty).tolist() == [0.0]


def test_mu_with_several_structures_scores_each_against_the_others_and_a_vanished_one_zero():
    scores = torch.tensor([[0.5, float("nan")], [float("nan"), float("nan")], [0.2, 0.4]])
    assert torch.allclose(prototypes.image_mu(scores), torch.tensor([0.5, 0.0, 0.3]))   # the classes each image holds
    assert prototypes.class_means(scores) == pytest.approx([0.35, 0.4])
    assert prototypes.class_means(torch.tensor([[0.5, float("nan")]])) == [0.5, 0.0]      # class 2 vanished
    labels = torch.zeros(2, 6, 6, dtype=torch.long)
    labels[0, :2, :2], labels[0, 3:, 3:], labels[1, 3:, 3:] = 1, 2, 2                     # image 1 has no class 1
    probs = 0.8 * torch.nn.functional.one_hot(labels, 3).movedim(-1, 1).float() + 0.2 / 3
    per_class = prototypes.class_sa_scores([torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(0))], probs)
    assert per_class.shape == (2, 2) and torch.isnan(per_class[1, 0]) and not torch.isnan(per_class[:, 1]).any()
    indicator = torch.nn.functional.one_hot(labels, 3).movedim(-1, 1)[:, 1:2].float()     # class 1's mask itself
    assert prototypes.class_sa_scores([indicator], probs)[0, 0] == 1
    binary = probs[:, :2] / probs[:, :2].sum(1, keepdim=True)                              # two classes: one score
    output = (binary[:, 1:2] > binary[:, :1])
    features = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))
    expected = prototypes.sa_scores(features, output, per_unit=True).mean(1)
    assert torch.allclose(prototypes.mean_sa_score([features], binary), torch.nan_to_num(expected, nan=0.0))


def test_bad_guides_and_unknown_layers_give_one_clear_error():
    with pytest.raises(ValueError, match=r"guide must be \(B, 1, \*spatial\)"):
        prototypes.protoseg(torch.zeros(2, 3, 4, 4), torch.zeros(2, 2, 4, 4))
    with pytest.raises(ValueError, match="mask must have the guide's shape"):
        prototypes.protoseg(torch.zeros(2, 3, 4, 4), torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="UNet has no feature layer 'dec9'.*enc1.0, enc1.1"):
        with tapped(build_network("UNet", 1, 2), ["dec9"]):
            pass
    with pytest.raises(ValueError, match="mean_sa_score needs"):
        prototypes.mean_sa_score([], torch.zeros(1, 2, 3, 3))


@pytest.mark.parametrize("name, n_layers, last", [
    ("Dimwit", 1, ["conv"]), ("UNet", 18, ["dec1.convs.0", "dec1.convs.1"]),
    ("ENet", 28, ["stage5", "stage5_refine"]), ("ResUNet", 28, ["out_path.1", "out_path.2"])])
def test_every_network_names_its_feature_layers_and_taps_them_on_the_input_grid(name, n_layers, last):
    net = build_network(name, 1, 2).eval()
    assert len(net.feature_layers()) == n_layers and net.last_feature_layers() == last
    x = torch.randn(2, 1, 36, 44)                                        # not a multiple of 8: ResUNet pads
    with tapped(net, net.feature_layers()) as taps, torch.no_grad():
        out = net(x)
    assert list(taps) == net.feature_layers()
    scale = {"ENet": 2}.get(name, 1)                                     # ENet's last layers: half resolution
    assert all(taps[n].shape[-2:] == (36 // scale, 44 // scale) for n in last)
    assert out.shape == (2, 2, 36, 44)
    if name == "ResUNet":                                                # a 1/2-resolution unit covers 18 x 22
        assert taps["down1.0"].shape[-2:] == (18, 22)
    with torch.no_grad():
        net(x)
    assert not net._forward_hooks and not net._forward_pre_hooks          # the taps are gone after the block


def test_an_oracle_ordering_gives_a_monotone_coverage_table_and_random_the_mean():
    images = pd.DataFrame({"mu": [0.9, 0.1, 0.5, 0.7, 0.3, 0.0], "dice": [0.8, 0.2, 0.9, 0.6, 0.4, 0.0],
                           "entropy": [0.1, 0.5, 0.2, 0.3, 0.4, 0.0], "gt_empty": [False] * 5 + [True]})
    table = protoseg.coverage_table(images).set_index("ranking")
    oracle = table.loc["oracle"].tolist()
    assert oracle == sorted(oracle) and oracle[-1] == pytest.approx((0.9 + 0.8 + 0.6) / 3)    # top ceil(0.5 x 5)
    assert table.loc["mu", "100%"] == pytest.approx(0.58) and table.loc["random"].tolist() == [pytest.approx(0.58)] * 4
    assert table.loc["mu", "50%"] == pytest.approx((0.8 + 0.6 + 0.9) / 3)           # mu 0.9, 0.7, 0.5
    assert table.loc["entropy", "50%"] == pytest.approx((0.8 + 0.9 + 0.6) / 3)      # entropy 0.1, 0.2, 0.3


def test_analysis_of_a_model_on_a_split_and_its_cli(tmp_path, capsys):
    """End to end on a tiny PNG split: tables' shapes, skipped empty ground truths, mu reads no label."""
    rng = np.random.default_rng(0)
    for sub in ("IMG", "GT"):
        (tmp_path / "val" / sub).mkdir(parents=True)
    for k in range(6):
        gt = np.zeros((16, 16), np.uint8)
        if k < 5:
            gt[4:10, 3 + k:9 + k] = 1
        img = (gt * 150 + rng.integers(0, 80, (16, 16))).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "val" / "IMG" / f"Case0{k // 3}_{k}.png")
        Image.fromarray(gt).save(tmp_path / "val" / "GT" / f"Case0{k // 3}_{k}.png")
    folders = [("IMG", png_transform, False), ("GT", gt_transform, False)]
    data = load_slices(tmp_path / "val", folders, 2, r"Case\d+_\d+")
    torch.manual_seed(0)
    net = build_network("UNet", 1, 2, width=4)
    tables = protoseg.analyze(net, data, batch_size=4)
    assert tables["sa_layers"]["layer"].tolist() == net.feature_layers()
    assert (tables["sa_layers"]["skipped"] == 1).all() and (tables["sa_layers"]["images"] == 5).all()
    assert len(tables["sa_units"]) == 4 and tables["sa_units"]["sa"].is_monotonic_decreasing
    assert tables["images"]["mu"].between(0, 1).all() and len(tables["patients"]) == 2
    assert tables["images"]["sx"][:5].between(0.5, 1).all()          # the square is brighter: separable by intensity
    data.labels[:] = torch.from_numpy(rng.integers(0, 2, tuple(data.labels.shape)).astype(np.uint8))
    scrambled = protoseg.analyze(net, data, batch_size=4)                          # other labels, the same mu
    assert np.array_equal(scrambled["images"]["mu"], tables["images"]["mu"])
    save_checkpoint(tmp_path / "m.pkl", net)
    args = ["--model", str(tmp_path / "m.pkl"), "--network", "UNet", "--split", str(tmp_path / "val"),
            "--folders", "[('IMG', png_transform, False), ('GT', gt_transform, False)]", "--grp_regex", r"Case\d+_\d+"]
    assert protoseg.main(args + ["--out", str(tmp_path / "out")]) == 0
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"sa_layers.csv", "sa_units.csv", "images.csv",
                                                              "patients.csv", "sa_noise.csv", "summary.md"}
    noise = pd.read_csv(tmp_path / "out" / "sa_noise.csv")
    assert noise["level"].tolist() == [0.1] * 18 + [0.5] * 18 + [1.0] * 18 and noise["sa"].between(0, 1).all()
    assert (noise["images"] == 5).all()                               # the images with a ground truth
    assert "m(d) = " in (tmp_path / "out" / "summary.md").read_text()
    assert "| mu |" in (tmp_path / "out" / "summary.md").read_text()
    assert pd.read_csv(tmp_path / "out" / "images.csv").shape[0] == 6
    run = tmp_path / "run"                                     # mu of a finished run's last weights (flag)
    run.mkdir()
    save_checkpoint(run / "last.pkl", net)
    pd.DataFrame({"epoch": [0], "val_dice_3d": [0.01]}).to_csv(run / "IMG_target_metrics.csv", index=False)
    assert selection.main(["flag", "--runs", str(run), "--split", str(tmp_path / "val"), *args[2:4], *args[6:],
                          "--images", "4", "--out", str(tmp_path / "flag.md")]) == 0
    flag = pd.read_csv(tmp_path / "flag.csv")
    assert flag["collapsed"].tolist() == [True] and flag["mu"].between(0, 1).all()
    assert protoseg.main(["--model", str(tmp_path / "m.pkl"), "--network", "ENet"] + args[4:]
                         + ["--out", str(tmp_path / "bad")]) == 1
    assert "holds a UNet but --network is ENet" in capsys.readouterr().err and not (tmp_path / "bad").exists()
    for seed in ("s0", "s1"):                                  # the figures over seeds: two copies, sd 0
        (tmp_path / seed).mkdir()
        (tmp_path / "out").rename(tmp_path / seed / "cesource") if seed == "s0" else \
            __import__("shutil").copytree(tmp_path / "s0" / "cesource", tmp_path / seed / "cesource")
    assert protoseg.main(["seeds", "--roots", str(tmp_path / "s0"), str(tmp_path / "s1"),
                          "--out", str(tmp_path / "seeds.md")]) == 0
    row = next(line for line in (tmp_path / "seeds.md").read_text().splitlines() if line.startswith("| cesource |"))
    figures = protoseg.mu_figures(tmp_path / "s0" / "cesource")
    assert row.split(" | ")[3] == f"{100 * figures['empty']:.1f} ± 0.0"      # the untrained UNet outputs nothing here
    assert row.split(" | ")[1] == "–"                                         # so r is undefined, not invented
    assert protoseg.main(["seeds", "--roots", str(tmp_path / "s0"), str(tmp_path),
                          "--out", str(tmp_path / "none.md")]) == 1        # no analysis common to both roots


def test_the_mu_subsample_takes_evenly_spaced_slices_of_every_patient_and_no_label():
    patients = ["B"] * 3 + ["A"] * 10
    slices = [2, 0, 1] + list(range(9, -1, -1))                  # unordered on purpose
    index = prototypes.mu_subsample(patients, slices, 4)           # k = 2 per patient: bins' centres
    chosen = sorted((patients[i], slices[i]) for i in index.tolist())
    assert chosen == [("A", 2), ("A", 7), ("B", 0), ("B", 2)]
    assert len(prototypes.mu_subsample(patients, slices, 1)) == 4   # at least 2 per patient
    assert len(prototypes.mu_subsample(patients, slices, 100)) == 13


def test_label_free_mu_is_zero_for_a_model_that_predicts_nothing():
    net = build_network("Dimwit", 1, 2)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.get_submodule(net.block_order[-1]).bias.copy_(torch.tensor([5.0, -5.0]))   # always background
    mu, empty, per_class = prototypes.label_free_mu(net, torch.rand(5, 1, 12, 12), 2, torch.device("cpu"))
    assert mu == 0 and empty == 1 and per_class == [0.0]


def test_the_selection_report_reads_the_three_choices_and_pools_seeds(tmp_path):
    runs = []
    for seed, (dice, mu) in enumerate([([0.5, 0.7, 0.6], [0.3, 0.2, 0.4]), ([0.4, 0.02, 0.01], [0.5, 0.1, 0.0])]):
        run = tmp_path / f"seed{seed}" / "prostate" / "sfda"
        run.mkdir(parents=True)
        pd.DataFrame({"epoch": [0, 1, 2], "val_dice_3d": dice, "mu": mu, "mu_empty_share": [0, 0, 1]}) \
            .to_csv(run / "IMG_target_metrics.csv", index=False)
        runs.append(run)
    pd.DataFrame({"patient": ["a", "b"], "dice": [0.9, 0.7], "sdice": [0.8, 0.6]}).to_csv(runs[0] / "test_metrics_best_mu.csv", index=False)
    table = pd.DataFrame([selection.epoch_choices(run) for run in runs])
    assert table[["label_epoch", "last_epoch", "mu_epoch", "mu_fg_epoch"]].values.tolist() == [[1, 2, 2, 0], [0, 2, 0, 0]]
    assert table["mu_dice"].tolist() == pytest.approx([60, 40]) and table["mu_test_sdice"][0] == pytest.approx(70)
    text = selection.selection_report(table, "t")
    assert f"| {tmp_path}/prostate/sfda | 2 | 55.0 | 30.5 | 50.0 | 45.0 |" in text        # label, last, mu, mu_fg
    assert "| -5.0 | +19.5 |" in text and "Collapsed runs (last-epoch 3D Dice below 5): 1 of 2" in text
    assert selection.main(["--runs", str(tmp_path / "none"), "--out", str(tmp_path / "s.md")]) == 1


def test_the_shift_table_joins_the_sa_drop_with_spottunes_fine_tuned_share(tmp_path):
    layers = ["a", "b", "c", "d"]
    pairs = []
    for k, target in enumerate([[0.5, 0.6, 0.2, 0.1], [0.7, 0.6, 0.4, 0.3]]):
        pair = tmp_path / f"2_{k}"
        for sub, sa in (("baseline_on_source", [0.8, 0.8, 0.8, 0.8]), ("baseline", target)):
            (pair / sub).mkdir(parents=True)
            pd.DataFrame({"layer": layers, "order": range(1, 5), "sa": sa}).to_csv(pair / sub / "sa_layers.csv", index=False)
        pairs.append(pair)
    policies = []
    for name, share in (("2_0_n8", [0.1, 0.2, 0.5, 0.9]), ("2_1_n8", [0.3, 0.2, 0.7, 0.7]), ("2_0_n45", [1, 1, 1, 1])):
        (tmp_path / name).mkdir()
        pd.DataFrame({"unit": layers + ["shortcut0"], "p_finetuned": share + [0.5]}) \
            .to_csv(tmp_path / name / "policy.csv", index=False)
        policies.append(tmp_path / name)
    table = protoseg.shift_table(pairs, policies).set_index("layer")
    assert table["sa_drop"].tolist() == pytest.approx([0.2, 0.2, 0.5, 0.6])
    assert table["p_finetuned_n8"].tolist() == pytest.approx([0.2, 0.2, 0.6, 0.8]) and "shortcut0" not in table.index
    text = protoseg.shift_report(table.reset_index(), "t")
    assert "N = 8: Spearman rho of the SA drop with the fine-tuned share +1.00" in text
    assert "| c | 80.0 | 30.0 | +50.0 | 0.60 | 1.00 |" in text


def test_input_separability_is_protoseg_on_the_intensities_and_noise_is_relative_to_each_images_range():
    gt = torch.zeros(2, 1, 4, 4)
    gt[:, :, 1:3, 1:3] = 1
    bright = gt * 0.8 + 0.1                                     # the object is brighter: S_x = 1
    assert prototypes.sa_scores(bright, gt).tolist() == [1.0, 1.0]
    images = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 2.0)])
    images[1, 0, 0, 0] = 12.0                                   # range 10
    noisy = protoseg.noisy(images, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(noisy[0], images[0])                     # a flat image has no range: no noise
    assert ((noisy[1] - images[1]).abs() <= 5).all() and (noisy[1] - images[1]).abs().max() > 2
