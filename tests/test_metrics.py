"""Metrics on small masks whose values are known by hand."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy import ndimage

from dataloader import SliceSet
from metrics import (confusion_sizes, dice, dice_3d, dice_from_sizes, evaluate_volumes, hd95_assd, per_patient_hd,
                     surface_dice)


def test_dice_2d_exact_and_empty_slices_score_one():
    gt = torch.tensor([[[0, 1, 1, 0]], [[0, 0, 0, 0]], [[1, 1, 0, 0]]])
    pred = torch.tensor([[[0, 1, 0, 0]], [[0, 0, 0, 0]], [[0, 0, 1, 1]]])
    scores = dice_from_sizes(*confusion_sizes(pred, gt, 2))[:, 1]
    assert scores.tolist() == [2 * 1 / (1 + 2), 1.0, 0.0]


def test_dice_empty_mask_rule_by_hand():
    """Both masks empty: 1 (nothing to find, nothing found); one empty against a non-empty one: 0; else 2I/(P+G)."""
    empty, one, two = (torch.zeros(3, 3, dtype=torch.bool) for _ in range(3))
    one[0, 0] = True
    two[0, :2] = True
    assert dice(empty, empty, 2).item() == 1.0
    assert dice(one, empty, 2).item() == 0.0 and dice(empty, two, 2).item() == 0.0
    assert dice(one, two, 2).item() == 2 * 1 / (1 + 2)
    masks = torch.stack([empty, one, two])[:, None]                         # (3, 1, 3, 3) against (1, 1, 3, 3)
    assert dice(masks, two[None, None], 2)[:, 0].tolist() == [0.0, 2 / 3, 1.0]
    sizes = torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0.0, 4.0, 3.0]), torch.tensor([0.0, 0.0, 5.0])
    assert dice_from_sizes(*sizes).tolist() == [1.0, 0.0, 6 / 8]


def test_dice_3d_sums_over_each_patients_slices():
    gt = torch.tensor([[[1, 1, 0, 0]], [[1, 0, 0, 0]], [[1, 1, 1, 1]]])
    pred = torch.tensor([[[1, 0, 0, 0]], [[1, 1, 0, 0]], [[1, 1, 0, 0]]])
    ids, d3 = dice_3d(*confusion_sizes(pred, gt, 2), ["B", "B", "A"])
    assert ids == ["A", "B"]
    # patient A: I=2, P=2, G=4; patient B: I=2, P=3, G=3
    assert d3[:, 1].tolist() == pytest.approx([4 / 6, 4 / 6], abs=1e-7)


def test_hd95_assd_single_voxels_anisotropic_spacing():
    gt = np.zeros((1, 5, 5), bool); gt[0, 0, 0] = True
    pred = np.zeros((1, 5, 5), bool); pred[0, 0, 3] = True
    assert hd95_assd(pred, gt, (1, 1, 1)) == pytest.approx((3.0, 3.0))
    assert hd95_assd(pred, gt, (1, 1, 2.5)) == pytest.approx((7.5, 7.5))
    assert hd95_assd(gt, gt, (1, 1, 1)) == (0.0, 0.0)


def test_hd95_nan_when_a_mask_is_empty():
    gt = np.zeros((3, 3), bool); gt[1, 1] = True
    assert all(np.isnan(v) for v in hd95_assd(np.zeros((3, 3), bool), gt, (1, 1)))


def test_hd95_assd_match_brute_force_on_random_blobs():
    rng = np.random.default_rng(3)
    spacing = (2.0, 0.7, 1.3)
    a = ndimage.gaussian_filter(rng.standard_normal((8, 20, 20)), 2) > 0.05
    b = ndimage.gaussian_filter(rng.standard_normal((8, 20, 20)), 2) > 0.05
    structure = ndimage.generate_binary_structure(3, 1)
    sa = np.argwhere(a & ~ndimage.binary_erosion(a, structure)) * spacing
    sb = np.argwhere(b & ~ndimage.binary_erosion(b, structure)) * spacing
    d = cdist(sa, sb)
    d_ab, d_ba = d.min(axis=1), d.min(axis=0)
    hd, asd = hd95_assd(a, b, spacing)
    assert hd == pytest.approx(np.percentile(np.concatenate([d_ab, d_ba]), 95), rel=1e-9)
    assert asd == pytest.approx((d_ab.mean() + d_ba.mean()) / 2, rel=1e-9)


def test_per_patient_hd_stacks_slices_in_slice_order():
    # patient P: slices given out of order; the foreground voxel sits on slice 0 (gt) and slice 2 (pred)
    gt = torch.zeros(3, 4, 4, dtype=torch.long); pred = torch.zeros(3, 4, 4, dtype=torch.long)
    numbers = [2, 0, 1]            # row 1 is slice 0, row 0 is slice 2
    gt[1, 1, 1] = 1; pred[0, 1, 1] = 1
    out = per_patient_hd(pred, gt, ["P"] * 3, numbers, spacings={"P": (1.0, 1.0, 3.0)}, classes=[1])
    assert out["hd95"][0, 0] == pytest.approx(6.0) and out["assd"][0, 0] == pytest.approx(6.0)


def test_distances_use_each_patients_own_spacing():
    """Two patients with the same voxels and different slice thickness (1 and 3 mm): 2 and 6 mm apart."""
    gt = torch.zeros(6, 4, 4, dtype=torch.long); pred = torch.zeros(6, 4, 4, dtype=torch.long)
    gt[0, 1, 1] = gt[3, 1, 1] = 1; pred[2, 1, 1] = pred[5, 1, 1] = 1
    patients, numbers = ["A"] * 3 + ["B"] * 3, [0, 1, 2] * 2
    spacings = {"A": (1.0, 1.0, 1.0), "B": (1.0, 1.0, 3.0)}
    out = per_patient_hd(pred, gt, patients, numbers, spacings, classes=[1])
    assert out["hd95"][:, 0] == pytest.approx([2.0, 6.0])
    data = SliceSet(root=None, filenames=[f"{p}_{n}" for p, n in zip(patients, numbers)], images=torch.zeros(6, 1, 4, 4),
                    labels=gt.to(torch.uint8), patients=patients, slice_numbers=numbers, spacings=spacings)
    table = evaluate_volumes(pred, data, [1], tolerance=2.5)
    assert table["sdice"].tolist() == pytest.approx([1.0, 0.0])   # 2 mm within 2.5 mm; 6 mm not


# ---------------------------------------------------------------- surface Dice


def cube(shape, start, size):
    m = np.zeros(shape, bool)
    m[tuple(slice(s, s + size) for s in start)] = True
    return m


def test_surface_dice_identical_is_one_and_empty_cases():
    a = cube((10, 10, 10), (2, 2, 2), 4)
    assert surface_dice(a, a, (1, 1, 1)) == 1.0
    assert np.isnan(surface_dice(np.zeros_like(a), np.zeros_like(a), (1, 1, 1)))
    assert surface_dice(a, np.zeros_like(a), (1, 1, 1)) == 0.0


def test_surface_dice_shift_beyond_tolerance_and_anisotropic_spacing():
    a = cube((12, 12, 12), (3, 3, 3), 5)
    b = cube((12, 12, 12), (5, 3, 3), 5)        # shifted by 2 voxels along axis 0
    assert surface_dice(a, b, (1, 1, 1), tolerance=1) < 1
    assert surface_dice(a, b, (1, 1, 1), tolerance=2) == 1.0          # inclusive <=
    # the same shift is 1 mm when axis 0 has 0.5 mm voxels, and 4 mm when it has 2 mm voxels
    assert surface_dice(a, b, (0.5, 1, 1), tolerance=1) == 1.0
    assert surface_dice(a, b, (2, 1, 1), tolerance=1) < surface_dice(a, b, (1, 1, 1), tolerance=1)
    # spacing follows the array axes: a shift along axis 2 is 1 mm with 0.5 mm voxels there
    c = cube((12, 12, 12), (3, 3, 5), 5)
    assert surface_dice(a, c, (3, 1, 0.5), tolerance=1) == 1.0
    assert surface_dice(a, c, (0.5, 1, 3), tolerance=1) < 1


def test_surface_dice_matches_deepmind_reference():
    sd = pytest.importorskip("surface_distance")
    rng = np.random.default_rng(0)
    for shape, spacing in [((20, 30, 25), (2.0, 0.7, 1.3)), ((40, 50), (0.8, 1.1))]:
        a = ndimage.gaussian_filter(rng.standard_normal(shape), 3) > 0.02
        b = ndimage.gaussian_filter(rng.standard_normal(shape), 3) > 0.02
        a[0] = True                              # touches the array border
        for tol in (0.5, 1.0, 2.0):
            ref = sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(a, b, spacing), tol)
            assert surface_dice(a, b, spacing, tol) == pytest.approx(ref, abs=1e-12)


def test_confusion_sizes_in_chunks_equal_one_pass():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randint(0, 3, (10, 7, 6), generator=gen, dtype=torch.uint8)
    gt = torch.randint(0, 3, (10, 7, 6), generator=gen, dtype=torch.uint8)
    whole = confusion_sizes(pred, gt, 3, chunk=1000)
    for a, b in zip(confusion_sizes(pred, gt, 3, chunk=3), whole):
        assert a.dtype == torch.float64 and torch.equal(a, b)
    inter, psize, gsize = whole
    assert psize.sum() == gsize.sum() == 10 * 7 * 6
    assert inter[4, 2] == ((pred[4] == 2) & (gt[4] == 2)).sum()
