#!/usr/bin/env python3
"""Markdown results table of a set of runs, every number read from the runs' own files.

    report.py --runs results/prostate/cesource ... --out results/prostate/report.md [--title ...]
    report.py collect --runs results/cc359/ft_all/2_5_n8 ... --out results/cc359/scores.csv
    report.py choose --runs results/cc359/spottune_val/... --out results/cc359/spottune_params.csv
    report.py cc359 --scores results/cc359/scores.csv --params results/cc359/spottune_params.csv --out report.md
    report.py compare --reference results/prostate [more roots] --candidate results_bf16/prostate [...] --out c.md

Prostate: per run, best validation 3D Dice (mean ± sd over patients, at the epoch chosen by
validation 3D Dice), last-epoch 3D Dice, 2D Dice and HD95/ASSD at the best epoch, epochs and wall
time. When the SFDA runs are present, the seed's claims are checked on these numbers.

CC359: ``collect`` gathers every run's test_metrics.csv (one row per test volume) with the method,
pair, budget, tau and lambda its directory name encodes; ``choose`` picks SpotTUnet's (tau,
lambda) per budget on the validation pairs; ``cc359`` writes the method x budget table of mean
surface Dice ± sd over test pairs (each pair's score: the mean over its test volumes, as in the
paper), baseline and oracle, and checks the issue's targets on these numbers.

``compare`` puts the same runs of two result roots side by side (e.g. fp32 against bf16): per run
its final score (CC359: mean test surface Dice and Dice; prostate: last-epoch and best validation
3D Dice), the difference in points and the run times, and whether every run stays within
``--tolerance`` points, the rule a faster mode must pass to become the default. Several roots per
side (one per seed) are averaged run by run.
"""
import argparse
import re
import sys
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

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


# ---------------------------------------------------------------- CC359

RUN_NAME = re.compile(r"(?P<source>\d)_(?P<target>\d)(?:_n(?P<budget>\d+))?(?:_tau(?P<tau>[\d.e-]+)_lam(?P<lam>[\d.e-]+))?$")
FINETUNING = ["ft_all", "ft_first", "ft_last", "spottune"]
NO_BUDGET = ["noadapt", "hm", "adabn", "sfda", "sfda_truesize"]


def parse_run(run: Path) -> Dict[str, object]:
    """method, source, target, budget, tau, lambda, fold of a run directory.

    Names: ``<method>/<s>_<t>[_n<N>][_tau<T>_lam<L>]`` or ``oracle/<t>/fold<k>``.
    """
    if run.parent.parent.name == "oracle":
        return {"method": "oracle", "source": np.nan, "target": int(run.parent.name), "budget": np.nan,
                "tau": np.nan, "lam": np.nan, "fold": int(run.name[4:])}
    match = RUN_NAME.match(run.name)
    if match is None:
        raise ValueError(f"{run}: not a CC359 run name (<s>_<t>[_n<N>][_tau<T>_lam<L>] or oracle/<t>/fold<k>)")
    g = match.groupdict()
    return {"method": run.parent.name, "source": int(g["source"]), "target": int(g["target"]),
            "budget": float(g["budget"]) if g["budget"] else np.nan, "tau": float(g["tau"]) if g["tau"] else np.nan,
            "lam": float(g["lam"]) if g["lam"] else np.nan, "fold": np.nan}


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


def choose(scores: pd.DataFrame) -> pd.DataFrame:
    """Per budget: the (tau, lambda) with the best mean surface Dice over the validation pairs (first of ties)."""
    per_run = experiment_scores(scores)
    grid = per_run.groupby(["budget", "tau", "lam"], sort=True)["sdice"].mean().reset_index()
    best = grid.loc[grid.groupby("budget")["sdice"].idxmax()]
    return pd.DataFrame({"budget": best["budget"].astype(int), "tau": best["tau"], "lambda": best["lam"],
                         "val_sdice": best["sdice"].round(4)})


def mean_sd(values: pd.Series) -> str:
    v = 100 * values.dropna()
    if v.empty:
        return "–"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def cc359_table(per_run: pd.DataFrame, metric: str, pairs: Sequence[str], budgets: Sequence[int]) -> str:
    """Method x budget: mean ± sd over the test pairs of the pair scores (x100); budget-free rows repeat across."""
    head = "| method | " + " | ".join(f"N = {n}" for n in budgets) + " |\n|---|" + "---|" * len(budgets) + "\n"
    lines = []
    oracle = per_run[per_run["method"] == "oracle"].groupby("target")[metric].mean()   # CV folds -> domain score
    for method in ["noadapt", "hm", "adabn", "sfda", "sfda_truesize", *FINETUNING, "oracle"]:
        if method == "oracle":
            if oracle.empty:
                continue
            values = pd.Series([oracle.get(int(p.split("_")[1]), np.nan) for p in pairs])
            cells = [mean_sd(values)] * len(budgets)
        else:
            rows = per_run[per_run["method"] == method]
            if rows.empty:
                continue
            if method in NO_BUDGET:
                cells = [mean_sd(rows[metric])] * len(budgets)
            else:
                cells = [mean_sd(rows.loc[rows["budget"] == n, metric]) for n in budgets]
        label = {"noadapt": "baseline (no adaptation)"}.get(method, method)
        lines.append(f"| {label} | " + " | ".join(cells) + " |\n")
    return head + "".join(lines)


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
    lines = [("baseline below the oracle", f"{mean('noadapt'):.1f} vs {oracle:.1f}", mean("noadapt") < oracle)]
    for m in ["ft_all", "ft_first", "ft_last", "spottune"]:
        curve = [mean(m, n) for n in budgets]
        if len(budgets) > 1 and all(np.isfinite(curve)):
            lines.append((f"{m} improves as N grows", " → ".join(f"{c:.1f}" for c in curve),
                          all(b > a for a, b in zip(curve, curve[1:]))))
    for n in budgets:
        best_ft = max(mean(m, n) for m in ["ft_all", "ft_first", "ft_last"])
        gap = mean("spottune", n) - best_ft
        lines.append((f"SpotTUnet within 1 point of the best fine-tuning, N = {n}", f"{gap:+.1f}", gap >= -1))
    lines.append(("histogram matching vs baseline", f"{mean('hm') - mean('noadapt'):+.1f}", mean("hm") >= mean("noadapt")))
    body = "".join(f"| {name} | {value} | {'yes' if ok else '**no**'} |\n" for name, value, ok in lines)
    text = "\n## Targets checked on this run\n\n| target | measured (surface Dice x 100) | holds |\n|---|---|---|\n" + body
    ft = pd.Series({n: mean("ft_all", n) for n in budgets})
    worth = [f"- {m}: {mean(m):.1f}, on ft_all's budget axis {budget_equivalent(mean(m), ft)}\n"
             for m in ["adabn", "sfda", "sfda_truesize"] if np.isfinite(mean(m))]
    if worth:
        text += ("\n## What the label-free adaptation is worth in annotated slices\n\n"
                 "Mean surface Dice x 100 over the test pairs, placed on the fine-tune-all curve "
                 "(linear in log N between the measured budgets):\n\n" + "".join(worth))
    return text


def cc359_report(scores: pd.DataFrame, params: pd.DataFrame, title: str) -> str:
    per_run = experiment_scores(scores)
    tested = per_run[per_run["method"] != "oracle"]
    pairs = sorted({f"{int(s)}_{int(t)}" for s, t in zip(tested["source"], tested["target"])})
    budgets = sorted(int(n) for n in tested["budget"].dropna().unique())
    n_volumes = scores[scores["method"] == "noadapt"].groupby("run").size()
    intro = (f"# {title}\n\nTest pairs (source_target): {', '.join(pairs)}; {int(n_volumes.mean()) if len(n_volumes) else 0} "
             f"test volumes per pair. Each cell: mean ± sd over the test pairs of the pair's score, the mean over its "
             f"test volumes (x100, last-epoch weights, no model selection, as in the paper). Budget-free methods repeat "
             f"across columns; the oracle is the target domain's 3-fold cross-validation. Per-volume values: scores.csv.\n")
    chosen = "".join(f"| {int(r.budget)} | {r.tau:g} | {r['lambda']:g} | {100 * r.val_sdice:.1f} |\n"
                     for _, r in params.iterrows())
    return (intro + "\n## Surface Dice\n\n" + cc359_table(per_run, "sdice", pairs, budgets)
            + "\n## Dice\n\n" + cc359_table(per_run, "dice", pairs, budgets)
            + "\n## Relative surface Dice (paper): 100 x (s - baseline) / (oracle - baseline), per pair\n\n"
            + cc359_table(relative_scores(per_run), "sdice", pairs, budgets)
            + "\n## SpotTUnet's tau and lambda, chosen on the validation pairs\n\n| N | tau | lambda | val surface Dice |\n"
              "|---|---|---|---|\n" + chosen + cc359_checks(per_run, pairs, budgets))


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


def scores_over_roots(roots: Sequence[Path]) -> pd.DataFrame:
    """Per (run, score): mean and sd over the roots (e.g. seeds) of the final score, mean run time."""
    found = [find_runs(root) for root in roots]
    for root, runs in zip(roots[1:], found[1:]):
        check_same_runs(roots[0], found[0], root, runs)
    rows = [{"run": name, "score": score, "value": value, "seconds": run_seconds(runs[name])}
            for runs in found for name in sorted(runs) for score, value in final_scores(runs[name]).items()]
    grouped = pd.DataFrame(rows).groupby(["run", "score"], sort=False)
    return pd.DataFrame({"mean": grouped["value"].mean(), "sd": grouped["value"].std(ddof=1),
                         "seconds": grouped["seconds"].mean()}).reset_index()


def compare(references: Sequence[Path], candidates: Sequence[Path]) -> pd.DataFrame:
    """One row per (run, score): reference and candidate means x 100 over their roots, the difference, run times."""
    ref, cand = scores_over_roots(references), scores_over_roots(candidates)
    check_same_runs(references[0], ref["run"], candidates[0], cand["run"])
    both = ref.merge(cand, on=["run", "score"], suffixes=("_ref", "_cand"))
    return pd.DataFrame({"run": both["run"], "score": both["score"], "reference": both["mean_ref"],
                         "reference_sd": both["sd_ref"], "candidate": both["mean_cand"], "candidate_sd": both["sd_cand"],
                         "delta": both["mean_cand"] - both["mean_ref"], "reference_s": both["seconds_ref"],
                         "candidate_s": both["seconds_cand"]})


def compare_report(table_: pd.DataFrame, references: Sequence[Path], candidates: Sequence[Path],
                   tolerance: float) -> str:
    """Markdown: per-run table, the runs beyond ``tolerance`` points, total run time of each side."""
    primary = table_.groupby("run", sort=False).head(1)          # sdice, or the last-epoch 3D Dice
    beyond = table_[table_["delta"].abs() > tolerance]
    moved = beyond["run"].nunique()
    times = primary[["reference_s", "candidate_s"]].sum()

    def value(mean: float, sd: float) -> str:
        return f"{mean:.1f}" if np.isnan(sd) else f"{mean:.1f} ± {sd:.1f}"

    lines = [f"# {' '.join(map(str, candidates))} against {' '.join(map(str, references))}\n",
             f"Final scores x 100 (tested runs: mean test surface Dice / Dice; others: last-epoch / best "
             f"validation 3D Dice), mean ± sd over the roots of each side ({len(references)} reference, "
             f"{len(candidates)} candidate); delta = candidate - reference, in points.\n",
             "| run | score | reference | candidate | delta | reference s | candidate s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.score} | {value(r.reference, r.reference_sd)} | {value(r.candidate, r.candidate_sd)} | "
              f"{r.delta:+.1f} | {r.reference_s:.0f} | {r.candidate_s:.0f} |" for r in table_.itertuples()]
    lines += ["", f"- runs: {len(primary)}; runs with a score beyond {tolerance:g} point(s): **{moved}**"
              + (f" (largest: {beyond.loc[beyond['delta'].abs().idxmax(), 'run']} "
                 f"{beyond['delta'].abs().max():.1f} points)" if moved else ""),
              f"- mean delta of the first score: {primary['delta'].mean():+.2f} points",
              f"- run time, sum over runs: {times['reference_s']:.0f} s against {times['candidate_s']:.0f} s "
              f"({times['reference_s'] / times['candidate_s']:.2f}x)",
              f"- every run within {tolerance:g} point(s): **{'yes' if moved == 0 else 'no'}**", ""]
    return "\n".join(lines)


def write_text_atomic(text: str, out: Path) -> None:
    tmp = out.with_name(out.name + "_tmp")
    tmp.write_text(text)
    tmp.replace(out)


def write_csv_atomic(table: pd.DataFrame, out: Path, **kwargs: object) -> None:
    tmp = out.with_name(out.name + "_tmp")
    table.to_csv(tmp, index=False, **kwargs)
    tmp.replace(out)


def subcommand_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="CC359 tables (collect, choose, cc359); two result roots compared (compare)")
    parser.add_argument("command", choices=["collect", "choose", "cc359", "compare"])
    parser.add_argument("--runs", nargs="+", type=Path)
    parser.add_argument("--scores", type=Path)
    parser.add_argument("--params", type=Path)
    parser.add_argument("--reference", nargs="+", type=Path, help="result root(s), e.g. one per seed (compare)")
    parser.add_argument("--candidate", nargs="+", type=Path)
    parser.add_argument("--tolerance", type=float, default=1.0, help="points of score (compare)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--title", default="CC359 domain adaptation")
    args = parser.parse_args(argv)
    if args.command in ("collect", "choose") and not args.runs:
        parser.error(f"{args.command} needs --runs")
    if args.command == "cc359" and not (args.scores and args.params):
        parser.error("cc359 needs --scores and --params")
    if args.command == "compare" and not (args.reference and args.candidate):
        parser.error("compare needs --reference and --candidate")
    try:
        if args.command == "collect":
            table_ = collect(args.runs)
            write_csv_atomic(table_, args.out, float_format="%.4f")
            print(f"wrote {args.out}: {len(table_)} test volumes from {len(args.runs)} runs")
        elif args.command == "choose":
            chosen = choose(collect(args.runs))
            write_csv_atomic(chosen, args.out)
            print(chosen.to_string(index=False))
        else:
            text = (compare_report(compare(args.reference, args.candidate), args.reference, args.candidate,
                                   args.tolerance) if args.command == "compare"
                    else cc359_report(pd.read_csv(args.scores), pd.read_csv(args.params), args.title))
            write_text_atomic(text, args.out)
            print(text)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("collect", "choose", "cc359", "compare"):
        return subcommand_main(argv)
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
    write_text_atomic(text, args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
