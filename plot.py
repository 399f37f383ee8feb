#!/usr/bin/env python3
"""Curves and pictures of runs.

    plot.py --runs results/prostate/cesource results/prostate/sfda ... --out results/prostate/val_dice_3d.png
    plot.py --lambda_runs results/cc359/spottune_val/... --out results/cc359/lambda_val.png
    plot.py --policy_runs results/cc359/spottune/... --out results/cc359/policy.png
    plot.py --sa_runs results/prostate/protoseg/cesource_on_source ... --out results/prostate/protoseg/sa_layers.png

``--runs``: validation 3D Dice over epochs, one curve per run (evaluation-only runs: a level line).
``--lambda_runs``: SpotTUnet's validation curves (paper Fig. 2): mean test surface Dice of the
validation pairs against lambda, one line per tau, one panel per budget.
``--policy_runs``: SpotTUnet's policy (paper Fig. 4): per unit, the share of test slices that chose
the fine-tuned copy, averaged over pairs, drawn where the unit sits in the U-Net; one panel per budget.
``--sa_runs``: ProtoSeg's SA score per feature layer (seed 003 Fig. 5), one line per analysed model, and each
model's unit SA of the last layer, sorted (Fig. 7).
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from cc359_report import collect, experiment_scores, parse_run  # noqa: E402
from tables import read_metrics, read_policy, read_sa_layers, read_table  # noqa: E402
from utils import one_error_line, save_figure  # noqa: E402


def lambda_curves(runs: Sequence[Path], out: Path) -> None:
    per_run = experiment_scores(collect(runs))
    grid = per_run.groupby(["budget", "tau", "lam"])["sdice"].mean().reset_index()
    budgets = sorted(grid["budget"].unique())
    fig, axes = plt.subplots(1, len(budgets), figsize=(4 * len(budgets), 3.6), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], budgets):
        for i, (tau, curve) in enumerate(grid[grid["budget"] == n].groupby("tau")):
            ax.plot(curve["lam"], 100 * curve["sdice"], marker="o", color=f"C{i}", label=f"tau = {tau:g}")
        ax.set_title(f"N = {n:g} slices")
        ax.set_xlabel("lambda (cost per fine-tuned unit)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("surface Dice x100, validation pairs")
    axes[0, -1].legend(fontsize=8)
    save_figure(fig, out)


# where each unit of the residual U-Net sits in the picture: (column, row); a path's units go left to right
UNET_LAYOUT: Dict[str, Tuple[float, float]] = {"init_path": (0, 3), "down1": (1, 2), "down2": (2, 1), "bottleneck": (4.5, 0),
                                               "up2": (8, 1), "up1": (9, 2), "out_path": (10, 3)}


def unit_position(name: str, index: int) -> Tuple[float, float]:
    """(x, y) of a unit: ResUNet names go in the U (shortcuts bridge the middle); other networks form one row."""
    path, _, k = name.rpartition(".")
    if path in UNET_LAYOUT and k.isdigit():
        x, y = UNET_LAYOUT[path]
        return x + int(k), y
    if name.startswith("shortcut") and name[8:].isdigit():
        return 6.5, 3 - int(name[8:])
    return index, 0


def unet_panels(panels: Sequence[Tuple[str, Dict[str, float]]], out: Path, label: str,
                limits: Optional[Tuple[float, float]] = None) -> None:
    """One panel per (title, value per unit): each unit a box coloured by its value where it sits in the U-Net.
    ``limits``: one colour scale for every panel; None: each panel spans its own range (values as printed)."""
    cmap = plt.get_cmap("magma", 256)
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (title, values) in zip(axes[:, 0], panels):
        finite = [v for v in values.values() if pd.notna(v)]
        lo, hi = limits or (min(finite, default=0), max(finite, default=1))
        for i, (unit, value) in enumerate(values.items()):
            x, y = unit_position(unit, i)
            shade = 0.5 if pd.isna(value) or hi == lo else (value - lo) / (hi - lo)
            ax.add_patch(plt.Rectangle((x - 0.45, y - 0.4), 0.9, 0.8, color="lightgrey" if pd.isna(value) else cmap(shade),
                                       ec="k", lw=0.5))
            ax.text(x, y, "–" if pd.isna(value) else f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                    color="w" if shade < 0.6 else "k")
            ax.text(x, y - 0.52, unit.replace("_path", "").replace("bottleneck", "bn").replace("shortcut", "sc"),
                    ha="center", va="top", fontsize=5)
        ax.set_xlim(-1, max(unit_position(u, i)[0] for i, u in enumerate(values)) + 1)
        ax.set_ylim(-1, 4)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(title, fontsize=9)
    if limits:
        fig.colorbar(plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(*limits)), ax=axes[:, 0].tolist(), shrink=0.6,
                     label=label)
    save_figure(fig, out, tight=False)


def policy_picture(runs: Sequence[Path], out: Path) -> None:
    frames = []
    for run in runs:
        df = read_policy(run)
        df["budget"] = parse_run(run)["budget"]
        frames.append(df)
    table = pd.concat(frames)
    units = list(dict.fromkeys(table["unit"]))
    mean = table.groupby(["budget", "unit"])["p_finetuned"].mean()
    budgets = sorted(table["budget"].unique())
    panels = [(f"N = {n:g} slices: share of test slices using the fine-tuned unit ({len(runs) // len(budgets)} pairs)",
               {unit: mean[(n, unit)] for unit in units}) for n in budgets]
    unet_panels(panels, out, "P(fine-tuned)", limits=(0, 1))


def sa_layers(runs: Sequence[Path], out: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [2, 1]})
    for i, run in enumerate(runs):
        layers = read_sa_layers(run)
        units = read_table(run / "sa_units.csv", ["sa"])
        left.plot(layers["order"], 100 * layers["sa"], marker="o", ms=3, color=f"C{i}", label=run.name)
        right.plot(range(1, len(units) + 1), 100 * units["sa"], color=f"C{i}", label=run.name)
    left.set_xticks(layers["order"], layers["layer"], rotation=90, fontsize=6)
    left.set_ylabel("SA score (Dice x100 of the feature map's segmentation)")
    left.set_title("SA per feature layer")
    right.set_xlabel("unit of the last feature layer, sorted")
    right.set_title("SA per unit, last layer")
    for ax in (left, right):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7)
    save_figure(fig, out)


def epoch_curves(runs: Sequence[Path], column: str, out: Path) -> None:
    """``column`` of each run's metrics csv over its epochs; an evaluation-only run (one row) as a level line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tables = [read_metrics(run, ["epoch", column]) for run in runs]
    for i, (run, df) in enumerate(zip(runs, tables)):
        if len(df) == 1:
            ax.axhline(df[column].iloc[0], ls="--", lw=1.2, color=f"C{i}", label=f"{run.name} (no training)")
        else:
            ax.plot(df["epoch"], df[column], marker=".", color=f"C{i}", label=run.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(column.replace("_", " "))
    ax.set_xlim(0, max(max(len(df) for df in tables) - 1, 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, help="curves over epochs")
    parser.add_argument("--lambda_runs", nargs="+", type=Path, help="SpotTUnet validation runs")
    parser.add_argument("--policy_runs", nargs="+", type=Path, help="SpotTUnet test runs")
    parser.add_argument("--sa_runs", nargs="+", type=Path, help="protoseg.py analysis folders")
    parser.add_argument("--column", default="val_dice_3d")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if sum(x is not None for x in (args.runs, args.lambda_runs, args.policy_runs, args.sa_runs)) != 1:
        parser.error("give exactly one of --runs, --lambda_runs, --policy_runs, --sa_runs")
    return one_error_line(draw, args)


def draw(args: argparse.Namespace) -> None:
    if args.sa_runs:
        sa_layers(args.sa_runs, args.out)
    elif args.lambda_runs:
        lambda_curves(args.lambda_runs, args.out)
    elif args.policy_runs:
        policy_picture(args.policy_runs, args.out)
    else:
        epoch_curves(args.runs, args.column, args.out)


if __name__ == "__main__":
    sys.exit(main())
