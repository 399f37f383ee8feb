#!/usr/bin/env python3
"""Embedded spine MR (ivd.make): sagittal slices of the lower spine in four Dixon contrasts, discs as the foreground.

    synth_ivd.py --contrast water --out data/ivd_water [--seed 0]
    synth_ivd.py --contrast inphase --out data/ivd_inphase [--seed 0]

Each subject is a stack of sagittal slices across the lumbar spine (left to right): seven vertebral bodies of fatty
marrow on a lordotic curve, an intervertebral disc between each pair, the spinal canal with its CSF behind the bodies
(middle slices), the posterior elements, paraspinal muscle, subcutaneous fat and the abdomen in front. Heights,
curvature, size and each disc's hydration vary per subject; the discs are wide (present on most slices) but vanish
at the lateral ends of the stack. GT: 1 disc, 0 anything else.

A Dixon acquisition gives, per voxel, a water signal W and a fat signal F; its four contrasts are in-phase W + F,
opposed-phase |W - F|, water W and fat F. The discs are water (bright in every contrast but fat); the marrow holds
water and fat in about equal parts, so the vertebrae are mid-grey on water images and the brightest tissue in phase.
Seed 004's IVD application adapts from water (source) to in-phase (target), as the SFDA code's README states. The
contrasts share each subject's anatomy; the chain's source and target subjects differ (``--first_subject``).
Rician noise and a smooth bias field as in synth.py; 8-bit PNG, the body's median at 30 % of the range.
"""
import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from synth import mark_embedded, smooth_noise, soft_ellipse, write_case_slices
from utils import atomic_output

# tissue -> (water, fat) signal fractions
TISSUES: Dict[str, Tuple[float, float]] = {"air": (0.0, 0.0), "subcutaneous": (0.08, 0.90), "muscle": (0.50, 0.06),
                                           "abdomen": (0.45, 0.35), "marrow": (0.42, 0.48), "cortex": (0.03, 0.02),
                                           "disc": (0.80, 0.02), "csf": (0.95, 0.0)}
CONTRASTS = {"inphase": lambda w, f: w + f, "opposed": lambda w, f: np.abs(w - f), "water": lambda w, f: w,
             "fat": lambda w, f: f}
FIRST_SUBJECT = {"water": 0, "inphase": 100, "opposed": 200, "fat": 300}   # each domain its own subjects by default
SPLITS = {"train": 12, "val": 6}


def box(x: np.ndarray, y: np.ndarray, cx, cy, half_w, half_h, px: float, sharpness: float = 4.0) -> np.ndarray:
    """A soft rounded rectangle (a superellipse), values in [0, 1]; a zero half-size draws nothing."""
    r = (np.abs((x - cx) / np.maximum(half_w, 1e-6)) ** sharpness
         + np.abs((y - cy) / np.maximum(half_h, 1e-6)) ** sharpness) ** (1 / sharpness)
    edge_px = (r - 1) * np.minimum(half_w, half_h) / px
    return (np.minimum(half_w, half_h) > 0.25 * px) / (1 + np.exp(np.clip(edge_px / 0.35, -50, 50)))


def render_spine(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(water, fat, labels), each (Z, H, W), of one subject: rows run from head (top) to feet, columns from the front
    (left) to the back."""
    n_slices = int(rng.integers(12, 17))
    z = np.linspace(-1, 1, n_slices)[:, None, None]
    lin = np.linspace(-1, 1, size)
    y, x = np.meshgrid(lin, lin, indexing="ij")
    px = 2 / size
    y = y + 0.02 * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    x = x + 0.02 * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    water, fat = np.zeros((n_slices, size, size)), np.zeros((n_slices, size, size))
    labels = np.zeros((n_slices, size, size), np.uint8)

    def paint(mask: np.ndarray, tissue: str, label: int = 0) -> None:
        nonlocal water, fat
        w, f = TISSUES[tissue]
        water, fat = water * (1 - mask) + w * mask, fat * (1 - mask) + f * mask
        labels[mask > 0.5] = label

    paint(box(x, y, 0.0, 0.0, 0.95, 1.2, px, 2.0), "abdomen")                  # the trunk, cut at the image's top and bottom
    back = rng.uniform(0.62, 0.72)
    paint(box(x, y, back, 0.0, 0.25, 1.2, px, 6.0), "subcutaneous")
    paint(box(x, y, back - 0.06, 0.0, 0.22, 1.2, px, 6.0), "muscle")
    curve = rng.uniform(0.05, 0.12)                                             # lordosis: the spine bows to the front
    scale = rng.uniform(0.9, 1.1)
    body_h, disc_h = rng.uniform(0.075, 0.085) * scale, rng.uniform(0.045, 0.055) * scale
    half_ap = rng.uniform(0.18, 0.22) * scale
    lateral = np.sqrt(np.clip(1 - (z / rng.uniform(0.85, 0.95)) ** 2, 0, 1))    # bodies and discs narrow sideways
    centre = lambda level: rng.uniform(-0.01, 0.01) + 0.12 - curve * (1 - level ** 2)
    pitch = 2 * (body_h + disc_h)
    levels = (np.arange(7) - 3) * pitch + rng.uniform(-0.05, 0.05)
    canal = np.clip(1 - (z / 0.3) ** 2, 0, 1)
    for level in levels:
        cx = centre(level / 1.2)
        paint(box(x, y, cx + half_ap + 0.11, level, 0.05, body_h * 0.8, px) * (np.abs(z) < 0.5), "cortex")   # lamina
        paint(box(x, y, cx, level, half_ap * lateral, body_h * lateral ** 0.3, px), "cortex")
        paint(box(x, y, cx, level, (half_ap - 0.015) * lateral, (body_h - 0.012) * lateral ** 0.3, px), "marrow")
    for upper, lower in zip(levels[:-1], levels[1:]):
        level = (upper + lower) / 2
        hydration = rng.uniform(0.55, 1.0)                                      # degenerate discs hold less water
        disc = box(x, y, centre(level / 1.2), level, half_ap * lateral * 0.97, disc_h * lateral ** 0.3, px, 3.0)
        paint(disc, "disc", 1)
        water -= (1 - hydration) * 0.5 * disc * TISSUES["disc"][0]
    paint(box(x, y, centre(0) + half_ap + 0.05, 0.0, 0.035 * canal + 1e-9, 1.3, px, 6.0) * (canal > 0), "csf")
    return water, fat, labels


def scan(rng: np.random.Generator, water: np.ndarray, fat: np.ndarray, contrast: str) -> np.ndarray:
    """One Dixon contrast of a subject, with bias, blur and Rician noise -> 8-bit images."""
    n, h, w = water.shape
    bias = np.exp(0.25 * smooth_noise(rng, (1, h, w), (0, h / 3, w / 3)))
    signal = CONTRASTS[contrast](water * bias, fat * bias)
    signal = ndimage.gaussian_filter(signal, (0, 0.6, 0.6))
    noise = 0.025
    image = np.sqrt((signal + rng.normal(0, noise, signal.shape)) ** 2 + rng.normal(0, noise, signal.shape) ** 2)
    body = (water + fat) > 0.05
    return np.clip(image / (np.median(image[body]) / 0.3) * 255 + 0.5, 0, 255).astype(np.uint8)


def write_ivd(out: Path, contrast: str, seed: int, size: int, n_train: int, n_val: int, first_subject: int) -> None:
    """Write ``out/{train,val}/{IMG,GT}/CaseNN_M.png`` of one contrast, atomically."""
    with atomic_output(out) as tmp:
        mark_embedded(tmp, f"ivd --contrast {contrast} --seed {seed}")
        for case in range(n_train + n_val):
            anatomy = np.random.default_rng([seed, 200, first_subject + case])
            water, fat, labels = render_spine(anatomy, size)
            images = scan(np.random.default_rng([seed, 201, first_subject + case, list(CONTRASTS).index(contrast)]),
                          water, fat, contrast)
            write_case_slices(tmp / ("train" if case < n_train else "val"), case, images, labels)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--contrast", choices=sorted(CONTRASTS), required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="slice width and height in pixels")
    parser.add_argument("--n_train", type=int, default=SPLITS["train"])
    parser.add_argument("--n_val", type=int, default=SPLITS["val"])
    parser.add_argument("--first_subject", type=int, help="the first subject's number (default: the contrast's own)")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists: kept as is (delete it to regenerate)")
        return 0
    first = FIRST_SUBJECT[args.contrast] if args.first_subject is None else args.first_subject
    write_ivd(args.out, args.contrast, args.seed, args.size, args.n_train, args.n_val, first)
    print(f"wrote {args.out}: {args.n_train} train + {args.n_val} val subjects, {args.contrast} contrast")
    return 0


if __name__ == "__main__":
    sys.exit(main())
