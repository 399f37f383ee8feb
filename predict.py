"""A run's model applied to new scans: one segmentation NIfTI per volume on the volume's own grid, and a label-free
trust score per scan (predict.py).

The preprocessing of the run's data (volumes.py's preprocessing.json, found beside its --target_dataset; for a CC359
run, the cc359.py prep cache given by --cc359_prep) is replayed on each volume; the network's class probabilities are
put back on the volume's grid and their argmax saved with the input's shape, affine and qform / sform codes. predictions.csv holds per volume the predicted volume of each class in
mL, the mean entropy over the predicted foreground, and ProtoSeg's mu (the mean over the slices the network segments
something in); a volume whose mu falls below a threshold chosen without target labels (a low percentile of the same
statistic on the source validation patients, --reference) is flagged. Least trusted first; overview.png shows each
volume's middle slice with the prediction's contour in the same order. Volume by volume: memory holds one volume.

    python predict.py --run results/prostate/sfda --input scans/ --reference data/prostate_source/val --out pred/
    python predict.py --run results/cc359/sfda/2_5 --cc359_prep data/cc359_prep --input data/cc359/meta.csv \
        --cases_from data/cc359_sets/pair_2_5_all/test/IMG --reference data/cc359_sets/baseline_2/val --out pred/
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from tqdm import tqdm

import cc359
from checkpoints import network_from_checkpoint
from dataloader import DataError, list_slices, load_split
from prototypes import mu_per_image
from tables import read_params
from training import autocast
from utils import atomic_output, one_error_line, parse_spacing, save_figure
from volumes import Case, like, prepare, read_dataset, read_folders, restore

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

WEIGHTS = ("best_3d.pkl", "last.pkl", "best_mu.pkl")


@dataclass
class Replay:
    """How a run's slices were made from a volume: ``prepare(case)`` -> (S, H, W) slices in the network's grid and
    intensities, and the geometry with which ``restore(probabilities, geometry)`` puts (K, S, H, W) class
    probabilities back on the volume's own grid as class indices."""
    prepare: Callable[[Case], Tuple[np.ndarray, dict]]
    restore: Callable[[np.ndarray, dict], np.ndarray]
    channel: Optional[int] = None


def volumes_replay(run: Path, params: dict) -> Replay:
    """The preprocessing.json volumes.py stored beside the run's data (its --target_dataset)."""
    data = Path(params["target_dataset"])
    if not (data / "preprocessing.json").is_file():
        raise DataError(f"{run}: its data {data} holds no preprocessing.json: the run was not trained on volumes.py "
                        f"slices, so there is no preprocessing to replay on volumes (CC359: give --cc359_prep)")
    prep = like(data)

    def prepare_volume(case: Case) -> Tuple[np.ndarray, dict]:
        images, _, geometry = prepare(case, prep)
        return images, geometry

    return Replay(prepare_volume, restore, prep.channel)


def cc359_replay(prep_dir: Path, spacings: Dict[str, Tuple[float, float, float]]) -> Replay:
    """cc359.py prep's steps (its spacing, its padded slice shape) on a scan: zoom, clip, scale, pad, cut along the
    last array axis; the scan's spacing from ``spacings`` (meta.csv's x, y, z) or its header."""
    try:
        new_spacing = parse_spacing((prep_dir / "spacing.txt").read_text().strip())
        shape = np.load(next((prep_dir / "slices" / "IMG").glob("*.npy"))).shape
    except (OSError, StopIteration):
        raise DataError(f"{prep_dir}: not a cc359.py prep cache (spacing.txt, slices/IMG/*.npy)") from None

    def prepare_scan(case: Case) -> Tuple[np.ndarray, dict]:
        header = nib.load(str(case.image)).header
        spacing = spacings.get(case.name) or header.get_zooms()[:3]
        image, _ = cc359.preprocess(cc359.load_volume(case.image), None, spacing, new_spacing)
        if image.shape[0] > shape[0] or image.shape[1] > shape[1]:
            raise DataError(f"{case.image}: {image.shape[:2]} voxels in-plane at {new_spacing} mm exceed the cache's "
                            f"slices {shape}; this scan is larger than any the run's data held")
        geometry = {"shape": list(header.get_data_shape()), "resampled": list(image.shape)}
        return np.moveaxis(cc359.pad_slices(image, shape), 2, 0), geometry

    return Replay(prepare_scan, cc359_restore)


def cc359_restore(probabilities: np.ndarray, geometry: dict) -> np.ndarray:
    """(K, S, H, W) -> class indices on the scan's array: un-pad (pad_slices centres), zoom back, argmax."""
    volume = probabilities.transpose(0, 2, 3, 1)                          # (K, H, W, S), the array's axes
    h, w, _ = geometry["resampled"]
    top, left = (volume.shape[1] - h) // 2, (volume.shape[2] - w) // 2
    volume = volume[:, top: top + h, left: left + w]
    original = [n for n in geometry["shape"] if n != 1] or [1]            # load_volume squeezes singleton axes
    factors = (1.0, *(o / r for o, r in zip(original, geometry["resampled"])))
    classes = ndimage.zoom(volume, factors, order=1, mode="nearest", grid_mode=True).argmax(0).astype(np.uint8)
    return classes.reshape(geometry["shape"])


def meta_cases(meta: Path, cases_from: Optional[Path]) -> Tuple[List[Case], Dict[str, Tuple[float, float, float]]]:
    """CC359 scans of a meta.csv (the ids of a slice folder's files, e.g. a pair's test/IMG, when given) and their
    spacings."""
    table = cc359.read_meta(meta)
    if cases_from is not None:
        table = table[table["id"].isin({p.name.split("_")[0] for p in list_slices(cases_from)})]
    return ([Case(row.id, Path(row.image), None) for row in table.itertuples()],
            {row.id: (row.x, row.y, row.z) for row in table.itertuples()})


def input_cases(folder: Path, channel: Optional[int]) -> List[Case]:
    """Volumes to segment: a dataset's test images (nnU-Net imagesTs, Decathlon's test list), a folder's images/,
    or the folder's own volumes."""
    if (folder / "dataset.json").is_file():
        return read_dataset(folder, channel, split="Ts")
    return read_folders(folder / "images" if (folder / "images").is_dir() else folder, None)


def volume_mu(mu: torch.Tensor, empty: torch.Tensor) -> float:
    """A volume's mu: the mean over its slices with a non-empty output (0 when the network segments nothing)."""
    kept = mu[~empty]
    return float(kept.mean()) if len(kept) else 0.0


def reference_threshold(net: torch.nn.Module, split: Path, params: dict, percentile: float, device: torch.device,
                        batch_size: int) -> Tuple[float, int]:
    """The ``percentile`` of per-patient mu on a labelled source split (no target label): (threshold, patients)."""
    data = load_split(split, params["val_target_folders"], params["n_class"], params["grp_regex"],
                      option="--reference")
    mu, empty, _, _ = mu_per_image(net, data.images, batch_size, device, lambda: autocast(device, params["precision"]))
    per_patient = [volume_mu(mu[idx], empty[idx]) for idx in
                   pd.Series(range(len(data.patients))).groupby(pd.Series(data.patients)).apply(list)]
    return float(np.percentile(per_patient, percentile)), len(per_patient)


def segment(net: torch.nn.Module, case: Case, replay: Replay, device: torch.device, precision: str,
            batch_size: int) -> Tuple[nib.Nifti1Image, dict, np.ndarray]:
    """One volume: its segmentation on its own grid, its row of predictions.csv, and its middle slice's image."""
    images, geometry = replay.prepare(case)
    mu, empty, _, probs = mu_per_image(net, torch.from_numpy(images).unsqueeze(1), batch_size, device,
                                    lambda: autocast(device, precision), keep_probs=True)
    probs = probs.numpy().transpose(1, 0, 2, 3)                      # (K, S, H, W)
    entropy = -(probs * np.log(np.clip(probs, 1e-12, None))).sum(0)
    slice_classes = probs.argmax(0)                                   # (S, H, W) on the network's grid
    foreground = slice_classes > 0
    classes = replay.restore(probs, geometry)
    original = nib.load(str(case.image))
    seg = nib.Nifti1Image(classes, original.affine, header=original.header.copy())
    seg.set_data_dtype(np.uint8)
    seg.header.set_slope_inter(1, 0)
    seg.set_qform(original.get_qform(), code=int(original.header["qform_code"]))
    seg.set_sform(original.get_sform(), code=int(original.header["sform_code"]))
    voxel_ml = float(np.prod(original.header.get_zooms()[:3])) / 1000
    row = {"volume": case.name, "mu": round(volume_mu(mu, empty), 4),
           "mean_entropy": round(float(entropy[foreground].mean()) if foreground.any() else 0.0, 4),
           **{f"class{k}_ml": round(float((classes == k).sum()) * voxel_ml, 3) for k in range(1, probs.shape[0])}}
    middle = len(images) // 2
    return seg, row, np.stack([images[middle], slice_classes[middle]])


def overview(panels: List[Tuple[str, np.ndarray]], out: Path) -> None:
    """Each volume's middle slice with the prediction's contour, least trusted first."""
    cols = min(len(panels), 6)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, (image, label)) in zip(axes.flat, panels):
        ax.imshow(image, cmap="gray")
        if label.any():
            ax.contour(label > 0, levels=[0.5], colors="tab:red", linewidths=0.8)
        ax.set_title(title, fontsize=7)
    save_figure(fig, out)


def deployed_run(choice: Path) -> Tuple[Path, str, str]:
    """(run, weights, every candidate's mean mu) of the run a deploy.py choose csv deploys."""
    table = pd.read_csv(choice)
    if "deployed" not in table or table["deployed"].sum() != 1:
        raise DataError(f"{choice}: not a deploy.py choose table with one deployed run")
    row = table[table["deployed"]].iloc[0]
    candidates = "; ".join(f"{Path(r).name} {m:.4f}" for r, m in zip(table["run"], table["mean_mu"]))
    return Path(row["run"]), row["weights"], candidates


def predict(args: argparse.Namespace) -> None:
    if (args.run is None) == (args.choice is None):
        raise DataError("predict.py: give --run RUN [--weights W] or --choice deploy.csv (the run mu deploys)")
    run, weights_name, candidates = deployed_run(args.choice) if args.choice else (args.run, args.weights, "")
    params = read_params(run)
    cases, spacings = (meta_cases(args.input, args.cases_from) if args.input.suffix == ".csv"
                       else (None, {}))
    replay = cc359_replay(args.cc359_prep, spacings) if args.cc359_prep else volumes_replay(run, params)
    cases = cases if cases is not None else input_cases(args.input, replay.channel)
    weights = run / weights_name
    net = network_from_checkpoint(weights, "checkpoint", None)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    net.to(device).eval()
    threshold, n_ref = (reference_threshold(net, args.reference, params, args.percentile, device, args.batch_size)
                        if args.reference else (None, 0))
    rows, panels = [], {}
    with atomic_output(args.out) as tmp:
        tmp.mkdir()
        for case in tqdm(cases, desc="predict", unit="volume", disable=None):
            seg, row, panel = segment(net, case, replay, device, params["precision"], args.batch_size)
            nib.save(seg, str(tmp / f"{case.name}.nii.gz"))
            row["flag"] = bool(threshold is not None and row["mu"] < threshold)
            rows.append(row)
            panels[case.name] = panel
        table = pd.DataFrame(rows).sort_values(["mu", "volume"], kind="stable")
        table["model"] = str(weights)
        if candidates:
            table["deployed_by"] = f"the highest mean mu on the target training images ({args.choice}): {candidates}"
        table["mu_threshold"] = threshold
        table["threshold_rule"] = (f"the {args.percentile:g}th percentile of mu over {n_ref} source validation patients "
                                   f"({args.reference})" if threshold is not None else "none (no --reference)")
        table.to_csv(tmp / "predictions.csv", index=False)
        overview([(f"{v}  mu {m:.2f}{'  FLAG' if f else ''}", panels[v])
                  for v, m, f in zip(table["volume"], table["mu"], table["flag"])], tmp / "overview.png")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a run directory of main.py")
    parser.add_argument("--choice", type=Path, help="a deploy.py choose csv: the run it deploys (instead of --run)")
    parser.add_argument("--weights", choices=WEIGHTS, default="best_3d.pkl", help="which of the run's checkpoints")
    parser.add_argument("--input", type=Path, required=True,
                        help="a folder of NIfTI volumes, an nnU-Net / Decathlon dataset (its test images), or a CC359 "
                             "meta.csv")
    parser.add_argument("--cc359_prep", type=Path, help="a run on CC359 slices: the cc359.py prep cache to replay")
    parser.add_argument("--cases_from", type=Path,
                        help="with a CC359 meta.csv as --input: only the scans with slices in this folder")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a labelled source split (e.g. data/prostate_source/val): mu's threshold, no target label")
    parser.add_argument("--percentile", type=float, default=5.0, help="mu below this percentile of --reference: flagged")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--cpu", action="store_true", help="the CPU even where a GPU is present")
    return one_error_line(predict, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
