#!/usr/bin/env python3
"""Which epoch of a source-free run to keep without target labels: the last one, or the highest ProtoSeg mu.

    selection.py --runs <runs made with main.py --mu_images> --out <md>   each run's epoch chosen by the target
        validation labels (the seed's protocol), the last one and by mu (no label read), beside their scores;
    selection.py flag --runs <runs> --split <target train slices> ...       mu of the last weights: does it flag
        the runs that collapsed?
Each writes <out> (markdown) with its table beside it as .csv.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import pandas as pd
import torch

from checkpoints import network_from_checkpoint
from dataloader import load_split
from prototypes import label_free_mu, mu_subsample
from tables import COLLAPSE, TESTED_WEIGHTS, fell_back, read_metrics, read_test_metrics
from utils import write_table_and_markdown

CHOICES = ("label", "last", "mu", "mu_fg")   # mu_fg: mu over the non-empty outputs only, mu / (1 - empty share)


def epoch_choices(run: Path) -> Dict[str, object]:
    """A run's epochs chosen by target validation labels (the seed's protocol), the last one, and by mu (no label),
    with their validation 3D Dice and, when the run tested them (test_metrics*.csv), their test scores x100."""
    rows = read_metrics(run, ["epoch", "val_dice_3d", "mu", "mu_empty_share"])
    mu_fg = (rows["mu"] / (1 - rows["mu_empty_share"])).where(rows["mu_empty_share"] < 1, 0.0)
    picks = {"label": rows["val_dice_3d"].idxmax(), "last": rows.index[-1], "mu": rows["mu"].idxmax(),   # first max
             "mu_fg": mu_fg.idxmax()}
    out: Dict[str, object] = {"run": str(run), "collapse_guard": fell_back(run),
                              "mu_last": rows["mu"].iloc[-1], "empty_last": rows["mu_empty_share"].iloc[-1]}
    for choice, at in picks.items():
        out[f"{choice}_epoch"], out[f"{choice}_dice"] = int(rows["epoch"][at]), 100 * rows["val_dice_3d"][at]
    for choice, weights in (("last", "last"), ("label", "best_3d.pkl"), ("mu", "best_mu.pkl")):
        if (run / TESTED_WEIGHTS[weights]).is_file():
            out[f"{choice}_test_sdice"] = 100 * read_test_metrics(run, weights)["sdice"].mean()
    return out


def selection_report(table: pd.DataFrame, title: str) -> str:
    """Markdown: per run the choices; the mean of each over runs of the same name (seeds); collapses."""
    test = [c for c in ("label", "last", "mu") if f"{c}_test_sdice" in table]
    head = ["run"] + [f"{c}: epoch, val Dice" for c in CHOICES] + [f"{c}: test surface Dice" for c in test] + \
        ["mu at the last epoch", "empty outputs"]
    lines = [f"# {title}\n", "Each source-free run's epoch chosen by the target validation labels (the seed's "
             "protocol, which a source-free method cannot use), its last epoch, the epoch of the highest mean mu "
             "over a fixed subsample of training slices (ProtoSeg, no label read; an empty output counts 0), and "
             "mu_fg: the highest mean mu over the subsample's non-empty outputs (also label-free; computed from the "
             "logged columns, its weights not kept). Dice x100.\n",
             "| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for r in table.to_dict("records"):
        cells = [r["run"] + (" (guard fallback)" if r["collapse_guard"] else "")]
        cells += [f"{r[f'{c}_epoch']}, {r[f'{c}_dice']:.1f}" for c in CHOICES]
        cells += [f"{r[f'{c}_test_sdice']:.1f}" for c in test] + [f"{r['mu_last']:.3f}", f"{100 * r['empty_last']:.0f}%"]
        lines.append("| " + " | ".join(cells) + " |")
    table = table.assign(name=[re.sub(r"(^|/)seed\d+/", r"\1", r) for r in table["run"]])   # seeds pooled
    mean_cols = [f"{c}_dice" for c in CHOICES] + [f"{c}_test_sdice" for c in test]
    means = table.groupby("name", sort=False)[mean_cols].agg(["mean", "count"])
    lines += ["", "Mean over the runs of each name (e.g. over seeds), and mu's choice against the others in points:\n",
              "| run | runs | " + " | ".join(mean_cols) + " | mu - label | mu - last |", "|---|---|" + "---|" * (len(mean_cols) + 2)]
    for name, m in means.iterrows():
        lines.append(f"| {name} | {int(m[(mean_cols[0], 'count')])} | "
                     + " | ".join(f"{m[(c, 'mean')]:.1f}" for c in mean_cols)
                     + f" | {m[('mu_dice', 'mean')] - m[('label_dice', 'mean')]:+.1f}"
                     + f" | {m[('mu_dice', 'mean')] - m[('last_dice', 'mean')]:+.1f} |")
    down = table[table["last_dice"] < 100 * COLLAPSE]
    lines += ["", f"Collapsed runs (last-epoch 3D Dice below {100 * COLLAPSE:g}): {len(down)} of {len(table)}"
              + ("; their mu at the last epoch: " + ", ".join(f"{Path(r.run).name} {r.mu_last:.3f}" for r in down.itertuples())
                 if len(down) else "") + "; healthy runs' mu at the last epoch: "
              + (f"{table[table['last_dice'] >= 100 * COLLAPSE]['mu_last'].min():.3f} at the lowest" if len(down) < len(table)
                 else "none") + "."]
    return "\n".join(lines) + "\n"


def selection_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="label-free epoch choice (mu) against labels and the last epoch")
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="runs made with main.py --mu_images")
    parser.add_argument("--title", default="Label-free epoch choice")
    parser.add_argument("--out", type=Path, required=True, help="markdown; the table goes beside it as .csv")
    args = parser.parse_args(argv)
    return write_table_and_markdown(lambda: pd.DataFrame([epoch_choices(run) for run in args.runs]), selection_report,
                                    args.out, args.title)


def flag_main(argv: Sequence[str]) -> int:
    """Label-free mu of finished runs' last weights on their target training slices: does it flag collapses?"""
    parser = argparse.ArgumentParser(description="mu (no label read) of runs' last weights, beside their last Dice")
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True, help="the target training slices the runs adapted on")
    parser.add_argument("--network", required=True)
    parser.add_argument("--folders", required=True)
    parser.add_argument("--grp_regex", required=True)
    parser.add_argument("--n_class", type=int, default=2)
    parser.add_argument("--images", type=int, default=64, help="as main.py --mu_images")
    parser.add_argument("--title", default="Does mu flag collapsed adaptations?")
    parser.add_argument("--out", type=Path, required=True, help="markdown; the table goes beside it as .csv")
    args = parser.parse_args(argv)

    def table() -> pd.DataFrame:
        data = load_split(args.split, args.folders, args.n_class, args.grp_regex)
        index = mu_subsample(data.patients, data.slice_numbers, args.images)
        rows = []
        for run in args.runs:
            net = network_from_checkpoint(run / "last.pkl", args.network, args.n_class)
            mu, empty, _ = label_free_mu(net, data.images[index], 16, torch.device("cpu"))
            last = read_metrics(run)["val_dice_3d"].iloc[-1]
            rows.append({"run": str(run), "last_dice": 100 * last, "collapsed": last < COLLAPSE, "mu": mu,
                         "empty_share": empty})
        return pd.DataFrame(rows)

    def render(t: pd.DataFrame, title: str) -> str:
        lines = [f"# {title}\n", f"mu of each run's last weights over {args.images} target training slices (no label "
                 f"read; an empty output counts 0) beside its last-epoch validation 3D Dice x100.\n",
                 "| run | last 3D Dice | collapsed | mu | empty outputs |", "|---|---|---|---|---|"]
        lines += [f"| {r.run} | {r.last_dice:.1f} | {'yes' if r.collapsed else 'no'} | {r.mu:.3f} | "
                  f"{100 * r.empty_share:.0f}% |" for r in t.itertuples()]
        return "\n".join(lines) + "\n"
    return write_table_and_markdown(table, render, args.out, args.title)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return flag_main(argv[1:]) if argv[:1] == ["flag"] else selection_main(argv)


if __name__ == "__main__":
    sys.exit(main())
