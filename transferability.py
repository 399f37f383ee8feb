"""Transferability estimation (seed 001; docs/methods/ccfv.md, docs/methods/transferability_baselines.md).

Every score takes numpy arrays and returns a float oriented so that HIGHER predicts BETTER transfer:
LogME, LEEP, GBC, TransRate and CC-FV (both its `paper` and `code` variants, with the ablations of the
paper's Table 2), plus the ranking metrics (weighted Kendall tau, Pearson) used to judge them.

Shapes: features (n_samples, channels) sampled voxel feature vectors, labels (n_samples,) integer classes,
0 = background. CC-FV takes several scales: features[scale][case] is (n_case_samples, channels_scale) and
labels[scale][case] the labels of those rows (sampling caps differ per scale, so labels are per scale).
Bad input raises ValueError naming the problem, never assert (CFLAGS=-O removes asserts).
"""
import warnings
from typing import List, Optional, Sequence, Tuple

import numpy as np
import scipy.linalg
import scipy.stats
from scipy.spatial.distance import cdist

# Table 2 of seed 001 as keyword arguments of ccfv(); "single_scale" keeps the last scale given (by convention
# the finest one, the input of the final 1x1 conv, which is also the layer the baselines read).
# "variety_eps0": the variety's energy without the eps the project adds (Eq. 3 as printed; coincident samples then
# give an infinite energy and a score of -inf); "code_first_release": the official code's first release, which
# scored log(W / F_v), the inverse of the camera-ready log(F_v / W), with the code variant's other choices.
ABLATIONS = {"ccfv": {}, "wo_ccons": {"consistency": False}, "wo_fv": {"variety": False},
             "single_scale": {"scales": (-1,)}, "kl": {"distance": "kl"},
             "bhattacharyya": {"distance": "bhattacharyya"}, "unit": {"unit": True},
             "variety_eps0": {"variety_eps": 0.0}, "code_first_release": {"variant": "code", "inverted": True}}


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
        from sklearn.decomposition import PCA      # a heavy import (seconds) that only this optional step needs
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
         ridge: float = 1e-4, names: Optional[Sequence[str]] = None, unit: bool = False,
         inverted: bool = False) -> float:
    """CC-FV score (seed 001 Eq. 5), higher = better: per scale log(F_v / C_cons), then mean (paper) or sum (code).

    features[scale][case]: (n, C_scale) sampled features (all labels, background included); labels alike. A single
    scale may be passed as a plain list of per-case arrays. classes: foreground labels (default: every label > 0
    found). consistency / variety = False drop that term (Table 2 "w/o"); scales: indices of the scales to use;
    distance: "w2" (the method), "kl" (symmetrised) or "bhattacharyya" (full covariances + ridge) for Table 2.
    unit: L2-normalise every sampled feature vector first, a reading of the paper's "unit sphere" that neither its
    equations nor its code apply; the score is then blind to the features' scale. inverted: log(C_cons / F_v), the
    sign of the official code's first release.
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
        if unit:
            xs = [x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12) for x in xs]
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
    with np.errstate(divide="ignore"):          # variety_eps 0: coincident samples give an infinite energy, a -inf term
        return _ccfv_terms(data, chosen, classes, variant, distance, consistency, variety, s, variety_eps, ridge,
                           inverted)


def _ccfv_terms(data: list, chosen: Sequence[int], classes: Sequence[int], variant: str, distance: str,
                consistency: bool, variety: bool, s: float, variety_eps: float, ridge: float, inverted: bool) -> float:
    """ccfv's sum over the chosen scales of log(F_v) - log(C_cons), mean (paper) or sum (code), its sign inverted on
    request."""
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
    score = float(np.mean(terms) if variant == "paper" else np.sum(terms))
    return -score if inverted else score


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
