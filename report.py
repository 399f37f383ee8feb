#!/usr/bin/env python3
"""Markdown results table of a set of runs, every number read from the runs' own files.

    report.py --runs results/prostate/cesource ... --out results/prostate/report.md [--title ...]
    report.py collect --runs results/cc359/ft_all/2_5_n8 ... --out results/cc359/scores.csv
    report.py choose_tau --runs results/cc359/spottune_val/..._tau*_lam0 --budget 45 --out results/cc359/spottune_tau.csv
    report.py choose --runs results/cc359/spottune_val/... --tau_file results/cc359/spottune_tau.csv --out spottune_params.csv
    report.py cc359 --scores results/cc359/scores.csv --params results/cc359/spottune_params.csv
        [--val_scores results/cc359/val_scores.csv --tau_file results/cc359/spottune_tau.csv] --out report.md
    report.py compare --reference results/prostate [more roots] --candidate results_bf16/prostate [...] --out c.md

Prostate: per run, best validation 3D Dice (mean ± sd over patients, at the epoch chosen by
validation 3D Dice), last-epoch 3D Dice, 2D Dice and HD95/ASSD at the best epoch, epochs and wall
time. When the SFDA runs are present, the seed's claims are checked on these numbers.

CC359: ``collect`` gathers every run's test_metrics.csv (one row per test volume) with the method,
pair, budget, tau and lambda its directory name (or, for SpotTUnet, its command.txt) gives;
``choose_lr`` picks the source-free adaptation's learning rate on the validation pairs;
``choose_tau`` picks SpotTUnet's tau once, at one budget with lambda = 0, and ``choose`` then the
lambda per budget with that tau, both on the validation pairs (the paper's order); ``cc359`` writes
the method x budget table of mean surface Dice ± sd over test pairs (each pair's score: the mean
over its test volumes, as in the paper), baseline and oracle, the paper's one-sided Wilcoxon tests
with n and p, and checks the issue's targets on these numbers.

``compare`` puts the same runs of two result roots side by side (e.g. fp32 against bf16): per run
its final score (CC359: mean test surface Dice and Dice; prostate: last-epoch and best validation
3D Dice), the difference in points and the run times, and whether every run stays within
``--tolerance`` points, the rule a faster mode must pass to become the default. Several roots per
side (one per seed) are averaged run by run.
"""
import argparse
import re
import shlex
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from scipy import stats

from utils import write_csv_atomic, write_text_atomic


def metrics_file(run: Path) -> Path:
    found = sorted(run.glob("*_target_metrics.csv"))
    if not found:
        raise FileNotFoundError(f"{run}: no *_target_metrics.csv (is the run complete?)")
    return found[0]


def read_table(path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A csv of a run, or a ValueError / FileNotFoundError naming the file and what is wrong with it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is the run complete?)")
    try:
        table_ = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable csv ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    missing = [c for c in columns if c not in table_.columns]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, table_.columns))})")
    return table_


def read_metrics(run: Path) -> pd.DataFrame:
    return read_table(metrics_file(run), ["epoch", "val_dice_3d"])


def read_best_epoch(run: Path) -> Tuple[int, float]:
    """(epoch, 3D Dice) of ``3dbestepoch.txt``."""
    path = run / "3dbestepoch.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is the run complete?)")
    try:
        epoch, dice = path.read_text().split(",")
        return int(epoch), float(dice)
    except ValueError:
        raise ValueError(f"{path}: expected 'epoch,dice', got {path.read_text()[:40]!r}") from None


def read_per_patient(run: Path, metric: str = "dice_3d") -> np.ndarray:
    """Per-patient ``metric`` (dice_3d, hd95, assd) at the best epoch, averaged over the reported classes."""
    df = read_table(run / "val_dice_3d_per_patient.csv", ["patient"])
    return df.filter(like=f"{metric}_c").mean(axis=1, skipna=False).to_numpy()


def summarize(run: Path) -> Dict[str, object]:
    metrics = read_metrics(run)
    best_epoch, _ = read_best_epoch(run)
    at_best = metrics.loc[metrics["epoch"] == best_epoch]
    if at_best.empty:
        raise ValueError(f"{metrics_file(run)}: no row for the best epoch {best_epoch} of 3dbestepoch.txt")
    best = at_best.iloc[0]
    per_patient = read_per_patient(run)
    hd95 = read_per_patient(run, "hd95")
    stats = read_table(run / "run_stats.csv", ["name", "value"]).set_index("name")["value"]
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


COLLAPSE = 0.05   # a run whose last-epoch 3D Dice is below this predicts (almost) empty masks: a collapse


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


# ---------------------------------------------------------------- CC359

RUN_NAME = re.compile(r"(?P<source>\d)_(?P<target>\d)(?:_n(?P<budget>\d+))?(?:_tau(?P<tau>[\d.e-]+))?"
                      r"(?:_lam(?P<lam>[\d.e-]+))?(?:_lr(?P<lr>[\d.e-]+))?(?:_k(?P<k>\d+))?$")
REUSE = ["ttl", "lwft", "transfusion"]           # seed 002's strategies; their k is chosen by choose_k
FINETUNING = ["ft_all", "ft_first", "ft_last", "spottune", *REUSE]
NO_BUDGET = ["noadapt", "hm", "adabn", "sfda", "sfda_truesize"]


def parse_run(run: Path) -> Dict[str, object]:
    """method, source, target, budget, tau, lambda, fold of a run directory.

    Names: ``<method>/<s>_<t>[_n<N>][_tau<T>][_lam<L>]`` or ``oracle/<t>/fold<k>``. SpotTUnet runs
    whose name lacks tau or lambda (the lambda grid, the test runs: both read them from a csv when they
    run) get them from the run's command.txt.
    """
    if run.parent.parent.name == "oracle":
        return {"method": "oracle", "source": np.nan, "target": int(run.parent.name), "budget": np.nan,
                "tau": np.nan, "lam": np.nan, "fold": int(run.name[4:])}
    match = RUN_NAME.match(run.name)
    if match is None:
        raise ValueError(f"{run}: not a CC359 run name (<s>_<t>[_n<N>][_tau<T>][_lam<L>] or oracle/<t>/fold<k>)")
    g = match.groupdict()
    tau, lam = (float(g[k]) if g[k] else np.nan for k in ("tau", "lam"))
    if run.parent.name.startswith("spottune") and (np.isnan(tau) or np.isnan(lam)):
        given = command_options(run)
        tau = float(given.get("--tau", tau)) if np.isnan(tau) else tau
        lam = float(given.get("--k_reg", lam)) if np.isnan(lam) else lam
    return {"method": run.parent.name, "source": int(g["source"]), "target": int(g["target"]),
            "budget": float(g["budget"]) if g["budget"] else np.nan, "tau": tau, "lam": lam, "fold": np.nan,
            **({"lr": float(g["lr"])} if g["lr"] else {}), **({"k": int(g["k"])} if g["k"] else {})}


def command_options(run: Path) -> Dict[str, str]:
    """``--option value`` pairs of the run's command.txt (empty when the run has none)."""
    path = run / "command.txt"
    if not path.is_file():
        return {}
    try:
        words = shlex.split(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: cannot parse the command ({e})") from None
    return {w: v for w, v in zip(words, words[1:]) if w.startswith("--") and not v.startswith("--")}


def collect(runs: Sequence[Path]) -> pd.DataFrame:
    """One row per (run, test volume): the run's coordinates, patient, dice, sdice."""
    frames = []
    for run in runs:
        path = run / "test_metrics.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (is the run complete, and was it given --test_folder?)")
        df = pd.read_csv(path)[["patient", "dice", "sdice"]]
        for key, value in parse_run(run).items():
            df.insert(0, key, value)
        df.insert(0, "run", str(run))
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def experiment_scores(scores: pd.DataFrame) -> pd.DataFrame:
    """The paper's experiment score: mean over the run's test volumes (one row per run)."""
    keys = ["run", "method", "source", "target", "budget", "tau", "lam", "fold"]
    return scores.groupby(keys, dropna=False)[["dice", "sdice"]].mean().reset_index()


def validation_grid(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean surface Dice over the validation pairs per (budget, tau, lambda); a run listed twice counts once."""
    per_run = experiment_scores(scores)
    if per_run[["tau", "lam"]].isna().any().any():
        bad = per_run.loc[per_run[["tau", "lam"]].isna().any(axis=1), "run"].iloc[0]
        raise ValueError(f"{bad}: SpotTUnet validation run without tau or lambda (name or command.txt)")
    per_run = per_run.drop_duplicates(["source", "target", "budget", "tau", "lam"])
    return per_run.groupby(["budget", "tau", "lam"], sort=True)["sdice"].mean().reset_index()


def choose_tau(scores: pd.DataFrame, budget: int) -> pd.DataFrame:
    """The paper's tau: chosen once, at ``budget`` slices with lambda = 0 (best mean surface Dice, first of ties)."""
    grid = validation_grid(scores)
    at = grid[(grid["budget"] == budget) & (grid["lam"] == 0)]
    if at.empty:
        raise ValueError(f"no SpotTUnet validation run at TAU_BUDGET = {budget} slices with lambda 0")
    best = at.loc[at["sdice"].idxmax()]
    return pd.DataFrame({"budget": [int(budget)], "tau": [best["tau"]], "val_sdice": [round(best["sdice"], 4)]})


def choose(scores: pd.DataFrame, tau: float) -> pd.DataFrame:
    """Per budget, with tau fixed: the lambda with the best mean surface Dice over the validation pairs (first of ties).

    Runs of other taus (the tau grid at TAU_BUDGET) do not compete; a budget without a run at ``tau``
    means the lambda grid ran with a tau that is no longer the chosen one.
    """
    grid = validation_grid(scores)
    fixed = grid[np.isclose(grid["tau"], tau)]
    missing = sorted(set(grid["budget"]) - set(fixed["budget"]))
    if missing:
        raise ValueError(f"no SpotTUnet validation run with the chosen tau {tau:g} at budget(s) "
                         f"{', '.join(f'{n:g}' for n in missing)} (rerun the lambda grid)")
    best = fixed.loc[fixed.groupby("budget")["sdice"].idxmax()]
    return pd.DataFrame({"budget": best["budget"].astype(int), "tau": best["tau"], "lambda": best["lam"],
                         "val_sdice": best["sdice"].round(4)})


def choose_lr(scores: pd.DataFrame) -> pd.DataFrame:
    """The source-free adaptation's learning rate: best mean surface Dice over the validation pairs (first of ties)."""
    if "lr" not in scores.columns or scores["lr"].isna().any():
        raise ValueError("choose_lr needs runs named <s>_<t>_lr<lr> (sfda_val/...)")
    per_run = scores.groupby(["source", "target", "lr"])["sdice"].mean().reset_index()
    grid = per_run.groupby("lr", sort=True)["sdice"].mean()
    return pd.DataFrame({"lr": [grid.idxmax()], "val_sdice": [round(grid.max(), 4)],
                         "grid": [" ".join(f"{lr:g}:{v:.4f}" for lr, v in grid.items())]})


def choose_k(scores: pd.DataFrame) -> pd.DataFrame:
    """Seed 002's level k per reuse strategy (runs <method>_val/<s>_<t>_n<N>_k<k>): the best mean surface Dice over
    the validation pairs (first of ties, i.e. the smallest k), one row per method."""
    if "k" not in scores.columns or scores["k"].isna().any():
        raise ValueError("choose_k needs runs named <method>_val/<s>_<t>_n<N>_k<k> (ttl_val/..., lwft_val/...)")
    scores = scores.assign(method=scores["method"].str.removesuffix("_val"), k=scores["k"].astype(int))
    unknown = sorted(set(scores["method"]) - set(REUSE))
    if unknown:
        raise ValueError(f"choose_k: {unknown[0]}_val is not a reuse strategy's search ({', '.join(REUSE)})")
    per_run = scores.groupby(["method", "source", "target", "k"])["sdice"].mean().reset_index()
    rows = []
    for method, runs in per_run.groupby("method", sort=False):
        grid = runs.groupby("k", sort=True)["sdice"].mean()
        rows.append({"method": method, "k": int(grid.idxmax()), "val_sdice": round(grid.max(), 4),
                     "grid": " ".join(f"{k}:{v:.4f}" for k, v in grid.items())})
    return pd.DataFrame(rows).set_index("method").reindex([m for m in REUSE if m in set(per_run["method"])]).reset_index()


def read_tau(path: Path) -> float:
    """The tau of spottune_tau.csv (one row: budget, tau, val_sdice)."""
    table = pd.read_csv(path)
    if "tau" not in table.columns or len(table) != 1:
        raise ValueError(f"{path}: expected one row with a tau column (written by report.py choose_tau)")
    return float(table["tau"].iloc[0])


def mean_sd(values: pd.Series) -> str:
    v = 100 * values.dropna()
    if v.empty:
        return "–"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def method_values(per_run: pd.DataFrame, metric: str, pairs: Sequence[str],
                  budgets: Sequence[int]) -> Dict[str, List[pd.Series]]:
    """Per method (table order), per budget: the pair scores of that cell; budget-free methods repeat across budgets,
    the oracle's cell holds its domain score (mean over the CV folds) for each pair's target."""
    cells = {}
    oracle = per_run[per_run["method"] == "oracle"].groupby("target")[metric].mean()
    for method in ["noadapt", "hm", "adabn", "sfda", "sfda_truesize", *FINETUNING, "oracle"]:
        if method == "oracle":
            if not oracle.empty:
                cells[method] = [pd.Series([oracle.get(int(p.split("_")[1]), np.nan) for p in pairs])] * len(budgets)
            continue
        rows = per_run[per_run["method"] == method]
        if rows.empty:
            continue
        cells[method] = ([rows[metric]] * len(budgets) if method in NO_BUDGET
                         else [rows.loc[rows["budget"] == n, metric] for n in budgets])
    return cells


def method_table(cells: Dict[str, List[str]], budgets: Sequence[int]) -> str:
    head = ("| method | " + " | ".join(f"N = {n}" if n is not None else "no target labels" for n in budgets)
            + " |\n|---|" + "---|" * len(budgets) + "\n")
    label = {"noadapt": "baseline (no adaptation)"}
    return head + "".join(f"| {label.get(m, m)} | " + " | ".join(row) + " |\n" for m, row in cells.items())


def cc359_table(per_run: pd.DataFrame, metric: str, pairs: Sequence[str], budgets: Sequence[int]) -> str:
    """Method x budget: mean ± sd over the test pairs of the pair scores (x100); budget-free rows repeat across."""
    values = method_values(per_run, metric, pairs, budgets)
    return method_table({m: [mean_sd(v) for v in row] for m, row in values.items()}, budgets)


def relative_scores(per_run: pd.DataFrame) -> pd.DataFrame:
    """The paper's relative score per run: (s - s_baseline) / (s_oracle - s_baseline), surface Dice, same pair."""
    base = per_run[per_run["method"] == "noadapt"].set_index(["source", "target"])["sdice"]
    oracle = per_run[per_run["method"] == "oracle"].groupby("target")["sdice"].mean()
    runs = per_run[~per_run["method"].isin(["noadapt", "oracle"])].copy()
    b = np.array([base.get((s, t), np.nan) for s, t in zip(runs["source"], runs["target"])])
    o = oracle.reindex(runs["target"]).to_numpy()
    runs["sdice"] = (runs["sdice"].to_numpy() - b) / (o - b)
    return runs


def budget_equivalent(value: float, curve: pd.Series) -> str:
    """Where ``value`` falls on a method's budget curve (linear in log N between measured budgets)."""
    n, s = np.log(curve.index.to_numpy(float)), curve.to_numpy(float)
    if value < s[0]:
        return f"below N = {curve.index[0]:g}"
    if value > s.max():
        return f"above N = {curve.index[np.argmax(s)]:g}"
    for i in range(len(s) - 1):
        lo, hi = sorted((s[i], s[i + 1]))
        if lo <= value <= hi and s[i + 1] != s[i]:
            return f"≈ {np.exp(n[i] + (value - s[i]) / (s[i + 1] - s[i]) * (n[i + 1] - n[i])):.0f} slices"
    return f"≈ {curve.index[int(np.argmin(np.abs(s - value)))]:g} slices"


def cc359_checks(per_run: pd.DataFrame, pairs: Sequence[str], budgets: Sequence[int]) -> str:
    """The issue's targets, on the mean surface Dice over test pairs (points = 100 x surface Dice)."""
    def mean(method: str, budget: Optional[int] = None) -> float:
        rows = per_run[per_run["method"] == method]
        return 100 * (rows[rows["budget"] == budget] if budget else rows)["sdice"].mean()

    oracle = 100 * np.mean([per_run[(per_run["method"] == "oracle") & (per_run["target"] == int(p.split("_")[1]))]["sdice"].mean()
                            for p in pairs])
    lines = [("baseline below the oracle", f"{mean('noadapt'):.1f} vs {oracle:.1f}", mean("noadapt") < oracle)] \
        if np.isfinite(oracle) else []
    for m in ["ft_all", "ft_first", "ft_last", "spottune"]:
        curve = [mean(m, n) for n in budgets]
        if len(budgets) > 1 and all(np.isfinite(curve)):
            lines.append((f"{m} improves as N grows", " → ".join(f"{c:.1f}" for c in curve),
                          all(b > a for a, b in zip(curve, curve[1:]))))
    for n in budgets:
        best_ft = max(mean(m, n) for m in ["ft_all", "ft_first", "ft_last"])
        gap = mean("spottune", n) - best_ft
        if not np.isfinite(gap):
            continue
        lines.append((f"SpotTUnet within 1 point of the best fine-tuning, N = {n}", f"{gap:+.1f}", gap >= -1))
    for n in budgets:                       # seed 002: truncation at least as good as fine-tuning all of it
        gap = mean("ttl", n) - mean("ft_all", n)
        if np.isfinite(gap):
            lines.append((f"TTL at least ft_all (seed 002), N = {n}", f"{gap:+.1f}", gap >= 0))
    if np.isfinite(mean("hm")):
        lines.append(("histogram matching vs baseline", f"{mean('hm') - mean('noadapt'):+.1f}", mean("hm") >= mean("noadapt")))
    if np.isfinite(mean("sfda")) and np.isfinite(mean("adabn")):
        lines.append(("SFDA at least AdaBN", f"{mean('sfda') - mean('adabn'):+.1f}", mean("sfda") >= mean("adabn")))
    body = "".join(f"| {name} | {value} | {'yes' if ok else '**no**'} |\n" for name, value, ok in lines)
    text = "\n## Targets checked on this run\n\n| target | measured (surface Dice x 100) | holds |\n|---|---|---|\n" + body
    ft = pd.Series({n: mean("ft_all", n) for n in budgets}).dropna()
    worth = [f"- {m}: {mean(m):.1f}, on ft_all's budget axis {budget_equivalent(mean(m), ft)}\n"
             for m in ["adabn", "sfda", "sfda_truesize"] if np.isfinite(mean(m)) and len(ft)]
    if worth:
        text += ("\n## What the label-free adaptation is worth in annotated slices\n\n"
                 "Mean surface Dice x 100 over the test pairs, placed on the fine-tune-all curve "
                 "(linear in log N between the measured budgets):\n\n" + "".join(worth))
    return text


SOURCE_FREE = ["noadapt", "hm", "adabn", "sfda", "sfda_truesize"]


def source_free_per_seed(per_seeds: Sequence[pd.DataFrame]) -> str:
    """Per source-free method: each seed's mean over the test pairs, its collapsed runs (mean Dice below COLLAPSE)
    and the runs the collapse guard returned to AdaBN (collapse.txt in the run)."""
    lines = ["| method | mean ± sd over seeds | per seed | collapsed runs | guard fell back |", "|---|---|---|---|---|"]
    for method in SOURCE_FREE:
        runs = [r[r["method"] == method] for r in per_seeds]
        if any(r.empty for r in runs):
            continue
        per_seed = pd.Series([r["sdice"].mean() for r in runs])
        down = sum(int((r["dice"] < COLLAPSE).sum()) for r in runs)
        guarded = sum(int(sum((Path(run) / "collapse.txt").is_file() for run in r["run"])) for r in runs)
        total = sum(len(r) for r in runs)
        lines.append(f"| {method} | {mean_sd(per_seed)} | {', '.join(f'{100 * v:.1f}' for v in per_seed)} | "
                     f"{down}/{total} | {guarded}/{total} |")
    return "\n".join(lines) + "\n"


def cc359_seeds_report(scores: Sequence[pd.DataFrame], names: Sequence[str], title: str) -> str:
    """The CC359 tables over training seeds: each cell the mean ± sd over seeds of the seed's mean over the test
    pairs; the source-free runs per seed; the targets checked on the per-run means over seeds."""
    per_seeds = [experiment_scores(s) for s in scores]
    tested = per_seeds[0][per_seeds[0]["method"] != "oracle"]
    pairs = sorted({f"{int(a)}_{int(b)}" for a, b in zip(tested["source"], tested["target"])})
    budgets = sorted(int(n) for n in tested["budget"].dropna().unique())
    columns = budgets or [None]                       # the source-free chain alone: one column
    text = (f"# {title}\n\nSurface Dice x100 on the test volumes of the pairs {', '.join(pairs)}. Each cell: mean ± sd "
            f"over {len(scores)} training seeds ({', '.join(names)}) of the seed's mean over the test pairs "
            f"(last-epoch weights). A collapsed run has a mean Dice below {100 * COLLAPSE:g}.\n")
    for metric, label in (("sdice", "Surface Dice"), ("dice", "Dice")):
        values = [method_values(r, metric, pairs, columns) for r in per_seeds]
        methods = [m for m in values[0] if all(m in v for v in values)]
        cells = {m: [mean_sd(pd.Series([v[m][i].mean() for v in values])) for i in range(len(columns))]
                 for m in methods}
        text += f"\n## {label}\n\n" + method_table(cells, columns)
    text += "\n## Source-free runs per seed (surface Dice x100)\n\n" + source_free_per_seed(per_seeds)
    keys = ["method", "source", "target", "budget", "fold"]
    means = pd.concat(per_seeds).groupby(keys, dropna=False)[["dice", "sdice"]].mean().reset_index()
    return text + cc359_checks(means, pairs, budgets).replace("on this run", "on the means over seeds")


ALPHA = 0.05
VOLUME = ["source", "target", "patient"]


def wilcoxon_greater(x: np.ndarray, y: np.ndarray) -> Dict[str, float]:
    """One-sided Wilcoxon signed-rank test of x > y on paired values (scipy; zero differences dropped).

    n is the number of non-zero differences, the test's real sample size.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    diff = x - y
    n = int(np.count_nonzero(diff))
    if n == 0:
        return {"n": 0, "W": np.nan, "p": np.nan, "mean_diff": float(diff.mean()) if diff.size else np.nan}
    result = stats.wilcoxon(x, y, alternative="greater")
    return {"n": n, "W": float(result.statistic), "p": float(result.pvalue), "mean_diff": float(diff.mean())}


def reading(n: int, p: float) -> str:
    """What a one-sided test on n non-zero pairs can say: below n = 5 even n wins out of n give p = 0.5^n >= 0.05."""
    if n == 0:
        return "no non-zero difference: nothing to test"
    if 0.5 ** n >= ALPHA:
        return f"**n too small**: the smallest one-sided p with n = {n} is 0.5^{n} = {0.5 ** n:.3f}, so no result can reach p < {ALPHA:g}"
    return f"significant (p < {ALPHA:g})" if p < ALPHA else f"not significant (p >= {ALPHA:g})"


def paired(scores: pd.DataFrame, a: pd.Series, b: pd.Series) -> pd.DataFrame:
    """Per-volume surface Dice of the rows ``a`` and ``b`` of scores, matched on (source, target, patient)."""
    left = scores.loc[a].drop_duplicates(VOLUME)[[*VOLUME, "sdice"]]
    right = scores.loc[b].drop_duplicates(VOLUME)[[*VOLUME, "sdice"]]
    return left.merge(right, on=VOLUME, suffixes=("_a", "_b"))


def test_row(label: str, budget: int, other: str, pairs: pd.DataFrame) -> str:
    r = wilcoxon_greater(pairs["sdice_a"], pairs["sdice_b"])
    stat = "–" if np.isnan(r["W"]) else f"{r['W']:g}"
    p = "–" if np.isnan(r["p"]) else f"{r['p']:.3g}"
    return (f"| {budget} | {label} | {other} | {len(pairs)} | {r['n']} | {100 * r['mean_diff']:+.2f} | {stat} | {p} | "
            f"{reading(r['n'], r['p'])} |\n")


def cc359_statistics(scores: pd.DataFrame, params: pd.DataFrame, val_scores: Optional[pd.DataFrame],
                     budgets: Sequence[int]) -> str:
    """The paper's statistics: one-sided Wilcoxon of the chosen lambda against lambda = 0 (validation grid), and
    of SpotTUnet against the better of ft_all / ft_first (test volumes), per budget, with n and p."""
    head = ("| N | compared | against | volumes | n (non-zero) | mean difference x100 | W | p (one-sided) | reading |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    text = ("\n## Statistics (the paper's one-sided Wilcoxon signed-rank tests)\n\n"
            "`scipy.stats.wilcoxon(x, y, alternative='greater')` on per-volume surface Dice paired by (pair, volume); "
            "zero differences are dropped, so n counts the non-zero ones. With n non-zero pairs the smallest "
            f"one-sided p is 0.5^n: n <= 4 cannot reach p < {ALPHA:g} whatever the data, and a few volumes of one "
            "or two pairs are not independent samples of scanners. The paper's TOST (equivalence when Wilcoxon is "
            "not significant) is not computed.\n")
    if val_scores is None or val_scores.empty:
        text += "\nChosen lambda against lambda = 0: no validation scores given.\n"
    else:
        rows = ""
        for r in params.to_dict("records"):
            n, tau, lam = int(r["budget"]), float(r["tau"]), float(r["lambda"])
            if lam == 0:
                rows += f"| {n} | lambda = 0 | lambda = 0 | – | – | – | – | – | lambda = 0 chosen: nothing to test |\n"
                continue
            at = (val_scores["budget"] == n) & np.isclose(val_scores["tau"], tau)
            pairs = paired(val_scores, at & np.isclose(val_scores["lam"], lam), at & (val_scores["lam"] == 0))
            rows += test_row(f"lambda = {lam:g}", n, f"lambda = 0 (tau {tau:g})", pairs)
        text += "\n### Chosen lambda > lambda = 0, validation pairs\n\n" + head + rows
    per_run = experiment_scores(scores)
    rows = ""
    for n in budgets:
        means = {m: per_run[(per_run["method"] == m) & (per_run["budget"] == n)]["sdice"].mean() for m in ("ft_all", "ft_first")}
        means = {m: v for m, v in means.items() if np.isfinite(v)}
        spot = (scores["method"] == "spottune") & (scores["budget"] == n)
        if not means or not spot.any():
            continue
        better = max(means, key=means.get)
        pairs = paired(scores, spot, (scores["method"] == better) & (scores["budget"] == n))
        rows += test_row("spottune", n, f"{better} (the better of ft_all / ft_first)", pairs)
    if rows:
        text += "\n### SpotTUnet > the better of ft_all / ft_first, test volumes\n\n" + head + rows
    return text


def tau_section(params: pd.DataFrame, tau: Optional[pd.DataFrame], val_scores: Optional[pd.DataFrame]) -> str:
    """tau chosen once (at TAU_BUDGET, lambda = 0), then lambda per budget with that tau."""
    text = "\n## SpotTUnet's tau and lambda, chosen on the validation pairs\n\n"
    if tau is not None and not tau.empty:
        tb = int(tau["budget"].iloc[0])
        text += (f"tau chosen once, at N = {tb} with lambda = 0: **{tau['tau'].iloc[0]:g}** (mean validation "
                 f"surface Dice {100 * tau['val_sdice'].iloc[0]:.1f}); then lambda per budget with tau fixed.\n\n")
        if val_scores is not None and not val_scores.empty:
            grid = validation_grid(val_scores)
            at = grid[(grid["budget"] == tb) & (grid["lam"] == 0)]
            text += ("| tau (N = %d, lambda = 0) | val surface Dice |\n|---|---|\n" % tb
                     + "".join(f"| {r.tau:g} | {100 * r.sdice:.1f} |\n" for r in at.itertuples()) + "\n")
    return (text + "| N | tau | lambda | val surface Dice |\n|---|---|---|---|\n"
            + "".join(f"| {int(r['budget'])} | {r['tau']:g} | {r['lambda']:g} | {100 * r['val_sdice']:.1f} |\n"
                      for r in params.to_dict("records")))


def cc359_report(scores: pd.DataFrame, params: pd.DataFrame, title: str, val_scores: Optional[pd.DataFrame] = None,
                 tau: Optional[pd.DataFrame] = None) -> str:
    per_run = experiment_scores(scores)
    tested = per_run[per_run["method"] != "oracle"]
    pairs = sorted({f"{int(s)}_{int(t)}" for s, t in zip(tested["source"], tested["target"])})
    budgets = sorted(int(n) for n in tested["budget"].dropna().unique())
    n_volumes = scores[scores["method"] == "noadapt"].groupby("run").size()
    intro = (f"# {title}\n\nTest pairs (source_target): {', '.join(pairs)}; {int(n_volumes.mean()) if len(n_volumes) else 0} "
             f"test volumes per pair. Each cell: mean ± sd over the test pairs of the pair's score, the mean over its "
             f"test volumes (x100, last-epoch weights, no model selection, as in the paper). Budget-free methods repeat "
             f"across columns; the oracle is the target domain's 3-fold cross-validation. Per-volume values: scores.csv.\n")
    return (intro + "\n## Surface Dice\n\n" + cc359_table(per_run, "sdice", pairs, budgets)
            + "\n## Dice\n\n" + cc359_table(per_run, "dice", pairs, budgets)
            + "\n## Relative surface Dice (paper): 100 x (s - baseline) / (oracle - baseline), per pair\n\n"
            + cc359_table(relative_scores(per_run), "sdice", pairs, budgets)
            + tau_section(params, tau, val_scores) + cc359_statistics(scores, params, val_scores, budgets)
            + cc359_checks(per_run, pairs, budgets))


# ---------------------------------------------------------------- two result roots side by side

def final_scores(run: Path) -> Dict[str, float]:
    """A run's final scores x 100: tested runs (test_metrics.csv) sdice/dice, others last/best val 3D Dice."""
    tested = run / "test_metrics.csv"
    if tested.is_file():
        df = pd.read_csv(tested)
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


def run_seconds(run: Path) -> float:
    stats = run / "run_stats.csv"
    return float(pd.read_csv(stats).set_index("name")["value"]["total"]) if stats.is_file() else float("nan")


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
                             "reference_s": run_seconds(ref[name]), "candidate_s": run_seconds(cand[name])})
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
                     "reference_s": g["reference_s"].mean(), "candidate_s": g["candidate_s"].mean()})
    return pd.DataFrame(rows)


def compare_report(table_: pd.DataFrame, references: Sequence[Path], candidates: Sequence[Path],
                   tolerance: float) -> str:
    """Markdown: per-run table, the rule (paired mean difference within ``tolerance`` points, no more collapses in
    the candidate) judged on each run's first score, total run time of each side."""
    primary = table_.groupby("run", sort=False).head(1)          # sdice, or the last-epoch 3D Dice
    beyond = primary[primary["delta"].abs() > tolerance]
    more_collapses = primary[primary["candidate_collapses"] > primary["reference_collapses"]]
    failed = sorted(set(beyond["run"]) | set(more_collapses["run"]))
    times = primary[["reference_s", "candidate_s"]].sum()

    def value(mean: float, sd: float) -> str:
        return f"{mean:.1f}" if np.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"

    lines = [f"# {' '.join(map(str, candidates))} against {' '.join(map(str, references))}\n",
             f"Final scores x 100 (tested runs: mean test surface Dice / Dice; others: last-epoch / best validation "
             f"3D Dice), mean ± sd over the {len(references)} root(s) of each side; the k-th candidate root pairs with "
             f"the k-th reference root (the same training seed). delta = mean of candidate - reference over the pairs "
             f"where neither side collapsed (Dice below {100 * COLLAPSE:g}), in points; collapses: reference / "
             f"candidate. The rule, on each run's first score: |delta| <= {tolerance:g} and no more collapses in the "
             f"candidate.\n",
             "| run | score | reference | candidate | delta (pairs) | collapses | reference s | candidate s |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.score} | {value(r.reference, r.reference_sd)} | {value(r.candidate, r.candidate_sd)} | "
              + ("–" if np.isnan(r.delta) else f"{r.delta:+.1f}") + f" ({r.pairs}) | "
              f"{r.reference_collapses} / {r.candidate_collapses} | {r.reference_s:.0f} | {r.candidate_s:.0f} |"
              for r in table_.itertuples()]
    largest = (f" (largest: {beyond.loc[beyond['delta'].abs().idxmax(), 'run']} "
               f"{beyond['delta'].abs().max():.1f} points)" if len(beyond) else "")
    lines += ["", f"- runs: {len(primary)}; beyond {tolerance:g} point(s): **{len(beyond)}**{largest}",
              f"- runs where the candidate collapsed more often: **{len(more_collapses)}**"
              + (f" ({', '.join(more_collapses['run'])})" if len(more_collapses) else ""),
              f"- mean delta of the first score: {primary['delta'].mean():+.2f} points",
              f"- run time, sum over runs: {times['reference_s']:.0f} s against {times['candidate_s']:.0f} s"
              + (f" ({times['reference_s'] / times['candidate_s']:.2f}x)" if times["candidate_s"] > 0 else ""),
              f"- every run passes: **{'yes' if not failed else 'no'}**" + (f" (fails: {', '.join(failed)})" if failed else ""),
              ""]
    return "\n".join(lines)


def seed_scores(root: Path, at_epochs: Sequence[int]) -> pd.DataFrame:
    """One row per trained/evaluated run below ``root``: best and last validation 3D Dice, and the 3D Dice
    after ``at_epochs`` epochs where the run is longer (a prefix of a run equals a shorter run)."""
    rows = []
    for name, run in sorted(find_runs(root).items()):
        metrics = read_metrics(run)
        row = {"run": name, "epochs": len(metrics) if metrics["tra_loss_tot"].notna().any() else 0,
               "dice3d": read_best_epoch(run)[1], "last_dice3d": float(metrics["val_dice_3d"].iloc[-1])}
        for k in at_epochs:
            at = metrics.loc[metrics["epoch"] == k - 1, "val_dice_3d"]
            row[f"at{k}"] = float(at.iloc[0]) if len(at) and k < len(metrics) else np.nan   # a longer run's prefix
        rows.append(row)
    return pd.DataFrame(rows)


def seeds_report(roots: Sequence[Path], at_epochs: Sequence[int], title: str) -> str:
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
            + head + "".join(lines) + claims(means, down).replace(
                "on this run", "on the means over seeds"))


COMMANDS = ["collect", "choose_tau", "choose", "choose_lr", "choose_k", "cc359", "cc359_seeds", "compare", "seeds"]


def subcommand_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="CC359 tables (collect, choose_tau, choose, cc359); "
                                                 "two result roots compared (compare)")
    parser.add_argument("command", choices=COMMANDS)
    parser.add_argument("--runs", nargs="+", type=Path)
    parser.add_argument("--scores", nargs="+", type=Path, help="cc359: scores.csv; cc359_seeds: one per seed")
    parser.add_argument("--val_scores", type=Path, help="cc359: scores of the SpotTUnet validation runs (collect)")
    parser.add_argument("--params", type=Path)
    parser.add_argument("--tau_file", type=Path, help="choose, cc359: the csv choose_tau wrote")
    parser.add_argument("--budget", type=int, help="choose_tau: the budget tau is chosen at (TAU_BUDGET)")
    parser.add_argument("--reference", nargs="+", type=Path, help="result root(s), e.g. one per seed (compare)")
    parser.add_argument("--candidate", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=1.5, help="points of score (compare)")
    parser.add_argument("--only", nargs="+", help="compare: these runs only (names below the roots, e.g. sfda)")
    parser.add_argument("--roots", nargs="+", type=Path, help="seeds: one prostate result root per training seed")
    parser.add_argument("--at_epochs", nargs="*", type=int, default=[], help="seeds: 3D Dice also after these epochs")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="CC359 domain adaptation")
    args = parser.parse_args(argv)
    if args.command in ("collect", "choose_tau", "choose", "choose_lr", "choose_k") and not args.runs:
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
    try:
        if args.command == "collect":
            table_ = collect(args.runs)
            write_csv_atomic(table_, args.out, float_format="%.4f")
            print(f"wrote {args.out}: {len(table_)} test volumes from {len(args.runs)} runs")
        elif args.command in ("choose_tau", "choose", "choose_lr", "choose_k"):
            chosen = (choose_tau(collect(args.runs), args.budget) if args.command == "choose_tau"
                      else choose_lr(collect(args.runs)) if args.command == "choose_lr"
                      else choose_k(collect(args.runs)) if args.command == "choose_k"
                      else choose(collect(args.runs), read_tau(args.tau_file)))
            write_csv_atomic(chosen, args.out)
            print(chosen.to_string(index=False))
        else:
            text = (seeds_report(args.roots, args.at_epochs, args.title) if args.command == "seeds"
                    else cc359_seeds_report([read_table(f) for f in args.scores], [str(f.parent.parent) for f in args.scores],
                                            args.title) if args.command == "cc359_seeds"
                    else compare_report(compare(args.reference, args.candidate, args.only), args.reference, args.candidate,
                                        args.tolerance) if args.command == "compare"
                    else cc359_report(pd.read_csv(args.scores[0]), pd.read_csv(args.params), args.title,
                                      pd.read_csv(args.val_scores) if args.val_scores else None,
                                      pd.read_csv(args.tau_file) if args.tau_file else None))
            write_text_atomic(text, args.out)
            print(text)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return subcommand_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="Results")
    args = parser.parse_args(argv)
    try:
        rows = [summarize(run) for run in args.runs]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text = (f"# {args.title}\n\nValidation set of each run's dataset (cesource: source val; others: target val). "
            f"3D Dice per patient of the foreground class(es), mean ± sd over {rows[-1]['patients']} patients, at the "
            f"epoch chosen by validation 3D Dice; HD95/ASSD in pixels (PNG data) or mm (NIfTI), at that epoch, averaged "
            f"over the patients where both prediction and GT are non-empty (their number in brackets; an empty "
            f"prediction has no surface distance).\n\n"
            + table(rows) + claims(rows))
    write_text_atomic(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
