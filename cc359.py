#!/usr/bin/env python3
"""CC359 data (seed 000): the meta.csv reader, the preprocessed cache, and the experiments' slice sets.

    cc359.py meta  --root /data/CC359 --out /data/CC359/meta.csv     (meta.csv from the release's file names)
    cc359.py prep  --meta data/cc359/meta.csv --spacing 3,2.85,2.85 --out data/cc359_prep
    cc359.py split --prep data/cc359_prep --kind baseline --source 0 --out data/cc359_sets/baseline_0
    cc359.py split --prep data/cc359_prep --kind oracle --target 3 --fold 0 --out ...
    cc359.py split --prep data/cc359_prep --kind pair --source 0 --target 3 --budget 24 --out ...
    cc359.py split --prep data/cc359_prep --kind hm --source 0 --target 3 --out ...

meta.csv (the columns of the paper's code): ``id, MRI, brain_mask, fold, tomograph_model,
tesla_value[, x, y, z]``; paths are relative to the csv's folder; ``fold`` 0..5 is the domain
(vendor x field strength, DOMAINS below) and must agree with tomograph_model and tesla_value;
x, y, z are the voxel spacings of the array axes (read from the NIfTI header when absent).

``prep`` resamples every volume to one spacing (cubic spline; masks cubic then >= 0.5), clips
intensities to their [1, 99] percentiles and scales them to [0, 1], pads every axial slice (last
array axis) to one shape that is a multiple of 8, and caches float16 images / uint8 masks as one
npy file per slice: ``<prep>/slices/{IMG,GT}/<id>_<k>.npy`` plus ``<prep>/cases.csv``. Training
never reads NIfTI again.

``split`` writes an experiment's ``{train,val,test}/{IMG,GT}`` folders of relative symlinks into
the cache (histogram-matched test images are real files), in the SFDA layout main.py reads.
Splits are drawn as the paper's code draws them (scikit-learn's train_test_split / KFold, seed
0xBadCafe, each domain's ids in meta.csv order), so real CC359 gets the paper's own scans:
- baseline (one2all): VAL scans of the source for validation (the paper's 4), the rest for training;
- oracle (single_cv): 3 shuffled folds of the target; fold k is the test set, VAL scans of the rest
  validate (the paper's 2), the others train;
- pair (one2one): NADD scans of the target drawn as the annotation pool, the others the test set, and
  VAL test scans double as validation scans (random.sample, as in the paper's code). Budget N (with
  ``--budget_from scan``, the paper's): N slices evenly spaced over the pool's first scan, or whole
  scans then the rest when N exceeds one scan; ``--budget_from pool`` (a deviation) spreads N over all
  the pool's slices. ``--budget all`` takes every pool slice (the unlabelled set of source-free
  adaptation);
- hm: the pair's test (and validation) images histogram-matched, image voxels only (not the
  padding), to the image voxels of the source baseline's training scans.
"""
import argparse
import os
import random
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage
from sklearn.model_selection import KFold, train_test_split

from dataloader import DataError
from utils import atomic_output, evenly_spaced, one_error_line, parse_spacing

DOMAINS: List[Tuple[str, int]] = [("siemens", 15), ("siemens", 3), ("ge", 15), ("ge", 3), ("philips", 15), ("philips", 3)]
DOMAIN_NAMES = [f"{vendor}_{tesla}" for vendor, tesla in DOMAINS]
SPLIT_SEED = 0xBadCafe
META_COLUMNS = ["id", "MRI", "brain_mask", "fold", "tomograph_model", "tesla_value"]


# ---------------------------------------------------------------- meta.csv

def read_meta(path: Path) -> pd.DataFrame:
    """Validated meta.csv: known domains, existing files, masks of their image's shape, positive spacings."""
    if not path.is_file():
        raise DataError(f"{path}: meta.csv does not exist")
    try:
        meta = pd.read_csv(path, dtype={"id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot parse ({e})") from None
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (needs {', '.join(META_COLUMNS)})")
    if meta.empty:
        raise DataError(f"{path}: no cases")
    if meta["id"].duplicated().any():
        raise DataError(f"{path}: case id {meta.loc[meta['id'].duplicated(), 'id'].iloc[0]} appears twice")
    root = path.parent
    rows = []
    for line, row in enumerate(meta.itertuples(index=False), start=2):
        where = f"{path} line {line} (case {row.id})"
        domain = (str(row.tomograph_model).strip().lower(), _tesla(row.tesla_value, where))
        if domain not in DOMAINS:
            raise DataError(f"{where}: unknown domain {row.tomograph_model!r} {row.tesla_value!r} T; known: "
                            + ", ".join(f"{v} {t}" for v, t in DOMAINS))
        fold = DOMAINS.index(domain)
        if str(row.fold).strip() != str(fold):
            raise DataError(f"{where}: fold {row.fold!r} does not match {domain[0]} {domain[1]} (fold {fold})")
        image, mask = root / str(row.MRI), root / str(row.brain_mask)
        for f in (image, mask):
            if not f.is_file():
                raise DataError(f"{where}: file {f} does not exist")
        img_hdr, mask_hdr = _header(image), _header(mask)
        if img_hdr.get_data_shape()[:3] != mask_hdr.get_data_shape()[:3]:
            raise DataError(f"{where}: mask {mask} has shape {mask_hdr.get_data_shape()} but image {image} "
                            f"has {img_hdr.get_data_shape()}")
        spacing = _spacing(row, img_hdr, where)
        rows.append({"id": str(row.id), "fold": fold, "image": image, "mask": mask,
                     "x": spacing[0], "y": spacing[1], "z": spacing[2]})
    return pd.DataFrame(rows)


def _tesla(value: object, where: str) -> int:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        raise DataError(f"{where}: tesla_value {value!r} is not a number (15 for 1.5 T, 3 for 3 T)") from None


def _header(path: Path) -> nib.Nifti1Header:
    try:
        return nib.load(str(path)).header
    except Exception as e:  # nibabel raises several types for non-NIfTI files
        raise DataError(f"{path}: cannot read the NIfTI header ({type(e).__name__}: {e})") from None


def _spacing(row: object, header: nib.Nifti1Header, where: str) -> Tuple[float, float, float]:
    """x, y, z of meta.csv when present (the paper's convention), else the header's zooms."""
    values = [getattr(row, a, None) for a in ("x", "y", "z")]
    if any(v is None or pd.isna(v) for v in values):
        values = [float(z) for z in header.get_zooms()[:3]]
    try:
        spacing = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise DataError(f"{where}: spacing {values} is not numeric") from None
    if not all(np.isfinite(s) and s > 0 for s in spacing):
        raise DataError(f"{where}: spacing {spacing} must be positive")
    return spacing


def meta_from_release(root: Path) -> pd.DataFrame:
    """meta.csv rows from the release's names: Original/CCnnnn_<vendor>_<tesla>_<age>_<sex>.nii.gz + Silver-standard/..._ss."""
    rows = []
    for image in sorted((root / "Original").glob("CC*.nii.gz")):
        stem = image.name[: -len(".nii.gz")]
        match = re.match(r"(CC\d+)_([a-zA-Z]+)_(\d+)_", stem)
        if match is None:
            raise DataError(f"{image}: name is not CCnnnn_<vendor>_<tesla>_<age>_<sex>.nii.gz")
        mask = root / "Silver-standard" / f"{stem}_ss.nii.gz"
        if not mask.is_file():
            raise DataError(f"{image}: no brain mask {mask}")
        domain = (match.group(2).lower(), int(match.group(3)))
        if domain not in DOMAINS:
            raise DataError(f"{image}: unknown domain {domain[0]} {domain[1]} T")
        rows.append({"id": match.group(1), "MRI": str(image.relative_to(root)), "brain_mask": str(mask.relative_to(root)),
                     "fold": DOMAINS.index(domain), "tomograph_model": domain[0], "tesla_value": domain[1]})
    if not rows:
        raise DataError(f"{root}/Original: no CC*.nii.gz volumes")
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- preprocessing

def load_volume(path: Path) -> np.ndarray:
    try:
        volume = np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as e:
        raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    if volume.ndim != 3:
        volume = volume.squeeze()
        if volume.ndim != 3:
            raise DataError(f"{path}: expected a 3D volume, got shape {volume.shape}")
    if not np.isfinite(volume).all():
        raise DataError(f"{path}: NaN or Inf intensities")
    return volume


def preprocess(image: np.ndarray, mask: Optional[np.ndarray], spacing: Sequence[float],
               new_spacing: Sequence[float]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Seed 000: zoom to ``new_spacing`` (order 3; mask order 3 then >= 0.5), clip to [p1, p99], scale to [0, 1]."""
    zoom = [s / n for s, n in zip(spacing, new_spacing)]
    image = ndimage.zoom(image, zoom, order=3)
    mask = None if mask is None else (ndimage.zoom(mask.astype(np.float32), zoom, order=3) >= 0.5).astype(np.uint8)
    lo, hi = np.percentile(image, [1, 99])
    image = np.clip(image, lo, hi) - lo
    image = image / image.max() if image.max() > 0 else image
    return image.astype(np.float32), mask


def pad_slices(volume: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Pad (centred) the first two axes to ``shape``; the volume's minimum fills (0 after scaling)."""
    pads = [((n - s) // 2, n - s - (n - s) // 2) for s, n in zip(volume.shape[:2], shape)] + [(0, 0)]
    return np.pad(volume, pads, constant_values=volume.min())


def resampled_shape(path: Path, spacing: Sequence[float], new_spacing: Sequence[float]) -> Tuple[int, ...]:
    """The shape ``preprocess`` gives a volume (scipy's zoom rounds in_shape x zoom), read from its header alone."""
    try:
        shape = [n for n in nib.load(str(path)).shape if n != 1] or [1]
    except Exception as e:
        raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    return tuple(int(round(n * s / t)) for n, s, t in zip(shape, spacing, new_spacing))


def write_prep(meta_path: Path, new_spacing: Sequence[float], out: Path) -> None:
    """Preprocess every case of meta.csv into ``out``, one volume in memory at a time (the common slice shape
    comes from the headers first), atomically: a rebuild replaces an existing cache whole."""
    meta = read_meta(meta_path)
    shapes = [resampled_shape(row.image, (row.x, row.y, row.z), new_spacing) for row in meta.itertuples(index=False)]
    shape = tuple(int(np.ceil(max(s[i] for s in shapes) / 8) * 8) for i in range(2))
    with atomic_output(out) as tmp:
        for folder in ("IMG", "GT"):
            (tmp / "slices" / folder).mkdir(parents=True)
        cases = []
        for row in meta.itertuples(index=False):
            image, mask = load_volume(row.image), load_volume(row.mask)
            if not np.isin(mask, (0, 1)).all():
                raise DataError(f"{row.mask}: brain mask must hold only 0 and 1, found values in "
                                f"[{mask.min():g}, {mask.max():g}]")
            image, mask = preprocess(image, mask, (row.x, row.y, row.z), new_spacing)
            unpadded = image.shape[:2]                    # the image region inside the padding (histogram matching)
            image, mask = pad_slices(image, shape), pad_slices(mask, shape)
            for k in range(image.shape[2]):
                np.save(tmp / "slices" / "IMG" / f"{row.id}_{k}.npy", image[:, :, k].astype(np.float16))
                np.save(tmp / "slices" / "GT" / f"{row.id}_{k}.npy", mask[:, :, k])
            brain_ml = float(mask.sum()) * float(np.prod(new_spacing)) / 1000
            cases.append({"id": row.id, "fold": row.fold, "n_slices": image.shape[2], "brain_ml": brain_ml,
                          "h": unpadded[0], "w": unpadded[1]})
        pd.DataFrame(cases).to_csv(tmp / "cases.csv", index=False)
        (tmp / "spacing.txt").write_text(",".join(str(s) for s in new_spacing) + "\n")


# ---------------------------------------------------------------- experiment splits
# The paper's code (neuro-ml/domain_shift_anatomy, spottunet/split.py) draws every split with
# scikit-learn and the seed 0xBadCafe from the domain's ids in meta.csv order (its DataFrame index):
# one2all  train, val = train_test_split(ids, test_size=VAL)
# single_cv  KFold(3, shuffle=True) for the test folds, then train_test_split(rest, test_size=VAL)
# one2one  ids_test, ids_add = train_test_split(target ids, test_size=NADD); val = random.sample(ids_test,
#          VAL) with Python's random seeded once and drawn for the 30 pairs in order (s ascending, t != s
#          ascending), so a pair's validation scans depend on the pairs drawn before it.

def domain_ids(cases: pd.DataFrame, fold: int) -> List[str]:
    """The domain's ids in meta.csv order (cases.csv keeps it)."""
    ids = cases.loc[cases["fold"] == fold, "id"].tolist()
    if not ids:
        raise DataError(f"no case of domain {fold} ({DOMAIN_NAMES[fold]}) in the cache")
    return ids


def _draw(ids: List[str], n: int, what: str, name: str) -> Tuple[List[str], List[str]]:
    """train_test_split(ids, test_size=n, random_state=0xBadCafe): (the rest, the n drawn), both in draw order."""
    if not 1 <= n < len(ids):
        raise DataError(f"{what}: {name}={n} scans must leave at least one of the {len(ids)} scans")
    rest, drawn = train_test_split(ids, test_size=n, random_state=SPLIT_SEED)
    return list(rest), list(drawn)


def pair_validation(cases: pd.DataFrame, source: int, target: int, n_val: int, n_add: int) -> List[str]:
    """The pair's validation scans: random.sample(ids_test, n_val) at the pair's place in the paper's sequence."""
    folds = sorted(int(f) for f in cases["fold"].unique())
    if source not in folds:
        domain_ids(cases, source)                               # raises: the domain is not cached
    draws = random.Random(SPLIT_SEED)
    for fb in folds:
        for fo in (f for f in folds if f != fb):
            ids_test, _ = _draw(domain_ids(cases, fo), n_add, f"pair {fb}_{fo}", "NADD")
            if not 1 <= n_val <= len(ids_test):
                raise DataError(f"pair {fb}_{fo}: VAL={n_val} validation scans but only {len(ids_test)} test scans")
            val = draws.sample(ids_test, n_val)
            if (fb, fo) == (source, target):
                return val
    raise DataError(f"pair {source}_{target}: source and target must be two different cached domains")


def split_ids(cases: pd.DataFrame, kind: str, source: Optional[int], target: Optional[int], fold: int,
              n_val: int, n_add: int) -> Dict[str, List[str]]:
    """Case ids of train / val / test for one experiment, drawn as the paper's code does (see above)."""
    if kind == "baseline":
        train, val = _draw(domain_ids(cases, source), n_val, f"baseline {source}", "VAL")
        parts = {"train": train, "val": val, "test": []}
    elif kind == "oracle":
        ids = domain_ids(cases, target)
        if len(ids) < 3:
            raise DataError(f"oracle {target}: 3-fold cross-validation needs 3 scans, the domain has {len(ids)}")
        rest, test = list(KFold(3, shuffle=True, random_state=SPLIT_SEED).split(ids))[fold]
        train, val = _draw([ids[i] for i in rest], n_val, f"oracle {target} fold {fold}", "VAL")
        parts = {"train": train, "val": val, "test": [ids[i] for i in test]}
    else:
        test, add = _draw(domain_ids(cases, target), n_add, f"pair {source}_{target}", "NADD")
        parts = {"train": add, "val": pair_validation(cases, source, target, n_val, n_add), "test": test}
    return parts


def _spread(n: int, k: int) -> np.ndarray:
    """k of n indices at the stride n / k from 0 (the paper's slice_sampling_interval when n / k is whole)."""
    return np.floor(np.arange(k) * n / k).astype(int)


def budget_slices(ids: Sequence[str], n_slices: Dict[str, int], budget: Optional[int], mode: str = "scan") -> List[str]:
    """The annotated slices of a budget (all slices of ``ids`` when None).

    mode "scan" (the paper's code): a budget within one scan takes that many slices evenly spaced over
    the pool's first scan (the scan the paper's 1-scan experiments annotate); a larger one whole scans
    in pool order, then the rest evenly spaced over the next. mode "pool" (a deviation, kept as an
    option): the budget spread evenly over the pool's concatenated slices, which lets small budgets see
    several subjects.
    """
    names = [f"{i}_{k}" for i in ids for k in range(n_slices[i])]
    if budget is None:
        return names
    if not 1 <= budget <= len(names):
        raise DataError(f"budget {budget} slices: the annotation pool ({len(ids)} scans) holds {len(names)} slices; "
                        f"raise NADD or the subjects per domain, or lower the budget")
    if mode == "pool":
        return [names[i] for i in evenly_spaced(len(names), budget)]
    if mode != "scan":
        raise ValueError(f"budget mode {mode!r}: scan or pool")
    ends = np.cumsum([n_slices[i] for i in ids])
    whole = int(np.searchsorted(ends, budget, side="right"))      # scans that fit entirely
    taken = names[:ends[whole - 1]] if whole else []
    rest = budget - len(taken)
    if rest:
        scan = ids[whole]
        taken += [f"{scan}_{k}" for k in _spread(n_slices[scan], rest)]
    return taken


def link_slices(prep: Path, names: Sequence[str], out: Path, folders: Sequence[str] = ("IMG", "GT")) -> None:
    """``out/<folder>/<name>.npy`` -> the cached slice, as relative symlinks."""
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            target = prep / "slices" / folder / f"{name}.npy"
            os.symlink(os.path.relpath(target, out / folder), out / folder / f"{name}.npy")


def image_region(shape: Tuple[int, int], h: int, w: int) -> Tuple[slice, slice]:
    """Where pad_slices put an (h, w) slice inside ``shape``: the voxels that are image, not padding."""
    top, left = (shape[0] - h) // 2, (shape[1] - w) // 2
    return slice(top, top + h), slice(left, left + w)


def case_region(cases: pd.DataFrame, case: str, shape: Tuple[int, int], prep: Path) -> Tuple[slice, slice]:
    if not {"h", "w"} <= set(cases.columns):
        raise DataError(f"{prep}/cases.csv: no h, w columns (the unpadded slice shape), written by cc359.py prep "
                        f"since histogram matching skips the padding; delete {prep} and run prep again")
    row = cases.loc[cases["id"] == case].iloc[0]
    return image_region(shape, int(row["h"]), int(row["w"]))


def load_volume_slices(prep: Path, names: Sequence[str]) -> np.ndarray:
    """(k, H, W) float32 stack of cached image slices."""
    return np.stack([np.load(prep / "slices" / "IMG" / f"{n}.npy") for n in names]).astype(np.float32)


def match_histogram(values: np.ndarray, reference_sorted: np.ndarray) -> np.ndarray:
    """Map ``values`` onto the reference distribution by quantiles (skimage.exposure.match_histograms, 1D)."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    quantiles = np.cumsum(counts) / values.size
    ref_quantiles = np.arange(1, reference_sorted.size + 1) / reference_sorted.size
    return np.interp(quantiles, ref_quantiles, reference_sorted)[inverse].reshape(values.shape)


def write_split(prep: Path, kind: str, source: Optional[int], target: Optional[int], fold: int,
                budget: Optional[int], n_val: int, n_add: int, out: Path, budget_from: str = "scan",
                n_val_source: Optional[int] = None) -> None:
    """An experiment's folders; hm's reference is the source baseline's training scans (``n_val_source``
    of the source validate the baseline; the paper's 4, where pairs and folds take 2)."""
    cases = pd.read_csv(prep / "cases.csv", dtype={"id": str})
    n_slices = dict(zip(cases["id"], cases["n_slices"]))
    parts = split_ids(cases, "pair" if kind == "hm" else kind, source, target, fold, n_val, n_add)
    with atomic_output(out) as tmp:
        train = budget_slices(parts["train"], n_slices, budget if kind == "pair" else None, budget_from)
        link_slices(prep, train, tmp / "train")
        if kind != "hm":
            link_slices(prep, budget_slices(parts["val"], n_slices, None), tmp / "val")
            if parts["test"]:
                link_slices(prep, budget_slices(parts["test"], n_slices, None), tmp / "test")
        else:
            # the reference: every image voxel of the source's training scans; the padding that gives all
            # slices one shape is neither part of the reference nor mapped (it stays at its cached value)
            src = split_ids(cases, "baseline", source, None, 0, n_val if n_val_source is None else n_val_source, n_add)["train"]
            voxels = []
            for case in src:
                volume = load_volume_slices(prep, budget_slices([case], n_slices, None))
                voxels.append(volume[(slice(None), *case_region(cases, case, volume.shape[1:], prep))].ravel())
            reference = np.sort(np.concatenate(voxels))
            for split in ("val", "test"):
                (tmp / split / "IMG").mkdir(parents=True)
                for case in parts[split]:                    # each volume matched as a whole
                    names = budget_slices([case], n_slices, None)
                    volume = load_volume_slices(prep, names)
                    region = (slice(None), *case_region(cases, case, volume.shape[1:], prep))
                    volume[region] = match_histogram(volume[region], reference)
                    for name, image in zip(names, volume.astype(np.float16)):
                        np.save(tmp / split / "IMG" / f"{name}.npy", image)
                    link_slices(prep, names, tmp / split, folders=("GT",))
        (tmp / "split.csv").write_text("split,id\n" + "".join(f"{s},{i}\n" for s, ids in parts.items() for i in ids))


# ---------------------------------------------------------------- command line

def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_meta = sub.add_parser("meta", help="write meta.csv from the release's file names")
    p_meta.add_argument("--root", type=Path, required=True)
    p_meta.add_argument("--out", type=Path, required=True)
    p_prep = sub.add_parser("prep", help="resample, scale and cache every case of meta.csv")
    p_prep.add_argument("--meta", type=Path, required=True)
    p_prep.add_argument("--spacing", type=parse_spacing, default=(1.0, 0.95, 0.95), help="mm, array axes x,y,z")
    p_prep.add_argument("--out", type=Path, required=True)
    p_split = sub.add_parser("split", help="an experiment's slice folders")
    p_split.add_argument("--prep", type=Path, required=True)
    p_split.add_argument("--kind", choices=["baseline", "oracle", "pair", "hm"], required=True)
    p_split.add_argument("--source", type=int, choices=range(6))
    p_split.add_argument("--target", type=int, choices=range(6))
    p_split.add_argument("--fold", type=int, default=0, choices=range(3), help="oracle: the held-out fold")
    p_split.add_argument("--budget", default="all", help="pair: annotated target slices (a number, or all)")
    p_split.add_argument("--n_val", type=int, default=2, help="validation scans")
    p_split.add_argument("--n_val_source", type=int, help="hm: validation scans of the source baseline (default --n_val)")
    p_split.add_argument("--budget_from", choices=["scan", "pool"], default="scan",
                         help="pair: a budget's slices from one scan (the paper) or spread over the pool (deviation)")
    p_split.add_argument("--n_add", type=int, default=3, help="pair: scans in the target's annotation pool")
    p_split.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "split":
        need = {"baseline": ["source"], "oracle": ["target"], "pair": ["source", "target"], "hm": ["source", "target"]}
        for name in need[args.kind]:
            if getattr(args, name) is None:
                parser.error(f"--kind {args.kind} needs --{name}")
        if args.budget != "all" and not args.budget.isdigit():
            parser.error(f"--budget {args.budget!r}: a number of slices or 'all'")
    return one_error_line(run_command, args)


def run_command(args: argparse.Namespace) -> None:
    if args.command == "meta":
        meta_from_release(args.root).to_csv(args.out, index=False)
        print(f"wrote {args.out}")
    elif args.command == "prep":
        write_prep(args.meta, args.spacing, args.out)
        print(f"wrote {args.out} at spacing {args.spacing} mm")
    else:
        if not (args.prep / "cases.csv").is_file():
            raise DataError(f"{args.prep}: no cases.csv (run cc359.py prep first)")
        write_split(args.prep, args.kind, args.source, args.target, args.fold, None if args.budget == "all" else
                    int(args.budget), args.n_val, args.n_add, args.out, args.budget_from, args.n_val_source)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
