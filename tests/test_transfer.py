"""Transferability scores (seed 001): hand-checked values, reference values, rankings, invariances, bad input.

The REFERENCE numbers below were produced on deterministic toy data (the sine generators here, no RNG) by running
the reference code itself, outside this repository, with numpy 2.4 / scipy 1.17:
- LogME, LEEP: thuml/LogME @ 56551ca9, LogME(regression=False).fit and LEEP() (numba.njit stubbed by identity);
- TransRate: thuml/Transfer-Learning-Library @ c4aa59eb, tllib/ranking/transrate.py transrate();
- GBC: google-research stable_transfer/transferability/gbc.py @ 1d4d2f1a, get_gbc_score() with its few
  tensorflow calls mapped onto numpy (no PCA);
- CC-FV: EndoluminalSurgicalVision-IMR/CCFV @ ba07768e, utils/ccfv.py cal_w_distance / cal_variety, and
  main.py evaluate() with the sampler stubbed to return the toy features (its printed "ccfv:" value).
"""
import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from PIL import Image

import bank
import transfer
import transferability
from networks import build_network, tapped


# ------------------------------------------------------------------------------------------------ toy data
def toy(n, d, c, shift=1.0, phase=0.0):
    """Deterministic (n, d) features and (n,) labels 0..c-1 from sines (no RNG: identical on every machine)."""
    i, j = np.arange(n)[:, None], np.arange(d)[None]
    y = np.arange(n) * 7 % c
    x = np.sin(0.7 * i * (j + 1) + 0.3 * j + phase) + shift * np.cos(y[:, None] * (j + 1.3))
    return x, y


def toy_probs(n, cs, c):
    """Deterministic (n, cs) softmax rows, loosely tied to the toy labels."""
    x, y = toy(n, cs, c, shift=2.0)
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True), y


def toy_case(d, counts, phase):
    """One case: counts[k] rows of label k."""
    y = np.concatenate([np.full(m, k) for k, m in enumerate(counts)])
    x, _ = toy(len(y), d, 1, shift=0.0, phase=phase)
    return x + np.cos(y[:, None] * (np.arange(d)[None] + 0.5)) * 2, y


def toy_ccfv(n_classes):
    """Three scales (6, 5, 4 channels), four cases, labels 0..n_classes: features[scale][case], labels alike."""
    dims, counts = [6, 5, 4], [[5, 4, 4], [8, 6, 5], [12, 9, 7]]
    feats, labs = [[], [], []], [[], [], []]
    for case in range(4):
        for s, (d, cnt) in enumerate(zip(dims, counts)):
            x, y = toy_case(d, cnt[:n_classes + 1], phase=0.37 * case + s)
            feats[s].append(x * (1 + 0.1 * case))
            labs[s].append(y)
    return feats, labs


def toy_bank(rng, separable, n_cases=4, per_label=30, d=6, n_classes=2):
    """Per-case samples of a 'good' model (class clusters shared by every case) or a 'bad' one (features
    independent of the class, shifted by a per-case offset): features[case], labels[case]."""
    centres = 3.0 * rng.normal(size=(n_classes + 1, d))
    xs, ys = [], []
    for _ in range(n_cases):
        y = np.repeat(np.arange(n_classes + 1), per_label)
        noise = rng.normal(size=(len(y), d))
        xs.append(centres[y] + noise if separable else noise + 2.0 * rng.normal(size=d))
        ys.append(y)
    return xs, ys


def exact_gaussian(rng, n, mean, var):
    """n rows whose sample mean is `mean` and whose (ddof=1) sample covariance is exactly diag(var)."""
    z = rng.normal(size=(n, len(mean)))
    z -= z.mean(0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)
    return z * np.sqrt(var) + mean


# ------------------------------------------------------------------------------------------------ reference values
def logme_cases():
    x, y = toy(50, 10, 4)
    x[:, [2, 5, 7]] = 0.0                      # dead channels: rank 7, the truncated SVD path
    return {"n>d": toy(60, 8, 3), "n<d": toy(40, 64, 2), "zero_channels": (x, y)}


@pytest.mark.parametrize("case, expected", [("n>d", 0.4203439518954169), ("n<d", 3.104624290368341),
                                            ("zero_channels", -0.18575251158688516)])
def test_logme_matches_the_reference(case, expected):
    x, y = logme_cases()[case]
    assert transferability.logme(x, y) == pytest.approx(expected, rel=1e-8)


def test_leep_matches_the_reference():
    assert transferability.leep(*toy_probs(50, 4, 3)) == pytest.approx(-0.7941889042189597, rel=1e-10)


@pytest.mark.parametrize("gaussian, expected", [("spherical", -1.8045598146527206), ("diagonal", -0.056507594022602)])
def test_gbc_matches_the_reference(gaussian, expected):
    x, y = toy(60, 8, 3, shift=0.5)
    assert transferability.gbc(x, y, gaussian, pca=None) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shape, expected", [((60, 8, 3), 10.153208144215803), ((30, 40, 2), 15.871770852014293)])
def test_transrate_matches_the_reference(shape, expected):
    assert transferability.transrate(*toy(*shape)) == pytest.approx(expected, rel=1e-9)


def test_w2_and_variety_match_the_ccfv_reference():
    a, _ = toy(12, 5, 1, phase=0.3)
    b, _ = toy(12, 5, 1, shift=0, phase=1.9)
    assert transferability.gaussian_w2(a, b + 0.5) == pytest.approx(1.7684871518265537, rel=1e-8)
    a, _ = toy(6, 10, 1, phase=0.3)             # 6 and 7 samples of 10 channels: singular covariances
    b, _ = toy(7, 10, 1, shift=0, phase=1.9)
    assert transferability.gaussian_w2(a, b + 0.5) == pytest.approx(3.7456377936023912, rel=1e-6)
    g, _ = toy(5, 6, 1, phase=0.2)              # five cases, one sample each: the case means are the rows
    assert transferability.feature_variety(list(g[:, None, :]), "code") == pytest.approx(0.43339425955685124, rel=1e-10)


@pytest.mark.parametrize("n_classes, expected", [(1, -1.8435146039419203), (2, -3.6308401047216545)])
def test_ccfv_code_variant_matches_the_reference_main(n_classes, expected):
    feats, labs = toy_ccfv(n_classes)
    assert transferability.ccfv(feats, labs, variant="code") == pytest.approx(expected, rel=1e-8)


# ------------------------------------------------------------------------------------------------ hand-checked values
def test_leep_of_perfect_one_hot_predictions_is_zero():
    y = np.array([0, 1, 2, 2, 1, 0, 0])
    assert transferability.leep(np.eye(3)[y], y) == 0.0
    probs, _ = toy_probs(40, 5, 1)              # five source classes, two target classes: defined, below 0
    assert transferability.leep(probs, np.arange(40) % 2) < 0


def test_leep_equals_its_definition_with_loops():
    probs, y = toy_probs(30, 4, 3)
    joint = np.zeros((3, 4))
    for p, label in zip(probs, y):
        joint[label] += p / len(y)
    cond = joint / joint.sum(0)
    expected = np.mean([np.log(sum(cond[label, z] * p[z] for z in range(4))) for p, label in zip(probs, y)])
    assert transferability.leep(probs, y) == pytest.approx(expected, rel=1e-12)


def test_gaussian_w2_closed_form_for_diagonal_covariances():
    """W^2 = |mu_a - mu_b|^2 + sum_d (sqrt(a_d) - sqrt(b_d))^2 for diagonal covariances a, b."""
    rng = np.random.default_rng(0)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
    var_a, var_b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sqrt(np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2))   # sqrt(5 + 5)
    a, b = exact_gaussian(rng, 50, mu_a, var_a), exact_gaussian(rng, 80, mu_b, var_b)
    assert transferability.gaussian_w2(a, b) == pytest.approx(expected, rel=1e-9)
    assert transferability.w2_moments(mu_a, np.diag(var_a), mu_b, np.diag(var_b)) == pytest.approx(np.sqrt(10.0), rel=1e-12)
    assert transferability.gaussian_w2(a, a) == pytest.approx(0.0, abs=1e-6)


def test_variety_paper_is_the_inverse_energy_of_each_case():
    """Points (0,0), (3,0), (0,4): E_1 = 2 (1/3 + 1/4 + 1/5) over ordered pairs; F_v averages 1/E_1 over cases."""
    tri = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    e1 = 2 * (1 / 3 + 1 / 4 + 1 / 5)
    assert transferability.feature_variety([tri, 2 * tri], "paper", eps=0.0) == pytest.approx((1 / e1 + 2 / e1) / 2)


def translated_cases(offsets, d=3, n=20):
    """One class (label 1) whose samples in case i are the same cloud moved by offsets[i] along the first axis."""
    rng = np.random.default_rng(1)
    base, bg = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    xs = [np.vstack([bg, base + np.eye(d)[0] * o]) for o in offsets]
    return xs, [np.repeat([0, 1], n)] * len(offsets)


def test_class_consistency_of_translated_copies():
    """Shared covariance: W = distance between the means, here 1, 3, 2; KL and Bhattacharyya are d^T S^-1 d / 2, / 8."""
    xs, ys = translated_cases([0.0, 1.0, 3.0])
    assert transferability.class_consistency(xs, ys, [1], "paper") == pytest.approx(2.0, rel=1e-6)
    assert transferability.class_consistency(xs, ys, [1], "code") == pytest.approx(6.0 * (1 + 2 / 9), rel=1e-6)
    inv = np.linalg.inv(np.cov(xs[0][20:], rowvar=False))[0, 0]
    kl = transferability.class_consistency(xs, ys, [1], "paper", distance="kl", ridge=0.0)
    assert kl == pytest.approx(inv * (1 + 9 + 4) / 3 / 2, rel=1e-9)
    bd = transferability.class_consistency(xs, ys, [1], "paper", distance="bhattacharyya", ridge=0.0)
    assert bd == pytest.approx(inv * (1 + 9 + 4) / 3 / 8, rel=1e-9)


def test_ablations_are_the_terms_of_the_score():
    feats, labs = toy_ccfv(2)
    cc = [transferability.class_consistency(x, y, [1, 2], "paper") for x, y in zip(feats, labs)]
    fv = [transferability.feature_variety(x, "paper") for x in feats]
    assert transferability.ccfv(feats, labs) == pytest.approx(np.mean(np.log(fv) - np.log(cc)))
    assert transferability.ccfv(feats, labs, **transferability.ABLATIONS["wo_fv"]) == pytest.approx(-np.mean(np.log(cc)))
    assert transferability.ccfv(feats, labs, **transferability.ABLATIONS["wo_ccons"]) == pytest.approx(np.mean(np.log(fv)))
    single = transferability.ccfv(feats, labs, **transferability.ABLATIONS["single_scale"])
    assert single == pytest.approx(np.log(fv[-1] / cc[-1])) == pytest.approx(transferability.ccfv(feats[-1], labs[-1]))
    for name in ("kl", "bhattacharyya"):
        assert np.isfinite(transferability.ccfv(feats, labs, **transferability.ABLATIONS[name]))


def test_the_unit_ablation_scores_the_features_on_the_unit_sphere():
    feats, labs = toy_ccfv(2)
    rng = np.random.default_rng(1)
    on_sphere = [[x / np.linalg.norm(x, axis=1, keepdims=True) for x in scale] for scale in feats]
    unit = transferability.ccfv(feats, labs, **transferability.ABLATIONS["unit"])
    assert unit == pytest.approx(transferability.ccfv(on_sphere, labs))
    rescaled = [[x * rng.uniform(0.1, 10, size=(len(x), 1)) for x in scale] for scale in feats]   # per voxel
    assert transferability.ccfv(rescaled, labs, unit=True) == pytest.approx(unit)
    assert transferability.ccfv([[3 * x for x in scale] for scale in feats], labs) != pytest.approx(transferability.ccfv(feats, labs))


# ------------------------------------------------------------------------------------------------ rankings
def test_separable_features_rank_above_random_ones():
    rng = np.random.default_rng(0)
    good, bad = toy_bank(rng, True), toy_bank(rng, False)
    for name, score in [("logme", transferability.logme), ("gbc", transferability.gbc), ("transrate", transferability.transrate),
                        ("gbc spherical", lambda x, y: transferability.gbc(x, y, "spherical", pca=None))]:
        s_good, s_bad = (score(np.vstack(xs), np.concatenate(ys)) for xs, ys in (good, bad))
        assert s_good > s_bad, name
    for variant in ("paper", "code"):
        for options in ({}, {"distance": "kl"}, {"distance": "bhattacharyya"}, {"variety": False}):
            assert transferability.ccfv(*good, variant=variant, **options) > transferability.ccfv(*bad, variant=variant, **options)


# ------------------------------------------------------------------------------------------------ invariances
def test_scores_ignore_the_channel_order_and_the_foreground_label_names():
    x, y = toy(60, 8, 3)
    perm = np.array([3, 0, 7, 1, 6, 2, 5, 4])
    relabel = np.array([0, 2, 1])[y]                 # swap foreground classes 1 and 2
    for score in (transferability.logme, transferability.transrate, transferability.gbc, lambda a, b: transferability.gbc(a, b, pca=None)):
        ref = score(x, y)
        assert score(x[:, perm], y) == pytest.approx(ref, rel=1e-5)
        assert score(x, relabel) == pytest.approx(ref, rel=1e-9)
    probs, py = toy_probs(40, 4, 3)
    assert transferability.leep(probs[:, [2, 0, 3, 1]], np.array([0, 2, 1])[py]) == pytest.approx(transferability.leep(probs, py))
    a, b = toy(12, 5, 1, phase=0.3)[0], toy(9, 5, 1, phase=1.0)[0]
    cols = [4, 2, 0, 1, 3]
    assert transferability.gaussian_w2(a[:, cols], b[:, cols]) == pytest.approx(transferability.gaussian_w2(a, b))
    feats, labs = toy_ccfv(2)
    swapped = [[np.array([0, 2, 1])[y] for y in ys] for ys in labs]
    shuffled = [[x[:, ::-1] for x in xs] for xs in feats]
    for variant in ("paper", "code"):
        assert transferability.ccfv(shuffled, labs, variant) == pytest.approx(transferability.ccfv(feats, labs, variant), rel=1e-8)
    assert transferability.ccfv(feats, swapped) == pytest.approx(transferability.ccfv(feats, labs), rel=1e-12)


def test_weighted_tau_is_scipys():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=10), rng.normal(size=10)
    y[3] = y[5]                                      # a tie
    assert transferability.weighted_tau(x, y) == scipy.stats.weightedtau(x, y).statistic
    perf = np.arange(6.0)[::-1]
    # methods/transferability_baselines.md: swapping the best two costs more than swapping the worst two
    assert transferability.weighted_tau([5, 6, 4, 3, 2, 1], perf + 1) == pytest.approx(0.7551020408163265)
    assert transferability.weighted_tau([6, 5, 4, 3, 1, 2], perf + 1) == pytest.approx(0.9401360544217686)
    assert transferability.pearson(x, 2 * x + 1) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_input_raises_clear_errors():
    feats, labs = toy_ccfv(2)
    with pytest.raises(ValueError, match="needs >= 2 cases"):
        transferability.ccfv([xs[:1] for xs in feats], [ys[:1] for ys in labs])
    with pytest.raises(ValueError, match="class 5 is absent from every case"):
        transferability.ccfv(feats, labs, classes=[1, 5])
    with pytest.raises(ValueError, match="scales of features but"):
        transferability.ccfv(feats, labs[:2])
    with pytest.raises(ValueError, match="scale 2 case 0: expected 28 labels"):
        transferability.ccfv(feats, [labs[0], labs[1], [y[:-1] for y in labs[2]]])
    with pytest.raises(ValueError, match="different channel counts"):
        transferability.ccfv([feats[0][:2] + [feats[1][2]]], [labs[0][:2] + [labs[1][2]]])
    bad = [x.copy() for x in feats[1]]
    bad[2][0, 3] = np.nan
    with pytest.raises(ValueError, match=r"decoder1 case 2: channels \[3\].*NaN"):
        transferability.ccfv([feats[0], bad], [labs[0], labs[1]], names=["decoder0", "decoder1"])
    for kwargs, message in [({"variant": "x"}, "variant"), ({"distance": "l2"}, "distance"),
                            ({"consistency": False, "variety": False}, "at least one"), ({"scales": [3]}, "scales")]:
        with pytest.raises(ValueError, match=message):
            transferability.ccfv(feats, labs, **kwargs)
    x, y = toy(30, 4, 3)
    with pytest.raises(ValueError, match="expected 30 labels"):
        transferability.logme(x, y[:-1])
    with pytest.raises(ValueError, match="classes \\[1\\] never occur"):
        transferability.transrate(x, np.where(y == 1, 0, y))
    with pytest.raises(ValueError, match="integers"):
        transferability.gbc(x, y + 0.5)
    with pytest.raises(ValueError, match="summing to 1"):
        transferability.leep(np.full((30, 3), 0.5), y)
    with pytest.raises(ValueError, match="equal length"):
        transferability.weighted_tau([1, 2, 3], [1, 2])


def test_check_features_names_constant_and_nan_channels():
    x, _ = toy(20, 5, 2)
    x[:, [1, 4]] = 0.5
    with pytest.raises(ValueError, match=r"seg_outputs.2: channels \[1, 4\] \(2 of 5\) are constant"):
        transferability.check_features(x, "seg_outputs.2")
    assert transferability.check_features(x, "seg_outputs.2", allow_constant=True) == [1, 4]
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"out: channels \[0\] \(1 of 5\) hold NaN or inf"):
        transferability.check_features(x, "out", allow_constant=True)
    with pytest.raises(ValueError, match="non-empty"):
        transferability.check_features(np.zeros((0, 4)), "empty")


# ---------------------------------------------------------------- the model bank on a target pool (CLI part)

def test_voxels_are_sampled_per_case_and_label_up_to_each_scales_cap():
    labels = np.zeros((4, 6, 6), np.int64)
    labels[0, :2, :2] = 1                                   # case A: slices 0, 1; 4 foreground voxels
    labels[2:, 3:, 3:] = 1                                  # case B: slices 2, 3; 18 foreground voxels
    patients = ["A", "A", "B", "B"]
    scales = bank.sample_voxels(labels, patients, caps=(5, 100), seed=0)
    coarse, fine = scales
    counts = pd.DataFrame(coarse[:, 3:], columns=["case", "label"]).value_counts().sort_index().tolist()
    assert counts == [5, 4, 5, 5]                           # A bg, A fg (all 4), B bg, B fg
    assert len(fine) == 4 * 36 and (labels[fine[:, 0], fine[:, 1], fine[:, 2]] == fine[:, 4]).all()
    assert set(fine[fine[:, 3] == 0, 0]) == {0, 1} and set(fine[fine[:, 3] == 1, 0]) == {2, 3}
    again = bank.sample_voxels(labels, patients, caps=(5, 100), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(scales, again))


def test_a_few_slices_per_case_are_spread_over_the_foreground_and_cover_every_label():
    volume = np.zeros((10, 4, 4), np.int64)
    volume[2:8, 1:3, 1:3] = 1                               # foreground on slices 2..7
    assert bank.sampled_slices(volume, 3).tolist() == [2, 4, 7]         # linspace(0, 5, 3) = 0, 2.5, 5 -> 0, 2, 5
    assert bank.sampled_slices(volume, None).tolist() == list(range(10))
    assert bank.sampled_slices(volume, 20).tolist() == list(range(2, 8))
    volume[3, 0, 0] = 2                                     # a label on one slice the foreground's picks miss
    assert bank.sampled_slices(volume, 3).tolist() == [2, 3, 4, 7]
    labels = np.concatenate([volume, volume])
    scales = bank.sample_voxels(labels, ["a"] * 10 + ["b"] * 10, caps=(5, 50), slices_per_case=2)
    for rows in scales:                                     # every scale draws from the same slices: 2, 7 (+ 3 for 2)
        assert set(rows[:, 0].tolist()) == {2, 3, 7, 12, 13, 17}
        assert set(map(tuple, rows[:, 3:].tolist())) == {(c, k) for c in (0, 1) for k in (0, 1, 2)}


def test_reading_a_coarse_map_at_points_equals_upsampling_it_then_indexing():
    feature = torch.randn(1, 3, 5, 7)
    rows = np.array([[0, 0], [19, 27], [7, 13], [10, 0], [0, 27]])
    full = F.interpolate(feature, size=(20, 28), mode="bilinear", align_corners=False)[0]
    expected = full[:, rows[:, 0], rows[:, 1]].T.numpy()
    assert np.allclose(bank.read_at(feature, rows, (20, 28)), expected, atol=1e-6)


def tiny_unet_pool():
    """A width-4 UNet, five 16 x 16 slices of two cases with a foreground box, and voxels sampled on them."""
    torch.manual_seed(0)
    net = build_network("UNet", 1, 2, width=4, depth=3).eval()
    images = torch.rand(5, 1, 16, 16)
    labels = np.zeros((5, 16, 16), np.int64)
    labels[:, 4:9, 5:11] = 1
    return net, images, bank.sample_voxels(labels, ["a", "a", "a", "b", "b"], caps=(10, 20, 30))


def test_one_pass_reads_every_scale_at_its_voxels_and_the_head_at_the_finest():
    net, images, voxels = tiny_unet_pool()
    features, probs = bank.model_features(net, images, voxels, batch_size=2)
    assert [f.shape for f in features] == [(40, 16), (80, 8), (120, 4)] and probs.shape == (120, 2)
    with tapped(net, ["dec1.convs.1"]) as taps, torch.no_grad():
        out = torch.softmax(net(images), dim=1)
    fine = voxels[-1]
    assert np.allclose(features[-1], taps["dec1.convs.1"][fine[:, 0], :, fine[:, 1], fine[:, 2]].numpy(), atol=1e-5)
    assert np.allclose(probs, out[fine[:, 0], :, fine[:, 1], fine[:, 2]].numpy(), atol=1e-6)


def test_every_estimator_is_scored_with_its_seconds_and_nan_features_name_the_model():
    rng = np.random.default_rng(0)
    voxels = [np.column_stack([np.zeros(40, int), np.zeros(40, int), np.zeros(40, int),
                               np.repeat([0, 1], 20), np.tile(np.repeat([0, 1], 10), 2)])]
    features = [rng.normal(size=(40, 6)) + voxels[0][:, 4:5] * 3]
    probs = rng.dirichlet([1, 1], size=40)
    row = bank.score_model(features, probs, voxels, ["conv"], "m")
    for name in [*bank.ESTIMATORS, "ccfv_wo_ccons", "ccfv_kl"]:
        assert np.isfinite(row[name]) and row[f"{name}_s"] >= 0, name
    assert row["constant_channels"] == 0
    features[0][3, 2] = np.nan
    with pytest.raises(ValueError, match="m: layer conv gives NaN"):
        bank.score_model(features, probs, voxels, ["conv"], "m")


def test_the_ranking_table_and_its_ceiling():
    scores = pd.DataFrame({"target": ["5"] * 4, "candidate": list("abcd"), "ccfv": [4, 3, 2, 1],
                           "sdice": [90, 80, 70, 60], "sdice_s0": [91, 79, 71, 59], "sdice_s1": [89, 81, 69, 61]})
    table = bank.ranking_table(scores, ["ccfv"]).set_index("estimator")
    assert table.loc["ccfv", "tau"] == pytest.approx(1.0) and table.loc["ccfv", "pearson"] == pytest.approx(1.0)
    assert table.loc["ceiling (seed vs seed)", "tau"] == pytest.approx(1.0)
    flat = bank.ranking_table(scores.assign(sdice=70.0), ["ccfv"]).set_index("estimator")   # every run alike
    assert np.isnan(flat.loc["ccfv", "tau"]) and np.isnan(flat.loc["ccfv", "pearson"])


def test_the_top_pick_and_its_regret():
    scores = pd.DataFrame({"target": ["5"] * 3 + ["1"] * 3, "candidate": list("abcabc"),
                           "sdice": [90.0, 80.0, 70.0, 60.0, 75.0, 70.0], "leep": [1, 3, 2, 1, 2, 3]})
    picks = bank.top_picks(scores, ["leep"]).set_index("target")
    assert picks.loc["5", "pick"] == "b" and picks.loc["5", "regret"] == pytest.approx(10.0)
    assert picks.loc["1", "pick"] == "c" and picks.loc["1", "regret"] == pytest.approx(5.0)
    assert bank.picks_markdown(bank.top_picks(scores, ["leep"]))[2] == "| leep | c (5.0) | b (10.0) | **7.50** |"


def test_a_pool_of_one_case_or_a_missing_class_is_refused(tmp_path, capsys):
    for case in ("Case00", "Case01"):
        for sub in ("IMG", "GT"):
            (tmp_path / "pool" / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "pool" / "IMG" / f"{case}_0.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "pool" / "GT" / f"{case}_0.png")
    args = ["sample", "--pool", str(tmp_path / "pool"), "--folders",
            "[('IMG', png_transform, False), ('GT', gt_transform, False)]", "--grp_regex", r"(Case\d+)_\d+",
            "--out", str(tmp_path / "v.npz")]
    assert transfer.main(args) == 1
    assert "class(es) [1] occur in no case of the pool" in capsys.readouterr().err
    assert transfer.main([*args, "--slices_per_case", "0"]) == 1
    assert "--slices_per_case 0: at least 1 slice per case" in capsys.readouterr().err
    for name in ("IMG", "GT"):
        (tmp_path / "pool" / name / "Case01_0.png").unlink()
    assert transfer.main(args) == 1
    assert "holds 1 case(s)" in capsys.readouterr().err and not (tmp_path / "v.npz").exists()


def test_a_bank_entry_that_is_not_a_state_dict_checkpoint_is_one_error_line(tmp_path, capsys):
    torch.save(torch.nn.Conv2d(1, 1, 1), tmp_path / "whole_model.pkl")       # a pickled module, not a state dict
    args = ["score", "--model", str(tmp_path / "whole_model.pkl"), "--name", "x", "--voxels", str(tmp_path / "v.npz"),
            "--pool", str(tmp_path), "--folders", "[('IMG', png_transform, False)]", "--grp_regex", "x",
            "--out", str(tmp_path / "x.csv")]
    assert transfer.main(args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "whole_model.pkl" in err and "\n" not in err
    assert transfer.main([*args[:2], str(tmp_path / "missing.pkl"), *args[3:]]) == 1
    assert "missing.pkl: checkpoint does not exist" in capsys.readouterr().err


def test_instnorm_features_do_not_see_a_positive_per_channel_scale_and_shift_of_the_tap():
    net, images, voxels = tiny_unet_pool()
    plain = {mode: bank.model_features(net, images, voxels, 2, mode)[0][-1] for mode in bank.FEATURES}
    scale, shift = torch.tensor([0.5, 3.0, 2.0, 0.25]).view(1, 4, 1, 1), torch.tensor([0.1, -0.2, 0.0, 0.05]).view(1, 4, 1, 1)
    hook = dict(net.named_modules())["dec1.convs.1"].register_forward_hook(lambda m, i, out: out * scale + shift)
    try:
        moved = {mode: bank.model_features(net, images, voxels, 2, mode)[0][-1] for mode in bank.FEATURES}
    finally:
        hook.remove()
    assert np.allclose(moved["instnorm"], plain["instnorm"], atol=1e-5)
    assert not np.allclose(moved["raw"], plain["raw"], atol=1e-2)               # the raw tap moves with it
    assert (plain["instnorm"] >= -0.01 * np.abs(plain["instnorm"]).max()).all()  # LeakyReLU: negatives x0.01


def test_the_first_release_sign_and_the_variety_without_eps_are_named_ablations():
    rng = np.random.default_rng(1)
    feats = [[rng.normal(size=(30, 4)) + np.repeat([[0.0], [2.0]], 15, 0) for _ in range(3)]]
    labs = [[np.repeat([0, 1], 15) for _ in range(3)]]
    code = transferability.ccfv(feats, labs, variant="code")
    assert transferability.ccfv(feats, labs, **transferability.ABLATIONS["code_first_release"]) == pytest.approx(-code)
    no_eps = transferability.ccfv(feats, labs, **transferability.ABLATIONS["variety_eps0"])
    assert np.isfinite(no_eps) and no_eps != transferability.ccfv(feats, labs)
    for case in feats[0]:
        case[1] = case[0]                                                         # two coincident samples per case
    assert transferability.ccfv(feats, labs, **transferability.ABLATIONS["variety_eps0"]) == -np.inf
    assert np.isnan(bank.agreement(np.array([0.1, -np.inf, 0.3]), np.array([0.5, 0.6, 0.7]))["tau"])


def test_the_report_names_every_ablation_and_the_features():
    rng = np.random.default_rng(2)
    columns = [*bank.ESTIMATORS, *(f"ccfv_{k}" for k in transferability.ABLATIONS if k != "ccfv")]
    rows = [{"target": t, "candidate": f"m{i}", "features": "instnorm", "forward_s": 1.0, "ft_s": 10.0,
             "sdice": rng.random(), "sdice_s0": rng.random(), "sdice_s1": rng.random(),
             **{c: rng.random() for c in columns}, **{f"{e}_s": 0.1 for e in bank.ESTIMATORS}}
            for t in (1, 5) for i in range(4)]
    text = bank.transfer_report(pd.DataFrame(rows), "t")
    assert "Features: instnorm" in text
    assert all(f"- ccfv_{k}:" in text for k in transferability.ABLATIONS if k != "ccfv")
