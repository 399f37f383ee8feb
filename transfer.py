"""Transferability estimation (seed 001; methods/ccfv.md, methods/transferability_baselines.md): library part.

Every score takes numpy arrays and returns a float oriented so that HIGHER predicts BETTER transfer:
LogME, LEEP, GBC, TransRate and CC-FV (both its `paper` and `code` variants, with the ablations of the
paper's Table 2), plus the ranking metrics (weighted Kendall tau, Pearson) used to judge them.

Shapes: features (n_samples, channels) sampled voxel feature vectors, labels (n_samples,) integer classes,
0 = background. CC-FV takes several scales: features[scale][case] is (n_case_samples, channels_scale) and
labels[scale][case] the labels of those rows (sampling caps differ per scale, so labels are per scale).
Bad input raises ValueError naming the problem, never assert (CFLAGS=-O removes asserts).

From make (cc359.make's transfer stage), per target domain:
    transfer.py sample --pool <pair set>/train --folders ... --grp_regex ... --out voxels.npz
    transfer.py score --model <checkpoint> --name <candidate> --voxels voxels.npz --pool ... --out score/<candidate>.csv
    transfer.py report --scores <target>/score/*.csv ... --ft <target>/ft/<candidate>_s<seed> ... --out report.md
"""
import argparse
import re
import sys
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.stats
from scipy.spatial.distance import cdist

# Table 2 of seed 001 as keyword arguments of ccfv(); "single_scale" keeps the last scale given (by convention
# the finest one, the input of the final 1x1 conv, which is also the layer the baselines read).
ABLATIONS = {"ccfv": {}, "wo_ccons": {"consistency": False}, "wo_fv": {"variety": False},
             "single_scale": {"scales": (-1,)}, "kl": {"distance": "kl"},
             "bhattacharyya": {"distance": "bhattacharyya"}}


# ------------------------------------------------------------------------------------------------ validation
def check_features(features: np.ndarray, name: str = "features", allow_constant: bool = False) -> List[int]:
    """Validate an (n, C) feature matrix; return its constant channels (a ValueError unless allow_constant)."""
    x = np.asarray(features)
    if x.ndim != 2 or 0 in x.shape:
        raise ValueError(f"{name}: features must be a non-empty (n_samples, channels) array; got shape {x.shape}")
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise ValueError(f"{name}: features must be numeric; got dtype {x.dtype}")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=0))
    if bad.size:
        raise ValueError(f"{name}: channels {bad[:20].tolist()}{'...' if bad.size > 20 else ''} "
                         f"({bad.size} of {x.shape[1]}) hold NaN or inf")
    const = np.flatnonzero(np.ptp(x, axis=0) == 0).tolist()
    if const and not allow_constant:
        raise ValueError(f"{name}: channels {const[:20]}{'...' if len(const) > 20 else ''} ({len(const)} of "
                         f"{x.shape[1]}) are constant (zero variance) over the {x.shape[0]} samples")
    return const


def check_labels(labels: np.ndarray, n: int, name: str = "labels") -> np.ndarray:
    """Labels as a 1-D int64 array of n non-negative integers (a ValueError otherwise)."""
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{name}: expected {n} labels (one per feature row) in a 1-D array; got shape {y.shape}")
    if y.dtype == bool:
        y = y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.integer):
        if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{name}: labels must be integers; got dtype {y.dtype}")
    if n and y.min() < 0:
        raise ValueError(f"{name}: labels must be >= 0; got {int(y.min())}")
    return y.astype(np.int64)


def _features(features: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    """Validated float64 copy of a feature matrix (constant channels allowed: every score is defined there)."""
    check_features(features, name, allow_constant=True)
    x = np.asarray(features, dtype=np.float64)
    if len(x) < min_rows:
        raise ValueError(f"{name}: needs at least {min_rows} samples; got {len(x)}")
    return x


def _contiguous(y: np.ndarray, name: str) -> int:
    """Number of classes C = max + 1, requiring every class 0..C-1 to occur (LogME/TransRate use C = max(y) + 1)."""
    c = int(y.max()) + 1
    missing = np.setdiff1d(np.arange(c), y)
    if missing.size:
        raise ValueError(f"{name}: labels must be contiguous 0..{c - 1}; classes {missing.tolist()} never occur")
    return c


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
    """(n, c) float64 one-hot matrix."""
    return (y[:, None] == np.arange(c)[None]).astype(np.float64)


# ------------------------------------------------------------------------------------------------ baselines
def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME, fixed-point algorithm (arXiv 2110.10545) as thuml/LogME LogME(regression=False).fit computes it."""
    f = _features(features, "logme")
    y = check_labels(labels, len(f), "logme")
    c = _contiguous(y, "logme")
    n, d = f.shape
    if n > d:   # thuml/LogME truncated_svd: SVD of F^T F, keep the singular values sqrt(eig) > 1e-10
        _, eig, vh = np.linalg.svd(f.T @ f)
        s = np.sqrt(eig)
        k = int(np.sum(s > 1e-10))
        u, s = f @ vh[:k].T / s[:k], s[:k]
    else:       # thin SVD of F, no rank truncation
        u, s, _ = np.linalg.svd(f, full_matrices=False)
    if s.size == 0 or not np.any(s > 0):
        raise ValueError("logme: the features have rank 0 (all zero)")
    sigma = (s ** 2)[:, None]                         # (k, 1)
    t_all = _one_hot(y, c)                            # one-vs-all targets, one column per class
    z2 = (u.T @ t_all) ** 2                           # (k, C)
    r0 = (t_all ** 2).sum(0) - z2.sum(0)              # energy outside span(U)
    alpha, beta = np.ones(c), np.ones(c)
    m2, res2 = np.zeros(c), np.zeros(c)
    active = np.ones(c, dtype=bool)
    for _ in range(11):                               # MacKay fixed-point updates, per class until converged
        idx = np.flatnonzero(active)
        t = alpha[idx] / beta[idx]
        gamma = (sigma / (sigma + t)).sum(0)
        m2[idx] = (sigma * z2[:, idx] / (t + sigma) ** 2).sum(0)
        res2[idx] = (z2[:, idx] / (1 + sigma / t) ** 2).sum(0) + r0[idx]
        alpha[idx] = gamma / (m2[idx] + 1e-5)
        beta[idx] = (n - gamma) / (res2[idx] + 1e-5)
        active[idx[np.abs(alpha[idx] / beta[idx] - t) / t <= 1e-3]] = False
        if not active.any():
            break
    # evidence with the updated alpha, beta but the last pass's m2, res2; log|A| over retained components only
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum(0)
                - beta / 2 * res2 - alpha / 2 * m2 - n / 2 * np.log(2 * np.pi)) / n
    return float(evidence.mean())


def leep(probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP (Nguyen et al. 2020; thuml/LogME LEEP.py): mean log expected empirical prediction, <= 0."""
    p = _features(probs, "leep probs")
    if np.any(p < 0) or not np.allclose(p.sum(1), 1.0, atol=1e-3):
        raise ValueError("leep: probs must be non-negative rows summing to 1 (a softmax over the source classes)")
    y = check_labels(labels, len(p), "leep")
    joint = _one_hot(y, int(y.max()) + 1).T @ p / len(p)       # P(y, z), (C_t, C_s)
    marginal = joint.sum(0, keepdims=True)                    # P(z)
    # P(y | z); a source class with no mass anywhere would be 0/0 (NaN in the reference) and never contributes
    cond = np.divide(joint, marginal, out=np.zeros_like(joint), where=marginal > 0)
    eep = np.sum(p * cond[y], axis=1)                         # sum_z P(y_i | z) theta_z(x_i)
    return float(np.mean(np.log(eep)))


def gbc(features: np.ndarray, labels: np.ndarray, gaussian: str = "diagonal", pca: Optional[int] = 64) -> float:
    """GBC (Pandy et al. 2022; google-research stable_transfer gbc.py): -sum over ordered class pairs of BC, <= 0.

    pca: sklearn PCA(svd_solver='full') to min(pca, n, channels) dimensions first, output cast to float32, as
    the reference's segmentation config (PCA 64, diagonal); None skips it.
    """
    if gaussian not in ("spherical", "diagonal"):
        raise ValueError(f"gbc: gaussian must be 'spherical' or 'diagonal'; got {gaussian!r}")
    x = _features(features, "gbc")
    y = check_labels(labels, len(x), "gbc")
    classes = np.unique(y)
    if classes.size < 2:
        raise ValueError(f"gbc: needs at least 2 classes; got {classes.tolist()}")
    if pca is not None:
        from sklearn.decomposition import PCA
        dim = min(int(pca), *x.shape)
        x = PCA(n_components=dim, svd_solver="full").fit_transform(x).astype(np.float32).astype(np.float64)
    mu = np.stack([x[y == k].mean(0) for k in classes])                      # (C, D)
    var = np.maximum(np.stack([x[y == k].var(0) for k in classes]), 1e-4)    # ddof=0, floored as the reference
    if gaussian == "spherical":   # one scalar variance per class; the log term is then NOT multiplied by D (reference)
        var = var.mean(1, keepdims=True)
    avg = (var[:, None] + var[None]) / 2                         # (C, C, D or 1)
    log_var = np.log(var).sum(1)
    bd = (((mu[:, None] - mu[None]) ** 2 / avg).sum(-1) / 8
          + 0.5 * (np.log(avg).sum(-1) - 0.5 * log_var[:, None] - 0.5 * log_var[None]))
    bc = np.exp(-bd)
    np.fill_diagonal(bc, 0.0)
    return float(-bc.sum())


def _coding_rate(z: np.ndarray, eps: float) -> float:
    """R(Z, eps) = 1/2 logdet(I + Z^T Z / (n eps)), through the smaller Gram matrix (Sylvester's identity)."""
    n, d = z.shape
    gram = z.T @ z if d <= n else z @ z.T
    return 0.5 * np.linalg.slogdet(np.eye(len(gram)) + gram / (n * eps))[1]


def transrate(features: np.ndarray, labels: np.ndarray, eps: float = 1e-4) -> float:
    """TransRate (Huang et al. 2022) in TLlib's form: R(Z) - mean_c R(Z_c), Z globally centred, eps ~ epsilon^2."""
    if not eps > 0:
        raise ValueError(f"transrate: eps must be > 0; got {eps}")
    z = _features(features, "transrate")
    y = check_labels(labels, len(z), "transrate")
    c = _contiguous(y, "transrate")
    z = z - z.mean(0, keepdims=True)                 # class subsets are not re-centred (TLlib)
    return float(_coding_rate(z, eps) - np.mean([_coding_rate(z[y == k], eps) for k in range(c)]))


# ------------------------------------------------------------------------------------------------ CC-FV
def gaussian_moments(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Row mean and unbiased (ddof=1, as np.cov) covariance of the rows of x."""
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def w2_moments(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """2-Wasserstein distance (NOT squared) between two Gaussians, the way CCFV utils/ccfv.py computes it.

    Seed 001 Eq. 1 gives W^2 = |mu1-mu2|^2 + tr S1 + tr S2 - 2 tr (S1 S2)^(1/2); the reference takes a general
    (Schur) sqrtm of the non-symmetric product, |.| of the possibly complex total, then the square root, and it
    is this W that CC-FV aggregates. No ridge: covariances stay singular when samples < channels.
    """
    with warnings.catch_warnings():   # singular products are expected here (samples < channels); sqrtm warns
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        cross = np.trace(scipy.linalg.sqrtm(cov1 @ cov2))
    w2sq = np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * cross
    return float(np.sqrt(np.abs(w2sq)))


def gaussian_w2(a: np.ndarray, b: np.ndarray) -> float:
    """2-Wasserstein distance (not squared) between the Gaussians fitted to the rows of a and of b."""
    a, b = _features(a, "gaussian_w2 a", 2), _features(b, "gaussian_w2 b", 2)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"gaussian_w2: a has {a.shape[1]} channels, b has {b.shape[1]}")
    return w2_moments(*gaussian_moments(a), *gaussian_moments(b))


def _pair_distances(moments: List[Tuple[np.ndarray, np.ndarray]], distance: str, ridge: float) -> np.ndarray:
    """Distances between the Gaussians of every unordered pair i < j of cases, in (i, j) row-major order."""
    pairs = [(i, j) for i in range(len(moments)) for j in range(i + 1, len(moments))]
    if distance == "w2":
        return np.array([w2_moments(*moments[i], *moments[j]) for i, j in pairs])
    # KL / Bhattacharyya need inverses and determinants: a ridge makes the (often singular) covariances definite
    eye = np.eye(len(moments[0][0]))
    covs = [cov + ridge * eye for _, cov in moments]
    if distance == "kl":   # symmetrised: Eq. 2 sums over ordered pairs, so KL(i||j) and KL(j||i) both enter
        invs = [np.linalg.inv(cov) for cov in covs]
        out = []
        for i, j in pairs:
            dmu = moments[i][0] - moments[j][0]
            out.append(0.25 * (np.sum(invs[j] * covs[i]) + np.sum(invs[i] * covs[j]) + dmu @ (invs[i] + invs[j]) @ dmu)
                       - len(dmu) / 2)
        return np.array(out)
    logdets = [np.linalg.slogdet(cov)[1] for cov in covs]
    out = []
    for i, j in pairs:   # Bhattacharyya distance between full-covariance Gaussians
        dmu, avg = moments[i][0] - moments[j][0], (covs[i] + covs[j]) / 2
        out.append(dmu @ np.linalg.solve(avg, dmu) / 8
                   + 0.5 * (np.linalg.slogdet(avg)[1] - 0.5 * logdets[i] - 0.5 * logdets[j]))
    return np.array(out)


def class_consistency(cases: Sequence[np.ndarray], labels: Sequence[np.ndarray], classes: Sequence[int],
                      variant: str = "paper", distance: str = "w2", ridge: float = 1e-4, name: str = "") -> float:
    """C_cons of one scale: distances between the per-case Gaussians of each foreground class (seed 001 Eq. 2).

    paper: mean over case pairs, summed over classes. code: CCFV main.py's accumulator, w += sum of pairs, then
    w += w / (L^2/2) / n_classes after each class (L = number of cases). A case with < 2 samples of a class is
    skipped for that class (the reference gives NaN); a class left with < 2 cases is skipped with a warning.
    """
    total, used = 0.0, 0
    for k in classes:
        if not any(np.any(y == k) for y in labels):
            raise ValueError(f"{name}: class {k} is absent from every case")
        moments = [gaussian_moments(x[y == k]) for x, y in zip(cases, labels) if np.sum(y == k) >= 2]
        if len(moments) < 2:
            warnings.warn(f"{name}: class {k} has >= 2 samples in {len(moments)} case(s); skipped in C_cons")
            continue
        dist = _pair_distances(moments, distance, ridge)
        used += 1
        if variant == "paper":
            total += dist.mean()
        else:
            total += dist.sum()
            total += total / (len(cases) ** 2 / 2) / len(classes)
    if not used:
        raise ValueError(f"{name}: no foreground class occurs in 2 or more cases; class consistency is undefined")
    return float(total)


def _inverse_energy(x: np.ndarray, s: float, eps: float, block: int = 2048) -> float:
    """sum_{i != j} (|x_i - x_j|^2 + eps)^(-s/2): hyperspherical energy E_s (seed 001 Eq. 3), in row blocks."""
    total = 0.0
    for start in range(0, len(x), block):
        d2 = cdist(x[start:start + block], x[start:], "sqeuclidean")
        total += np.sum((d2[np.triu_indices(d2.shape[0], k=1, m=d2.shape[1])] + eps) ** (-s / 2))
    return 2 * total   # ordered pairs


def feature_variety(cases: Sequence[np.ndarray], variant: str = "paper", s: float = 1.0, eps: float = 1e-3) -> float:
    """F_v of one scale. paper: Eq. 4, mean over cases of 1 / E_s(all samples of the case). code: CCFV
    cal_variety, mean over case pairs of 1 / sqrt(|G_i - G_j|^2 + eps), G_i = mean sample of case i (an energy).

    The paper variant also adds eps inside the distance (Eq. 3 has none) so that coincident samples stay finite.
    """
    if variant == "paper":
        return float(np.mean([1.0 / _inverse_energy(x, s, eps) for x in cases]))
    g = np.stack([x.mean(0) for x in cases])
    norms = np.sum(g * g, axis=1)
    d2 = norms[:, None] + norms[None] - 2 * g @ g.T        # expanded as the reference does (may dip below 0)
    n = len(g)
    return float(np.sum(np.triu(1 / np.sqrt(d2 + eps), k=1)) * 2 / (n * (n - 1)))


def ccfv(features: Sequence[Sequence[np.ndarray]], labels: Sequence[Sequence[np.ndarray]], variant: str = "paper",
         classes: Optional[Sequence[int]] = None, distance: str = "w2", consistency: bool = True,
         variety: bool = True, scales: Optional[Sequence[int]] = None, s: float = 1.0, variety_eps: float = 1e-3,
         ridge: float = 1e-4, names: Optional[Sequence[str]] = None) -> float:
    """CC-FV score (seed 001 Eq. 5), higher = better: per scale log(F_v / C_cons), then mean (paper) or sum (code).

    features[scale][case]: (n, C_scale) sampled features (all labels, background included); labels alike. A single
    scale may be passed as a plain list of per-case arrays. classes: foreground labels (default: every label > 0
    found). consistency / variety = False drop that term (Table 2 "w/o"); scales: indices of the scales to use;
    distance: "w2" (the method), "kl" (symmetrised) or "bhattacharyya" (full covariances + ridge) for Table 2.
    """
    if variant not in ("paper", "code"):
        raise ValueError(f"ccfv: variant must be 'paper' or 'code'; got {variant!r}")
    if distance not in ("w2", "kl", "bhattacharyya"):
        raise ValueError(f"ccfv: distance must be 'w2', 'kl' or 'bhattacharyya'; got {distance!r}")
    if not (consistency or variety):
        raise ValueError("ccfv: at least one of consistency and variety must be kept")
    if not s > 0:
        raise ValueError(f"ccfv: the energy exponent s must be > 0; got {s}")
    if len(features) and isinstance(features[0], np.ndarray) and features[0].ndim == 2:
        features, labels = [features], [labels]              # one scale given directly
    if len(features) == 0 or len(features) != len(labels):
        raise ValueError(f"ccfv: {len(features)} scales of features but {len(labels)} of labels")
    names = list(names) if names is not None else [f"scale {i}" for i in range(len(features))]
    if len(names) != len(features):
        raise ValueError(f"ccfv: {len(names)} names for {len(features)} scales")
    data = []
    for name, xs, ys in zip(names, features, labels):
        if len(xs) < 2 or len(xs) != len(ys):
            raise ValueError(f"ccfv {name}: needs >= 2 cases with one label array each; got {len(xs)} feature "
                             f"arrays and {len(ys)} label arrays")
        xs = [_features(x, f"ccfv {name} case {i}", min_rows=2) for i, x in enumerate(xs)]
        ys = [check_labels(y, len(x), f"ccfv {name} case {i}") for i, (x, y) in enumerate(zip(xs, ys))]
        if len({x.shape[1] for x in xs}) != 1:
            raise ValueError(f"ccfv {name}: the cases have different channel counts {sorted({x.shape[1] for x in xs})}")
        data.append((name, xs, ys))
    if classes is None:
        classes = sorted({int(k) for _, _, ys in data for y in ys for k in np.unique(y) if k > 0})
        if not classes:
            raise ValueError("ccfv: no foreground label (> 0) in any case")
    chosen = range(len(data)) if scales is None else list(scales)
    if len(chosen) == 0 or any(not -len(data) <= i < len(data) for i in chosen):
        raise ValueError(f"ccfv: scales {list(chosen)} must be non-empty indices into {len(data)} scales")
    terms = []
    for i in chosen:
        name, xs, ys = data[i]
        term = np.log(feature_variety(xs, variant, s, variety_eps)) if variety else 0.0
        if consistency:
            c = class_consistency(xs, ys, classes, variant, distance, ridge, f"ccfv {name}")
            if not c > 0:
                raise ValueError(f"ccfv {name}: class consistency is {c} (identical class features in every case)")
            term -= np.log(c)
        terms.append(term)
    return float(np.mean(terms) if variant == "paper" else np.sum(terms))


# ------------------------------------------------------------------------------------------------ ranking
def _paired(scores: np.ndarray, performance: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Two finite 1-D float arrays of the same length >= 2."""
    x, y = np.asarray(scores, dtype=np.float64), np.asarray(performance, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2:
        raise ValueError(f"scores {x.shape} and performance {y.shape} must be 1-D, of equal length >= 2")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("scores and performance must be finite")
    return x, y


def weighted_tau(scores: np.ndarray, performance: np.ndarray) -> float:
    """Weighted Kendall tau, scipy.stats.weightedtau defaults (hyperbolic weights, rank=True); p-value dropped."""
    return float(scipy.stats.weightedtau(*_paired(scores, performance)).statistic)


def pearson(scores: np.ndarray, performance: np.ndarray) -> float:
    """Pearson r between scores and performance (scipy.stats.pearsonr)."""
    return float(scipy.stats.pearsonr(*_paired(scores, performance)).statistic)


# ------------------------------------------------------------------------------------------------ a model bank
# make -f cc359.make transfer: per target, voxels sampled once on its annotated pool (sample), every candidate
# scored on them in one pass (score), every candidate fine-tuned on the pool (main.py), then the tables (report).

CAPS = (100, 200, 400)       # voxels per label and case at the coarse, middle and fine decoder scale (CC-FV's code)
VOXEL_COLUMNS = ("slice", "row", "column", "case", "label")
ESTIMATORS = ("ccfv", "ccfv_code", "logme", "leep", "gbc", "transrate")   # Table 1 rows; Table 2: the ablations


def sample_voxels(labels: np.ndarray, patients: Sequence[str], caps: Sequence[int] = CAPS,
                  seed: int = 0) -> List[np.ndarray]:
    """Per scale, (n, 5) int rows (slice, row, column, case, label): up to ``cap`` voxels of every label of every
    case (patient, its slices a volume), drawn uniformly without replacement; cases in sorted order."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    patients = np.asarray(patients)
    out = []
    for cap in caps:
        rows = []
        for case, patient in enumerate(sorted(set(patients.tolist()))):
            slices = np.flatnonzero(patients == patient)
            volume = labels[slices]
            for value in np.unique(volume):
                where = np.flatnonzero(volume == value)
                pick = np.sort(rng.choice(where, size=min(cap, where.size), replace=False))
                s, r, c = np.unravel_index(pick, volume.shape)
                rows.append(np.stack([slices[s], r, c, np.full(len(s), case), np.full(len(s), value)], axis=1))
        out.append(np.concatenate(rows).astype(np.int64))
    return out


def read_at(feature: "torch.Tensor", rows: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(m, C) values of a (1, C, h, w) map upsampled to ``size`` (bilinear, align_corners=False) at (row, column)
    ``rows`` (m, 2): grid_sample at the points equals F.interpolate followed by indexing, without the full map."""
    import torch
    import torch.nn.functional as F
    h, w = size
    y = (rows[:, 0] + 0.5) / h * 2 - 1                   # output pixel centres in grid_sample's [-1, 1] frame
    x = (rows[:, 1] + 0.5) / w * 2 - 1
    grid = torch.from_numpy(np.stack([x, y], axis=1)).to(feature)[None, None]     # (1, 1, m, 2)
    values = F.grid_sample(feature.float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
    return values[0, :, 0].T.cpu().numpy()


def model_features(net, images: "torch.Tensor", voxels: Sequence[np.ndarray], batch_size: int = 16
                   ) -> Tuple[List[np.ndarray], np.ndarray]:
    """One pass of ``net`` over the slices the voxels touch: per scale, the tapped decoder layer read at that scale's
    voxels, (n_k, C_k); and the network's softmax at the finest scale's voxels, (n, source classes)."""
    import torch
    from networks import tapped
    layers = net.decoder_scales()
    if len(layers) not in (1, len(voxels)):
        raise ValueError(f"{type(net).__name__} taps {len(layers)} decoder scales for {len(voxels)} voxel scales")
    layers = layers if len(layers) == len(voxels) else layers * len(voxels)       # one-scale nets: the same map
    needed = np.unique(np.concatenate([v[:, 0] for v in voxels]))
    features: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in voxels]
    probs: List[Tuple[np.ndarray, np.ndarray]] = []
    size = tuple(images.shape[-2:])
    net.eval()
    with tapped(net, sorted(set(layers))) as taps, torch.no_grad():
        for start in range(0, len(needed), batch_size):
            batch = needed[start:start + batch_size]
            out = torch.softmax(net(images[torch.from_numpy(batch)].float()).float(), dim=1)
            for j, s in enumerate(batch):
                for k, (layer, v) in enumerate(zip(layers, voxels)):
                    at = np.flatnonzero(v[:, 0] == s)
                    if at.size:
                        features[k].append((at, read_at(taps[layer][j:j + 1], v[at, 1:3], size)))
                at = np.flatnonzero(voxels[-1][:, 0] == s)
                if at.size:
                    probs.append((at, out[j][:, voxels[-1][at, 1], voxels[-1][at, 2]].T.numpy()))
    return [_in_order(parts, len(v)) for parts, v in zip(features, voxels)], _in_order(probs, len(voxels[-1]))


def _in_order(parts: List[Tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Rows gathered slice by slice, put back in the voxel table's order."""
    out = np.empty((n, parts[0][1].shape[1]), dtype=np.float64)
    for at, values in parts:
        out[at] = values
    return out


def score_model(features: Sequence[np.ndarray], probs: np.ndarray, voxels: Sequence[np.ndarray],
                layers: Sequence[str], name: str) -> Dict[str, float]:
    """Every estimator and Table 2 ablation on one model's sampled features, with its seconds; the baselines read the
    finest scale (the input of the final 1x1 conv), CC-FV every scale. NaN channels stop with the model's name;
    constant channels are counted in the row."""
    import time
    row: Dict[str, float] = {}
    for layer, f in zip(layers, features):
        if not np.isfinite(f).all():
            raise ValueError(f"{name}: layer {layer} gives NaN or inf features on the pool's voxels")
    row["constant_channels"] = sum(len(check_features(f, f"{name} {layer}", allow_constant=True))
                                   for layer, f in zip(layers, features))
    fine, labels = features[-1], voxels[-1][:, 4]
    per_case = [[f[v[:, 3] == c] for c in np.unique(v[:, 3])] for f, v in zip(features, voxels)]
    per_case_labels = [[v[v[:, 3] == c, 4] for c in np.unique(v[:, 3])] for v in voxels]
    jobs = {"logme": lambda: logme(fine, labels), "leep": lambda: leep(probs, labels),
            "gbc": lambda: gbc(fine, labels), "transrate": lambda: transrate(fine, labels),
            "ccfv_code": lambda: ccfv(per_case, per_case_labels, variant="code", names=layers)}
    jobs.update({f"ccfv{'' if k == 'ccfv' else '_' + k}": (lambda kw=kw: ccfv(per_case, per_case_labels, names=layers, **kw))
                 for k, kw in ABLATIONS.items()})
    for key, job in jobs.items():
        t0 = time.perf_counter()
        row[key] = job()
        row[f"{key}_s"] = time.perf_counter() - t0
    return row


def candidate_name(checkpoint: Path, root: Optional[Path] = None) -> str:
    """A bank entry's name: its path below ``root`` (else as given) without .pkl, '/' -> '_' (e.g. baseline_1_last)."""
    path = checkpoint.relative_to(root) if root is not None and checkpoint.is_relative_to(root) else checkpoint
    return str(path.with_suffix("")).strip("/").replace("/", "_")


def fine_tuned_scores(runs: Sequence[Path]) -> pd.DataFrame:
    """target, candidate, seed, sdice, dice, seconds of fine-tuning runs named <root>/<target>/ft/<candidate>_s<seed>."""
    from report import read_table
    rows = []
    for run in runs:
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if match is None or run.parent.name != "ft":
            raise ValueError(f"{run}: a fine-tuning run of the bank is named <target>/ft/<candidate>_s<seed>")
        test = read_table(run / "test_metrics.csv", ["sdice", "dice"])
        stats = read_table(run / "run_stats.csv", ["name", "value"]).set_index("name")["value"]
        rows.append({"target": run.parent.parent.name, "candidate": match.group(1), "seed": int(match.group(2)),
                     "sdice": 100 * test["sdice"].mean(), "dice": 100 * test["dice"].mean(), "ft_s": stats["total"]})
    return pd.DataFrame(rows)


def agreement(scores: np.ndarray, performance: np.ndarray) -> Dict[str, float]:
    """Weighted tau and Pearson r of a ranking, NaN (undefined) where either side is constant."""
    if np.ptp(scores) == 0 or np.ptp(performance) == 0:
        return {"tau": np.nan, "pearson": np.nan}
    return {"tau": weighted_tau(scores, performance), "pearson": pearson(scores, performance)}


def ranking_table(scores: pd.DataFrame, estimators: Sequence[str]) -> pd.DataFrame:
    """Per estimator and target: weighted tau and Pearson of its scores against the fine-tuned surface Dice (mean
    over seeds); the ceiling row: the weighted tau between the first two seeds' surface Dice. Undefined (NaN) where
    either side is constant, e.g. when every fine-tuning failed alike."""
    rows = []
    for target, group in scores.groupby("target", sort=True):
        performance = group["sdice"].to_numpy()
        for name in estimators:
            rows.append({"estimator": name, "target": target, **agreement(group[name].to_numpy(), performance)})
        seeds = [c for c in group.columns if re.fullmatch(r"sdice_s\d+", c)]
        if len(seeds) >= 2:
            rows.append({"estimator": "ceiling (seed vs seed)", "target": target,
                         **agreement(group[seeds[0]].to_numpy(), group[seeds[1]].to_numpy())})
    return pd.DataFrame(rows)


def ranking_markdown(table: pd.DataFrame) -> List[str]:
    targets = sorted(table["target"].unique())
    head = " | ".join(f"tau {t}" for t in targets) + " | mean tau | " + " | ".join(f"r {t}" for t in targets)
    lines = [f"| estimator | {head} | mean r |", "|---|" + "---|" * (2 * len(targets) + 2)]
    for name, group in table.groupby("estimator", sort=False):
        g = group.set_index("target")
        lines.append(f"| {name} | " + " | ".join(f"{g.loc[t, 'tau']:.3f}" for t in targets)
                     + f" | **{g['tau'].mean():.3f}** | " + " | ".join(f"{g.loc[t, 'pearson']:.3f}" for t in targets)
                     + f" | {g['pearson'].mean():.3f} |")
    return lines


VARIANT_NOTE = {"ccfv": "CC-FV, paper variant (Eq. 2-5: mean W2 over case pairs, per-case variety, mean over scales)",
                "ccfv_code": "CC-FV, code variant (running-total consistency, energy of case means, sum over scales)",
                "logme": "LogME (finest scale)", "leep": "LEEP (the model's own head)",
                "gbc": "GBC (diagonal, PCA 64, finest scale)", "transrate": "TransRate (TLlib form, finest scale)"}


def transfer_report(scores: pd.DataFrame, title: str) -> str:
    """seed 001's Table 1 (estimators) and Table 2 (CC-FV ablations, paper variant), and what scoring costs."""
    table1 = ranking_table(scores, ESTIMATORS)
    ablations = [f"ccfv_{k}" for k in ABLATIONS if k != "ccfv"]
    table2 = ranking_table(scores, ["ccfv", *ablations])
    table2 = table2[table2["estimator"] != "ceiling (seed vs seed)"]
    seeds = sorted(int(c[7:]) for c in scores.columns if re.fullmatch(r"sdice_s\d+", c))
    means = table1.groupby("estimator", sort=False)["tau"].mean()
    best = means.drop(["ccfv", "ccfv_code", "ceiling (seed vs seed)"], errors="ignore").dropna()
    leader = (f"the best baseline's ({best.idxmax()}) {best.max():.3f}" if len(best)
              else "no baseline's (undefined: a constant score or truth)")
    score_s = scores[[f"{e}_s" for e in ESTIMATORS]].sum(axis=1) + scores["forward_s"]
    lines = [f"# {title}\n", f"{len(scores)} candidate models over {scores['target'].nunique()} target domain(s); "
             f"ground truth: each candidate fine-tuned (ft_all) on the target's annotated pool, mean test surface Dice "
             f"over fine-tuning seeds {seeds}. Weighted Kendall tau (scipy) and Pearson r of each estimator's score "
             "against it; the ceiling row ranks one fine-tuning seed by the other.\n",
             "## Table 1: estimators\n", *ranking_markdown(table1), "",
             *[f"- {k}: {v}" for k, v in VARIANT_NOTE.items()], "",
             f"CC-FV's mean tau {means.get('ccfv', np.nan):.3f} against {leader} and the ceiling "
             f"{means.get('ceiling (seed vs seed)', np.nan):.3f} (nan: undefined, a constant score or truth).\n",
             "## Table 2: CC-FV ablations (paper variant)\n", *ranking_markdown(table2), "",
             f"Scoring one model (one forward pass over the pool's sampled slices and every estimator) takes "
             f"{score_s.mean():.1f} s on average; fine-tuning one takes {scores['ft_s'].mean():.1f} s: "
             f"{100 * score_s.mean() / scores['ft_s'].mean():.1f} %.\n"]
    return "\n".join(lines)


def scatter(scores: pd.DataFrame, out: Path) -> None:
    """Per target (rows) and estimator (columns): score against fine-tuned surface Dice, the top-ranked model ringed."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils import atomic_output
    targets = sorted(scores["target"].unique())
    fig, axes = plt.subplots(len(targets), len(ESTIMATORS), figsize=(3 * len(ESTIMATORS), 2.8 * len(targets)),
                             squeeze=False)
    for i, target in enumerate(targets):
        group = scores[scores["target"] == target]
        for j, name in enumerate(ESTIMATORS):
            ax = axes[i, j]
            ax.scatter(group[name], group["sdice"], s=14)
            top = group.loc[group[name].idxmax()]
            ax.scatter([top[name]], [top["sdice"]], s=90, facecolors="none", edgecolors="red")
            ax.set_title(f"{name}, target {target}: tau {agreement(group[name].to_numpy(), group['sdice'].to_numpy())['tau']:.2f}",
                         fontsize=8)
            ax.set_xlabel("score", fontsize=7)
            ax.set_ylabel("fine-tuned surface Dice" if j == 0 else "", fontsize=7)
    fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def load_pool(split: Path, folders: str, grp_regex: str, n_class: int):
    """The target's annotated pool (a dataloader.SliceSet), refused when it cannot support the estimators."""
    from dataloader import load_slices
    from options import parse_folders
    pool = load_slices(split, parse_folders(folders, "--folders"), n_class, grp_regex)
    cases = sorted(set(pool.patients))
    if len(cases) < 2:
        raise ValueError(f"{split}: the annotated pool holds {len(cases)} case(s); CC-FV's class consistency compares "
                         f"cases, so the pool needs at least 2 (NADD >= 2)")
    present = set(np.unique(pool.labels.numpy()).tolist())
    absent = [k for k in range(1, n_class) if k not in present]
    if absent:
        raise ValueError(f"{split}: class(es) {absent} occur in no case of the pool")
    return pool


def sample_main(args: argparse.Namespace) -> None:
    from utils import atomic_output
    pool = load_pool(args.pool, args.folders, args.grp_regex, args.n_class)
    voxels = sample_voxels(pool.labels.numpy(), pool.patients, args.caps, args.seed)
    with atomic_output(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"scale{k}": v for k, v in enumerate(voxels)}, caps=np.asarray(args.caps))
    print(f"wrote {args.out}: " + ", ".join(f"scale {k}: {len(v)} voxels" for k, v in enumerate(voxels))
          + f" over {len(set(pool.patients))} cases")


def read_voxels(path: Path) -> List[np.ndarray]:
    with np.load(path) as f:
        return [f[f"scale{k}"] for k in range(len(f["caps"]))]


def score_main(args: argparse.Namespace) -> None:
    import time
    import torch
    from networks import build_network, load_checkpoint
    ckpt = load_checkpoint(args.model)
    net = build_network(ckpt["network"], **ckpt["kwargs"])
    net.load_state_dict(ckpt["state_dict"])
    pool = load_pool(args.pool, args.folders, args.grp_regex, args.n_class)
    voxels = read_voxels(args.voxels)
    if any(v[:, 0].max() >= len(pool) for v in voxels):
        raise ValueError(f"{args.voxels}: voxels sampled on another pool (slice index beyond the {len(pool)} slices)")
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(args.threads or torch.get_num_threads())
    t0 = time.perf_counter()
    features, probs = model_features(net, pool.images, voxels)
    forward_s = time.perf_counter() - t0
    layers = net.decoder_scales() * (len(voxels) if len(net.decoder_scales()) == 1 else 1)
    with threadpool_limits(limits=args.threads):        # numpy's BLAS too: two jobs of make -j2 on two cores
        scores = score_model(features, probs, voxels, layers, args.name)
    row = {"candidate": args.name, "network": ckpt["network"], "checkpoint": str(args.model), "forward_s": forward_s,
           **scores}
    write_rows(pd.DataFrame([row]), args.out)
    print(pd.DataFrame([row]).T.to_string(header=False))


def write_rows(table: pd.DataFrame, out: Path) -> None:
    from utils import atomic_output
    with atomic_output(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def report_main(args: argparse.Namespace) -> None:
    from report import read_table
    from utils import atomic_output
    scored = pd.concat([read_table(p, ["candidate"]).assign(target=p.parent.parent.name) for p in args.scores])
    tuned = fine_tuned_scores(args.ft)
    per_seed = tuned.pivot_table(index=["target", "candidate"], columns="seed", values=["sdice", "dice"])
    per_seed.columns = [f"{m}_s{s}" for m, s in per_seed.columns]
    means = tuned.groupby(["target", "candidate"])[["sdice", "dice", "ft_s"]].mean()
    table = scored.merge(per_seed.join(means).reset_index(), on=["target", "candidate"], how="left")
    missing = table[table["sdice"].isna()]
    if len(missing):
        raise ValueError(f"no fine-tuning run for {', '.join(missing['target'] + '/' + missing['candidate'])}")
    write_rows(table, args.out.parent / "scores.csv")
    scatter(table, args.out.parent / "scatter.png")
    text = transfer_report(table, args.title)
    with atomic_output(args.out) as tmp:
        tmp.write_text(text)
    print(text)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from utils import one_error_line
    from networks import CheckpointError
    from dataloader import DataError
    parser = argparse.ArgumentParser(description="transferability of a model bank to a target (seed 001)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sample", "score"):
        p = sub.add_parser(name)
        p.add_argument("--pool", type=Path, required=True, help="the target's annotated slices (a split folder)")
        p.add_argument("--folders", required=True, help="[('IMG', transform, False), ('GT', transform, False)]")
        p.add_argument("--grp_regex", required=True)
        p.add_argument("--n_class", type=int, default=2)
        p.add_argument("--out", type=Path, required=True)
    sample = sub.choices["sample"]
    sample.add_argument("--caps", type=int, nargs="+", default=list(CAPS), help="voxels per label and case per scale")
    sample.add_argument("--seed", type=int, default=0)
    score = sub.choices["score"]
    score.add_argument("--model", type=Path, required=True, help="a state-dict checkpoint (networks.save_checkpoint)")
    score.add_argument("--name", required=True, help="the candidate's name in the tables")
    score.add_argument("--voxels", type=Path, required=True, help="the coordinates `sample` wrote")
    score.add_argument("--threads", type=int)
    rep = sub.add_parser("report")
    rep.add_argument("--scores", type=Path, nargs="+", required=True, help="<target>/score/<candidate>.csv")
    rep.add_argument("--ft", type=Path, nargs="+", required=True, help="<target>/ft/<candidate>_s<seed> runs")
    rep.add_argument("--title", default="Which pre-trained model to reuse")
    rep.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    command = {"sample": sample_main, "score": score_main, "report": report_main}[args.command]

    def run(_: object) -> int:
        try:
            command(args)
        except (CheckpointError, DataError) as e:
            raise ValueError(str(e)) from None
        return 0
    return one_error_line(run, None)


if __name__ == "__main__":
    sys.exit(main())
