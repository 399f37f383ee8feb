"""The qualitative figure of a chain (qualitative.py): image, ground truth and each run's prediction as contours.

Every run's last epoch (last.pkl: the model a label-free user keeps) segments the chosen split of its own dataset;
the patients shown are those with the largest, the median and the smallest gain in 3D Dice of ``--adapted`` over
``--baseline``, so a reader sees where adaptation helps most, typically, and least (or harms). Each row is one patient
and view: ``slice`` is the stored slice through the ground truth's centre, ``cross`` the perpendicular cut of the
stacked slices through it (CC359: mid-axial and mid-sagittal). Panel titles give the run's 3D Dice and mu (ProtoSeg,
label-free) on that patient.

    qualitative.py --runs results/prostate/{noadapt,adabn,sfda,fs} --baseline noadapt --adapted sfda --split val \
        --out results/prostate/qualitative.png
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import numpy as np
import pandas as pd
import torch

from checkpoints import network_from_checkpoint
from dataloader import DataError, SliceSet, load_split
from metrics import dice, patient_volumes
from prototypes import mu_per_image
from tables import read_params
from training import autocast
from utils import one_error_line, save_figure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

VIEWS = ("slice", "cross")
STRUCTURE_COLOURS = ("red", "yellow", "cyan", "magenta", "orange", "lime")


def segment_split(run: Path, split: SliceSet, device: torch.device, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(N, H, W) class indices of the run's last.pkl on ``split``, and its mu per slice."""
    params = read_params(run)
    net = network_from_checkpoint(run / "last.pkl", "checkpoint", None).to(device)
    mu, _, _, probs = mu_per_image(net, split.images, batch_size, device, lambda: autocast(device, params["precision"]),
                                keep_probs=True)
    return probs.argmax(1).numpy().astype(np.uint8), mu.numpy()


def per_patient(pred: np.ndarray, mu: np.ndarray, split: SliceSet) -> pd.DataFrame:
    """3D Dice (the mean over the structures) and mean mu per patient, patients sorted."""
    classes = torch.arange(1, max(int(split.labels.max()), int(pred.max()), 1) + 1).view(-1, 1, 1, 1)
    rows = [{"patient": pid, "dice": dice(torch.from_numpy(p) == classes, torch.from_numpy(g) == classes, 3).mean().item()}
            for pid, p, g in patient_volumes(pred, split.labels.numpy(), split.patients, split.slice_numbers)]
    table = pd.DataFrame(rows)
    table["mu"] = pd.Series(mu).groupby(pd.Series(split.patients)).mean().reindex(table["patient"]).to_numpy()
    return table


def shown_patients(scores: Dict[str, pd.DataFrame], baseline: str, adapted: str) -> List[Tuple[str, str]]:
    """(label, patient) of the largest, median and smallest gain of ``adapted`` over ``baseline`` (distinct)."""
    gain = (scores[adapted].set_index("patient")["dice"] - scores[baseline].set_index("patient")["dice"]).sort_values()
    picks = {"largest gain": gain.index[-1], "median gain": gain.index[len(gain) // 2], "smallest gain": gain.index[0]}
    seen, out = set(), []
    for label, pid in picks.items():
        if pid not in seen:
            seen.add(pid)
            out.append((f"{label} ({100 * gain[pid]:+.1f})", pid))
    return out


def by_patient(slices: np.ndarray, split: SliceSet) -> Dict[str, np.ndarray]:
    """(N, H, W) slices of a split -> each patient's (S, H, W) stack in slice order."""
    return {pid: volume for pid, volume, _ in patient_volumes(slices, slices, split.patients, split.slice_numbers)}


def cut(volume: np.ndarray, view: str, centre: Tuple[int, int, int]) -> np.ndarray:
    """(S, H, W) stack -> the stored slice (``slice``) or the perpendicular cut along the rows (``cross``)."""
    return volume[centre[0]] if view == "slice" else volume[:, :, centre[2]]


def figure(split: SliceSet, preds: Dict[str, np.ndarray], scores: Dict[str, pd.DataFrame],
           shown: List[Tuple[str, str]], views: Sequence[str], spacing_ratio: Dict[str, float], out: Path) -> None:
    runs = list(preds)
    rows = [(label, pid, view) for label, pid in shown for view in views]
    fig, axes = plt.subplots(len(rows), len(runs) + 1, figsize=(2.3 * (len(runs) + 1), 2.4 * len(rows)), squeeze=False)
    stacks = {name: by_patient(pred, split) for name, pred in preds.items()}
    n_class = max(2, int(split.labels.max()) + 1, *(int(p.max()) + 1 for p in preds.values()))
    images, truths = by_patient(split.images[:, 0].float().numpy(), split), by_patient(split.labels.numpy(), split)
    for ax_row, (label, pid, view) in zip(axes, rows):
        gt = truths[pid] > 0
        centre = tuple(int(round(c)) for c in np.argwhere(gt).mean(0)) if gt.any() else tuple(s // 2 for s in gt.shape)
        aspect = spacing_ratio[pid] if view == "cross" else 1.0
        image, truth = cut(images[pid], view, centre), cut(truths[pid], view, centre)
        panels = [("image, ground truth", None)] + [(name, cut(stacks[name][pid], view, centre)) for name in runs]
        for ax, (title, labels) in zip(ax_row, panels):
            ax.imshow(image, cmap="gray", aspect=aspect)
            for k in range(1, n_class):                    # one structure: lime truth, red prediction; several: a colour each
                colour = ("lime", "red") if n_class == 2 else (STRUCTURE_COLOURS[(k - 1) % len(STRUCTURE_COLOURS)],) * 2
                if (truth == k).any():
                    ax.contour(truth == k, levels=[0.5], colors=colour[0], linewidths=0.8,
                               linestyles="solid" if n_class == 2 else "dotted")
                if labels is not None and (labels == k).any():
                    ax.contour(labels == k, levels=[0.5], colors=colour[1], linewidths=0.8)
            if labels is not None:
                s = scores[title].set_index("patient").loc[pid]
                title = f"{title}\nDice {100 * s['dice']:.1f}  mu {s['mu']:.2f}"
            else:
                title = f"{pid} ({view})\n{label}"
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    fig.suptitle("green: ground truth, red: prediction (last epoch)" if n_class == 2 else
                 "dotted: ground truth, solid: prediction (last epoch), one colour per structure", fontsize=8)
    save_figure(fig, out)


def run_names(runs: Sequence[Path]) -> List[str]:
    """Each run's name in the figure: its folder (prostate: sfda), or its method's where those repeat (CC359:
    sfda/2_5, adabn/2_5)."""
    unique = len({run.name for run in runs}) == len(runs)
    return [run.name if unique else run.parent.name for run in runs]


def qualitative(args: argparse.Namespace) -> None:
    names = run_names(args.runs)
    for needed in (args.baseline, args.adapted):
        if needed not in names:
            raise DataError(f"--baseline / --adapted {needed!r} is not one of the runs ({', '.join(names)})")
    params = read_params(args.runs[0])
    split = load_split(Path(params["target_dataset"]) / args.split, params["val_target_folders"], params["n_class"],
                       params["grp_regex"], option="--val_target_folders")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    preds, scores = {}, {}
    for name, run in zip(names, args.runs):
        preds[name], mu = segment_split(run, split, device, args.batch_size)
        scores[name] = per_patient(preds[name], mu, split)
    ratio = {pid: s[2] / s[0] for pid, s in split.spacings.items()}       # slice thickness over row spacing
    figure(split, preds, scores, shown_patients(scores, args.baseline, args.adapted), args.views, ratio, args.out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="run directories of one dataset")
    parser.add_argument("--baseline", default="noadapt", help="the run the gain is measured from (a run's name)")
    parser.add_argument("--adapted", default="sfda", help="the run whose gain picks the patients")
    parser.add_argument("--split", default="val", help="the split of the runs' dataset shown: val or test")
    parser.add_argument("--views", nargs="+", choices=VIEWS, default=["slice"])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--cpu", action="store_true", help="the CPU even where a GPU is present")
    return one_error_line(qualitative, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
