#!/usr/bin/env python3
"""Embedded data: deterministic synthetic pelvic MRI in the SFDA layout, one folder per scanner.

    synth.py prostate --domain source --out data/prostate_source [--seed 0]

Each patient is a stack of axial slices rendered from a tissue map: body outline with
subcutaneous fat and textured muscle, femoral heads, a fluid-filled bladder, a rectum with wall
and lumen, and a prostate (bright peripheral zone, darker nodular central gland, thin capsule)
whose size follows the slice axis and vanishes at both ends (negative slices). Anatomy is
deformed smoothly per patient. A *scanner* turns tissue into intensity: its contrast curve (the
target scanner is fat-suppressed with a steeper T2 curve), a smooth multiplicative bias field,
blur and Rician noise. Each volume is scaled so that the median intensity of its body sits at 30%
of the range (bright fluid may saturate, as in a clinical window) and stored as 8-bit PNG;
GT gray level = class index (0 background, 1 prostate). An existing, non-empty output folder is
never touched, so real data dropped into ``data/`` is used as is.
"""
import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Tuple

import numpy as np
from PIL import Image
from scipy import ndimage

# tissue "T2 property" values before the scanner's contrast curve
FAT, MUSCLE, FLUID, MARROW, CORTEX, GAS, WALL = 0.80, 0.33, 1.00, 0.55, 0.05, 0.02, 0.28
PERIPHERAL, CENTRAL, CAPSULE = 0.62, 0.42, 0.22


@dataclass(frozen=True)
class Scanner:
    """Tissue property -> intensity: I = fat_gain^(fat) * property^gamma, then bias, blur, noise."""
    gamma: float
    fat_gain: float      # multiplies the fat signal (< 1: fat suppression)
    bias: float          # amplitude of the log bias field
    blur: float          # Gaussian PSF sigma in pixels
    noise: float         # Rician noise sigma relative to the fluid signal


SCANNERS: Dict[str, Scanner] = {
    "source": Scanner(gamma=1.0, fat_gain=1.0, bias=0.05, blur=0.5, noise=0.02),
    "target": Scanner(gamma=1.6, fat_gain=0.3, bias=0.4, blur=1.0, noise=0.05),
}
SPLITS = {"source": {"train": 16, "val": 6}, "target": {"train": 16, "val": 8}}


def smooth_noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: Tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-12)


def soft_ellipse(x: np.ndarray, y: np.ndarray, cx, cy, rx, ry, wobble: np.ndarray, px: float) -> np.ndarray:
    """Anti-aliased ellipse (values in [0, 1]) with a radial perturbation ``wobble`` (same shape as x)."""
    r = np.sqrt(((x - cx) / np.maximum(rx, 1e-6)) ** 2 + ((y - cy) / np.maximum(ry, 1e-6)) ** 2) / (1 + wobble)
    edge_px = (r - 1) * np.minimum(rx, ry) / px           # signed distance to the border, in pixels
    visible = np.minimum(rx, ry) > 0.25 * px                # a vanishing ellipse draws nothing
    return visible / (1 + np.exp(np.clip(edge_px / 0.35, -50, 50)))


def radial_wobble(rng: np.random.Generator, theta: np.ndarray, amplitude: float, orders: int = 4) -> np.ndarray:
    a = rng.normal(0, amplitude, orders) / np.arange(1, orders + 1)
    phase = rng.uniform(0, 2 * np.pi, orders)
    return sum(a[k] * np.cos((k + 2) * theta + phase[k]) for k in range(orders))


def render_patient(rng: np.random.Generator, size: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tissue property, fat fraction, body and prostate masks, each (Z, H, W), for one patient."""
    n_slices = int(rng.integers(16, 22))
    z = np.linspace(-1, 1, n_slices)[:, None, None]
    lin = np.linspace(-1, 1, size)
    y, x = np.meshgrid(lin, lin, indexing="ij")
    px = 2 / size
    # smooth per-patient deformation of the whole anatomy
    warp = 0.035
    x = x + warp * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    y = y + warp * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    theta = np.arctan2(y, x)

    body_rx, body_ry = rng.uniform(0.80, 0.92), rng.uniform(0.56, 0.68)
    taper = 1 - 0.06 * z ** 2
    body = soft_ellipse(x, y, 0, 0.02, body_rx * taper, body_ry * taper, radial_wobble(rng, theta, 0.05), px)
    fat_w = rng.uniform(0.06, 0.11)
    inner = soft_ellipse(x, y, 0, 0.02, body_rx * taper - fat_w, body_ry * taper - fat_w * 0.8,
                         radial_wobble(rng, theta, 0.05), px)
    tex = smooth_noise(rng, (n_slices, size, size), (1, 1.5, 1.5))
    prop = body * (FAT * (1 - inner) + inner * (MUSCLE + 0.05 * tex))
    fat = body * (1 - inner)

    # femoral heads in the middle of the stack: cortex ring, marrow inside
    present = np.clip(1 - ((z - 0.1) / 0.75) ** 2, 0, 1) ** 0.5
    for side in (-1, 1):
        cx, r = side * rng.uniform(0.52, 0.6), rng.uniform(0.12, 0.16) * present
        outer = soft_ellipse(x, y, cx, 0.08, r, r, 0 * x, px)
        marrow = soft_ellipse(x, y, cx, 0.08, r * 0.75, r * 0.75, 0 * x, px)
        prop = prop * (1 - outer) + outer * (CORTEX * (1 - marrow) + marrow * (MARROW + 0.04 * tex))

    # bladder anterior, filling the upper part of the stack
    b_size = np.clip((z + 0.25) / 1.1, 0, 1) ** 0.6
    bladder = soft_ellipse(x, y, rng.uniform(-0.05, 0.05), -0.28, rng.uniform(0.22, 0.32) * b_size,
                           rng.uniform(0.14, 0.22) * b_size, radial_wobble(rng, theta, 0.08), px)
    prop = prop * (1 - bladder) + bladder * FLUID

    # rectum posterior, all along: wall ring with a dark lumen
    rc, rr = (rng.uniform(-0.04, 0.04), rng.uniform(0.42, 0.48)), rng.uniform(0.09, 0.13)
    r_out = soft_ellipse(x, y, rc[0], rc[1], rr, rr * 0.85, radial_wobble(rng, theta, 0.1), px)
    r_in = soft_ellipse(x, y, rc[0], rc[1], rr * 0.55, rr * 0.4, radial_wobble(rng, theta, 0.15), px)
    prop = prop * (1 - r_out) + r_out * (WALL * (1 - r_in) + r_in * GAS)

    # prostate between bladder and rectum; its radius follows the slice axis, zero at the ends
    zc, hz = rng.uniform(-0.25, 0.05), rng.uniform(0.6, 0.75)
    profile = np.sqrt(np.clip(1 - ((z - zc) / hz) ** 2, 0, 1))
    pcx, pcy = rng.uniform(-0.04, 0.04), rng.uniform(0.03, 0.10)
    scale = rng.uniform(0.65, 1.35)                        # gland volume varies ~4x between patients
    prx, pry = scale * rng.uniform(0.22, 0.32) * profile, scale * rng.uniform(0.16, 0.23) * profile
    wob = radial_wobble(rng, theta, 0.12)
    gland = soft_ellipse(x, y, pcx, pcy, prx, pry, wob, px)
    central = soft_ellipse(x, y, pcx, pcy - 0.02, prx * 0.62, pry * 0.6, radial_wobble(rng, theta, 0.15), px)
    capsule = gland - soft_ellipse(x, y, pcx, pcy, prx * 0.9, pry * 0.88, wob, px)
    nodules = 0.08 * smooth_noise(rng, (n_slices, size, size), (1, 1.0, 1.0))
    inside = PERIPHERAL * (1 - central) + central * (CENTRAL + nodules)
    prop = prop * (1 - gland) + gland * inside
    prop = prop * (1 - capsule) + capsule * CAPSULE
    mask = (gland > 0.5) & (profile > 0.15)
    return prop, fat, body > 0.5, mask.astype(np.uint8)


def scan(rng: np.random.Generator, prop: np.ndarray, fat: np.ndarray, body: np.ndarray, scanner: Scanner) -> np.ndarray:
    """Apply a scanner to a tissue volume (Z, H, W) -> 8-bit images, windowed on the body's intensities."""
    n, h, w = prop.shape
    signal = np.clip(prop, 0, None) ** scanner.gamma * (1 - (1 - scanner.fat_gain) * np.clip(fat, 0, 1))
    bias = np.exp(scanner.bias * smooth_noise(rng, (1, h, w), (0, h / 3, w / 3)))
    signal = ndimage.gaussian_filter(signal * bias, (0, scanner.blur, scanner.blur))
    real = signal + rng.normal(0, scanner.noise, signal.shape)
    imag = rng.normal(0, scanner.noise, signal.shape)
    image = np.sqrt(real ** 2 + imag ** 2)                # Rician magnitude
    scale = np.median(image[body]) / 0.3                  # body median at 30% of the range; fluid saturates
    return np.clip(image / scale * 255 + 0.5, 0, 255).astype(np.uint8)


def write_prostate(out: Path, domain: str, seed: int, size: int, n_train: int, n_val: int) -> None:
    """Write ``out/{train,val}/{IMG,GT}/CaseNN_M.png`` for one scanner domain, atomically."""
    scanner = SCANNERS[domain]
    tmp = out.with_name(out.name + "_tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    domain_id = sorted(SCANNERS).index(domain)
    for case in range(n_train + n_val):
        split = "train" if case < n_train else "val"
        rng = np.random.default_rng([seed, domain_id, case])
        prop, fat, body, mask = render_patient(rng, size)
        images = scan(rng, prop, fat, body, scanner)
        for folder in ("IMG", "GT"):
            (tmp / split / folder).mkdir(parents=True, exist_ok=True)
        for m in range(len(images)):
            Image.fromarray(images[m]).save(tmp / split / "IMG" / f"Case{case:02d}_{m}.png")
            Image.fromarray(mask[m]).save(tmp / split / "GT" / f"Case{case:02d}_{m}.png")
    tmp.replace(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["prostate"])
    parser.add_argument("--domain", required=True, choices=sorted(SCANNERS))
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="slice width and height in pixels")
    parser.add_argument("--n_train", type=int, default=None, help="training patients")
    parser.add_argument("--n_val", type=int, default=None, help="validation patients")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists: kept as is (delete it to regenerate)")
        return 0
    n_train = args.n_train if args.n_train is not None else SPLITS[args.domain]["train"]
    n_val = args.n_val if args.n_val is not None else SPLITS[args.domain]["val"]
    write_prostate(args.out, args.domain, args.seed, args.size, n_train, n_val)
    print(f"wrote {args.out}: {n_train} train + {n_val} val patients, {args.domain} scanner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
