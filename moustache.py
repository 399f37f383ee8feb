#!/usr/bin/env python3
"""Distributions per run: box plots (prostate) and violins per budget (CC359, paper Fig. 3).

    moustache.py --runs results/prostate/noadapt results/prostate/sfda ... --out results/prostate/boxplot.png
    moustache.py --scores results/cc359/scores.csv --out results/cc359/violin.png

``--runs``: per-patient validation 3D Dice of each run (best epoch), points overlaid.
``--scores``: per-volume test surface Dice of every method over the test pairs, one panel per
budget; methods without a budget (baseline, hm, SFDA chain, oracle) appear in every panel.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from cc359_report import FINETUNING, NO_BUDGET  # noqa: E402
from tables import read_per_patient, read_table  # noqa: E402
from utils import one_error_line, save_figure  # noqa: E402


def violins(scores: pd.DataFrame, out: Path) -> None:
    tested = scores[scores["method"] != "oracle"]
    targets = set(tested["target"])
    budgets = sorted(tested["budget"].dropna().unique())
    methods = [m for m in [*NO_BUDGET, *FINETUNING, "oracle"] if m in set(scores["method"])]
    fig, axes = plt.subplots(len(budgets), 1, figsize=(1.0 * len(methods) + 2, 3.3 * len(budgets)), squeeze=False)
    for ax, n in zip(axes[:, 0], budgets):
        values = []
        for m in methods:
            rows = scores[scores["method"] == m]
            if m in FINETUNING:
                rows = rows[rows["budget"] == n]
            elif m == "oracle":
                rows = rows[rows["target"].isin(targets)]
            values.append(rows["sdice"].dropna().to_numpy())
        ax.violinplot(values, showmeans=True, showextrema=True)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"N = {n:g} annotated target slices", fontsize=9)
        ax.set_ylabel("surface Dice per test volume")
        ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out)


def boxes(runs: Sequence[Path], out: Path) -> None:
    """Per run, a box of its patients' validation 3D Dice at the best epoch, the patients as points over it."""
    values = [read_per_patient(run) for run in runs]
    fig, ax = plt.subplots(figsize=(1.2 * len(runs) + 2, 4.5))
    ax.boxplot(values, showmeans=True)
    ax.set_xticks(range(1, len(runs) + 1), [run.name for run in runs], rotation=30, ha="right")
    rng = np.random.default_rng(0)  # jitter of the points only
    for i, v in enumerate(values, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=10, alpha=0.6, color="k", zorder=3)
    ax.set_ylabel("validation 3D Dice per patient (best epoch)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path)
    parser.add_argument("--scores", type=Path, help="CC359 scores.csv (report.py collect)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if (args.runs is None) == (args.scores is None):
        parser.error("give --runs or --scores")
    if args.scores is not None:
        return one_error_line(lambda a: violins(read_table(a.scores, ["method", "target", "budget", "sdice"]), a.out), args)
    return one_error_line(lambda a: boxes(a.runs, a.out), args)


if __name__ == "__main__":
    sys.exit(main())
