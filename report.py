#!/usr/bin/env python3
"""Markdown results table of a set of runs, every number read from the runs' own files.

    report.py --runs results/prostate/cesource ... --out results/prostate/report.md [--title ...]

Per run: best validation 3D Dice (mean ± sd over patients, at the epoch chosen by validation 3D
Dice), last-epoch 3D Dice, 2D Dice and HD95/ASSD at the best epoch, epochs and wall time. When
the SFDA runs are present, the seed's claims are checked on these numbers.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd


def metrics_file(run: Path) -> Path:
    found = sorted(run.glob("*_target_metrics.csv"))
    if not found:
        raise FileNotFoundError(f"{run}: no *_target_metrics.csv (is the run complete?)")
    return found[0]


def read_metrics(run: Path) -> pd.DataFrame:
    return pd.read_csv(metrics_file(run))


def read_per_patient(run: Path, metric: str = "dice_3d") -> np.ndarray:
    """Per-patient ``metric`` (dice_3d, hd95, assd) at the best epoch, averaged over the reported classes."""
    df = pd.read_csv(run / "val_dice_3d_per_patient.csv")
    return df.filter(like=f"{metric}_c").mean(axis=1, skipna=False).to_numpy()


def summarize(run: Path) -> Dict[str, object]:
    metrics = read_metrics(run)
    best_epoch = int((run / "3dbestepoch.txt").read_text().split(",")[0])
    best = metrics.loc[metrics["epoch"] == best_epoch].iloc[0]
    per_patient = read_per_patient(run)
    hd95 = read_per_patient(run, "hd95")
    stats = pd.read_csv(run / "run_stats.csv").set_index("name")["value"]
    return {"run": run.name, "epochs": len(metrics) if metrics["tra_loss_tot"].notna().any() else 0,
            "best_epoch": best_epoch, "dice3d": per_patient.mean(),
            "dice3d_sd": per_patient.std(ddof=1) if len(per_patient) > 1 else 0.0,
            "last_dice3d": metrics["val_dice_3d"].iloc[-1], "dice2d": best["val_dice"],
            "hd95": best.get("val_hd95", np.nan), "assd": best.get("val_assd", np.nan),
            "hd_defined": int(np.isfinite(hd95).sum()),
            "seconds": stats["total"], "patients": len(per_patient)}


def fmt(v: float, digits: int = 4) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def table(rows: List[Dict[str, object]]) -> str:
    head = ("| run | epochs | best epoch | best val 3D Dice (mean ± sd) | last-epoch 3D Dice | 2D Dice | "
            "HD95 (patients) | ASSD | time (s) |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(f"| {r['run']} | {r['epochs']} | {r['best_epoch']} | {fmt(r['dice3d'])} ± {fmt(r['dice3d_sd'])} | "
                   f"{fmt(r['last_dice3d'])} | {fmt(r['dice2d'])} | {fmt(r['hd95'], 2)} ({r['hd_defined']}/{r['patients']}) | {fmt(r['assd'], 2)} | "
                   f"{r['seconds']:.0f} |\n" for r in rows)
    return head + body


def claims(rows: List[Dict[str, object]]) -> str:
    """The seed's claims, checked on the best validation 3D Dice (points = 100 x Dice)."""
    d = {r["run"]: 100 * float(r["dice3d"]) for r in rows}
    need = {"noadapt", "sfda", "sfda_truesize", "fs"}
    if not need <= set(d):
        return ""
    checks = [("fs - noadapt >= 15 points", d["fs"] - d["noadapt"], d["fs"] - d["noadapt"] >= 15),
              ("sfda - noadapt >= 5 points", d["sfda"] - d["noadapt"], d["sfda"] - d["noadapt"] >= 5),
              ("sfda_truesize - sfda >= -1 point", d["sfda_truesize"] - d["sfda"], d["sfda_truesize"] - d["sfda"] >= -1),
              ("fs highest of the target runs", d["fs"] - max(v for k, v in d.items() if k not in {"fs", "cesource"}),
               all(d["fs"] >= v for k, v in d.items() if k != "cesource"))]
    lines = "".join(f"| {name} | {value:+.1f} | {'yes' if ok else '**no**'} |\n" for name, value, ok in checks)
    return ("\n## The seed's claims on this run\n\n| claim | measured | holds |\n|---|---|---|\n" + lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    rows = [summarize(run) for run in args.runs]
    text = (f"# {args.title}\n\nValidation set of each run's dataset (cesource: source val; others: target val). "
            f"3D Dice per patient of the foreground class(es), mean ± sd over {rows[-1]['patients']} patients, at the "
            f"epoch chosen by validation 3D Dice; HD95/ASSD in pixels (PNG data) or mm (NIfTI), at that epoch, averaged "
            f"over the patients where both prediction and GT are non-empty (their number in brackets; an empty "
            f"prediction has no surface distance).\n\n"
            + table(rows) + claims(rows))
    tmp = args.out.with_name(args.out.name + "_tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
