#!/usr/bin/env python3
"""Markdown results table of a set of runs, every number read from the runs' own files.

    report.py --runs results/prostate/cesource ... --out results/prostate/report.md [--title ...]
    report.py collect --runs results/cc359/ft_all/2_5_n8 ... --out results/cc359/scores.csv
    report.py choose_source_free --runs results/cc359/{sfda_val/0_3_lr5e-5,adabn_val/0_3,noadapt_val/0_3} --out c.csv
    report.py choose_tau --runs results/cc359/spottune_val/..._tau*_lam0 --budget 45 --out results/cc359/spottune_tau.csv
    report.py choose --runs results/cc359/spottune_val/... --tau_file results/cc359/spottune_tau.csv --out spottune_params.csv
    report.py cc359 --scores results/cc359/scores.csv --params results/cc359/spottune_params.csv
        [--val_scores results/cc359/val_scores.csv --tau_file results/cc359/spottune_tau.csv] --out report.md
    report.py compare --reference results/prostate [more roots] --candidate results_bf16/prostate [...] --out c.md

Prostate: per run, best validation 3D Dice (mean ± sd over patients, at the epoch chosen by
validation 3D Dice), last-epoch 3D Dice, 2D Dice and HD95/ASSD at the best epoch, epochs and wall
time. When the SFDA runs are present, the seed's claims are checked on these numbers.

CC359 (cc359_report.py holds the tables): ``collect`` gathers every run's test volumes, ``choose_lr``,
``choose_tau``, ``choose`` and ``choose_k`` pick the protocol's parameters on the validation pairs, ``cc359``
writes the method x budget table with the paper's tests, ``cc359_seeds`` the same over seeds.

``compare`` puts the same runs of two result roots side by side (e.g. fp32 against bf16): per run
its final score (CC359: mean test surface Dice and Dice; prostate: last-epoch and best validation
3D Dice), the difference in points and the run times, and whether every run stays within
``--tolerance`` points, the rule a faster mode must pass to become the default. Several roots per
side (one per seed) are averaged run by run.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import pandas as pd

from cc359_report import (cc359_report, cc359_seeds_report, choose, choose_k, choose_lr, choose_source_free, choose_tau,
                          collect, read_tau)
from tables import (COLLAPSE, mean_sd, metrics_file, read_best_epoch, read_class_dice, read_metrics, read_per_patient,
                    read_run_stats, read_table, read_test_metrics)
from utils import one_error_line, publish, write_csv_atomic


def summarize(run: Path) -> Dict[str, object]:
    metrics = read_metrics(run, ["epoch", "val_dice_3d", "val_dice", "tra_loss_tot"])
    best_epoch, _ = read_best_epoch(run)
    at_best = metrics.loc[metrics["epoch"] == best_epoch]
    if at_best.empty:
        raise ValueError(f"{metrics_file(run)}: no row for the best epoch {best_epoch} of 3dbestepoch.txt")
    best = at_best.iloc[0]
    per_patient = read_per_patient(run)
    hd95 = read_per_patient(run, "hd95")
    stats = read_run_stats(run)
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


def collapsed(rows: List[Dict[str, object]]) -> List[str]:
    """Names of the trained target runs (not the source model) whose last-epoch 3D Dice is below COLLAPSE."""
    return [str(r["run"]) for r in rows if r["run"] != "cesource" and int(r["epochs"]) > 0
            and float(r["last_dice3d"]) < COLLAPSE]


def claims(rows: List[Dict[str, object]], down: Optional[List[str]] = None) -> str:
    """The seed's claims (and this project's no-collapse claims), checked on the best and on the last epoch.

    "Best" is the epoch chosen with the target's validation labels (the seed's protocol: optimistic for
    a trained run, which gets 20-30 chances, against one for noadapt/adabn); "last" is what a
    label-free user gets. Points = 100 x 3D Dice. ``down``: the collapsed runs, when ``rows`` are means
    over seeds (a mean hides a collapsed seed).
    """
    runs = {str(r["run"]): r for r in rows}
    if not {"noadapt", "adabn", "sfda"} <= set(runs):
        return ""

    def check(column: str) -> List[tuple]:
        # the source trainings (cesource, cesource_online) are scored on the source domain: not target runs
        d = {k: 100 * float(r[column]) for k, r in runs.items() if not k.startswith("cesource")}
        found = [("sfda - noadapt >= 5 points", d["sfda"] - d["noadapt"], d["sfda"] - d["noadapt"] >= 5),
                 ("sfda - adabn >= 5 points", d["sfda"] - d["adabn"], d["sfda"] - d["adabn"] >= 5)]
        if "sfda_truesize" in d:
            found.append(("sfda_truesize - sfda >= -1 point", d["sfda_truesize"] - d["sfda"],
                          d["sfda_truesize"] - d["sfda"] >= -1))
        if "fs" in d:
            found = [("fs - noadapt >= 15 points", d["fs"] - d["noadapt"], d["fs"] - d["noadapt"] >= 15), *found,
                     ("fs highest of the target runs", d["fs"] - max(v for k, v in d.items() if k != "fs"),
                      all(d["fs"] >= v for v in d.values()))]
        return found
    best, last = check("dice3d"), check("last_dice3d")
    lines = "".join(f"| {name} | {b:+.1f} | {'yes' if ok_b else '**no**'} | {l:+.1f} | {'yes' if ok_l else '**no**'} |\n"
                    for (name, b, ok_b), (_, l, ok_l) in zip(best, last))
    down = collapsed(rows) if down is None else down
    collapse_line = (f"| no collapse (last-epoch 3D Dice >= {100 * COLLAPSE:g} points) | | | "
                     f"{len(down)} collapsed{': ' + ', '.join(down) if down else ''} | {'**no**' if down else 'yes'} |\n")
    return ("\n## Claims on this run\n\nBest epoch: chosen with the target validation labels (the seed's protocol, "
            "optimistic for trained runs); last epoch: what a label-free user gets.\n\n"
            "| claim | best epoch | holds | last epoch | holds |\n|---|---|---|---|---|\n" + lines + collapse_line)


def structures(roots: Sequence[Dict[str, Path]], epochs: Dict[str, int], names: Sequence[str] = (),
               root_names: Sequence[str] = ()) -> str:
    """With several structures: each one's best and last 3D Dice per run (mean ± sd over ``roots``, one {run: dir} per
    seed, named by ``root_names``) and the claims on each, a structure that vanishes (last 3D Dice < COLLAPSE) being a
    collapse of its own."""
    scores = pd.concat([read_class_dice(run).assign(run=name, root=i)
                        for i, runs in enumerate(roots) for name, run in runs.items()])
    if scores.empty:
        return ""
    classes = sorted(scores["cls"].unique())
    label = {k: names[k - 1] if k <= len(names) else f"class {k}" for k in classes}
    lines = [f"| {name} | " + " | ".join(f"{mean_sd(g.loc[g['cls'] == k, 'best'])} | {mean_sd(g.loc[g['cls'] == k, 'last'])}"
                                         for k in classes) + " |\n" for name, g in scores.groupby("run", sort=False)]
    sections = []
    for k in classes:
        of_k = scores[(scores["cls"] == k) & ~scores["run"].str.startswith("cesource")]
        rows = [{"run": name, "epochs": epochs[name], "dice3d": g["best"].mean(), "last_dice3d": g["last"].mean()}
                for name, g in of_k.groupby("run", sort=False)]
        down = [r.run + (f" ({root_names[r.root]})" if root_names else "") for r in of_k.itertuples()
                if epochs[r.run] > 0 and r.last < COLLAPSE]
        table_ = claims(rows, down).split("\n\n")[-1]
        sections.append(f"\n### {label[k]}\n\n{table_}" if table_ else "")
    return ("\n## Each structure\n\n3D Dice x100 of each structure on the validation patients, at the best epoch (chosen by "
            "the mean over the structures) and the last" + (f", mean ± sd over {len(roots)} seeds" if len(roots) > 1 else "")
            + "; the claims below are checked on each structure.\n\n| run | "
            + " | ".join(f"{label[k]} best | {label[k]} last" for k in classes) + " |\n|---|" + "---|---|" * len(classes)
            + "\n" + "".join(lines) + "".join(sections))


# ---------------------------------------------------------------- two result roots side by side

def final_scores(run: Path) -> Dict[str, float]:
    """A run's final scores x 100: tested runs (test_metrics.csv) sdice/dice, others last/best val 3D Dice."""
    if (run / "test_metrics.csv").is_file():
        df = read_test_metrics(run)
        return {"sdice": 100 * df["sdice"].mean(), "dice": 100 * df["dice"].mean()}
    dice3d = read_metrics(run)["val_dice_3d"]
    return {"last 3D Dice": 100 * dice3d.iloc[-1], "best 3D Dice": 100 * dice3d.max()}


def find_runs(root: Path) -> Dict[str, Path]:
    """Complete runs under ``root`` (directories holding a metrics csv), keyed by their path below it."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such results directory")
    files = [*root.rglob("test_metrics.csv"), *root.rglob("*_target_metrics.csv")]
    runs = {str(f.parent.relative_to(root)): f.parent for f in files if not f.parent.name.endswith("_tmp")}
    if not runs:
        raise FileNotFoundError(f"{root}: no complete run (no test_metrics.csv or *_target_metrics.csv below it)")
    return runs


SWING_EPOCHS = 5    # a run's own epoch-to-epoch swing: max - min of its validation 3D Dice over its last 5 epochs


def own_swing(run: Path) -> float:
    """Points of validation 3D Dice a run swings over its last SWING_EPOCHS epochs (NaN: a tested run)."""
    if (run / "test_metrics.csv").is_file():
        return float("nan")
    last = read_metrics(run)["val_dice_3d"].dropna().iloc[-SWING_EPOCHS:]
    return 100 * float(last.max() - last.min())


def run_seconds(run: Path) -> float:
    return float(read_run_stats(run)["total"]) if (run / "run_stats.csv").is_file() else float("nan")


def check_same_runs(root_a: Path, runs_a: Iterable[str], root_b: Path, runs_b: Iterable[str]) -> None:
    only = sorted(set(runs_a) ^ set(runs_b))
    if only:
        raise ValueError(f"{root_a} and {root_b} hold different runs (in one only: {', '.join(only[:8])})")


def collapsed_scores(scores: Dict[str, float]) -> bool:
    """A run predicting (almost) empty masks: its Dice (tested runs) or last-epoch 3D Dice below COLLAPSE."""
    return scores.get("dice", scores.get("last 3D Dice", np.inf)) < 100 * COLLAPSE


def paired_scores(references: Sequence[Path], candidates: Sequence[Path],
                  only: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One row per (run, score, pair of roots): both final scores, whether each side collapsed, run times.
    The k-th reference root pairs with the k-th candidate root (the same training seed in both modes);
    ``only``: these runs (names below the roots), which both sides must hold, and no others."""
    if len(references) != len(candidates):
        raise ValueError(f"{len(references)} reference root(s) but {len(candidates)} candidate root(s): "
                         "roots pair by position (one per seed on each side)")
    rows = []
    for k, (ref_root, cand_root) in enumerate(zip(references, candidates)):
        ref, cand = find_runs(ref_root), find_runs(cand_root)
        if only:
            missing = [(root, name) for root, runs in ((ref_root, ref), (cand_root, cand)) for name in only
                       if name not in runs]
            if missing:
                raise ValueError(f"{missing[0][0]}: no complete run {missing[0][1]}")
            ref, cand = {n: ref[n] for n in only}, {n: cand[n] for n in only}
        check_same_runs(ref_root, ref, cand_root, cand)
        for name in sorted(ref):
            a, b = final_scores(ref[name]), final_scores(cand[name])
            for score in a:
                rows.append({"run": name, "score": score, "pair": k, "reference": a[score], "candidate": b[score],
                             "reference_collapsed": collapsed_scores(a), "candidate_collapsed": collapsed_scores(b),
                             "reference_s": run_seconds(ref[name]), "candidate_s": run_seconds(cand[name]),
                             "reference_swing": own_swing(ref[name])})
    return pd.DataFrame(rows)


def compare(references: Sequence[Path], candidates: Sequence[Path], only: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """Per (run, score): each side's mean and sd x 100 over its roots, the mean paired difference (candidate -
    reference) over the pairs where neither side collapsed, the collapses of each side, mean run times."""
    pairs = paired_scores(references, candidates, only)
    rows = []
    for (run, score), g in pairs.groupby(["run", "score"], sort=False):
        kept = g[~g["reference_collapsed"] & ~g["candidate_collapsed"]]
        rows.append({"run": run, "score": score, "reference": g["reference"].mean(),
                     "reference_sd": g["reference"].std(ddof=1), "candidate": g["candidate"].mean(),
                     "candidate_sd": g["candidate"].std(ddof=1),
                     "delta": (kept["candidate"] - kept["reference"]).mean() if len(kept) else np.nan,
                     "pairs": len(kept), "reference_collapses": int(g["reference_collapsed"].sum()),
                     "candidate_collapses": int(g["candidate_collapsed"].sum()),
                     "reference_s": g["reference_s"].mean(), "candidate_s": g["candidate_s"].mean(),
                     "swing": g["reference_swing"].mean()})
    return pd.DataFrame(rows)


def judge(table_: pd.DataFrame, tolerance: float, unjudged: Sequence[str] = ()) -> pd.DataFrame:
    """The paired rule, per run: (a) its best-epoch (validated runs) or final (tested runs) score moves by at most
    ``tolerance`` points; (b) no more collapses; (c) a last-epoch move beyond ``tolerance`` lies within the
    reference run's own swing over its last epochs, and the runs beyond do not all move one way. ``unjudged``
    runs (a grid point the choice rejects in both modes) are reported, not judged."""
    judged = table_[~table_["run"].isin(unjudged)]
    main = judged[judged["score"] != "last 3D Dice"].groupby("run", sort=False).head(1).set_index("run")
    last = judged[judged["score"] == "last 3D Dice"].set_index("run")
    beyond = last[last["delta"].abs() > tolerance]
    one_way = len(beyond) > 1 and (np.sign(beyond["delta"]).nunique() == 1)
    rows = []
    for run, r in main.iterrows():
        fails = []
        if abs(r["delta"]) > tolerance:
            fails.append(f"{r['score']} {r['delta']:+.1f}")
        if r["candidate_collapses"] > r["reference_collapses"]:
            fails.append("more collapses")
        if run in beyond.index:
            move = beyond.loc[run]
            if abs(move["delta"]) > move["swing"]:
                fails.append(f"last {move['delta']:+.1f} beyond its own swing {move['swing']:.1f}")
            elif one_way:
                fails.append(f"last {move['delta']:+.1f}: every run beyond {tolerance:g} moves the same way")
        rows.append({"run": run, "fails": "; ".join(fails)})
    return pd.DataFrame(rows)


def compare_report(table_: pd.DataFrame, references: Sequence[Path], candidates: Sequence[Path],
                   tolerance: float, unjudged: Sequence[str] = ()) -> str:
    """Markdown: per-run table, the paired rule (``judge``) run by run, total run time of each side."""
    verdicts = judge(table_, tolerance, unjudged)
    failed = verdicts[verdicts["fails"] != ""]
    primary = table_.groupby("run", sort=False).head(1)
    times = primary[["reference_s", "candidate_s"]].sum()

    def value(mean: float, sd: float) -> str:
        return f"{mean:.1f}" if np.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"

    lines = [f"# {' '.join(map(str, candidates))} against {' '.join(map(str, references))}\n",
             f"Final scores x 100 (tested runs: mean test surface Dice / Dice; others: last-epoch / best validation "
             f"3D Dice), mean ± sd over the {len(references)} root(s) of each side; the k-th candidate root pairs with "
             f"the k-th reference root (the same training seed). delta = mean of candidate - reference over the pairs "
             f"where neither side collapsed (Dice below {100 * COLLAPSE:g}), in points; collapses: reference / "
             f"candidate; swing: the reference run's own max - min of validation 3D Dice over its last {SWING_EPOCHS} "
             f"epochs, mean over pairs. The rule: the best-epoch (or final) score within {tolerance:g} points; no more "
             f"collapses; a last-epoch move beyond {tolerance:g} only within the run's own swing, and not every such "
             f"move the same way." + (f" Reported, not judged: {', '.join(unjudged)}." if unjudged else "") + "\n",
             "| run | score | reference | candidate | delta (pairs) | swing | collapses | reference s | candidate s |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.score} | {value(r.reference, r.reference_sd)} | {value(r.candidate, r.candidate_sd)} | "
              + ("–" if np.isnan(r.delta) else f"{r.delta:+.1f}") + f" ({r.pairs}) | "
              + ("–" if np.isnan(r.swing) else f"{r.swing:.1f}") + " | "
              f"{r.reference_collapses} / {r.candidate_collapses} | {r.reference_s:.0f} | {r.candidate_s:.0f} |"
              for r in table_.itertuples()]
    lines += ["", f"- runs judged: {len(verdicts)}; failing: **{len(failed)}**"
              + "".join(f"\n  - {r.run}: {r.fails}" for r in failed.itertuples()),
              f"- run time, sum over runs: {times['reference_s']:.0f} s against {times['candidate_s']:.0f} s"
              + (f" ({times['reference_s'] / times['candidate_s']:.2f}x)" if times["candidate_s"] > 0 else ""),
              f"- every run passes: **{'yes' if failed.empty else 'no'}**"
              + (f" (fails: {', '.join(failed['run'])})" if len(failed) else ""), ""]
    return "\n".join(lines)


def seed_scores(root: Path, at_epochs: Sequence[int]) -> pd.DataFrame:
    """One row per trained/evaluated run below ``root``: best and last validation 3D Dice, and the 3D Dice
    after ``at_epochs`` epochs where the run is longer (a prefix of a run equals a shorter run)."""
    rows = []
    for name, run in sorted(find_runs(root).items()):
        metrics = read_metrics(run, ["epoch", "val_dice_3d", "tra_loss_tot"])
        row = {"run": name, "epochs": len(metrics) if metrics["tra_loss_tot"].notna().any() else 0,
               "dice3d": read_best_epoch(run)[1], "last_dice3d": float(metrics["val_dice_3d"].iloc[-1])}
        for k in at_epochs:
            at = metrics.loc[metrics["epoch"] == k - 1, "val_dice_3d"]
            row[f"at{k}"] = float(at.iloc[0]) if len(at) and k < len(metrics) else np.nan   # a longer run's prefix
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_report(roots: Sequence[Path], at_epochs: Sequence[int], title: str, class_names: Sequence[str] = ()) -> str:
    """Every run as mean ± sd over the roots (one per training seed), collapses counted per run, claims on the means."""
    per_root = [seed_scores(root, at_epochs).assign(root=str(root)) for root in roots]
    for root, table_ in zip(roots[1:], per_root[1:]):
        check_same_runs(roots[0], per_root[0]["run"], root, table_["run"])
    scores = pd.concat(per_root)
    columns = ["dice3d", "last_dice3d", *[f"at{k}" for k in at_epochs]]
    head = ("| run | best 3D Dice | last 3D Dice | " + "".join(f"after {k} epochs | " for k in at_epochs)
            + "collapses | last, per seed |\n|---|---|---|" + "---|" * len(at_epochs) + "---|---|\n")
    lines, means, down = [], [], []
    for name, group in scores.groupby("run", sort=False):
        cells = [mean_sd(group[c]) for c in columns]
        n_collapsed = int((group["last_dice3d"] < COLLAPSE).sum()) if group["epochs"].iloc[0] > 0 else 0
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {n_collapsed}/{len(group)} | "
                     + ", ".join(f"{100 * v:.1f}" for v in group["last_dice3d"]) + " |\n")
        if "/" not in name:       # the chain's own runs (not the lrgrid study) enter the claims
            down += [f"{name} ({root})" for root, last in zip(group["root"], group["last_dice3d"])
                     if group["epochs"].iloc[0] > 0 and name != "cesource" and last < COLLAPSE]
            means.append({"run": name, "epochs": int(group["epochs"].iloc[0]),
                          "dice3d": group["dice3d"].mean(), "last_dice3d": group["last_dice3d"].mean()})
    return (f"# {title}\n\n3D Dice x100 on the target validation patients, mean ± sd over {len(roots)} training "
            f"seeds ({', '.join(map(str, roots))}); a collapse is a last-epoch 3D Dice below {100 * COLLAPSE:g}.\n\n"
            + head + "".join(lines) + claims(means, down).replace("on this run", "on the means over seeds")
            + structures([{n: r for n, r in find_runs(root).items() if "/" not in n} for root in roots],
                         dict(zip(scores["run"], scores["epochs"])), class_names, [str(root) for root in roots]))


COMMANDS = ["collect", "choose_tau", "choose", "choose_lr", "choose_source_free", "choose_k", "cc359", "cc359_seeds",
            "compare", "seeds"]
CHOICES = ("choose_tau", "choose", "choose_lr", "choose_source_free", "choose_k")


def subcommand_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="CC359 tables (collect, choose_tau, choose, cc359); "
                                                 "two result roots compared (compare)")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--runs", nargs="+", type=Path)
    parser.add_argument("--scores", nargs="+", type=Path, help="cc359: scores.csv; cc359_seeds: one per seed")
    parser.add_argument("--val_scores", type=Path, help="cc359: scores of the SpotTUnet validation runs (collect)")
    parser.add_argument("--params", type=Path)
    parser.add_argument("--tau_file", type=Path, help="choose, cc359: the csv choose_tau wrote")
    parser.add_argument("--sf_choice", type=Path, help="cc359: the csv choose_source_free wrote")
    parser.add_argument("--budget", type=int, help="choose_tau: the budget tau is chosen at (TAU_BUDGET)")
    parser.add_argument("--reference", nargs="+", type=Path, help="result root(s), e.g. one per seed (compare)")
    parser.add_argument("--candidate", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=1.5, help="points of score (compare)")
    parser.add_argument("--only", nargs="+", help="compare: these runs only (names below the roots, e.g. sfda)")
    parser.add_argument("--unjudged", nargs="+", default=[],
                        help="compare: runs reported but not judged (a grid point the choice rejects in both modes)")
    parser.add_argument("--roots", nargs="+", type=Path, help="seeds: one prostate result root per training seed")
    parser.add_argument("--at_epochs", nargs="*", type=int, default=[], help="seeds: 3D Dice also after these epochs")
    parser.add_argument("--class_names", nargs="*", default=[], help="seeds: the structures' names, class 1 first")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="CC359 domain adaptation")
    args = parser.parse_args(argv)
    if args.command in ("collect", *CHOICES) and not args.runs:
        parser.error(f"{args.command} needs --runs")
    if args.command == "choose_tau" and args.budget is None:
        parser.error("choose_tau needs --budget")
    if args.command == "choose" and not args.tau_file:
        parser.error("choose needs --tau_file")
    if args.command == "cc359" and not (args.scores and len(args.scores) == 1 and args.params):
        parser.error("cc359 needs --scores (one file) and --params")
    if args.command == "cc359_seeds" and not args.scores:
        parser.error("cc359_seeds needs --scores")
    if args.command == "compare" and not (args.reference and args.candidate):
        parser.error("compare needs --reference and --candidate")
    if args.command == "seeds" and not args.roots:
        parser.error("seeds needs --roots")
    return one_error_line(run_subcommand, args)


def run_subcommand(args: argparse.Namespace) -> None:
    if args.command == "collect":
        table_ = collect(args.runs)
        write_csv_atomic(table_, args.out, float_format="%.4f")
        print(f"wrote {args.out}: {len(table_)} test volumes from {len(args.runs)} runs")
    elif args.command in CHOICES:
        chosen = (choose_tau(collect(args.runs), args.budget) if args.command == "choose_tau"
                  else choose_lr(collect(args.runs)) if args.command == "choose_lr"
                  else choose_source_free(collect(args.runs)) if args.command == "choose_source_free"
                  else choose_k(collect(args.runs)) if args.command == "choose_k"
                  else choose(collect(args.runs), read_tau(args.tau_file)))
        write_csv_atomic(chosen, args.out)
        print(chosen.to_string(index=False))
    else:
        text = (seeds_report(args.roots, args.at_epochs, args.title, args.class_names) if args.command == "seeds"
                else cc359_seeds_report([read_table(f) for f in args.scores], [str(f.parent.parent) for f in args.scores],
                                        args.title) if args.command == "cc359_seeds"
                else compare_report(compare(args.reference, args.candidate, args.only), args.reference, args.candidate,
                                    args.tolerance, args.unjudged) if args.command == "compare"
                else cc359_report(read_table(args.scores[0]), read_table(args.params), args.title,
                                  read_table(args.val_scores) if args.val_scores else None,
                                  read_table(args.tau_file) if args.tau_file else None,
                                  read_table(args.sf_choice) if args.sf_choice else None))
        publish(text, args.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return subcommand_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Results")
    parser.add_argument("--class_names", nargs="*", default=[], help="the structures' names, class 1 first")
    args = parser.parse_args(argv)
    return one_error_line(prostate_report, args)


def prostate_report(args: argparse.Namespace) -> None:
    rows = [summarize(run) for run in args.runs]
    publish(f"# {args.title}\n\nValidation set of each run's dataset (cesource: source val; others: target val). "
            f"3D Dice per patient of the foreground class(es), mean ± sd over {rows[-1]['patients']} patients, at the "
            f"epoch chosen by validation 3D Dice; HD95/ASSD in pixels (PNG data) or mm (NIfTI), at that epoch, averaged "
            f"over the patients where both prediction and GT are non-empty (their number in brackets; an empty "
            f"prediction has no surface distance).\n\n" + table(rows) + claims(rows)
            + structures([{run.name: run for run in args.runs}], {str(r["run"]): int(r["epochs"]) for r in rows},
                         args.class_names), args.out)


if __name__ == "__main__":
    sys.exit(main())
