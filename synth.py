#!/usr/bin/env python3
"""Embedded data: deterministic synthetic MRI in the real layouts (prostate for SFDA, CC359 brains).

    synth.py prostate --domain source --out data/prostate_source [--seed 0]
    synth.py cc359 --out data/cc359 [--seed 0 --n_per_domain 8]

Prostate (SFDA layout, seed 004):

Each patient is a stack of axial slices rendered from a tissue map: body outline with
subcutaneous fat and textured muscle, femoral heads, a fluid-filled bladder, a rectum with wall
and lumen, and a prostate (bright peripheral zone, darker nodular central gland, thin capsule)
whose size follows the slice axis and vanishes at both ends (negative slices). Anatomy is
deformed smoothly per patient. A *scanner* turns tissue into intensity: its contrast curve (the
target scanner is fat-suppressed with a steeper T2 curve), a smooth multiplicative bias field,
blur and Rician noise. Each volume is scaled so that the median intensity of its body sits at 30%
of the range (bright fluid may saturate, as in a clinical window) and stored as 8-bit PNG;
GT gray level = class index (0 background, 1 prostate).

CC359 (seed 000): T1 head volumes with brain masks in the release layout (``Original/``,
``Silver-standard/``, ``meta.csv``), six vendor x field-strength domains. Anatomy is real: the
MNI152 ICBM 2009a template and its GM/WM maps shipped in nilearn's wheel, deformed smoothly per
subject (affine + random displacement field), wrapped in CSF, skull (cortical bone and diploe),
scalp fat and skin layers whose thicknesses vary per subject, so the task is skull stripping. A
scanner gives tissue contrast, a bias field, blur, Rician noise and its own voxel spacing.

An existing, non-empty output folder is never touched, so real data dropped into ``data/`` is
used as is.
"""
import argparse
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage

from utils import atomic_output

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
    # the hard shift (prostate.make SHIFT=hard): a scanner from which a source model barely transfers
    "target_hard": Scanner(gamma=2.4, fat_gain=0.15, bias=0.6, blur=1.4, noise=0.08),
}
SPLITS = {"source": {"train": 16, "val": 6}, "target": {"train": 16, "val": 8}, "target_hard": {"train": 16, "val": 8}}


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


EMBEDDED = ".embedded"    # the marker of a folder this script wrote: make clean deletes such folders and no other


def mark_embedded(folder: Path, how: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EMBEDDED).write_text(f"written by synth.py {how}\n")


def write_prostate(out: Path, domain: str, seed: int, size: int, n_train: int, n_val: int) -> None:
    """Write ``out/{train,val}/{IMG,GT}/CaseNN_M.png`` for one scanner domain, atomically."""
    scanner = SCANNERS[domain]
    domain_id = sorted(SCANNERS).index(domain)
    with atomic_output(out) as tmp:
        mark_embedded(tmp, f"prostate --domain {domain} --seed {seed}")
        for case in range(n_train + n_val):
            split = "train" if case < n_train else "val"
            rng = np.random.default_rng([seed, domain_id, case])
            prop, fat, body, mask = render_patient(rng, size)
            write_case_slices(tmp / split, case, scan(rng, prop, fat, body, scanner), mask)


def write_case_slices(split: Path, case: int, images: np.ndarray, labels: np.ndarray) -> None:
    """One patient's (Z, H, W) 8-bit images and labels as ``split/{IMG,GT}/CaseNN_M.png`` (the SFDA layout)."""
    for folder, volume in (("IMG", images), ("GT", labels)):
        (split / folder).mkdir(parents=True, exist_ok=True)
        for m, plane in enumerate(volume):
            Image.fromarray(plane).save(split / folder / f"Case{case:02d}_{m}.png")


# ---------------------------------------------------------------- CC359-like brains (seed 000)

@dataclass(frozen=True)
class MRScanner:
    """T1 contrast of one vendor x field strength: tissue intensities, then bias, blur, noise, spacing."""
    vendor: str
    tesla: int              # 15 (1.5 T) or 3, as in CC359's meta.csv
    wm: float
    gm: float
    csf: float
    bone: float
    diploe: float
    fat: float
    skin: float
    gamma: float            # intensity curve applied to the tissue mixture
    bias: float             # amplitude of the log bias field
    blur: float             # Gaussian PSF sigma in voxels
    noise: float            # Rician sigma relative to white matter
    spacing: Tuple[float, float, float]   # mm of the array axes (x, y, z), slices along z


# the embedded default works at 3x CC359's voxel size (CPU budget); fold 1 has thick x voxels and
# folds 4/5 slightly finer y/z voxels, as in the real release (docs/methods/spottunet.md)
CC_SCANNERS: List[MRScanner] = [
    MRScanner("siemens", 15, wm=1.00, gm=0.62, csf=0.20, bone=0.05, diploe=0.55, fat=0.95, skin=0.50,
              gamma=1.0, bias=0.10, blur=0.5, noise=0.045, spacing=(3.0, 3.0, 3.0)),
    MRScanner("siemens", 3, wm=1.00, gm=0.52, csf=0.12, bone=0.04, diploe=0.45, fat=0.80, skin=0.45,
              gamma=1.0, bias=0.35, blur=0.4, noise=0.030, spacing=(4.0, 3.0, 3.0)),
    MRScanner("ge", 15, wm=0.95, gm=0.72, csf=0.32, bone=0.08, diploe=0.70, fat=1.00, skin=0.60,
              gamma=1.35, bias=0.15, blur=0.7, noise=0.055, spacing=(3.0, 3.0, 3.0)),
    MRScanner("ge", 3, wm=1.00, gm=0.58, csf=0.10, bone=0.06, diploe=0.40, fat=0.65, skin=0.40,
              gamma=0.75, bias=0.40, blur=0.4, noise=0.030, spacing=(3.0, 3.0, 3.0)),
    MRScanner("philips", 15, wm=0.90, gm=0.68, csf=0.38, bone=0.15, diploe=0.75, fat=1.00, skin=0.70,
              gamma=1.15, bias=0.20, blur=0.8, noise=0.050, spacing=(3.0, 2.7, 2.7)),
    MRScanner("philips", 3, wm=1.00, gm=0.48, csf=0.08, bone=0.04, diploe=0.35, fat=0.55, skin=0.35,
              gamma=0.85, bias=0.45, blur=0.5, noise=0.035, spacing=(3.0, 2.95, 2.95)),
]
# head layers outside the brain surface (mm): CSF, then skull with diploe in its middle, fat, skin
CSF_MM, SKULL_MM, FAT_MM, SKIN_MM = 2.5, 6.0, 4.0, 2.5
FOV_MARGIN_MM = 18.0     # field of view = brain box + margin; axially cut just above the template's bottom
FOV_Z_FROM = 10          # template slice index where the field of view starts (the neck is cut)


@dataclass
class Template:
    """MNI152 2009a maps (1 mm) with the distance outside the brain, and the world box to image."""
    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray       # float mask
    outside_mm: np.ndarray  # distance to the brain (0 inside)
    lo: np.ndarray          # field-of-view corners, template voxel coordinates
    hi: np.ndarray


def load_template() -> Template:
    """Load the MNI152 maps from nilearn's package data (no download) and derive the head geometry."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets
        gm = np.asarray(datasets.load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
        wm = np.asarray(datasets.load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
        brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    brain = ndimage.binary_fill_holes(brain)
    pad = int(FOV_MARGIN_MM) + 4
    gm, wm, brain = (np.pad(a, pad) for a in (gm, wm, brain))
    outside = ndimage.distance_transform_edt(~brain).astype(np.float32)
    where = np.nonzero(brain)
    lo = np.array([w.min() for w in where], float) - FOV_MARGIN_MM
    hi = np.array([w.max() for w in where], float) + FOV_MARGIN_MM
    lo[2] = FOV_Z_FROM + pad
    return Template(gm, wm, brain.astype(np.float32), outside, lo, hi)


def subject_coordinates(rng: np.random.Generator, tpl: Template, spacing: Tuple[float, float, float]) -> np.ndarray:
    """Template voxel coordinates (3, X, Y, Z) of a subject's image grid: random affine + smooth warp."""
    shape = tuple(int(np.ceil((hi - lo) / s)) for lo, hi, s in zip(tpl.lo, tpl.hi, spacing))
    centre = (tpl.lo + tpl.hi) / 2
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]   # mm around the centre
    grid = np.stack(np.meshgrid(*axes, indexing="ij")).reshape(3, -1)
    angles = np.deg2rad(rng.uniform(-6, 6, 3))
    rot = np.eye(3)
    for k, a in enumerate(angles):
        i, j = [m for m in range(3) if m != k]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(a)
        r[i, j], r[j, i] = -np.sin(a), np.sin(a)
        rot = rot @ r
    scale = rng.uniform(0.9, 1.08) * rng.uniform(0.96, 1.04, 3)     # head size, then shape
    coords = (rot / scale[:, None]) @ grid
    # smooth displacement: Gaussian noise on a coarse lattice, upsampled to the grid (sigma ~ 3 mm)
    coarse = rng.normal(0, 3.0, (3, 5, 5, 5))
    warp = np.stack([ndimage.zoom(c, [n / 5 for n in shape], order=3, mode="nearest") for c in coarse])
    coords = coords + warp.reshape(3, -1) + (centre + rng.normal(0, 2.0, 3))[:, None]
    return coords.reshape(3, *shape)


def render_head(rng: np.random.Generator, tpl: Template, scanner: MRScanner) -> Tuple[np.ndarray, np.ndarray]:
    """One subject seen by one scanner: (T1 image int16, brain mask uint8), array axes x, y, z."""
    coords = subject_coordinates(rng, tpl, scanner.spacing)

    def sample(volume: np.ndarray, fill: float) -> np.ndarray:
        return ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=fill)

    gm, wm, brain = sample(tpl.gm, 0.0), sample(tpl.wm, 0.0), sample(tpl.brain, 0.0)
    d = sample(tpl.outside_mm, 100.0)
    thick = rng.uniform(0.8, 1.25, 4) * np.array([CSF_MM, SKULL_MM, FAT_MM, SKIN_MM])
    edges = np.cumsum(thick)

    def band(lo: float, hi: float) -> np.ndarray:   # soft 0..1 indicator of lo < d <= hi (1 mm ramps)
        return np.clip(d - lo + 0.5, 0, 1) - np.clip(d - hi + 0.5, 0, 1)

    csf_in = np.clip(brain - gm - wm, 0, 1)
    skull = band(edges[0], edges[1])
    diploe = band(edges[0] + 0.35 * thick[1], edges[1] - 0.35 * thick[1])
    tissue = (wm * scanner.wm + gm * scanner.gm + csf_in * scanner.csf
              + band(0.0, edges[0]) * (1 - brain) * scanner.csf
              + (skull - diploe) * scanner.bone + diploe * scanner.diploe
              + band(edges[1], edges[2]) * scanner.fat + band(edges[2], edges[3]) * scanner.skin)
    tissue = tissue * (1 + 0.03 * smooth_noise(rng, tissue.shape, (1.5, 1.5, 1.5)))    # tissue texture
    signal = np.clip(tissue, 0, None) ** scanner.gamma
    bias = np.exp(scanner.bias * smooth_noise(rng, tuple(max(n // 6, 2) for n in signal.shape), (1, 1, 1)))
    signal = signal * ndimage.zoom(bias, [a / b for a, b in zip(signal.shape, bias.shape)], order=1)[
        tuple(slice(0, n) for n in signal.shape)]
    signal = ndimage.gaussian_filter(signal, scanner.blur)
    real = signal + rng.normal(0, scanner.noise, signal.shape)
    image = np.sqrt(real ** 2 + rng.normal(0, scanner.noise, signal.shape) ** 2)     # Rician magnitude
    return np.round(image * 1000).astype(np.int16), (brain >= 0.5).astype(np.uint8)


def write_cc359(out: Path, seed: int, n_per_domain: int) -> None:
    """Write ``out/{Original,Silver-standard}/CCnnnn_<vendor>_<tesla>_<age>_<sex>[_ss].nii.gz`` and ``meta.csv``."""
    with atomic_output(out) as tmp:
        mark_embedded(tmp, f"cc359 --seed {seed} --n_per_domain {n_per_domain}")
        (tmp / "Original").mkdir(parents=True)
        (tmp / "Silver-standard").mkdir()
        tpl = load_template()
        rows = []
        for fold, scanner in enumerate(CC_SCANNERS):
            for k in range(n_per_domain):
                rng = np.random.default_rng([seed, fold, k])
                image, mask = render_head(rng, tpl, scanner)
                number = fold * n_per_domain + k + 1
                stem = f"CC{number:04d}_{scanner.vendor}_{scanner.tesla}_{int(rng.integers(29, 80))}_{'MF'[k % 2]}"
                affine = np.diag([*scanner.spacing, 1.0])
                nib.save(nib.Nifti1Image(image, affine), tmp / "Original" / f"{stem}.nii.gz")
                nib.save(nib.Nifti1Image(mask, affine), tmp / "Silver-standard" / f"{stem}_ss.nii.gz")
                rows.append({"id": f"CC{number:04d}", "MRI": f"Original/{stem}.nii.gz",
                             "brain_mask": f"Silver-standard/{stem}_ss.nii.gz", "fold": fold,
                             "tomograph_model": scanner.vendor, "tesla_value": scanner.tesla,
                             "x": scanner.spacing[0], "y": scanner.spacing[1], "z": scanner.spacing[2]})
        pd.DataFrame(rows).to_csv(tmp / "meta.csv", index=False)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dataset", choices=["prostate", "cc359"])
    parser.add_argument("--domain", choices=sorted(SCANNERS), help="prostate: source or target scanner")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="prostate: slice width and height in pixels")
    parser.add_argument("--n_train", type=int, default=None, help="prostate: training patients")
    parser.add_argument("--n_val", type=int, default=None, help="prostate: validation patients")
    parser.add_argument("--n_per_domain", type=int, default=8, help="cc359: subjects per scanner domain")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists: kept as is (delete it to regenerate)")
        return 0
    if args.dataset == "cc359":
        if args.n_per_domain < 1:
            parser.error("--n_per_domain must be >= 1")
        write_cc359(args.out, args.seed, args.n_per_domain)
        print(f"wrote {args.out}: {len(CC_SCANNERS)} domains x {args.n_per_domain} subjects")
        return 0
    if args.domain is None:
        parser.error("prostate needs --domain")
    n_train = args.n_train if args.n_train is not None else SPLITS[args.domain]["train"]
    n_val = args.n_val if args.n_val is not None else SPLITS[args.domain]["val"]
    write_prostate(args.out, args.domain, args.seed, args.size, n_train, n_val)
    print(f"wrote {args.out}: {n_train} train + {n_val} val patients, {args.domain} scanner")
    return 0


if __name__ == "__main__":
    sys.exit(main())
