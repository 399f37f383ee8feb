#!/usr/bin/env python3
"""Embedded cardiac data (whs.make): whole-heart slices of an MR-like and a CT-like domain in the SFDA layout.

    synth_whs.py --domain mr --out data/whs_mr [--seed 0]
    synth_whs.py --domain ct --out data/whs_ct [--seed 0]

Each patient is a stack of axial thorax slices, from below the apex (slice 0) to above the aortic root, rendered
from a tissue map: body outline with subcutaneous fat, two lungs, a vertebra with marrow and canal, the descending
aorta, and a heart whose chambers come and go along the stack, each with its own per-patient size, position and
shape: the left ventricle's cavity inside its myocardium (lower and middle slices, the apex closing the cavity
first), the right ventricle in front of it, the left atrium behind it (middle slices), the ascending aorta and the
pulmonary trunk above (upper slices). Four structures are labelled, the SFDA papers' (after SIFA), in the label order
of the SFDA code's preprocessed data: 1 myocardium of the left ventricle (MYO), 2 left atrium cavity (LAC), 3 left
ventricle cavity (LVC), 4 ascending aorta (AA); the right heart and the other vessels are blood the network must learn
not to label.

A *modality* turns tissue into intensity. MR is bSSFP-like: bright blood and fat, dark myocardium and lungs, a smooth
bias field, Rician noise. CT is contrast-enhanced and HU-like (blood +320, myocardium +60, fat -100, lung -820, bone
+900), windowed at [-300, 700] HU, with Gaussian noise, more blur and a field of view 1.1 times wider (the anatomy
is smaller in the image). GT gray level = class index; images are 8-bit PNG.
"""
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from synth import mark_embedded, radial_wobble, smooth_noise, soft_ellipse, write_case_slices
from utils import atomic_output

TISSUES = ("air", "fat", "muscle", "lung", "cortex", "marrow", "blood", "myocardium")
CLASSES = ("background", "MYO", "LAC", "LVC", "AA")


@dataclass(frozen=True)
class Modality:
    values: Dict[str, float]   # tissue -> signal (MR: relative; CT: HU)
    window: Optional[Tuple[float, float]]  # signal range mapped to 0..255; None: from the body's median (MR)
    bias: float                # amplitude of the log bias field (MR)
    blur: float                # Gaussian PSF sigma in pixels
    noise: float               # noise sigma, in signal units
    rician: bool               # magnitude (MR) or Gaussian (CT) noise
    fov: float                 # field of view relative to the MR's: > 1 shrinks the anatomy


MODALITIES: Dict[str, Modality] = {
    "mr": Modality({"air": 0.0, "fat": 0.85, "muscle": 0.30, "lung": 0.04, "cortex": 0.05, "marrow": 0.55,
                    "blood": 1.0, "myocardium": 0.26}, None, bias=0.3, blur=0.6, noise=0.03, rician=True, fov=1.0),
    "ct": Modality({"air": -1000.0, "fat": -100.0, "muscle": 50.0, "lung": -820.0, "cortex": 900.0, "marrow": 250.0,
                    "blood": 320.0, "myocardium": 60.0}, (-300.0, 700.0), bias=0.0, blur=0.8, noise=25.0, rician=False,
                   fov=1.1),
}
SPLITS = {"train": 12, "val": 6}


def chamber_profile(z: np.ndarray, centre: float, half: float) -> np.ndarray:
    """A structure's relative radius along the stack: 1 at ``centre``, 0 beyond ``half`` on either side."""
    return np.sqrt(np.clip(1 - ((z - centre) / half) ** 2, 0, 1))


def render_heart(rng: np.random.Generator, size: int, fov: float) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Soft tissue maps (tissue -> (Z, H, W) in [0, 1], summing to 1) and the (Z, H, W) labels of one patient."""
    n_slices = int(rng.integers(12, 17))
    z = np.linspace(-1, 1, n_slices)[:, None, None]
    lin = np.linspace(-1, 1, size) * fov
    y, x = np.meshgrid(lin, lin, indexing="ij")
    px = 2 * fov / size
    warp = 0.03
    x = x + warp * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    y = y + warp * smooth_noise(rng, (n_slices, size, size), (2, size / 6, size / 6))
    theta = np.arctan2(y, x)
    shape = (n_slices, size, size)
    tissue = {name: np.zeros(shape) for name in TISSUES}
    tissue["air"][:] = 1.0
    labels = np.zeros(shape, np.uint8)

    def paint(mask: np.ndarray, name: str, label: int = 0) -> None:
        for other in TISSUES:
            tissue[other] *= 1 - mask
        tissue[name] += mask
        labels[mask > 0.5] = label                                        # unlabelled tissue covers what it hides

    body_rx, body_ry = rng.uniform(0.80, 0.90), rng.uniform(0.58, 0.68)
    paint(soft_ellipse(x, y, 0, 0.05, body_rx, body_ry, radial_wobble(rng, theta, 0.04), px), "fat")
    fat_w = rng.uniform(0.04, 0.08)
    paint(soft_ellipse(x, y, 0, 0.05, body_rx - fat_w, body_ry - fat_w, radial_wobble(rng, theta, 0.04), px), "muscle")
    for side in (-1, 1):
        paint(soft_ellipse(x, y, side * rng.uniform(0.40, 0.46), 0.04, rng.uniform(0.28, 0.33), rng.uniform(0.38, 0.45),
                           radial_wobble(rng, theta, 0.06), px), "lung")
    paint(soft_ellipse(x, y, 0, 0.47, 0.11, 0.10, 0 * x, px), "cortex")
    paint(soft_ellipse(x, y, 0, 0.47, 0.08, 0.07, 0 * x, px), "marrow")
    paint(soft_ellipse(x, y, rng.uniform(0.10, 0.16), 0.33, 0.06, 0.06, 0 * x, px), "blood")       # descending aorta

    hx, hy = rng.uniform(0.0, 0.10), rng.uniform(-0.12, -0.04)                # the heart's centre, per patient
    s = 1.3 * rng.uniform(0.85, 1.15)                                          # heart size varies between patients
    outline = radial_wobble(rng, theta, 0.05)
    paint(soft_ellipse(x, y, hx + 0.05 * s, hy + 0.03 * s, 0.40 * s, 0.32 * s, outline, px), "fat")   # pericardial fat
    paint(soft_ellipse(x, y, hx + 0.05 * s, hy + 0.03 * s, 0.37 * s, 0.29 * s, outline, px), "myocardium")  # heart walls
    la = chamber_profile(z, rng.uniform(0.05, 0.25), rng.uniform(0.40, 0.55))
    paint(soft_ellipse(x, y, hx + 0.03 * s, hy + 0.19 * s, 0.13 * s * la, 0.08 * s * la,
                       radial_wobble(rng, theta, 0.10), px), "blood", 2)
    aa = chamber_profile(z, rng.uniform(0.75, 0.95), rng.uniform(0.45, 0.60))
    paint(soft_ellipse(x, y, hx - 0.10 * s, hy + 0.03 * s, 0.065 * s * aa, 0.065 * s * aa, 0 * x, px), "blood", 4)
    pa = chamber_profile(z, 0.85, 0.40)
    paint(soft_ellipse(x, y, hx + 0.07 * s, hy - 0.12 * s, 0.06 * s * pa, 0.06 * s * pa, 0 * x, px), "blood")
    lv_centre, lv_half = rng.uniform(-0.45, -0.25), rng.uniform(0.55, 0.70)
    rv = chamber_profile(z, lv_centre + 0.05, lv_half)
    paint(soft_ellipse(x, y, hx - 0.13 * s, hy - 0.06 * s, 0.15 * s * rv, 0.09 * s * rv,
                       radial_wobble(rng, theta, 0.10), px), "blood")
    lv = chamber_profile(z, lv_centre, lv_half)
    thick = rng.uniform(0.035, 0.05) * s
    lv_x, lv_y = hx + 0.13 * s, hy + 0.01 * s
    wall = radial_wobble(rng, theta, 0.06)
    present = lv > 0.05
    paint(soft_ellipse(x, y, lv_x, lv_y, (0.12 * s * lv + thick) * present, (0.10 * s * lv + thick) * present, wall, px),
          "myocardium", 1)
    cavity = np.clip(lv - 0.25, 0, None) / 0.75                             # the apex closes the cavity first
    paint(soft_ellipse(x, y, lv_x, lv_y, 0.12 * s * cavity, 0.10 * s * cavity, wall, px), "blood", 3)
    return tissue, labels


def scan(rng: np.random.Generator, tissue: Dict[str, np.ndarray], modality: Modality) -> np.ndarray:
    """The modality's 8-bit images of a tissue volume (Z, H, W)."""
    texture = 0.04 * smooth_noise(rng, tissue["air"].shape, (1, 1.2, 1.2))
    signal = sum(tissue[name] * value for name, value in modality.values.items())
    spread = abs(modality.values["blood"] - modality.values["myocardium"])
    signal = signal + spread * texture * (1 - tissue["air"] - tissue["lung"])
    n, h, w = signal.shape
    if modality.bias:
        signal = signal * np.exp(modality.bias * smooth_noise(rng, (1, h, w), (0, h / 3, w / 3)))
    signal = ndimage.gaussian_filter(signal, (0, modality.blur, modality.blur))
    noisy = signal + rng.normal(0, modality.noise, signal.shape)
    if modality.rician:
        noisy = np.sqrt(noisy ** 2 + rng.normal(0, modality.noise, signal.shape) ** 2)
    if modality.window is None:
        low, high = 0.0, np.median(noisy[tissue["air"] < 0.5]) / 0.3       # body median at 30% of the range
    else:
        low, high = modality.window
    return np.clip((noisy - low) / (high - low) * 255 + 0.5, 0, 255).astype(np.uint8)


def write_whs(out: Path, domain: str, seed: int, size: int, n_train: int, n_val: int) -> None:
    """Write ``out/{train,val}/{IMG,GT}/CaseNN_M.png`` for one modality, atomically."""
    modality = MODALITIES[domain]
    domain_id = sorted(MODALITIES).index(domain)
    with atomic_output(out) as tmp:
        mark_embedded(tmp, f"whs --domain {domain} --seed {seed}")
        for case in range(n_train + n_val):
            split = "train" if case < n_train else "val"
            rng = np.random.default_rng([seed, 100 + domain_id, case])
            tissue, labels = render_heart(rng, size, modality.fov)
            write_case_slices(tmp / split, case, scan(rng, tissue, modality), labels)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domain", choices=sorted(MODALITIES), required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=96, help="slice width and height in pixels")
    parser.add_argument("--n_train", type=int, default=SPLITS["train"])
    parser.add_argument("--n_val", type=int, default=SPLITS["val"])
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        print(f"{args.out} exists: kept as is (delete it to regenerate)")
        return 0
    write_whs(args.out, args.domain, args.seed, args.size, args.n_train, args.n_val)
    print(f"wrote {args.out}: {args.n_train} train + {args.n_val} val patients, {args.domain.upper()} modality")
    return 0


if __name__ == "__main__":
    sys.exit(main())
