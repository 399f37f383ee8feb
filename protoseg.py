"""ProtoSeg's analyses (seed 003, docs/methods/protoseg.md): a model on a labelled split, and reports over models.

    protoseg.py --model M.pkl --network N --split SLICES --folders F --grp_regex R --out DIR   one model: SA per
        feature layer and unit, mu per image against Dice, coverage, separability, SA under input noise
    protoseg.py report --runs DIR... --out MD        the analysed models of a chain side by side
    protoseg.py seeds --roots ROOT... --out MD       headline figures over training seeds
    protoseg.py shift --pairs DIR... --policies RUN... --out MD   SA drop under shift against SpotTUnet's policy

The algorithm (prototypes, SA score, mu) is prototypes.py's.
"""
import argparse
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import Tensor

from checkpoints import network_from_checkpoint
from dataloader import SliceSet, load_split
from metrics import confusion_sizes, dice_3d, dice_from_sizes
from networks import BlockNet, tapped
from prototypes import mean_sa_score, sa_scores
from tables import mean_sd, read_policy, read_sa_layers, read_table
from utils import atomic_output, evenly_spaced, one_error_line, publish, write_table_and_markdown


# ---------------------------------------------------------------- a model on a labelled split

COVERAGES = (1.0, 0.9, 0.7, 0.5)       # seed 003's Table 2
NOISE_LEVELS = (0.1, 0.5, 1.0)         # seed 003's Fig. 16: maximum noise level, 0.1 to 1
NOISE_IMAGES = 64                      # the noise study's images: this many with a ground truth, evenly spaced


def noisy(images: Tensor, level: float, generator: torch.Generator) -> Tensor:
    """Per-pixel uniform noise in [-level, level] x each image's intensity range (max - min), added to the images:
    the same relative noise on PNG (0-1) and standardised (npy) inputs."""
    flat = images.flatten(1)
    spread = (flat.max(1).values - flat.min(1).values).view(-1, *[1] * (images.dim() - 1))
    noise = torch.rand(images.shape, generator=generator, dtype=images.dtype) * 2 - 1
    return images + level * spread * noise


def layer_sa(net: BlockNet, images: Tensor, labels: Tensor, batch_size: int, device: torch.device) -> Dict[str, np.ndarray]:
    """Per feature layer, the SA score of every image (NaN where the ground truth has no prototype)."""
    layers = net.feature_layers()
    sa: Dict[str, List[Tensor]] = {name: [] for name in layers}
    with tapped(net, layers) as taps, torch.no_grad():
        for start in range(0, len(images), batch_size):
            net(images[start:start + batch_size].to(device, torch.float32))
            gt = (labels[start:start + batch_size] > 0)[:, None].to(device)
            for name in layers:
                sa[name].append(sa_scores(taps[name], gt).cpu())
    return {name: torch.cat(v).numpy() for name, v in sa.items()}


def noise_table(net: BlockNet, data: SliceSet, levels: Sequence[float], batch_size: int, device: torch.device, seed: int = 0,
                n_images: int = NOISE_IMAGES) -> pd.DataFrame:
    """Fig. 16: per layer and noise level, the mean SA on noisy inputs and its change from the clean ones, on up to
    ``n_images`` images with a non-empty ground truth, evenly spaced over the split (the study costs 1 + levels
    passes over every layer, so it keeps to a subsample)."""
    with_gt = torch.nonzero((data.labels > 0).flatten(1).any(1)).flatten()
    index = with_gt[torch.from_numpy(evenly_spaced(len(with_gt), n_images))]
    images, labels = data.images[index].float(), data.labels[index]
    clean = layer_sa(net, images, labels, batch_size, device)
    rows = []
    for level in levels:
        scores = layer_sa(net, noisy(images, level, torch.Generator().manual_seed(seed)), labels, batch_size, device)
        for order, (name, values) in enumerate(scores.items(), start=1):
            rows.append({"layer": name, "order": order, "level": level, "images": len(index),
                         "sa": np.nanmean(values), "change": np.nanmean(values) - np.nanmean(clean[name])})
    return pd.DataFrame(rows)


def analyze(net: BlockNet, data: SliceSet, batch_size: int = 16, device: torch.device = torch.device("cpu"),
            noise_levels: Sequence[float] = NOISE_LEVELS) -> Dict[str, pd.DataFrame]:
    """SA per feature layer and per unit of the last one (ground-truth prototypes); per image mu, the output's
    Dice, the mean predictive entropy and the input's separability S_x (ProtoSeg on the intensities, Table 3); SA
    per layer under input noise (Fig. 16). The SA scores' foreground is every class > 0 together; mu and the output's
    Dice take each foreground class on its own and average them (mu over the classes the output holds)."""
    layers, last = net.feature_layers(), net.last_feature_layers()
    net = net.to(device).eval()
    sa = {name: [] for name in layers}
    units, mu, entropy, preds, sx = [], [], [], [], []
    with tapped(net, layers) as taps, torch.no_grad():
        for idx in data.batches(batch_size, shuffle=False, generator=torch.Generator()):
            images = data.images[idx].to(device, torch.float32)
            probs = torch.softmax(net(images).float(), dim=1)
            gt = (data.labels[idx] > 0)[:, None].to(device)
            for name in layers:
                sa[name].append(sa_scores(taps[name], gt).cpu())
            units.append(sa_scores(taps[last[-1]], gt, per_unit=True).cpu())
            sx.append(sa_scores(images, gt).cpu())
            mu.append(mean_sa_score([taps[n] for n in last], probs).cpu())
            entropy.append(-(probs * torch.log(probs.clamp(min=1e-12))).sum(1).flatten(1).mean(1).cpu())
            preds.append(probs.argmax(1).to(torch.uint8).cpu())
            n_class = probs.shape[1]
    pred = torch.cat(preds)
    inter, psize, gsize = confusion_sizes(pred, data.labels, n_class)
    patients, dice3d = dice_3d(inter, psize, gsize, data.patients)
    images = pd.DataFrame({"image": data.filenames, "patient": data.patients, "mu": torch.cat(mu).numpy(),
                           "dice": dice_from_sizes(inter, psize, gsize)[:, 1:].mean(1).numpy(),
                           "gt_empty": (gsize[:, 1:].sum(1) == 0).numpy(),
                           "output_empty": (psize[:, 1:].sum(1) == 0).numpy(),
                           "entropy": torch.cat(entropy).numpy(), "sx": torch.cat(sx).numpy()})
    scores = {name: torch.cat(v).numpy() for name, v in sa.items()}
    layer_table = pd.DataFrame({"layer": layers, "order": range(1, len(layers) + 1),
                                "sa": [np.nanmean(v) if np.isfinite(v).any() else np.nan for v in scores.values()],
                                "sa_sd": [np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else np.nan
                                          for v in scores.values()],
                                "images": [int(np.isfinite(v).sum()) for v in scores.values()],
                                "skipped": [int(np.isnan(v).sum()) for v in scores.values()]})
    unit_sa = torch.cat(units).numpy()
    kept = np.isfinite(unit_sa).all(axis=1)
    unit_table = pd.DataFrame({"unit": range(unit_sa.shape[1]),
                               "sa": unit_sa[kept].mean(axis=0) if kept.any() else np.nan}) \
        .sort_values("sa", ascending=False, kind="stable").reset_index(drop=True)
    patient_table = pd.DataFrame({"patient": patients, "dice_3d": dice3d[:, 1:].mean(1).numpy()}).merge(
        images.groupby("patient", as_index=False)["mu"].mean(), on="patient")
    tables = {"sa_layers": layer_table, "sa_units": unit_table, "images": images, "patients": patient_table}
    if noise_levels:
        tables["sa_noise"] = noise_table(net, data, noise_levels, batch_size, device)
    return tables


def coverage_table(images: pd.DataFrame, coverages: Sequence[float] = COVERAGES) -> pd.DataFrame:
    """Mean Dice of the images kept at each coverage, keeping the highest mu; beside it the oracle (highest Dice
    first), the lowest mean predictive entropy first, and random rejection (its expectation: the mean).
    Images whose ground truth is empty have no meaningful Dice and are left out."""
    scored = images[~images["gt_empty"]]
    rows = []
    for name, key, ascending in (("mu", "mu", False), ("entropy", "entropy", True), ("oracle", "dice", False)):
        order = scored.sort_values(key, ascending=ascending, kind="stable")["dice"].to_numpy()
        rows.append({"ranking": name, **{f"{100 * c:g}%": order[:max(1, int(np.ceil(c * len(order))))].mean()
                                         for c in coverages}})
    rows.append({"ranking": "random", **{f"{100 * c:g}%": scored["dice"].mean() for c in coverages}})
    return pd.DataFrame(rows)


def summary(tables: Dict[str, pd.DataFrame], title: str) -> str:
    """Markdown: mu against Dice (Pearson r per image and per patient), the coverage table, the SA per layer."""
    images, patients = tables["images"], tables["patients"]
    scored = images[~images["gt_empty"]]
    r_image = scored["mu"].corr(scored["dice"]) if len(scored) > 2 else np.nan
    r_patient = patients["mu"].corr(patients["dice_3d"]) if len(patients) > 2 else np.nan
    cov = coverage_table(images)
    lines = [f"# {title}\n",
             f"{len(images)} images ({int(images['gt_empty'].sum())} with an empty ground truth, left out of r and of the "
             f"coverage table), {len(patients)} patients; {100 * images['output_empty'].mean():.1f}% of the outputs are "
             f"empty (mu = 0).\n",
             f"- Pearson r of mu with the output's Dice: {r_image:.3f} per image, {r_patient:.3f} per patient (3D Dice, "
             "mu averaged over the patient's slices)\n",
             "Mean Dice x100 of the images kept, by coverage:\n",
             "| ranking | " + " | ".join(cov.columns[1:]) + " |", "|---|" + "---|" * (len(cov.columns) - 1)]
    lines += [f"| {r['ranking']} | " + " | ".join(f"{100 * r[c]:.1f}" for c in cov.columns[1:]) + " |"
              for r in cov.to_dict("records")]
    lines += ["", f"Input separability (Table 3): S_x = {100 * scored['sx'].mean():.1f} (ProtoSeg on the intensities, "
                  f"ground-truth prototypes), output Dice {100 * scored['dice'].mean():.1f}, "
                  f"m(d) = {100 * (scored['dice'] - scored['sx']).mean():.1f} (mean over images of Dice - S_x).\n"]
    noise = tables.get("sa_noise")
    levels = sorted(noise["level"].unique()) if noise is not None else []
    lines += ["SA per feature layer (Dice x100 of its ground-truth-guided map; images with an empty ground truth "
              "skipped)" + (", and its change under input noise of maximum level " + ", ".join(f"{v:g}" for v in levels)
                            + f" (Fig. 16, on {int(noise['images'].iloc[0])} images with a ground truth)" if levels
                            else "") + ":\n",
              "| # | layer | SA | images | skipped |" + "".join(f" noise {v:g} |" for v in levels),
              "|---|---|---|---|---|" + "---|" * len(levels)]
    change = noise.pivot(index="layer", columns="level", values="change") if levels else None
    lines += [f"| {r.order} | {r.layer} | {100 * r.sa:.1f} | {r.images} | {r.skipped} |"
              + "".join(f" {100 * change.loc[r.layer, v]:+.1f} |" for v in levels)
              for r in tables["sa_layers"].itertuples()]
    return "\n".join(lines) + "\n"


def chain_report(runs: Sequence[Path], title: str) -> str:
    """Markdown over several analysed models: SA per layer side by side; per model mu against Dice and the Dice
    gained at 70 % coverage by keeping the highest mu."""
    layers = [read_sa_layers(run).set_index("layer")["sa"] for run in runs]
    names = [run.name for run in runs]
    lines = [f"# {title}\n", "SA per feature layer (Dice x100; the ground truth guides the prototypes):\n",
             "| layer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    lines += [f"| {layer} | " + " | ".join(f"{100 * sa[layer]:.1f}" for sa in layers) + " |" for layer in layers[0].index]
    lines += ["", "mu (no label read) against the output's Dice (images with a non-empty ground truth):\n",
              "| model | r per image | r per patient | empty outputs | Dice, all | Dice, 70 % kept by mu | random | S_x | m(d) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        r = mu_figures(run)
        lines.append(f"| {run.name} | {r['r_image']:.3f} | {r['r_patient']:.3f} | {100 * r['empty']:.0f}% | "
                     f"{100 * r['dice_all']:.1f} | {100 * r['dice_70_mu']:.1f} | {100 * r['dice_70_random']:.1f} | "
                     f"{100 * r['sx']:.1f} | {100 * r['md']:.1f} |")
    return "\n".join(lines + online_table(runs)) + "\n"


def read_images(analysis: Path) -> pd.DataFrame:
    """An analysis folder's per-image table: mu, the output's Dice, empty ground truth / output, entropy, S_x."""
    return read_table(analysis / "images.csv", ["mu", "dice", "gt_empty", "output_empty", "entropy", "sx"])


def mu_figures(run: Path) -> Dict[str, float]:
    """One analysis folder's headline figures: Pearson r of mu with Dice per image and per patient, the share of
    empty outputs, the mean Dice of all scored images and of the 70 % kept by mu, by entropy and at random, S_x,
    m(d), and the analysis's seconds (from its summary)."""
    images = read_images(run)
    patients = read_table(run / "patients.csv", ["mu", "dice_3d"])
    scored = images[~images["gt_empty"]]
    cov = coverage_table(images).set_index("ranking")
    took = re.search(r"The analysis took ([\d.]+) s", (run / "summary.md").read_text())
    return {"r_image": scored["mu"].corr(scored["dice"]) if len(scored) > 2 else np.nan,
            "r_patient": patients["mu"].corr(patients["dice_3d"]) if len(patients) > 2 else np.nan,
            "empty": images["output_empty"].mean(), "dice_all": cov.loc["mu", "100%"],
            "dice_70_mu": cov.loc["mu", "70%"], "dice_70_entropy": cov.loc["entropy", "70%"],
            "dice_70_random": cov.loc["random", "70%"], "sx": scored["sx"].mean(),
            "md": (scored["dice"] - scored["sx"]).mean(), "seconds": float(took.group(1)) if took else np.nan}


def seeds_report(roots: Sequence[Path], title: str) -> str:
    """Markdown over training seeds: per analysed model (the folders every root holds), r of mu with Dice and the
    Dice gained at 70 % coverage by mu and by entropy, mean ± sd over the seeds; and each seed's analysis time."""
    models = [p.name for p in sorted(roots[0].iterdir()) if (p / "images.csv").is_file()
              and all((root / p.name / "images.csv").is_file() for root in roots)]
    if not models:
        raise ValueError(f"no analysis folder (with images.csv) common to {', '.join(map(str, roots))}")
    figures = {m: pd.DataFrame([mu_figures(root / m) for root in roots]) for m in models}
    lines = [f"# {title}\n", f"Mean ± sd over {len(roots)} training seeds ({', '.join(str(r) for r in roots)}). r: Pearson "
             "r of mu (no label read) with the output's Dice, per image (non-empty ground truth) and per patient; "
             "gain: mean Dice x100 of the 70 % of images kept by the ranking minus that of all images.\n",
             "| model | r per image | r per patient | empty outputs (%) | Dice, all | gain at 70 %, mu | gain, entropy |",
             "|---|---|---|---|---|---|---|"]
    for m, f in figures.items():
        lines.append(f"| {m} | {mean_sd(f['r_image'], 1, 2)} | {mean_sd(f['r_patient'], 1, 2)} | {mean_sd(f['empty'])} | "
                     f"{mean_sd(f['dice_all'])} | {mean_sd(f['dice_70_mu'] - f['dice_all'])} | "
                     f"{mean_sd(f['dice_70_entropy'] - f['dice_all'])} |")
    seconds = pd.DataFrame({m: f["seconds"] for m, f in figures.items()})
    lines += ["", "Analysis time per seed (the sum over the models above): "
              + ", ".join(f"{t:.0f} s" for t in seconds.sum(axis=1, min_count=1)) + ".\n"]
    return "\n".join(lines)


def seeds_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="ProtoSeg's headline figures over training seeds")
    parser.add_argument("--roots", nargs="+", type=Path, required=True, help="one protoseg/ folder per seed")
    parser.add_argument("--title", default="ProtoSeg over seeds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return one_error_line(lambda a: publish(seeds_report(a.roots, a.title), a.out), args)


def online_table(runs: Sequence[Path]) -> List[str]:
    """Seed 003's Table 1 for every model <x>_online* analysed beside <x>*: the output's Dice and the last feature
    layer's SA, trained without and with the online ProtoSeg term (images with an empty ground truth left out)."""
    by_name = {run.name: run for run in runs}
    pairs = [(by_name[name.replace("_online", "", 1)], run) for name, run in by_name.items()
             if "_online" in name and name.replace("_online", "", 1) in by_name]
    if not pairs:
        return []
    lines = ["", "Online ProtoSeg (seed 003, Table 1): the same training without and with the SA term of the last two "
                 "feature layers; Dice x100 of the output B and SA x100 of the last feature layer:\n",
             "| model | output Dice | last-layer SA | images |", "|---|---|---|---|"]
    for run in (r for pair in pairs for r in pair):
        images = read_images(run)
        last = read_sa_layers(run).iloc[-1]
        scored = images[~images["gt_empty"]]
        lines.append(f"| {run.name} | {100 * scored['dice'].mean():.1f} | {100 * last['sa']:.1f} ({last['layer']}) | "
                     f"{len(scored)} |")
    return lines


# ---------------------------------------------------------------- where the shift hits against SpotTUnet's policy

def shift_table(pairs: Sequence[Path], policies: Sequence[Path]) -> pd.DataFrame:
    """Per feature layer: the source model's SA on source validation and on the target scans, mean over the pairs'
    analysis folders (each holding baseline_on_source/ and baseline/), the drop, and SpotTUnet's share of slices
    fine-tuning that unit (policy.csv), mean over the test pairs per budget (run names <pair>_n<N>)."""
    sa = {}
    for where, sub in (("sa_source", "baseline_on_source"), ("sa_target", "baseline")):
        tables = [read_sa_layers(pair / sub).set_index("layer")["sa"] for pair in pairs]
        sa[where] = pd.concat(tables, axis=1).mean(axis=1)
    table = pd.DataFrame(sa)
    table["sa_drop"] = table["sa_source"] - table["sa_target"]
    frames = []
    for run in policies:
        match = re.fullmatch(r".+_n(\d+)", run.name)
        if match is None:
            raise ValueError(f"{run}: a SpotTUnet test run is named <pair>_n<budget>")
        frames.append(read_policy(run).assign(budget=int(match.group(1))))
    policy = pd.concat(frames).groupby(["unit", "budget"])["p_finetuned"].mean().unstack("budget")
    policy.columns = [f"p_finetuned_n{b}" for b in policy.columns]
    return table.join(policy, how="left").rename_axis("layer").reset_index()


def shift_report(table: pd.DataFrame, title: str) -> str:
    """Markdown: the per-layer table and Spearman's rho of the SA drop with each budget's fine-tuning share."""
    budgets = [c for c in table.columns if c.startswith("p_finetuned_n")]
    lines = [f"# {title}\n", "Per feature layer of the source baseline: SA x100 on its own validation scans and on the "
             "target's test scans (ground-truth prototypes, mean over the test pairs), the drop under the shift, and "
             "the share of test slices whose SpotTUnet policy fine-tunes that unit (mean over the test pairs).\n",
             "| layer | SA source | SA target | drop | " + " | ".join(f"fine-tuned, N = {c[13:]}" for c in budgets) + " |",
             "|---|---|---|---|" + "---|" * len(budgets)]
    for r in table.to_dict("records"):
        lines.append(f"| {r['layer']} | {100 * r['sa_source']:.1f} | {100 * r['sa_target']:.1f} | "
                     f"{100 * r['sa_drop']:+.1f} | " + " | ".join(f"{r[c]:.2f}" for c in budgets) + " |")
    lines.append("")
    for c in budgets:
        both = table[["sa_drop", c]].dropna()
        varies = len(both) > 2 and both["sa_drop"].nunique() > 1 and both[c].nunique() > 1
        rho, p = spearmanr(both["sa_drop"], both[c]) if varies else (np.nan, np.nan)     # undefined when constant
        lines.append(f"- N = {c[13:]}: Spearman rho of the SA drop with the fine-tuned share {rho:+.2f} "
                     f"(p = {p:.2g}, {len(both)} layers)")
    return "\n".join(lines) + "\n"


def shift_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="SA drop under shift per layer against SpotTUnet's policy")
    parser.add_argument("--pairs", nargs="+", type=Path, required=True, help="protoseg/<pair> analysis folders")
    parser.add_argument("--policies", nargs="+", type=Path, required=True, help="spottune/<pair>_n<N> test runs")
    parser.add_argument("--title", default="Where the shift hits, and what SpotTUnet fine-tunes")
    parser.add_argument("--out", type=Path, required=True, help="markdown; the table goes beside it as .csv")
    args = parser.parse_args(argv)
    return write_table_and_markdown(lambda: shift_table(args.pairs, args.policies), shift_report, args.out, args.title)


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    if argv and argv[0] == "shift":
        return shift_main(argv[1:])
    if argv and argv[0] == "seeds":
        return seeds_main(argv[1:])
    return analyze_main(argv)


def report_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="ProtoSeg over a chain's analysed models: one markdown report")
    parser.add_argument("--runs", nargs="+", type=Path, required=True)
    parser.add_argument("--title", default="ProtoSeg")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    return one_error_line(lambda a: publish(chain_report(a.runs, a.title), a.out), args)


def analyze_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="ProtoSeg analysis of one model on one labelled split: SA per "
                                                 "feature layer and unit, mu per image against Dice, coverage")
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint (best_3d.pkl, last.pkl)")
    parser.add_argument("--network", required=True)
    parser.add_argument("--n_class", type=int, default=2)
    parser.add_argument("--split", type=Path, required=True, help="a folder with the image and GT subfolders")
    parser.add_argument("--folders", required=True, help="as main.py's --target_folders")
    parser.add_argument("--grp_regex", required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads (make passes THREADS)")
    parser.add_argument("--debug", action="store_true", help="10 images")
    parser.add_argument("--title", default="ProtoSeg")
    parser.add_argument("--out", type=Path, required=True, help="a folder: sa_layers.csv, sa_units.csv, images.csv, "
                                                                "patients.csv, summary.md")
    return one_error_line(analysis, parser.parse_args(argv))


def analysis(args: argparse.Namespace) -> None:
    """One model on one split: the tables of ``analyze`` and their summary, written into the folder --out."""
    net = network_from_checkpoint(args.model, args.network, args.n_class)
    data = load_split(args.split, args.folders, args.n_class, args.grp_regex, args.debug)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    tables = analyze(net, data, args.batch_size)
    seconds = time.perf_counter() - t0
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        for name, table in tables.items():
            table.to_csv(tmp / f"{name}.csv", index=False, float_format="%.6g")
        (tmp / "summary.md").write_text(summary(tables, args.title)
                                        + f"\nThe analysis took {seconds:.1f} s ({len(data)} images).\n")
    print((args.out / "summary.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
