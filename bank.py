"""A bank of candidate models ranked on a target's annotated pool (seed 001's protocol; transfer.py's commands).

make -f cc359.make transfer: per target, voxels sampled once on its annotated pool (``transfer.py sample``),
every candidate scored on them in one pass by every estimator of transferability.py (``score``), every candidate
fine-tuned on the pool (main.py), then the tables and the scatter plot against the fine-tuned scores (``report``).
"""
import argparse
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from checkpoints import network_from_checkpoint  # noqa: E402
from dataloader import SliceSet, load_split  # noqa: E402
from networks import tapped  # noqa: E402
from tables import read_run_stats, read_table, read_test_metrics  # noqa: E402
from transferability import (ABLATIONS, ccfv, check_features, gbc, leep, logme, pearson, transrate,  # noqa: E402
                             weighted_tau)
from utils import atomic_output, evenly_spaced, publish, resized, save_figure, write_csv_atomic  # noqa: E402

CAPS = (100, 200, 400)       # voxels per label and case at the coarse, middle and fine decoder scale (CC-FV's code)
ESTIMATORS = ("ccfv", "ccfv_code", "logme", "leep", "gbc", "transrate")   # Table 1 rows; Table 2: the ablations


def spread(indices: np.ndarray, n: int) -> np.ndarray:
    """``n`` of ``indices`` spread evenly from the first to the last (all of them when there are no more than n)."""
    return indices[evenly_spaced(len(indices), n)]


def sampled_slices(volume: np.ndarray, n: Optional[int]) -> np.ndarray:
    """Which slices of one case's (slices, h, w) label volume the voxels are drawn from: ``n`` evenly spaced over the
    slices holding foreground, plus n over the slices of any label those miss; every slice when ``n`` is None."""
    if n is None:
        return np.arange(len(volume))
    values = np.unique(volume)
    holds = np.stack([(volume == v).any(axis=(1, 2)) for v in values], axis=1)      # (slices, labels)
    foreground = holds[:, values > 0].any(axis=1)
    chosen = spread(np.flatnonzero(foreground) if foreground.any() else np.arange(len(volume)), n)
    for j in range(len(values)):
        if not holds[chosen, j].any():
            chosen = np.union1d(chosen, spread(np.flatnonzero(holds[:, j]), n))
    return chosen


def sample_voxels(labels: np.ndarray, patients: Sequence[str], caps: Sequence[int] = CAPS,
                  seed: int = 0, slices_per_case: Optional[int] = None) -> List[np.ndarray]:
    """Per scale, (n, 5) int rows (slice, row, column, case, label): up to ``cap`` voxels of every label of every
    case (patient, its slices a volume), drawn uniformly without replacement; cases in sorted order. With
    ``slices_per_case``, every scale draws from the same few slices of each case (sampled_slices): a candidate's
    forward pass, most of its scoring time, then covers those slices only."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    patients = np.asarray(patients)
    cases = sorted(set(patients.tolist()))
    case_slices = []
    for patient in cases:
        slices = np.flatnonzero(patients == patient)
        case_slices.append(slices[sampled_slices(labels[slices], slices_per_case)])
    out = []
    for cap in caps:
        rows = []
        for case, slices in enumerate(case_slices):
            volume = labels[slices]
            for value in np.unique(volume):
                where = np.flatnonzero(volume == value)
                pick = np.sort(rng.choice(where, size=min(cap, where.size), replace=False))
                s, r, c = np.unravel_index(pick, volume.shape)
                rows.append(np.stack([slices[s], r, c, np.full(len(s), case), np.full(len(s), value)], axis=1))
        out.append(np.concatenate(rows).astype(np.int64))
    return out


def read_at(feature: torch.Tensor, rows: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(m, C) values of a (1, C, h, w) map upsampled to ``size`` (utils.resized) at the (row, column) ``rows`` (m, 2)."""
    return resized(feature, size, at=rows)[0].T.cpu().numpy()


FEATURES = ("raw", "instnorm")   # TE_FEATURES: the tapped maps as they are, or as nnU-Net's heads read them


def model_features(net: torch.nn.Module, images: torch.Tensor, voxels: Sequence[np.ndarray], batch_size: int = 16,
                   features_mode: str = "raw") -> Tuple[List[np.ndarray], np.ndarray]:
    """One pass of ``net`` over the slices the voxels touch: per scale, the tapped decoder layer read at that scale's
    voxels, (n_k, C_k); and the network's softmax at the finest scale's voxels, (n, source classes). ``instnorm``:
    each channel standardised per case over the full maps of the case's passed slices (as InstanceNorm, without its
    eps so that a channel's scale cancels exactly; a constant channel becomes 0), then a LeakyReLU (0.01), as the
    input of nnU-Net's segmentation heads that the official CC-FV code hooks."""
    if features_mode not in FEATURES:
        raise ValueError(f"features {features_mode!r}: expected one of {', '.join(FEATURES)}")
    layers = net.decoder_scales()
    if len(layers) not in (1, len(voxels)):
        raise ValueError(f"{type(net).__name__} taps {len(layers)} decoder scales for {len(voxels)} voxel scales")
    layers = layers if len(layers) == len(voxels) else layers * len(voxels)       # one-scale nets: the same map
    needed = np.unique(np.concatenate([v[:, 0] for v in voxels]))
    case_of = {int(s): int(c) for v in voxels for s, c in zip(v[:, 0], v[:, 3])}
    moments: Dict[str, Dict[int, np.ndarray]] = {layer: {} for layer in layers}   # case: [count, sum (C), squares]
    features: List[List[Tuple[np.ndarray, np.ndarray]]] = [[] for _ in voxels]
    probs: List[Tuple[np.ndarray, np.ndarray]] = []
    size = tuple(images.shape[-2:])
    net.eval()
    with tapped(net, sorted(set(layers))) as taps, torch.no_grad():
        for start in range(0, len(needed), batch_size):
            batch = needed[start:start + batch_size]
            out = torch.softmax(net(images[torch.from_numpy(batch)].float()).float(), dim=1)
            for j, s in enumerate(batch):
                for k, (layer, v) in enumerate(zip(layers, voxels)):
                    at = np.flatnonzero(v[:, 0] == s)
                    if at.size:
                        features[k].append((at, read_at(taps[layer][j:j + 1], v[at, 1:3], size)))
                if features_mode == "instnorm":
                    for layer, per_case in moments.items():            # once per layer, however many scales read it
                        flat = taps[layer][j].double().flatten(1).numpy()      # (C, h w)
                        sums = np.stack([np.full(len(flat), flat.shape[1]), flat.sum(1), (flat ** 2).sum(1)])
                        per_case[case_of[int(s)]] = per_case.get(case_of[int(s)], 0) + sums
                at = np.flatnonzero(voxels[-1][:, 0] == s)
                if at.size:
                    probs.append((at, out[j][:, voxels[-1][at, 1], voxels[-1][at, 2]].T.numpy()))
    gathered = [_in_order(parts, len(v)) for parts, v in zip(features, voxels)]
    if features_mode == "instnorm":
        gathered = [instance_normalised(f, v[:, 3], moments[layer]) for f, v, layer in zip(gathered, voxels, layers)]
    return gathered, _in_order(probs, len(voxels[-1]))


def instance_normalised(rows: np.ndarray, cases: np.ndarray, moments: Dict[int, np.ndarray]) -> np.ndarray:
    """(n, C) features standardised with their case's channel mean and variance (from count, sum and sum of squares
    of its maps), then LeakyReLU 0.01."""
    out = np.empty_like(rows)
    for case, (count, total, squares) in ((c, moments[c]) for c in np.unique(cases)):
        mean = total / count
        var = squares / count - mean ** 2
        std = np.where(var > 1e-12 * np.maximum(mean ** 2, 1e-12), np.sqrt(np.maximum(var, 0)), 1.0)
        at = cases == case
        out[at] = (rows[at] - mean) / std
    return np.where(out > 0, out, 0.01 * out)


def _in_order(parts: List[Tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
    """Rows gathered slice by slice, put back in the voxel table's order."""
    out = np.empty((n, parts[0][1].shape[1]), dtype=np.float64)
    for at, values in parts:
        out[at] = values
    return out


def score_model(features: Sequence[np.ndarray], probs: np.ndarray, voxels: Sequence[np.ndarray],
                layers: Sequence[str], name: str) -> Dict[str, float]:
    """Every estimator and Table 2 ablation on one model's sampled features, with its seconds; the baselines read the
    finest scale (the input of the final 1x1 conv), CC-FV every scale. NaN channels stop with the model's name;
    constant channels are counted in the row."""
    row: Dict[str, float] = {}
    for layer, f in zip(layers, features):
        if not np.isfinite(f).all():
            raise ValueError(f"{name}: layer {layer} gives NaN or inf features on the pool's voxels")
    row["constant_channels"] = sum(len(check_features(f, f"{name} {layer}", allow_constant=True))
                                   for layer, f in zip(layers, features))
    fine, labels = features[-1], voxels[-1][:, 4]
    per_case = [[f[v[:, 3] == c] for c in np.unique(v[:, 3])] for f, v in zip(features, voxels)]
    per_case_labels = [[v[v[:, 3] == c, 4] for c in np.unique(v[:, 3])] for v in voxels]
    jobs = {"logme": lambda: logme(fine, labels), "leep": lambda: leep(probs, labels),
            "gbc": lambda: gbc(fine, labels), "transrate": lambda: transrate(fine, labels),
            "ccfv_code": lambda: ccfv(per_case, per_case_labels, variant="code", names=layers)}
    jobs.update({f"ccfv{'' if k == 'ccfv' else '_' + k}": (lambda kw=kw: ccfv(per_case, per_case_labels, names=layers, **kw))
                 for k, kw in ABLATIONS.items()})
    for key, job in jobs.items():
        t0 = time.perf_counter()
        row[key] = job()
        row[f"{key}_s"] = time.perf_counter() - t0
    return row


def fine_tuned_scores(runs: Sequence[Path]) -> pd.DataFrame:
    """target, candidate, seed, sdice, dice, seconds of fine-tuning runs named <root>/<target>/ft/<candidate>_s<seed>."""
    rows = []
    for run in runs:
        match = re.fullmatch(r"(.+)_s(\d+)", run.name)
        if match is None or run.parent.name != "ft":
            raise ValueError(f"{run}: a fine-tuning run of the bank is named <target>/ft/<candidate>_s<seed>")
        test = read_test_metrics(run)
        stats = read_run_stats(run)
        rows.append({"target": run.parent.parent.name, "candidate": match.group(1), "seed": int(match.group(2)),
                     "sdice": 100 * test["sdice"].mean(), "dice": 100 * test["dice"].mean(), "ft_s": stats["total"]})
    return pd.DataFrame(rows)


def agreement(scores: np.ndarray, performance: np.ndarray) -> Dict[str, float]:
    """Weighted tau and Pearson r of a ranking, NaN (undefined) where either side is constant or a score is not finite
    (the variety's energy without eps is infinite where two samples coincide)."""
    if not np.isfinite(scores).all() or np.ptp(scores) == 0 or np.ptp(performance) == 0:
        return {"tau": np.nan, "pearson": np.nan}
    return {"tau": weighted_tau(scores, performance), "pearson": pearson(scores, performance)}


def ranking_table(scores: pd.DataFrame, estimators: Sequence[str]) -> pd.DataFrame:
    """Per estimator and target: weighted tau and Pearson of its scores against the fine-tuned surface Dice (mean
    over seeds); the ceiling row: the weighted tau between the first two seeds' surface Dice. Undefined (NaN) where
    either side is constant, e.g. when every fine-tuning failed alike."""
    rows = []
    for target, group in scores.groupby("target", sort=True):
        performance = group["sdice"].to_numpy()
        for name in estimators:
            rows.append({"estimator": name, "target": target, **agreement(group[name].to_numpy(), performance)})
        seeds = [c for c in group.columns if re.fullmatch(r"sdice_s\d+", c)]
        if len(seeds) >= 2:
            rows.append({"estimator": "ceiling (seed vs seed)", "target": target,
                         **agreement(group[seeds[0]].to_numpy(), group[seeds[1]].to_numpy())})
    return pd.DataFrame(rows)


def top_picks(scores: pd.DataFrame, estimators: Sequence[str]) -> pd.DataFrame:
    """Per estimator and target: the candidate it ranks first, and its regret: the best candidate's fine-tuned surface
    Dice minus the pick's (what choosing by the estimator costs against fine-tuning the whole bank)."""
    rows = []
    for target, group in scores.groupby("target", sort=True):
        best = group["sdice"].max()
        for name in estimators:
            pick = group.loc[group[name].idxmax()]
            rows.append({"estimator": name, "target": target, "pick": pick["candidate"], "regret": best - pick["sdice"]})
    return pd.DataFrame(rows)


def picks_markdown(picks: pd.DataFrame) -> List[str]:
    targets = sorted(picks["target"].unique())
    lines = ["| estimator | " + " | ".join(f"target {t}" for t in targets) + " | mean regret |",
             "|---|" + "---|" * (len(targets) + 1)]
    for name, group in picks.groupby("estimator", sort=False):
        g = group.set_index("target")
        lines.append(f"| {name} | " + " | ".join(f"{g.loc[t, 'pick']} ({g.loc[t, 'regret']:.1f})" for t in targets)
                     + f" | **{g['regret'].mean():.2f}** |")
    return lines


def ranking_markdown(table: pd.DataFrame) -> List[str]:
    targets = sorted(table["target"].unique())
    head = " | ".join(f"tau {t}" for t in targets) + " | mean tau | " + " | ".join(f"r {t}" for t in targets)
    lines = [f"| estimator | {head} | mean r |", "|---|" + "---|" * (2 * len(targets) + 2)]
    for name, group in table.groupby("estimator", sort=False):
        g = group.set_index("target")
        lines.append(f"| {name} | " + " | ".join(f"{g.loc[t, 'tau']:.3f}" for t in targets)
                     + f" | **{g['tau'].mean():.3f}** | " + " | ".join(f"{g.loc[t, 'pearson']:.3f}" for t in targets)
                     + f" | {g['pearson'].mean():.3f} |")
    return lines


VARIANT_NOTE = {"ccfv": "CC-FV, paper variant (Eq. 2-5: mean W2 over case pairs, per-case variety, mean over scales)",
                "ccfv_code": "CC-FV, code variant (running-total consistency, energy of case means, sum over scales)",
                "logme": "LogME (finest scale)", "leep": "LEEP (the model's own head)",
                "gbc": "GBC (diagonal, PCA 64, finest scale)", "transrate": "TransRate (TLlib form, finest scale)"}


ABLATION_NOTE = {"wo_ccons": "without class consistency: feature variety alone", "wo_fv": "without feature variety: "
                 "class consistency alone", "single_scale": "the finest decoder scale only", "kl": "symmetrised KL "
                 "instead of W2", "bhattacharyya": "Bhattacharyya instead of W2", "unit": "features L2-normalised per "
                 "voxel first (the paper's \"unit sphere\"; neither its equations nor its code normalise)",
                 "variety_eps0": "the variety's energy without the project's eps, as Eq. 3 is printed (coincident "
                 "samples: -inf, an undefined ranking)", "code_first_release": "the code variant with the sign of the "
                 "official code's first release, log(W / F_v)"}


def transfer_report(scores: pd.DataFrame, title: str) -> str:
    """seed 001's Table 1 (estimators) and Table 2 (CC-FV ablations, paper variant), and what scoring costs."""
    table1 = ranking_table(scores, ESTIMATORS)
    ablations = [f"ccfv_{k}" for k in ABLATIONS if k != "ccfv"]
    table2 = ranking_table(scores, ["ccfv", *ablations])
    table2 = table2[table2["estimator"] != "ceiling (seed vs seed)"]
    seeds = sorted(int(c[7:]) for c in scores.columns if re.fullmatch(r"sdice_s\d+", c))
    means = table1.groupby("estimator", sort=False)["tau"].mean()
    best = means.drop(["ccfv", "ccfv_code", "ceiling (seed vs seed)"], errors="ignore").dropna()
    leader = (f"the best baseline's ({best.idxmax()}) {best.max():.3f}" if len(best)
              else "no baseline's (undefined: a constant score or truth)")
    score_s = scores[[f"{e}_s" for e in ESTIMATORS]].sum(axis=1) + scores["forward_s"]
    lines = [f"# {title}\n", f"{len(scores)} candidate models over {scores['target'].nunique()} target domain(s); "
             f"ground truth: each candidate fine-tuned (ft_all) on the target's annotated pool, mean test surface Dice "
             f"over fine-tuning seeds {seeds}. Weighted Kendall tau (scipy) and Pearson r of each estimator's score "
             "against it; the ceiling row ranks one fine-tuning seed by the other. Features: "
             + (", ".join(sorted(set(scores["features"].dropna()))) if "features" in scores else "raw")
             + " (raw: the decoder taps as they are; instnorm: standardised per case and channel, then LeakyReLU, "
             "as the official code's nnU-Net gives them).\n",
             "## Table 1: estimators\n", *ranking_markdown(table1), "",
             *[f"- {k}: {v}" for k, v in VARIANT_NOTE.items()], "",
             f"CC-FV's mean tau {means.get('ccfv', np.nan):.3f} against {leader} and the ceiling "
             f"{means.get('ceiling (seed vs seed)', np.nan):.3f} (nan: undefined, a constant score or truth).\n",
             "## The model each estimator picks\n",
             "Its top-ranked candidate per target and, in brackets, the regret: the best candidate's fine-tuned surface "
             "Dice minus the pick's.\n", *picks_markdown(top_picks(scores, [*ESTIMATORS, "ccfv_wo_ccons"])), "",
             "## Table 2: CC-FV ablations (paper variant)\n", *ranking_markdown(table2), "",
             *[f"- ccfv_{k}: {ABLATION_NOTE[k]}" for k in ABLATIONS if k != "ccfv"], "",
             f"Scoring one model (one forward pass over the pool's sampled slices and every estimator) takes "
             f"{score_s.mean():.1f} s on average; fine-tuning one takes {scores['ft_s'].mean():.1f} s: "
             f"{100 * score_s.mean() / scores['ft_s'].mean():.1f} %.\n"]
    return "\n".join(lines)


def scatter(scores: pd.DataFrame, out: Path) -> None:
    """Per target (rows) and estimator (columns): score against fine-tuned surface Dice, the top-ranked model ringed."""
    targets = sorted(scores["target"].unique())
    fig, axes = plt.subplots(len(targets), len(ESTIMATORS), figsize=(3 * len(ESTIMATORS), 2.8 * len(targets)),
                             squeeze=False)
    for i, target in enumerate(targets):
        group = scores[scores["target"] == target]
        for j, name in enumerate(ESTIMATORS):
            ax = axes[i, j]
            ax.scatter(group[name], group["sdice"], s=14)
            top = group.loc[group[name].idxmax()]
            ax.scatter([top[name]], [top["sdice"]], s=90, facecolors="none", edgecolors="red")
            ax.set_title(f"{name}, target {target}: tau {agreement(group[name].to_numpy(), group['sdice'].to_numpy())['tau']:.2f}",
                         fontsize=8)
            ax.set_xlabel("score", fontsize=7)
            ax.set_ylabel("fine-tuned surface Dice" if j == 0 else "", fontsize=7)
    save_figure(fig, out, dpi=100)
    plt.close(fig)


def load_pool(split: Path, folders: str, grp_regex: str, n_class: int) -> SliceSet:
    """The target's annotated pool, refused when it cannot support the estimators."""
    pool = load_split(split, folders, n_class, grp_regex)
    cases = sorted(set(pool.patients))
    if len(cases) < 2:
        raise ValueError(f"{split}: the annotated pool holds {len(cases)} case(s); CC-FV's class consistency compares "
                         f"cases, so the pool needs at least 2 (NADD >= 2)")
    present = set(np.unique(pool.labels.numpy()).tolist())
    absent = [k for k in range(1, n_class) if k not in present]
    if absent:
        raise ValueError(f"{split}: class(es) {absent} occur in no case of the pool")
    return pool


def sample_main(args: argparse.Namespace) -> None:
    if args.slices_per_case is not None and args.slices_per_case < 1:
        raise ValueError(f"--slices_per_case {args.slices_per_case}: at least 1 slice per case")
    pool = load_pool(args.pool, args.folders, args.grp_regex, args.n_class)
    voxels = sample_voxels(pool.labels.numpy(), pool.patients, args.caps, args.seed, args.slices_per_case)
    with atomic_output(args.out) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **{f"scale{k}": v for k, v in enumerate(voxels)}, caps=np.asarray(args.caps))
    touched = len(np.unique(np.concatenate([v[:, 0] for v in voxels])))
    print(f"wrote {args.out}: " + ", ".join(f"scale {k}: {len(v)} voxels" for k, v in enumerate(voxels))
          + f" on {touched} of the {len(pool)} slices of {len(set(pool.patients))} cases")


def read_voxels(path: Path) -> List[np.ndarray]:
    with np.load(path) as f:
        return [f[f"scale{k}"] for k in range(len(f["caps"]))]


def score_main(args: argparse.Namespace) -> None:
    net = network_from_checkpoint(args.model, "checkpoint", None)     # a candidate keeps its own head (LEEP reads it)
    pool = load_pool(args.pool, args.folders, args.grp_regex, args.n_class)
    voxels = read_voxels(args.voxels)
    if any(v[:, 0].max() >= len(pool) for v in voxels):
        raise ValueError(f"{args.voxels}: voxels sampled on another pool (slice index beyond the {len(pool)} slices)")
    torch.set_num_threads(args.threads or torch.get_num_threads())
    t0 = time.perf_counter()
    features, probs = model_features(net, pool.images, voxels, features_mode=args.features)
    forward_s = time.perf_counter() - t0
    layers = net.decoder_scales() * (len(voxels) if len(net.decoder_scales()) == 1 else 1)
    with threadpool_limits(limits=args.threads):        # numpy's BLAS too: two jobs of make -j2 on two cores
        scores = score_model(features, probs, voxels, layers, args.name)
    row = {"candidate": args.name, "network": type(net).__name__, "checkpoint": str(args.model), "features": args.features,
           "forward_s": forward_s,
           **scores}
    write_csv_atomic(pd.DataFrame([row]), args.out, float_format="%.6g")
    print(pd.DataFrame([row]).T.to_string(header=False))


def report_main(args: argparse.Namespace) -> None:
    scored = pd.concat([read_table(p, ["candidate"]).assign(target=p.parent.parent.name) for p in args.scores])
    tuned = fine_tuned_scores(args.ft)
    per_seed = tuned.pivot_table(index=["target", "candidate"], columns="seed", values=["sdice", "dice"])
    per_seed.columns = [f"{m}_s{s}" for m, s in per_seed.columns]
    means = tuned.groupby(["target", "candidate"])[["sdice", "dice", "ft_s"]].mean()
    table = scored.merge(per_seed.join(means).reset_index(), on=["target", "candidate"], how="left")
    missing = table[table["sdice"].isna()]
    if len(missing):
        raise ValueError(f"no fine-tuning run for {', '.join(missing['target'] + '/' + missing['candidate'])}")
    write_csv_atomic(table, args.table or args.out.parent / "scores.csv", float_format="%.6g")
    scatter(table, args.plot or args.out.parent / "scatter.png")
    publish(transfer_report(table, args.title), args.out)
