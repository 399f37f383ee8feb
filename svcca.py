"""Seed 002's layer analyses (cc359.make's layers stage): SVCCA per layer, the cost of the fine-tuned models, and
three views of which layers carry the shift.

    svcca.py layers --base BASELINE.pkl --models ft_all=RUN ttl=RUN ... --split SLICES --folders F --grp_regex R --out DIR
    svcca.py complexity --runs RUN... --split SLICES --folders F --grp_regex R [--params reuse_params.csv] --out CSV
    svcca.py anatomy --shift shift_vs_policy.csv --svcca DIR... --out anatomy.md

CCA and SVCCA themselves are cca.py's.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from cc359_report import parse_run  # noqa: E402
from cca import FoldedMaps, common_size, svcca  # noqa: E402
from checkpoints import network_from_checkpoint  # noqa: E402
from dataloader import SliceSet, load_split  # noqa: E402
from networks import build_network, tapped  # noqa: E402
from plot import unet_panels  # noqa: E402
from spottune import SpotTUnet, tuned_copy  # noqa: E402
from tables import read_table, read_test_metrics  # noqa: E402
from utils import atomic_output, evenly_spaced, one_error_line, publish, save_figure, write_csv_atomic  # noqa: E402


SVCCA_IMAGES = 32          # target slices the activations are read on (evenly spaced over the split)
SVCCA_POINTS = 4096        # data points kept per folded map (a fixed random subset of positions)


def activations(net: torch.nn.Module, images: torch.Tensor, layers: Sequence[str],
                batch_size: int = 16) -> Dict[str, torch.Tensor]:
    """Every named feature layer's output on ``images`` (N, 1, H, W), as (N, C, h, w) float32 tensors."""
    net.eval()
    out = {name: [] for name in layers}
    with tapped(net, layers) as taps, torch.no_grad():
        for start in range(0, len(images), batch_size):
            net(images[start:start + batch_size].float())
            for name in layers:
                out[name].append(taps[name].float())
    return {name: torch.cat(v) for name, v in out.items()}


def plain_network(path: Path) -> torch.nn.Module:
    """A checkpoint's network; SpotTUnet's becomes its tuned copy (the units it fine-tuned)."""
    net = network_from_checkpoint(path, "checkpoint", 2)
    return tuned_copy(net) if isinstance(net, SpotTUnet) else net


def safe_svcca(a: FoldedMaps, i: str, b: FoldedMaps, j: str, what: str) -> float:
    """SVCCA of layer i of ``a`` with layer j of ``b`` (the coarser map upsampled to the finer one's size), or NaN
    with one line on stderr when they cannot be compared (too few data points for the neurons, or a constant
    layer), so that one such layer does not hide the others."""
    size = common_size(a.maps[i].shape[2:], b.maps[j].shape[2:])
    try:
        return svcca(a.at(i, size), b.at(j, size))
    except ValueError as e:
        print(f"svcca: {what}: NaN ({e})", file=sys.stderr)
        return np.nan


def layers_main(args: argparse.Namespace) -> None:
    data = read_split(args)
    images = data.images[torch.from_numpy(evenly_spaced(len(data), SVCCA_IMAGES))]
    base_net = plain_network(args.base)
    names = base_net.feature_layers()
    base = activations(base_net, images, names)
    torch.manual_seed(args.seed)                                # the random-features line (seed 002, Fig. 4 i)
    models = {"random": build_network(type(base_net).__name__, **base_net.init_kwargs)}
    for spec in args.models:
        label, _, path = spec.partition("=")
        models[label] = plain_network(Path(path))
    first = next((label for label in models if label != "random"), None)
    base_at, first_at, rows = FoldedMaps(base, SVCCA_POINTS, args.seed), None, []
    for label, net in models.items():
        kept = [n for n in names if n in net.feature_layers()]
        other = FoldedMaps(activations(net, images, kept), SVCCA_POINTS, args.seed)
        for order, name in enumerate(names, start=1):      # per layer: NaN where the model lacks it (TTL)
            value = safe_svcca(base_at, name, other, name, f"{label} {name}") if name in other.maps else np.nan
            rows.append({"model": label, "layer": name, "order": order, "svcca": value})
        first_at = other if label == first else first_at
    table = pd.DataFrame(rows)
    matrix = None
    if first_at is not None:                    # Fig. 4 ii: every layer before against every layer after
        matrix = pd.DataFrame([[safe_svcca(base_at, i, first_at, j, f"{i} vs {first} {j}") for j in first_at.maps]
                               for i in names], index=names, columns=list(first_at.maps))
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        table.to_csv(tmp / "svcca_layers.csv", index=False, float_format="%.6g")
        if matrix is not None:
            matrix.rename_axis("before").to_csv(tmp / "svcca_matrix.csv", float_format="%.6g")
        draw_layers(table, matrix, first, args.title, tmp / "svcca_layers.png")
    print(table.pivot(index="layer", columns="model", values="svcca").reindex(names).round(3).to_string())


def draw_layers(table: pd.DataFrame, matrix: Optional[pd.DataFrame], first: Optional[str], title: str,
                out: Path) -> None:
    """SVCCA per layer of every model against the baseline (left) and the every-layer matrix (right)."""
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


def read_split(args: argparse.Namespace) -> SliceSet:
    return load_split(args.split, args.folders, 2, args.grp_regex, args.debug)


def multiply_adds(net: torch.nn.Module, shape: Sequence[int]) -> int:
    """Multiply-adds of one forward pass on a (1, *shape) input, counted by torch.utils.flop_counter (2 FLOPs each)."""
    was_training = net.training
    net.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *shape))
    net.train(was_training)
    return counter.get_total_flops() // 2


def inference_ms(nets: Sequence[torch.nn.Module], image: torch.Tensor, repeats: int = 20) -> List[float]:
    """CPU milliseconds per slice of each network: the fastest of ``repeats`` single-slice forward passes of
    ``image`` (1, C, H, W) after two warm-ups. The networks take turns pass by pass, so that whatever drifts during
    the measurement (caches, clock, other work) falls on all of them alike; the minimum is the least disturbed."""
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


def complexity_main(args: argparse.Namespace) -> None:
    """Parameters, multiply-adds and CPU ms per slice of every fine-tuned model, beside its test scores."""
    torch.set_num_threads(1)
    data = read_split(args)
    shape = tuple(data.images.shape[1:])
    rows, nets = [], []
    for run in args.runs:
        net = network_from_checkpoint(run / "last.pkl", "checkpoint", 2)
        scores = read_test_metrics(run)
        info = parse_run(run)
        rows.append({"run": str(run), "method": info["method"], "pair": f"{info['source']}_{info['target']}",
                     "budget": info["budget"], "sdice": scores["sdice"].mean(), "dice": scores["dice"].mean(),
                     "params": sum(p.numel() for p in net.parameters()), "macs": multiply_adds(net, shape)})
        nets.append(net)
    image = data.images[len(data) // 2][None].float()         # a real slice: activations as in use
    table = pd.DataFrame(rows).assign(ms=inference_ms(nets, image))
    write_csv_atomic(table, args.out, float_format="%.6g")
    params = read_table(args.params) if args.params else None
    publish(complexity_report(table, params, shape, args.title), args.out.with_suffix(".md"))


def complexity_report(table: pd.DataFrame, params: Optional[pd.DataFrame], shape: Tuple[int, ...], title: str) -> str:
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


def anatomy_table(shift: pd.DataFrame, svcca_tables: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per feature layer: SpotTUnet's fine-tuned share per budget and the SA drop under shift (protoseg.py shift),
    beside 1 - SVCCA(baseline, ft_all) on the target, mean over the test pairs (how much fine-tuning moved it)."""
    moved = pd.concat([t[t["model"] == "ft_all"].set_index("layer")["svcca"] for t in svcca_tables], axis=1)
    table = shift.set_index("layer")
    table["svcca_ft_all"] = moved.mean(axis=1).reindex(table.index)
    table["moved"] = 1 - table["svcca_ft_all"]
    return table.reset_index()


def anatomy_report(table: pd.DataFrame, title: str) -> str:
    """Markdown: the table and Spearman's rho between the three views of which layers carry the shift."""
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


def anatomy_main(args: argparse.Namespace) -> None:
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
    publish(text, args.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
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
    if args.threads:
        torch.set_num_threads(args.threads)
    run = {"layers": layers_main, "complexity": complexity_main, "anatomy": anatomy_main}[args.command]
    with threadpool_limits(limits=args.threads):    # numpy's BLAS too: jobs of make -j would oversubscribe the cores
        return one_error_line(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
