"""The CC359 protocol's tables (seed 000), read from the runs' own files; report.py's subcommands write them.

``collect`` gathers every run's test_metrics.csv (one row per test volume) with the method, pair, budget,
tau, lambda, lr and k its directory name (or, for SpotTUnet, its params.txt) gives; ``choose_lr`` picks the
source-free adaptation's learning rate on the validation pairs; ``choose_tau`` picks SpotTUnet's tau once, at
one budget with lambda = 0, and ``choose`` then the lambda per budget with that tau, both on the validation
pairs (the paper's order); ``choose_k`` the level of each reuse strategy (seed 002); ``cc359_report`` the
method x budget table of mean surface Dice ± sd over test pairs (each pair's score: the mean over its test
volumes, as in the paper), baseline and oracle, the paper's one-sided Wilcoxon tests with n and p, and the
issue's targets checked on these numbers.
"""
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from tables import COLLAPSE, fell_back, mean_sd, read_params, read_table, read_test_metrics

RUN_NAME = re.compile(r"(?P<source>\d)_(?P<target>\d)(?:_n(?P<budget>\d+))?(?:_tau(?P<tau>[\d.e-]+))?"
                      r"(?:_lam(?P<lam>[\d.e-]+))?(?:_lr(?P<lr>[\d.e-]+))?(?:_k(?P<k>\d+))?$")
REUSE = ["ttl", "lwft", "transfusion"]           # seed 002's strategies; their k is chosen by choose_k
FINETUNING = ["ft_all", "ft_first", "ft_last", "spottune", *REUSE]
NO_BUDGET = ["noadapt", "hm", "adabn", "sfda", "sfda_truesize"]


def parse_run(run: Path) -> Dict[str, object]:
    """method, source, target, budget, tau, lambda, fold of a run directory.

    Names: ``<method>/<s>_<t>[_n<N>][_tau<T>][_lam<L>]`` or ``oracle/<t>/fold<k>``. SpotTUnet runs
    whose name lacks tau or lambda (the lambda grid, the test runs: both read them from a choice csv when they
    run, --chosen) get them from the run's params.txt.
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
        given = read_params(run)
        tau = float(given["tau"]) if np.isnan(tau) else tau
        lam = float(given["k_reg"]) if np.isnan(lam) else lam
    return {"method": run.parent.name, "source": int(g["source"]), "target": int(g["target"]),
            "budget": float(g["budget"]) if g["budget"] else np.nan, "tau": tau, "lam": lam, "fold": np.nan,
            **({"lr": float(g["lr"])} if g["lr"] else {}), **({"k": int(g["k"])} if g["k"] else {})}


def collect(runs: Sequence[Path]) -> pd.DataFrame:
    """One row per (run, test volume): the run's coordinates, patient, dice, sdice."""
    frames = []
    for run in runs:
        df = read_test_metrics(run)[["patient", "dice", "sdice"]]
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
        raise ValueError(f"{bad}: SpotTUnet validation run without tau or lambda (name or params.txt)")
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


def choose_source_free(scores: pd.DataFrame) -> pd.DataFrame:
    """What the test pairs' source-free result is, chosen on the validation pairs: SFDA at its best rate (sfda_val/
    <s>_<t>_lr<lr>), or AdaBN (adabn_val/<s>_<t>) or no adaptation (noadapt_val/<s>_<t>) when no rate beats them; the
    best mean surface Dice over the validation pairs, ties to the model adaptation started from (noadapt, adabn)."""
    methods = scores["method"].str.removesuffix("_val")
    if not set(methods) >= {"sfda", "adabn", "noadapt"}:
        raise ValueError("choose_source_free needs sfda_val/<s>_<t>_lr<lr>, adabn_val/<s>_<t> and noadapt_val/<s>_<t> runs")
    rates = sorted(scores.loc[methods == "sfda", "lr"].unique())
    candidate = [m if m != "sfda" else f"sfda@{lr:g}" for m, lr in zip(methods, scores["lr"])]
    per_pair = scores.assign(candidate=candidate).groupby(["candidate", "source", "target"])["sdice"].mean()
    grid = per_pair.groupby("candidate").mean().reindex(["noadapt", "adabn", *(f"sfda@{lr:g}" for lr in rates)])
    best = grid.idxmax()                                   # the first of ties: noadapt, then adabn, then the rates
    return pd.DataFrame({"method": [best.partition("@")[0]], "lr": [rates[int(grid.iloc[2:].to_numpy().argmax())]],
                         "val_sdice": [round(grid.max(), 4)],
                         "grid": [" ".join(f"{c}:{v:.4f}" for c, v in grid.items())]})


def source_free_choice_section(per_run: pd.DataFrame, choice: pd.DataFrame) -> str:
    """The protocol's source-free result on the test pairs: the run of the method the validation pairs chose."""
    method = choice["method"].iloc[0]
    test = per_run[per_run["method"].isin(["noadapt", "adabn", "sfda"])].groupby("method")["sdice"].mean()
    lines = [f"\n## Source-free adaptation by the protocol's validation\n\nOn the validation pairs "
             f"(surface Dice, {choice['grid'].iloc[0]}) the protocol chose **{method}**"
             + (f" (SFDA at lr {choice['lr'].iloc[0]:g})" if method == "sfda" else
                ": no SFDA rate beat it, so the test pairs' source-free result is its run, not sfda's") + ".\n",
             "| run | mean surface Dice x100 over the test pairs |", "|---|---|"]
    lines += [f"| {m}{' (chosen)' if m == method else ''} | {100 * test[m]:.1f} |" for m in test.index]
    return "\n".join(lines) + "\n"


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
    table = read_table(path)
    if "tau" not in table.columns or len(table) != 1:
        raise ValueError(f"{path}: expected one row with a tau column (written by report.py choose_tau)")
    return float(table["tau"].iloc[0])


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
        guarded = sum(int(sum(fell_back(Path(run)) for run in r["run"])) for r in runs)
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
                 tau: Optional[pd.DataFrame] = None, sf_choice: Optional[pd.DataFrame] = None) -> str:
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
            + cc359_checks(per_run, pairs, budgets)
            + (source_free_choice_section(per_run, sf_choice) if sf_choice is not None else ""))
