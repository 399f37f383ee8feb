"""CCA and SVCCA between two layers' activations (seed 002, docs/methods/svcca_ttl.md Part 1).

Activations are matrices with one row per neuron and one column per data point; both layers must be read on
the same inputs, so the columns correspond. CCA follows google/svcca's cca_core.get_cca_similarity (written
anew here, not copied): covariance with ddof 1, each block scaled by its largest entry, neurons of (near) zero
variance dropped, epsilon added on the diagonals, inverse square roots, and the singular values of
Sxx^-1/2 Sxy Syy^-1/2. SVCCA (Raghu et al., NeurIPS 2017) first keeps the top singular directions that explain
99 % of each layer's variance (squared singular values) and reports the mean of all canonical correlations.

Conv maps (N, C, *S) become (C, N * prod(S)): each spatial position of each image is one data point
(tutorial 002, "folding"). Maps at different resolutions are compared at the finer one's size: the coarser is
upsampled (bilinear, trilinear in 3D; FoldedMaps).
"""
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from utils import resized

Array = Union[np.ndarray, torch.Tensor]

# CCA overfits with few data points: the method note asks for 5 to 10 points per neuron, we require 10
MIN_POINTS_PER_NEURON = 10


def as_numpy(x: Array) -> np.ndarray:
    """A numpy view/copy of a numpy array or a (possibly GPU, possibly grad-tracking) torch tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype in (torch.bfloat16, torch.float16) else x).numpy()
    return np.asarray(x)


def check_acts(a: np.ndarray, b: np.ndarray, min_ratio: int = MIN_POINTS_PER_NEURON) -> None:
    """Raise ValueError unless a and b are finite (neurons, points) matrices on the same, numerous points."""
    if a.ndim != 2 or b.ndim != 2:
        raise ValueError(f"activations must be 2-D (neurons, data points); got a {a.shape} and b {b.shape} "
                         "(fold conv maps with fold_conv first)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a {a.shape} and b {b.shape} have different numbers of data points "
                         f"({a.shape[1]} vs {b.shape[1]}); both layers must be read on the same inputs")
    neurons = max(a.shape[0], b.shape[0])
    if min(a.shape[0], b.shape[0]) < 1 or a.shape[1] < min_ratio * neurons:
        raise ValueError(f"CCA needs at least {min_ratio} data points per neuron: a {a.shape} and b {b.shape} "
                         f"have {a.shape[1]} points for {neurons} neurons (need >= {min_ratio * neurons}); "
                         "use more images or positions")
    for name, x in (("a", a), ("b", b)):
        if not np.isfinite(x).all():
            raise ValueError(f"activations {name} {x.shape} contain NaN or infinite values")


def inv_sqrt_psd(sigma: np.ndarray) -> np.ndarray:
    """Symmetric inverse square root of a PSD matrix; eigenvalues under pinv's default cutoff map to 0."""
    # the reference takes np.linalg.pinv and then an eigh square root; one eigh does both, and clipping the
    # tiny / negative eigenvalues avoids the NaN that sqrt of a rounding-negative eigenvalue would give
    w, v = np.linalg.eigh(sigma)
    cutoff = 1e-15 * max(np.abs(w).max(), np.finfo(w.dtype).tiny)   # numpy pinv's default rcond
    inv = np.where(w > cutoff, 1.0 / np.sqrt(np.where(w > cutoff, w, 1.0)), 0.0)
    return (v * inv) @ v.T


def cca(a: Array, b: Array, epsilon: float = 1e-10) -> np.ndarray:
    """Canonical correlations between a (neurons_a, points) and b (neurons_b, points), in decreasing order.

    As google/svcca's get_cca_similarity (commit 1f3fbf1, 'cca_coef1'): neurons whose variance is below
    epsilon times the largest covariance entry of their layer are removed (constant neurons carry nothing to
    correlate), so the result has min(kept_a, kept_b) entries, min(neurons_a, neurons_b) when none is
    constant. Unlike the reference, which then reports a similarity of 0, a layer with no varying neuron at
    all is refused with ValueError: no correlation can be measured there.
    """
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    check_acts(a, b)
    # covariance blocks of the stacked rows, ddof = 1 as np.cov (reference: np.cov(acts1, acts2))
    a -= a.mean(axis=1, keepdims=True)                 # in place: astype above already copied
    b -= b.mean(axis=1, keepdims=True)
    m = a.shape[1]
    sxx, syy, sxy = a @ a.T / (m - 1), b @ b.T / (m - 1), a @ b.T / (m - 1)
    # scale each layer by its largest |covariance| for stability (reference: xmax, ymax)
    xmax, ymax = np.abs(sxx).max(), np.abs(syy).max()
    for name, top, x in (("a", xmax, a), ("b", ymax, b)):
        if top == 0:
            raise ValueError(f"activations {name} {x.shape} have no neuron with non-zero variance; "
                             "CCA is undefined (the reference would report 0)")
    sxx, syy, sxy = sxx / xmax, syy / ymax, sxy / np.sqrt(xmax * ymax)
    # drop (near) constant neurons: scaled variance below epsilon (reference: remove_small)
    kx, ky = np.abs(np.diag(sxx)) >= epsilon, np.abs(np.diag(syy)) >= epsilon
    sxx, syy, sxy = sxx[np.ix_(kx, kx)], syy[np.ix_(ky, ky)], sxy[np.ix_(kx, ky)]
    # epsilon on the diagonals, inverse square roots, then the singular values (reference: compute_ccas)
    ixx = inv_sqrt_psd(sxx + epsilon * np.eye(len(sxx)))
    iyy = inv_sqrt_psd(syy + epsilon * np.eye(len(syy)))
    return np.linalg.svd(ixx @ sxy @ iyy, compute_uv=False)      # already sorted, decreasing, >= 0


def sv_reduce(x: np.ndarray, keep: float = 0.99) -> np.ndarray:
    """(k, points): the centred x projected on its top k left singular vectors, k the fewest explaining keep."""
    x = x - x.mean(axis=1, keepdims=True)
    # SVD x = U S V^T through the Gram matrix x x^T = U S^2 U^T: the same U and S^2 without the (n, points) V,
    # which matters for folded conv maps with millions of points; U_k^T x = S_k V_k^T (tutorial 001's svacts)
    s2, u = np.linalg.eigh(x @ x.T)
    s2, u = np.clip(s2[::-1], 0, None), u[:, ::-1]                   # decreasing
    total = s2.sum()
    if total == 0:
        raise ValueError(f"activations {x.shape} are constant; SVCCA is undefined")
    # squared singular values are the variances (the tutorial's plain-s "fraction explained" is not)
    k = int(np.searchsorted(np.cumsum(s2) / total, keep - 1e-12) + 1)
    return u[:, :min(k, len(s2))].T @ x


def svcca(a: Array, b: Array, keep: float = 0.99, epsilon: float = 1e-10) -> float:
    """SVCCA similarity: the mean of all canonical correlations between the 99 %-variance SVD reductions."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep is a fraction of variance in (0, 1]; got {keep}")
    a, b = as_numpy(a).astype(np.float64), as_numpy(b).astype(np.float64)
    check_acts(a, b)                                # on the raw layers: the stricter count of neurons
    # mean of all coefficients, as np.mean(result['cca_coef1']); the reference's 'mean' field is not this
    return float(np.mean(cca(sv_reduce(a, keep), sv_reduce(b, keep), epsilon)))


def fold_conv(acts: Array, max_points: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """(C, N * prod(S)) from conv maps (N, C, *S): every position of every image becomes a data point.

    max_points: keep that many data points (columns) drawn without replacement with a fixed seed, to bound
    memory while keeping points >> channels; the same seed picks the same columns for two maps of one shape.
    """
    x = as_numpy(acts)
    if x.ndim < 3:
        raise ValueError(f"conv maps must be (N, C, *spatial) with at least one spatial axis; got {x.shape}")
    folded = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)        # column j = image j // HW, position j % HW
    if max_points is not None and max_points < folded.shape[1]:
        cols = np.sort(np.random.default_rng(seed).choice(folded.shape[1], max_points, replace=False))
        folded = folded[:, cols]
    return folded


def common_size(a: Sequence[int], b: Sequence[int]) -> Tuple[int, ...]:
    """The spatial size two maps are compared at: each axis the larger of the two (nothing is ever downsampled)."""
    return tuple(max(p, q) for p, q in zip(a, b))


class FoldedMaps:
    """Conv maps (name -> (N, C, *S), the same N images) upsampled to a size and folded, ``points`` positions kept
    (fold_conv's seeded subset), each (name, size) computed once: an every-layer-against-every-layer matrix reuses
    them."""

    def __init__(self, maps: Dict[str, torch.Tensor], points: Optional[int] = None, seed: int = 0):
        self.maps, self.points, self.seed, self.cache = maps, points, seed, {}

    def at(self, name: str, size: Tuple[int, ...]) -> np.ndarray:
        if (name, size) not in self.cache:
            self.cache[(name, size)] = fold_conv(resized(self.maps[name], size), self.points, self.seed)
        return self.cache[(name, size)]
