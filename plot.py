#!/usr/bin/env python3
"""Validation 3D Dice over epochs for several runs, one curve each (evaluation-only runs: a level line).

    plot.py --runs results/prostate/cesource results/prostate/sfda ... --out results/prostate/val_dice_3d.png
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from report import read_metrics  # noqa: E402
from utils import save_figure  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--column", default="val_dice_3d")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n_max = max(len(read_metrics(run)) for run in args.runs)
    for i, run in enumerate(args.runs):
        df = read_metrics(run)
        if len(df) == 1:
            ax.axhline(df[args.column].iloc[0], ls="--", lw=1.2, color=f"C{i}", label=f"{run.name} (no training)")
        else:
            ax.plot(df["epoch"], df[args.column], marker=".", color=f"C{i}", label=run.name)
    ax.set_xlabel("epoch")
    ax.set_ylabel(args.column.replace("_", " "))
    ax.set_xlim(0, max(n_max - 1, 1))
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
