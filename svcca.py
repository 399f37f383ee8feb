"""CCA and SVCCA between two layers' activations (seed 002, methods/svcca_ttl.md Part 1).

Activations are matrices with one row per neuron and one column per data point; both layers must be read on
the same inputs, so the columns correspond. CCA follows google/svcca's cca_core.get_cca_similarity (written
anew here, not copied): covariance with ddof 1, each block scaled by its largest entry, neurons of (near) zero
variance dropped, epsilon added on the diagonals, inverse square roots, and the singular values of
Sxx^-1/2 Sxy Syy^-1/2. SVCCA (Raghu et al., NeurIPS 2017) first keeps the top singular directions that explain
99 % of each layer's variance (squared singular values) and reports the mean of all canonical correlations.

Conv maps (N, C, *S) become (C, N * prod(S)): each spatial position of each image is one data point
(tutorial 002, "folding"). Maps at different resolutions are first brought to the same size by bilinear
(trilinear in 3D) upsampling of the coarser one.
"""
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Tuple, Union

import sys

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    import pandas as pd

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


def match_spatial(a: Array, b: Array) -> Tuple[torch.Tensor, torch.Tensor]:
    """Conv maps (N, Ca, *Sa) and (N, Cb, *Sb) at a common size: each axis upsampled to the larger of the two.

    Bilinear (1-D linear, 3-D trilinear) with align_corners=False, as F.interpolate and protoseg.resized; a map
    already at the target size is returned unchanged (as a tensor). Nothing is ever downsampled.
    """
    ta, tb = (x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x)) for x in (a, b))
    if ta.dim() != tb.dim() or ta.dim() not in (3, 4, 5):
        raise ValueError(f"conv maps must both be (N, C, *spatial) with 1 to 3 spatial axes; "
                         f"got {tuple(ta.shape)} and {tuple(tb.shape)}")
    if ta.shape[0] != tb.shape[0]:
        raise ValueError(f"conv maps {tuple(ta.shape)} and {tuple(tb.shape)} hold different numbers of images")
    size = tuple(max(p, q) for p, q in zip(ta.shape[2:], tb.shape[2:]))
    mode = {3: "linear", 4: "bilinear", 5: "trilinear"}[ta.dim()]

    def up(t: torch.Tensor) -> torch.Tensor:
        if tuple(t.shape[2:]) == size:
            return t
        return F.interpolate(t.double() if not t.is_floating_point() else t, size=size, mode=mode,
                             align_corners=False)

    return up(ta), up(tb)


def svcca_maps(a: Array, b: Array, keep: float = 0.99, max_points: Optional[int] = None,
               seed: int = 0) -> float:
    """SVCCA between two conv maps of the same images: match resolutions, fold, (subsample), svcca."""
    ta, tb = match_spatial(a, b)
    return svcca(fold_conv(ta, max_points, seed), fold_conv(tb, max_points, seed), keep)


# ---------------------------------------------------------------- seed 002's analyses (cc359.make's layers stage)
#   svcca.py layers --base BASELINE.pkl --models ft_all=RUN ttl=RUN ... --split SLICES --folders F --grp_regex R --out DIR
#   svcca.py complexity --runs RUN... --split SLICES --folders F --grp_regex R [--params reuse_params.csv] --out CSV
#   svcca.py anatomy --shift shift_vs_policy.csv --svcca DIR... --out anatomy.md

SVCCA_IMAGES = 32          # target slices the activations are read on (evenly spaced over the split)
SVCCA_POINTS = 4096        # data points kept per folded map (a fixed random subset of positions)


def evenly_spaced(n_total: int, n: int) -> torch.Tensor:
    return torch.linspace(0, n_total - 1, min(n, n_total)).round().long().unique()


def activations(net, images: torch.Tensor, layers, batch_size: int = 16) -> dict:
    """Every named feature layer's output on ``images`` (N, 1, H, W), as (N, C, h, w) float32 tensors."""
    from networks import tapped
    net.eval()
    out = {name: [] for name in layers}
    with tapped(net, layers) as taps, torch.no_grad():
        for start in range(0, len(images), batch_size):
            net(images[start:start + batch_size].float())
            for name in layers:
                out[name].append(taps[name].float())
    return {name: torch.cat(v) for name, v in out.items()}


def plain_network(path) -> "torch.nn.Module":
    """A checkpoint's network; SpotTUnet's becomes its tuned copy (the units it fine-tuned)."""
    from networks import SpotTUnet, network_from_checkpoint, tuned_copy
    net = network_from_checkpoint(path, "checkpoint", 2)
    return tuned_copy(net) if isinstance(net, SpotTUnet) else net


class FoldedMaps:
    """Each layer's maps upsampled to a size and folded (SVCCA_POINTS positions kept), each (layer, size) once:
    what svcca_maps does per pair, shared by the every-layer-against-every-layer matrix."""

    def __init__(self, acts: dict, seed: int):
        self.acts, self.seed, self.cache = acts, seed, {}

    def at(self, name: str, size) -> np.ndarray:
        if (name, size) not in self.cache:
            maps = self.acts[name]
            if tuple(maps.shape[2:]) != size:
                maps = F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
            self.cache[(name, size)] = fold_conv(maps, SVCCA_POINTS, self.seed)
        return self.cache[(name, size)]


def safe_svcca(a: FoldedMaps, i: str, b: FoldedMaps, j: str, what: str) -> float:
    """SVCCA of layer i of ``a`` with layer j of ``b`` (the coarser map upsampled to the finer one's size), or NaN
    with one line on stderr when they cannot be compared (too few data points for the neurons, or a constant
    layer), so that one such layer does not hide the others."""
    size = tuple(max(p, q) for p, q in zip(a.acts[i].shape[2:], b.acts[j].shape[2:]))
    try:
        return svcca(a.at(i, size), b.at(j, size))
    except ValueError as e:
        print(f"svcca: {what}: NaN ({e})", file=sys.stderr)
        return np.nan


def layers_main(args) -> int:
    import pandas as pd
    from networks import build_network
    from utils import atomic_output
    data = read_split(args)
    images = data.images[evenly_spaced(len(data), SVCCA_IMAGES)]
    base_net = plain_network(args.base)
    names = base_net.feature_layers()
    base = activations(base_net, images, names)
    torch.manual_seed(args.seed)                                # the random-features line (seed 002, Fig. 4 i)
    models = {"random": build_network(type(base_net).__name__, **base_net.init_kwargs)}
    for spec in args.models:
        label, _, path = spec.partition("=")
        models[label] = plain_network(Path(path))
    first = next((label for label in models if label != "random"), None)
    base_at, first_at, rows = FoldedMaps(base, args.seed), None, []
    for label, net in models.items():
        other = FoldedMaps(activations(net, images, [n for n in names if n in net.feature_layers()]), args.seed)
        for order, name in enumerate(names, start=1):      # per layer: NaN where the model lacks it (TTL)
            value = safe_svcca(base_at, name, other, name, f"{label} {name}") if name in other.acts else np.nan
            rows.append({"model": label, "layer": name, "order": order, "svcca": value})
        first_at = other if label == first else first_at
    table = pd.DataFrame(rows)
    matrix = None
    if first_at is not None:                    # Fig. 4 ii: every layer before against every layer after
        matrix = pd.DataFrame([[safe_svcca(base_at, i, first_at, j, f"{i} vs {first} {j}") for j in first_at.acts]
                               for i in names], index=names, columns=list(first_at.acts))
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        table.to_csv(tmp / "svcca_layers.csv", index=False, float_format="%.6g")
        if matrix is not None:
            matrix.rename_axis("before").to_csv(tmp / "svcca_matrix.csv", float_format="%.6g")
        draw_layers(table, matrix, first, args.title, tmp / "svcca_layers.png")
    print(table.pivot(index="layer", columns="model", values="svcca").reindex(names).round(3).to_string())
    return 0


def draw_layers(table, matrix, first: Optional[str], title: str, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from utils import save_figure
    fig, axes = plt.subplots(1, 2 if matrix is not None else 1, figsize=(13, 4.5), squeeze=False)
    left = axes[0, 0]
    for i, (label, rows) in enumerate(table.groupby("model", sort=False)):
        style = dict(color="grey", ls="--") if label == "random" else dict(color=f"C{i}", marker="o", ms=3)
        left.plot(rows["order"], rows["svcca"], label=label, **style)
    names = table.drop_duplicates("order")["layer"]
    left.set_xticks(range(1, len(names) + 1), names, rotation=90, fontsize=6)
    left.set_ylim(0, 1)
    left.set_ylabel("SVCCA with the baseline's layer")
    left.set_title(title, fontsize=9)
    left.legend(fontsize=7)
    left.grid(alpha=0.3)
    if matrix is not None:
        right = axes[0, 1]
        shown = right.imshow(matrix.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        right.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=90, fontsize=5)
        right.set_yticks(range(matrix.shape[0]), matrix.index, fontsize=5)
        right.set_xlabel(f"{first} (after fine-tuning)")
        right.set_ylabel("baseline (before)")
        fig.colorbar(shown, ax=right, shrink=0.8, label="SVCCA")
    save_figure(fig, out)


def read_split(args):
    from dataloader import load_slices
    from options import parse_folders
    return load_slices(args.split, parse_folders(args.folders, "--folders"), 2, args.grp_regex, args.debug)


def inference_ms(nets: list, image: "torch.Tensor", repeats: int = 20) -> list:
    """CPU milliseconds per slice of each network: the fastest of ``repeats`` single-slice forward passes of
    ``image`` (1, C, H, W) after two warm-ups. The networks take turns pass by pass, so that whatever drifts during
    the measurement (caches, clock, other work) falls on all of them alike; the minimum is the least disturbed."""
    import time
    times = [[] for _ in nets]
    with torch.no_grad():
        for net in nets:
            net.eval()
            for _ in range(2):
                net(image)
        for _ in range(repeats):
            for net, kept in zip(nets, times):
                t0 = time.perf_counter()
                net(image)
                kept.append(time.perf_counter() - t0)
    return [1000 * min(kept) for kept in times]


def complexity_main(args) -> int:
    """Parameters, multiply-adds and CPU ms per slice of every fine-tuned model, beside its test scores."""
    import pandas as pd
    from networks import multiply_adds, network_from_checkpoint
    from cc359_report import parse_run
    from utils import write_csv_atomic, write_text_atomic
    torch.set_num_threads(1)
    data = read_split(args)
    shape = tuple(data.images.shape[1:])
    rows, nets = [], []
    for run in args.runs:
        net = network_from_checkpoint(run / "last.pkl", "checkpoint", 2)
        scores = pd.read_csv(run / "test_metrics.csv")
        info = parse_run(run)
        rows.append({"run": str(run), "method": info["method"], "pair": f"{info['source']}_{info['target']}",
                     "budget": info["budget"], "sdice": scores["sdice"].mean(), "dice": scores["dice"].mean(),
                     "params": sum(p.numel() for p in net.parameters()), "macs": multiply_adds(net, shape)})
        nets.append(net)
    image = data.images[len(data) // 2][None].float()         # a real slice: activations as in use
    table = pd.DataFrame(rows).assign(ms=inference_ms(nets, image))
    write_csv_atomic(table, args.out, float_format="%.6g")
    params = pd.read_csv(args.params) if args.params else None
    text = complexity_report(table, params, shape, args.title)
    write_text_atomic(text, args.out.with_suffix(".md"))
    print(text)
    return 0


def complexity_report(table, params, shape, title: str) -> str:
    """Markdown: per method and budget, mean test surface Dice and the model's size, cost and time, and each
    against ft_all (seed 002's P / MACs / T columns)."""
    per = table.groupby(["method", "budget"], sort=False)[["sdice", "dice", "params", "macs", "ms"]].mean()
    lines = [f"# {title}\n", f"Mean over the test pairs per method and budget; multiply-adds of one {shape[1]} x "
             f"{shape[2]} slice (torch.utils.flop_counter: convolutions and matrix products), CPU milliseconds per "
             "slice (one thread, the fastest of 20 passes of one real test slice, the models taking turns pass by "
             "pass). SpotTUnet runs both copies of every unit and its policy.\n",
             "| method | N | surface Dice | Dice | parameters | MACs (M) | ms / slice | vs ft_all: "
             "sDice, parameters, MACs, ms |", "|---|---|---|---|---|---|---|---|"]
    for (method, budget), r in per.iterrows():
        ref = per.loc[("ft_all", budget)] if ("ft_all", budget) in per.index else None
        versus = "–" if ref is None or method == "ft_all" else (
            f"{100 * (r['sdice'] - ref['sdice']):+.1f}, {r['params'] / ref['params']:.2f}x, "
            f"{r['macs'] / ref['macs']:.2f}x, {r['ms'] / ref['ms']:.2f}x")
        lines.append(f"| {method} | {budget:g} | {100 * r['sdice']:.1f} | {100 * r['dice']:.1f} | {r['params']:,.0f} | "
                     f"{r['macs'] / 1e6:.1f} | {r['ms']:.2f} | {versus} |")
    if params is not None:
        lines += ["", "Level k of each reuse strategy, chosen on the validation pairs (mean surface Dice per k):", ""]
        lines += [f"- {r['method']}: k = {r['k']} ({r['grid']})" for r in params.to_dict("records")]
    return "\n".join(lines) + "\n"


def anatomy_table(shift, svcca_tables) -> "pd.DataFrame":
    """Per feature layer: SpotTUnet's fine-tuned share per budget and the SA drop under shift (protoseg.py shift),
    beside 1 - SVCCA(baseline, ft_all) on the target, mean over the test pairs (how much fine-tuning moved it)."""
    import pandas as pd
    moved = pd.concat([t[t["model"] == "ft_all"].set_index("layer")["svcca"] for t in svcca_tables], axis=1)
    table = shift.set_index("layer")
    table["svcca_ft_all"] = moved.mean(axis=1).reindex(table.index)
    table["moved"] = 1 - table["svcca_ft_all"]
    return table.reset_index()


def anatomy_report(table, title: str) -> str:
    """Markdown: the table and Spearman's rho between the three views of which layers carry the shift."""
    from scipy.stats import spearmanr
    budgets = [c for c in table.columns if c.startswith("p_finetuned_n")]
    views = {"SpotTUnet fine-tuned share" + (f" (N = {budgets[-1][13:]})" if budgets else ""):
             budgets[-1] if budgets else None, "1 - SVCCA(baseline, ft_all)": "moved", "SA drop under shift": "sa_drop"}
    views = {k: v for k, v in views.items() if v is not None}
    lines = [f"# {title}\n", "Per feature layer of the residual U-Net: how often SpotTUnet fine-tunes it (share of test "
             "slices, mean over the test pairs), how far full fine-tuning moved it (1 - SVCCA between the baseline's "
             "and ft_all's layer on the target's test slices, mean over the pairs), and how much of its segmentation "
             "ability the shift took (ProtoSeg SA on source validation minus on the target, x100).\n",
             "| layer | " + " | ".join(f"fine-tuned, N = {c[13:]}" for c in budgets) + " | 1 - SVCCA | SA drop |",
             "|---|" + "---|" * (len(budgets) + 2)]
    for r in table.to_dict("records"):
        lines.append(f"| {r['layer']} | " + " | ".join(f"{r[c]:.2f}" for c in budgets)
                     + f" | {r['moved']:.3f} | {100 * r['sa_drop']:+.1f} |")
    lines += ["", "Rank correlations between the views (Spearman's rho, p, layers):", ""]
    names = list(views)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            both = table[[views[names[i]], views[names[j]]]].dropna()
            varies = len(both) > 2 and all(both[c].nunique() > 1 for c in both.columns)
            rho, p = spearmanr(both.iloc[:, 0], both.iloc[:, 1]) if varies else (np.nan, np.nan)
            lines.append(f"- {names[i]} vs {names[j]}: rho {rho:+.2f} (p = {p:.2g}, {len(both)} layers)")
    return "\n".join(lines) + "\n"


def anatomy_main(args) -> int:
    from plot import unet_panels
    from report import read_table
    from utils import write_csv_atomic, write_text_atomic
    shift = read_table(args.shift, ["layer", "sa_drop"])
    tables = [read_table(d / "svcca_layers.csv", ["model", "layer", "svcca"]) for d in args.svcca]
    table = anatomy_table(shift, tables)
    text = anatomy_report(table, args.title)
    write_csv_atomic(table, args.out.with_suffix(".csv"), float_format="%.6g")
    budgets = [c for c in table.columns if c.startswith("p_finetuned_n")]
    by_layer = table.set_index("layer")
    panels = [(f"SpotTUnet: share of test slices fine-tuning the unit, N = {budgets[-1][13:]}",
               by_layer[budgets[-1]].to_dict())] if budgets else []
    panels += [("ft_all: 1 - SVCCA with the baseline (how far fine-tuning moved the layer)", by_layer["moved"].to_dict()),
               ("ProtoSeg: SA drop under shift (source validation minus target, x100)",
                (100 * by_layer["sa_drop"]).to_dict())]
    unet_panels(panels, args.out.with_suffix(".png"), "", limits=None)
    write_text_atomic(text, args.out)
    print(text)
    return 0


def main(argv=None) -> int:
    import argparse
    from dataloader import DataError
    from networks import CheckpointError
    parser = argparse.ArgumentParser(description="seed 002's layer analyses: SVCCA per layer (layers), size and cost "
                                                 "of fine-tuned models (complexity), three views of the shift (anatomy)")
    parser.add_argument("command", choices=["layers", "complexity", "anatomy"])
    parser.add_argument("--base", type=Path, help="layers: the baseline checkpoint")
    parser.add_argument("--models", nargs="*", default=[], help="layers: LABEL=CHECKPOINT, the first drawn against "
                                                                "the baseline layer by layer (Fig. 4 ii)")
    parser.add_argument("--runs", nargs="*", type=Path, default=[], help="complexity: fine-tuned run folders")
    parser.add_argument("--params", type=Path, help="complexity: reuse_params.csv (the chosen k)")
    parser.add_argument("--split", type=Path, help="layers, complexity: the target slices (image and GT folders)")
    parser.add_argument("--folders", help="as main.py's --target_folders")
    parser.add_argument("--grp_regex", default=r"CC\d+_\d+")
    parser.add_argument("--shift", type=Path, help="anatomy: protoseg.py shift's csv")
    parser.add_argument("--svcca", nargs="*", type=Path, default=[], help="anatomy: layers output folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--title", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    needs = {"layers": ("base", "split", "folders"), "complexity": ("runs", "split", "folders"),
             "anatomy": ("shift", "svcca")}[args.command]
    missing = [n for n in needs if not getattr(args, n)]
    if missing:
        parser.error(f"{args.command} needs --{' --'.join(missing)}")
    from threadpoolctl import threadpool_limits
    if args.threads:
        torch.set_num_threads(args.threads)
    run = {"layers": layers_main, "complexity": complexity_main, "anatomy": anatomy_main}[args.command]
    try:
        with threadpool_limits(limits=args.threads):    # numpy's BLAS too (oversubscribed under make -j, 60x slower)
            return run(args)
    except (DataError, CheckpointError, FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
