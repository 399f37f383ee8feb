#!/usr/bin/env python3
"""Box plot of the per-patient validation 3D Dice of each run (best epoch), points overlaid.

    moustache.py --runs results/prostate/noadapt results/prostate/sfda ... --out results/prostate/boxplot.png
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from report import read_per_patient  # noqa: E402
from utils import save_figure  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    values = [read_per_patient(run) for run in args.runs]
    fig, ax = plt.subplots(figsize=(1.2 * len(args.runs) + 2, 4.5))
    ax.boxplot(values, showmeans=True)
    ax.set_xticks(range(1, len(args.runs) + 1), [run.name for run in args.runs], rotation=30, ha="right")
    rng = np.random.default_rng(0)  # jitter of the points only
    for i, v in enumerate(values, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=10, alpha=0.6, color="k", zorder=3)
    ax.set_ylabel("validation 3D Dice per patient (best epoch)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
