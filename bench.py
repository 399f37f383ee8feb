#!/usr/bin/env python3
"""Benchmark of this machine and of the pipeline on it: one run, one table, one csv.

    bench.py --out results/bench [--quick]

Sections (csv columns: section, name, precision, channels_last, metric, value, unit):
  peak      measured matrix-product throughput, fp32 and bf16 (GFLOP/s)
  train     training step throughput of every network (SpotTUnet wraps the residual U-Net) on the
            prostate pipeline's default input (batch 16 of 96 x 96 slices), fp32/bf16,
            with and without channels_last: images/s, achieved GFLOP/s (FLOPs counted by
            torch.utils.flop_counter), fraction of the measured peak of that precision
  epoch     a real main.py run (2 epochs, UNet): share of the epoch time outside forward/backward,
            peak resident memory of the process
  memory    main.py's peak memory against the number of volumes of a real CC359 scan's size at the paper's
            spacing (embedded heads padded to 270 x 270 slices), extrapolated to the paper's largest run
  predict   predict.py on volumes of a real prostate MRI's size (320 x 320 x 20, 0.6 x 0.6 x 3.6 mm, UNet) and of a real
            CC359 scan's (270 x 270 x 171, 1 mm, ResUNet), untrained networks: volumes per minute, peak memory
  metric    surface Dice at 1 mm and HD95 on a realistic 3D volume, ours vs the DeepMind
            surface-distance package and medpy (if installed): seconds, speed ratio, agreement
"""
import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import nibabel as nib
import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from torch.utils.flop_counter import FlopCounterMode

from metrics import hd95_assd, surface_dice
from networks import NETWORKS, build_network
from spottune import SpotTUnet
from tables import read_run_stats
from utils import write_csv_atomic

ROOT = Path(__file__).resolve().parent
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# the pipelines' default input: prostate.make trains on 96 x 96 slices in batches of 16
DEFAULT_INPUT = {"size": 96, "batch": 16, "classes": 2}


def best_time(fn: Callable[[], object], repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def matmul_peak(precision: str, n: int, repeat: int) -> float:
    """GFLOP/s of an n x n matrix product in ``precision`` (the machine's practical peak)."""
    a = torch.randn(n, n, dtype=DTYPES[precision])
    b = torch.randn(n, n, dtype=DTYPES[precision])
    return 2 * n ** 3 / best_time(lambda: torch.mm(a, b), repeat) / 1e9


def training_step(name: str, precision: str, channels_last: bool, size: int, batch: int, n_class: int):
    """A closure running one Adam training step of network ``name``, and its FLOP count."""
    torch.manual_seed(0)
    net = SpotTUnet(build_network("ResUNet", 1, n_class)) if name == "SpotTUnet" else build_network(name, 1, n_class)
    memory = torch.channels_last if channels_last else torch.contiguous_format
    net = net.to(memory_format=memory).train()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size).to(memory_format=memory)
    y = torch.randint(0, n_class, (batch, size, size))
    dtype = DTYPES[precision]

    def step() -> None:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            logits = net(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return step, counter.get_total_flops()


def bench_training(peaks: Dict[str, float], networks: Sequence[str], repeat: int) -> List[dict]:
    rows = []
    size, batch, n_class = DEFAULT_INPUT["size"], DEFAULT_INPUT["batch"], DEFAULT_INPUT["classes"]
    for name in networks:
        for precision in DTYPES:
            for channels_last in (False, True):
                step, flops = training_step(name, precision, channels_last, size, batch, n_class)
                seconds = best_time(step, repeat)
                gflops = flops / seconds / 1e9
                common = {"section": "train", "name": name, "precision": precision, "channels_last": channels_last}
                rows += [{**common, "metric": "images_per_s", "value": batch / seconds, "unit": "img/s"},
                         {**common, "metric": "achieved", "value": gflops, "unit": "GFLOP/s"},
                         {**common, "metric": "fraction_of_peak", "value": gflops / peaks[precision], "unit": "1"}]
    return rows


def bench_epoch(precision: str) -> List[dict]:
    """Run main.py for 2 epochs on the embedded source data; read its timing and peak memory."""
    with tempfile.TemporaryDirectory() as tmp:
        data = ROOT / "data" / "prostate_source"
        if not data.is_dir():
            data = Path(tmp) / "prostate_source"
            subprocess.run([sys.executable, str(ROOT / "synth.py"), "prostate", "--domain", "source",
                            "--out", str(data)], check=True, capture_output=True)
        folders = "[('IMG', png_transform, False), ('GT', gt_transform, False)]"
        cmd = [sys.executable, str(ROOT / "main.py"), "--target_dataset", str(data), "--workdir", f"{tmp}/run_tmp",
               "--target_losses", "[('CrossEntropy', {'idc': [0,1], 'weights':[1,1]}, None, None, None, 1)]",
               "--target_folders", folders, "--val_target_folders", folders, "--network", "UNet",
               "--grp_regex", r"Case\d+_\d+", "--n_class", "2", "--metric_axis", "1", "--n_epoch", "2",
               "--batch_size", str(DEFAULT_INPUT["batch"]), "--hd95", "--precision", precision]
        subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
        stats = read_run_stats(Path(tmp) / "run_tmp")
    outside = 1 - stats["compute"] / stats["epochs"]
    common = {"section": "epoch", "name": "UNet", "precision": precision, "channels_last": False}
    return [{**common, "metric": "epoch_seconds", "value": stats["epochs"] / 2, "unit": "s"},
            {**common, "metric": "share_outside_forward_backward", "value": outside, "unit": "1"},
            {**common, "metric": "peak_memory", "value": stats["peak_memory"], "unit": "MiB"}]


# the paper's CC359 protocol: 1 x 0.95 x 0.95 mm; the largest run holds a pair's test scans (60 - NADD 3), its
# 2 validation scans and up to 800 training slices (~5 scans): about 64 volumes decoded at once. A real scan's
# 256 mm field of view gives slices of up to 270 x 270 pixels at 0.95 mm (the embedded heads: 180 x 227).
PAPER_SPACING = "1,0.95,0.95"
PAPER_VOLUMES = 64
REAL_SLICE = (270, 270)


def paper_size_volume(tmp: Path) -> Path:
    """One embedded CC359 head resampled to the paper's spacing (cc359.py prep), its slices padded to a real
    scan's REAL_SLICE: the slice folder."""
    subprocess.run([sys.executable, str(ROOT / "synth.py"), "cc359", "--out", f"{tmp}/release", "--n_per_domain", "1"],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, str(ROOT / "cc359.py"), "prep", "--meta", f"{tmp}/release/meta.csv",
                    "--spacing", PAPER_SPACING, "--out", f"{tmp}/prep"], check=True, capture_output=True)
    padded = tmp / "padded"
    for sub in ("IMG", "GT"):
        (padded / sub).mkdir(parents=True)
        for path in (tmp / "prep" / "slices" / sub).glob("*.npy"):
            arr = np.load(path)
            np.save(padded / sub / path.name, np.pad(arr, [(0, n - m) for n, m in zip(REAL_SLICE, arr.shape)]))
    return padded


def slice_set(slices: Path, root: Path, n_train: int) -> None:
    """train/ with n_train copies of one head (symlinks under new patient ids: each is decoded on its own), val/ one."""
    case = sorted(p.name for p in (slices / "IMG").glob("*.npy"))[0].split("_")[0]
    for split, copies in (("train", n_train), ("val", 1)):
        for sub in ("IMG", "GT"):
            (root / split / sub).mkdir(parents=True)
            for src in (slices / sub).glob(f"{case}_*.npy"):
                for k in range(copies):
                    patient = f"CC{(9000 if split == 'val' else 1000) + k:04d}"
                    (root / split / sub / src.name.replace(case, patient)).symlink_to(src)


def bench_memory(volumes: Sequence[int] = (2, 8, 16)) -> List[dict]:
    """main.py's peak memory (ResUNet, batch 16, 2 iterations) against the number of training volumes of a real
    scan's size at the paper's spacing, and the line through them extrapolated to its largest run (PAPER_VOLUMES)."""
    rows, peaks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        slices = paper_size_volume(Path(tmp))
        folders = "[('IMG', npy_transform, False), ('GT', gt_transform, False)]"
        for n in volumes:
            data = Path(tmp) / f"set{n}"
            slice_set(slices, data, n)
            cmd = [sys.executable, str(ROOT / "main.py"), "--target_dataset", str(data), "--workdir", f"{tmp}/run{n}_tmp",
                   "--target_losses", "[('CrossEntropy', {'idc': [0,1], 'weights':[1,1]}, None, None, None, 1)]",
                   "--target_folders", folders, "--val_target_folders", folders, "--network", "ResUNet",
                   "--grp_regex", r"CC\d+_\d+", "--n_class", "2", "--metric_axis", "1", "--n_epoch", "1",
                   "--iterations", "2", "--batch_size", "16", "--optimizer", "sgd", "--spacing", PAPER_SPACING]
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            stats = read_run_stats(Path(tmp) / f"run{n}_tmp")
            peaks.append(stats["peak_memory"])
            rows.append({"section": "memory", "name": f"ResUNet, {n} training volumes", "precision": "fp32",
                         "channels_last": False, "metric": "peak_memory", "value": stats["peak_memory"], "unit": "MiB"})
    slope, intercept = np.polyfit(volumes, peaks, 1)
    return rows + [{"section": "memory", "name": f"ResUNet, {PAPER_VOLUMES} volumes (line through the above)",
                    "precision": "fp32", "channels_last": False, "metric": "peak_memory",
                    "value": intercept + slope * PAPER_VOLUMES, "unit": "MiB"},
                   {"section": "memory", "name": "ResUNet, per volume", "precision": "fp32", "channels_last": False,
                    "metric": "peak_memory", "value": slope, "unit": "MiB"}]


# predict.py at real sizes: (shape, voxel size, network)
PREDICT_SIZES = {"prostate MRI": ((320, 320, 20), (0.6, 0.6, 3.6), "UNet"),
                 "CC359 scan": ((270, 270, 171), (1.0, 1.0, 1.0), "ResUNet")}
PREDICT_VOLUMES = 3


def write_volumes(folder: Path, shape: Sequence[int], zooms: Sequence[float], n: int) -> None:
    """n image volumes with an ellipsoid label each (images/, labels/), smooth noise for intensities."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    label = ((grid ** 2).sum(0) < 0.3).astype(np.uint8)
    for sub in ("images", "labels"):
        (folder / sub).mkdir(parents=True)
    for i in range(n):
        image = ndimage.gaussian_filter(rng.standard_normal(shape), 2).astype(np.float32) + label
        affine = np.diag([*zooms, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(folder / "images" / f"v{i}.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(folder / "labels" / f"v{i}.nii.gz"))


def bench_predict() -> List[dict]:
    """predict.py (a subprocess, so its peak memory is its own) on PREDICT_VOLUMES volumes of each real size."""
    rows = []
    for name, (shape, zooms, network) in PREDICT_SIZES.items():
        with tempfile.TemporaryDirectory() as tmp:
            vols, data, run = Path(tmp) / "volumes", Path(tmp) / "slices", Path(tmp) / "run"
            write_volumes(vols, shape, zooms, PREDICT_VOLUMES)
            subprocess.run([sys.executable, str(ROOT / "volumes.py"), "slices", "--volumes", str(vols), "--val_fraction",
                            "0.34", "--out", str(data)], check=True, capture_output=True)
            folders = "[('IMG', nii_transform, False), ('GT', gt_transform, False)]"
            subprocess.run([sys.executable, str(ROOT / "main.py"), "--target_dataset", str(data), "--workdir", str(run),
                            "--target_losses", "[('CrossEntropy', {'idc': [0,1], 'weights':[1,1]}, None, None, None, 1)]",
                            "--target_folders", folders, "--val_target_folders", folders, "--network", network,
                            "--grp_regex", r"Case\d+_\d+", "--n_class", "2", "--metric_axis", "1", "--n_epoch", "0"],
                           check=True, capture_output=True, cwd=ROOT)
            code = ("import resource, sys, time, predict; t = time.perf_counter(); rc = predict.main(sys.argv[1:]); "
                    "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
            out = subprocess.run([sys.executable, "-c", code, "--run", str(run), "--weights", "last.pkl", "--input",
                                  str(vols / "images"), "--out", f"{tmp}/pred"], check=True, capture_output=True,
                                 text=True, cwd=ROOT).stdout.split()
            seconds, peak = float(out[-2]), float(out[-1])
        common = {"section": "predict", "name": f"{name} {'x'.join(map(str, shape))}, {network}", "precision": "fp32",
                  "channels_last": False}
        rows += [{**common, "metric": "volumes_per_minute", "value": 60 * PREDICT_VOLUMES / seconds, "unit": "1/min"},
                 {**common, "metric": "peak_memory", "value": peak, "unit": "MiB"}]
    return rows


def realistic_masks(shape=(160, 200, 170), seed: int = 0):
    """A brain-sized smooth blob and a prediction of it with a wavy, slightly shifted boundary."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt(((grid / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0))
    wobble = ndimage.gaussian_filter(rng.standard_normal(shape), 8)
    gt = radius + 2.5 * wobble < 1
    pred = radius + 2.5 * wobble + 0.01 + 1.5 * ndimage.gaussian_filter(rng.standard_normal(shape), 4) < 1
    return gt, pred


def bench_metrics(repeat: int) -> List[dict]:
    gt, pred = realistic_masks()
    spacing = (1.0, 0.95, 0.95)
    rows = []
    common = {"section": "metric", "precision": "", "channels_last": False}

    def add(name: str, metric: str, value: float, unit: str) -> None:
        rows.append({**common, "name": name, "metric": metric, "value": value, "unit": unit})

    ours_sd = surface_dice(gt, pred, spacing, 1.0)
    t_ours = best_time(lambda: surface_dice(gt, pred, spacing, 1.0), repeat)
    add("surface_dice_ours", "seconds", t_ours, "s")
    add("surface_dice_ours", "value", ours_sd, "1")
    try:
        import surface_distance as sd
        ref = lambda: sd.compute_surface_dice_at_tolerance(sd.compute_surface_distances(gt, pred, spacing), 1.0)  # noqa: E731
        t_ref = best_time(ref, repeat)
        add("surface_dice_deepmind", "seconds", t_ref, "s")
        add("surface_dice_deepmind", "speed_ratio_ours", t_ref / t_ours, "x")
        add("surface_dice_deepmind", "abs_difference", abs(ref() - ours_sd), "1")
    except ImportError:
        print("surface-distance not installed: no reference for surface Dice", file=sys.stderr)

    ours_hd = hd95_assd(pred, gt, spacing)[0]
    t_ours = best_time(lambda: hd95_assd(pred, gt, spacing), repeat)
    add("hd95_ours", "seconds", t_ours, "s")
    add("hd95_ours", "value", ours_hd, "mm")
    try:
        from medpy.metric.binary import hd95
        t_ref = best_time(lambda: hd95(pred, gt, voxelspacing=spacing), repeat)
        add("hd95_medpy", "seconds", t_ref, "s")
        add("hd95_medpy", "speed_ratio_ours", t_ref / t_ours, "x")
        add("hd95_medpy", "abs_difference", abs(hd95(pred, gt, voxelspacing=spacing) - ours_hd), "mm")
    except ImportError:
        print("medpy not installed: no reference for HD95", file=sys.stderr)
    return rows


def print_table(df: pd.DataFrame) -> None:
    for section, part in df.groupby("section", sort=False):
        print(f"\n== {section}")
        print(part.drop(columns="section").to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions, smaller peak matrices")
    parser.add_argument("--networks", nargs="*", default=[n for n in NETWORKS if n != "Dimwit"] + ["SpotTUnet"])
    parser.add_argument("--only", choices=["memory", "predict"], help="run this section alone (into <out>/<section>.csv)")
    args = parser.parse_args(argv)
    if args.only:
        df = pd.DataFrame(bench_memory() if args.only == "memory" else bench_predict())
        write_csv_atomic(df, args.out / f"{args.only}.csv", float_format="%.6g")
        print_table(df)
        return 0
    repeat = 2 if args.quick else 5
    torch.set_num_threads(torch.get_num_threads())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    peaks = {p: matmul_peak(p, 1024 if args.quick else 2048, repeat) for p in DTYPES}
    rows = [{"section": "peak", "name": "matmul", "precision": p, "channels_last": False, "metric": "peak",
             "value": v, "unit": "GFLOP/s"} for p, v in peaks.items()]
    # first: a child's peak RSS counts its parent's at fork
    epoch_rows = bench_epoch("fp32") + bench_epoch("bf16") + bench_memory() + bench_predict()
    rows += bench_training(peaks, args.networks, repeat) + epoch_rows
    rows += bench_metrics(1 if args.quick else 3)

    df = pd.DataFrame(rows)
    write_csv_atomic(df, args.out / "bench.csv", float_format="%.6g")
    print_table(df)
    print(f"\nwritten {args.out / 'bench.csv'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
