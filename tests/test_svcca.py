"""CCA / SVCCA (seed 002, cca.py): known cases, invariances, agreement with google/svcca, conv folding, bad input."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import cca


def orthogonal_rows(k: int, m: int, seed: int) -> np.ndarray:
    """(k, m): centred, mutually orthogonal rows of unit variance (ddof 1)."""
    z = np.random.RandomState(seed).randn(m, k)
    q, _ = np.linalg.qr(z - z.mean(0))
    return q.T * np.sqrt(m - 1)


# ---- the inputs the reference was run on (numpy's legacy RandomState: its stream is frozen across versions)

def case_basic():
    rs = np.random.RandomState(0)
    a = rs.randn(6, 120)
    b = rs.randn(4, 3) @ a[:3] + 0.5 * rs.randn(4, 120)
    return a, b


def case_constant_a():
    a, b = case_basic()
    a[2] = 3.0
    return a, b


def case_constant_b():
    a, b = case_basic()
    b[1] = -1.5
    return a, b


def case_svcca():
    rs = np.random.RandomState(1)
    a = rs.randn(8, 3) @ rs.randn(3, 200) + 0.05 * rs.randn(8, 200)
    b = rs.randn(5, 8) @ a + 0.3 * rs.randn(5, 200)
    return a, b


def case_svcca2():
    rs = np.random.RandomState(2)
    a = rs.randn(10, 4) @ rs.randn(4, 300) + 0.02 * rs.randn(10, 300)
    b = np.vstack([rs.randn(2, 10) @ a, rs.randn(4, 300)]) + 0.5 * rs.randn(6, 300)
    return a, b


# Produced by google/svcca at commit 1f3fbf19bd31bd9b76e728ef75842aa1d9a4cd2b (numpy 2.4.6), run outside this
# repository on the cases above: cca_core.get_cca_similarity(a, b, epsilon=1e-10, verbose=False)['cca_coef1']
REFERENCE_CCA = {
    "basic": (case_basic, [0.9856438722101294, 0.9489778850740854, 0.6812148292546022, 0.2029049006556196]),
    "constant_a": (case_constant_a, [0.9514712257662221, 0.8860667275422751, 0.20469138910374354,
                                     0.01032400310911149]),
    "constant_b": (case_constant_b, [0.9822556681239993, 0.8510333318175545, 0.457120989076682]),
}
# Same commit, tutorial 001's SVCCA recipe: centre, np.linalg.svd, keep the fewest directions whose squared
# singular values reach 99 % (k_a, k_b below), s[:k] * V[:k], then np.mean(get_cca_similarity(...)['cca_coef1'])
REFERENCE_SVCCA = {
    "svcca": (case_svcca, (3, 3), 0.9893579220783651),
    "svcca2": (case_svcca2, (4, 6), 0.5502328815691423),
    "basic": (case_basic, (6, 4), 0.7046853716892557),
}


@pytest.mark.parametrize("name", sorted(REFERENCE_CCA))
def test_cca_matches_the_reference(name):
    make, expected = REFERENCE_CCA[name]
    got = cca.cca(*make())
    assert got.shape == (len(expected),)                 # constant neurons removed as the reference does
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(REFERENCE_SVCCA))
def test_svcca_matches_the_reference(name):
    make, ks, expected = REFERENCE_SVCCA[name]
    a, b = make()
    assert (cca.sv_reduce(a).shape[0], cca.sv_reduce(b).shape[0]) == ks
    assert cca.svcca(a, b) == pytest.approx(expected, rel=1e-9)


def test_cca_of_a_matrix_with_itself_is_all_ones():
    a = np.random.RandomState(3).randn(7, 200)
    got = cca.cca(a, a)
    assert got.shape == (7,)
    np.testing.assert_allclose(got, 1.0, atol=1e-6)


def test_cca_of_independent_noise_is_near_zero():
    rs = np.random.RandomState(4)
    got = cca.cca(rs.randn(10, 5000), rs.randn(10, 5000))
    assert got.shape == (10,) and np.all(np.diff(got) <= 0)
    assert got.mean() < 0.15 and got.max() < 0.2


def test_cca_is_invariant_to_invertible_linear_maps():
    a, b = case_basic()
    rs = np.random.RandomState(5)
    ma = rs.randn(6, 6) + 3 * np.eye(6)
    mb = rs.randn(4, 4) + 3 * np.eye(4)
    base = cca.cca(a, b)
    np.testing.assert_allclose(cca.cca(ma @ a, b), base, atol=1e-8)
    np.testing.assert_allclose(cca.cca(a, mb @ b + 7.0), base, atol=1e-8)   # and to offsets
    np.testing.assert_allclose(cca.cca(b, a), base, atol=1e-8)              # symmetric


def test_cca_accepts_torch_tensors():
    a, b = case_basic()
    t = torch.tensor(a, dtype=torch.float32, requires_grad=True)
    np.testing.assert_allclose(cca.cca(t, torch.tensor(b)), cca.cca(a, b), atol=1e-5)


def test_svcca_of_a_linear_map_is_one():
    a = np.random.RandomState(6).randn(5, 300)
    b = np.random.RandomState(7).randn(8, 5) @ a
    assert cca.svcca(a, b) == pytest.approx(1.0, abs=1e-6)


def test_svcca_keeps_the_strong_direction_and_drops_the_rest():
    """a: one strong direction z plus faint noise, so k_a = 1. b: z (noisy) and an unrelated neuron. The only
    canonical correlation is z's, near 1; against a b that does not contain z it is near 0."""
    rs = np.random.RandomState(8)
    z = rs.randn(1, 2000)
    a = rs.randn(6, 1) @ z + 1e-3 * rs.randn(6, 2000)
    assert cca.sv_reduce(a).shape == (1, 2000)
    b = np.vstack([z + 0.05 * rs.randn(1, 2000), rs.randn(1, 2000)])
    assert cca.svcca(a, b) == pytest.approx(1.0, abs=0.01)
    assert cca.svcca(a, rs.randn(2, 2000)) < 0.1


def test_the_kept_directions_count_squared_singular_values():
    """Standard deviations 10, 1, 0.5: variances 100, 1, 0.25 reach 99 % with two directions (101 / 101.25);
    the plain singular values (10 + 1) / 11.5 = 0.957 would have asked for all three."""
    x = np.array([10.0, 1.0, 0.5])[:, None] * orthogonal_rows(3, 400, seed=9)
    assert cca.sv_reduce(x).shape == (2, 400)
    assert cca.sv_reduce(x, keep=0.998).shape == (3, 400)
    assert cca.sv_reduce(x, keep=1.0).shape == (3, 400)
    assert cca.sv_reduce(np.vstack([x, x[:1]]), keep=1.0).shape == (3, 400)   # no null direction kept


def test_fold_conv_puts_channels_in_rows_and_positions_in_columns():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5)
    folded = cca.fold_conv(x)
    assert folded.shape == (3, 40)
    assert folded[1, 1 * 20 + 2 * 5 + 3] == x[1, 1, 2, 3]
    assert cca.fold_conv(torch.zeros(2, 3, 4, 5, 6)).shape == (3, 240)          # 3-D maps, torch input
    sub = cca.fold_conv(x, max_points=10, seed=1)
    assert sub.shape == (3, 10)
    np.testing.assert_array_equal(sub, cca.fold_conv(x + 1, max_points=10, seed=1) - 1)  # same columns
    assert set(sub[0]) <= set(folded[0])


def test_folded_maps_compare_at_the_finer_size_and_fold_each_map_once():
    gen = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(2, 3, 8, 8, generator=gen), torch.randn(2, 5, 4, 4, generator=gen)
    size = cca.common_size(fine.shape[2:], coarse.shape[2:])
    assert size == (8, 8) and cca.common_size((4, 8), (8, 4)) == (8, 8)             # each axis to its max
    maps = cca.FoldedMaps({"fine": fine, "coarse": coarse})
    np.testing.assert_array_equal(maps.at("fine", size), cca.fold_conv(fine))       # the finer map as it is
    up = F.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    np.testing.assert_array_equal(maps.at("coarse", size), cca.fold_conv(up))
    assert maps.at("coarse", size) is maps.at("coarse", size)


def test_svcca_of_folded_maps_across_resolutions():
    """b is a 1x1 channel mix of a coarse map, a the same coarse map upsampled: bilinear upsampling commutes
    with channel mixing, so after matching b is a linear map of a."""
    gen = torch.Generator().manual_seed(1)
    coarse = torch.randn(4, 4, 5, 5, generator=gen)
    a = F.interpolate(coarse, size=(10, 10), mode="bilinear", align_corners=False)
    b = torch.einsum("dc,nchw->ndhw", torch.randn(6, 4, generator=gen), coarse)
    size = cca.common_size(a.shape[2:], b.shape[2:])
    for points in (None, 200):
        maps = cca.FoldedMaps({"a": a, "b": b}, points)
        assert cca.svcca(maps.at("a", size), maps.at("b", size)) == pytest.approx(1.0, abs=1e-5)


def test_bad_input_is_refused_with_the_shapes():
    a, b = case_basic()
    with pytest.raises(ValueError, match=r"\(6, 120\).*\(4, 119\).*different numbers of data points"):
        cca.cca(a, b[:, :119])
    with pytest.raises(ValueError, match=r"at least 10 data points per neuron.*\(6, 50\).*\(4, 50\)"):
        cca.cca(a[:, :50], b[:, :50])
    with pytest.raises(ValueError, match=r"at least 10 data points per neuron"):
        cca.svcca(a[:, :50], b[:, :50])
    with pytest.raises(ValueError, match=r"2-D"):
        cca.cca(a[0], b)
    with pytest.raises(ValueError, match=r"NaN"):
        cca.cca(np.where(a > 2, np.nan, a), b)
    with pytest.raises(ValueError, match=r"no neuron with non-zero variance"):
        cca.cca(np.ones_like(a), b)
    with pytest.raises(ValueError, match=r"keep"):
        cca.svcca(a, b, keep=0)
    with pytest.raises(ValueError, match=r"\(N, C, \*spatial\).*\(3, 40\)"):
        cca.fold_conv(np.zeros((3, 40)))
