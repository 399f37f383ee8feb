#!/usr/bin/env python3
"""CC359 data (seed 000): the meta.csv reader, the preprocessed cache, and the experiments' slice sets.

    cc359.py meta  --root /data/CC359 --out /data/CC359/meta.csv     (meta.csv from the release's file names)
    cc359.py prep  --meta data/cc359/meta.csv --spacing 3,2.85,2.85 --out data/cc359_prep
    cc359.py split --prep data/cc359_prep --kind baseline --source 0 --out data/cc359_sets/baseline_0
    cc359.py split --prep data/cc359_prep --kind oracle --target 3 --fold 0 --out ...
    cc359.py split --prep data/cc359_prep --kind pair --target 3 --budget 24 --out ...
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
Splits are drawn with the paper's seed 0xBadCafe, per domain, from the ids sorted:
- baseline (one2all): VAL scans of the source for validation, the rest for training;
- oracle (single_cv): 3 folds of the target; fold k is the test set, VAL scans of the rest
  validate, the others train;
- pair (one2one): the first NADD scans of the target's permutation are the annotation pool, the
  others the test set, and VAL test scans double as validation scans (as in the paper's code).
  Budget N trains on N slices spread evenly over the pool's slices; ``--budget all`` takes every
  pool slice (the unlabelled set of source-free adaptation);
- hm: the pair's test (and validation) images histogram-matched to the source's training voxels.
"""
import argparse
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from dataloader import DataError

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


def preprocess(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float],
               new_spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Seed 000: zoom to ``new_spacing`` (order 3; mask order 3 then >= 0.5), clip to [p1, p99], scale to [0, 1]."""
    zoom = [s / n for s, n in zip(spacing, new_spacing)]
    image = ndimage.zoom(image, zoom, order=3)
    mask = ndimage.zoom(mask.astype(np.float32), zoom, order=3) >= 0.5
    lo, hi = np.percentile(image, [1, 99])
    image = np.clip(image, lo, hi) - lo
    image = image / image.max() if image.max() > 0 else image
    return image.astype(np.float32), mask.astype(np.uint8)


def pad_slices(volume: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Pad (centred) the first two axes to ``shape``; the volume's minimum fills (0 after scaling)."""
    pads = [((n - s) // 2, n - s - (n - s) // 2) for s, n in zip(volume.shape[:2], shape)] + [(0, 0)]
    return np.pad(volume, pads, constant_values=volume.min())


def write_prep(meta_path: Path, new_spacing: Sequence[float], out: Path) -> None:
    """Preprocess every case of meta.csv into ``out`` (via ``out``_tmp)."""
    meta = read_meta(meta_path)
    tmp = out.with_name(out.name + "_tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    volumes = []
    for row in meta.itertuples(index=False):
        image, mask = load_volume(row.image), load_volume(row.mask)
        if not np.isin(mask, (0, 1)).all():
            raise DataError(f"{row.mask}: brain mask must hold only 0 and 1, found values in [{mask.min():g}, {mask.max():g}]")
        volumes.append(preprocess(image, mask, (row.x, row.y, row.z), new_spacing))
    shape = tuple(int(np.ceil(max(v[0].shape[i] for v in volumes) / 8) * 8) for i in range(2))
    for folder in ("IMG", "GT"):
        (tmp / "slices" / folder).mkdir(parents=True)
    cases = []
    for row, (image, mask) in zip(meta.itertuples(index=False), volumes):
        image, mask = pad_slices(image, shape), pad_slices(mask, shape)
        for k in range(image.shape[2]):
            np.save(tmp / "slices" / "IMG" / f"{row.id}_{k}.npy", image[:, :, k].astype(np.float16))
            np.save(tmp / "slices" / "GT" / f"{row.id}_{k}.npy", mask[:, :, k])
        brain_ml = float(mask.sum()) * float(np.prod(new_spacing)) / 1000
        cases.append({"id": row.id, "fold": row.fold, "n_slices": image.shape[2], "brain_ml": brain_ml})
    pd.DataFrame(cases).to_csv(tmp / "cases.csv", index=False)
    (tmp / "spacing.txt").write_text(",".join(str(s) for s in new_spacing) + "\n")
    tmp.replace(out)


# ---------------------------------------------------------------- experiment splits

def domain_order(cases: pd.DataFrame, fold: int) -> List[str]:
    """The domain's ids in the split's random order (seed 0xBadCafe, per domain)."""
    ids = sorted(cases.loc[cases["fold"] == fold, "id"])
    if not ids:
        raise DataError(f"no case of domain {fold} ({DOMAIN_NAMES[fold]}) in the cache")
    return [ids[i] for i in np.random.default_rng([SPLIT_SEED, fold]).permutation(len(ids))]


def budget_slices(ids: Sequence[str], n_slices: Dict[str, int], budget: Optional[int]) -> List[str]:
    """``budget`` slice names spread evenly over the concatenated slices of ``ids`` (all when None)."""
    names = [f"{i}_{k}" for i in ids for k in range(n_slices[i])]
    if budget is None:
        return names
    if not 1 <= budget <= len(names):
        raise DataError(f"budget {budget} slices: the annotation pool ({len(ids)} scans) holds {len(names)} slices; "
                        f"raise NADD or the subjects per domain, or lower the budget")
    return [names[i] for i in np.linspace(0, len(names) - 1, budget).round().astype(int)]


def split_ids(cases: pd.DataFrame, kind: str, source: Optional[int], target: Optional[int], fold: int,
              n_val: int, n_add: int) -> Dict[str, List[str]]:
    """Case ids of train / val / test for one experiment (see the module docstring)."""
    if kind == "baseline":
        order = domain_order(cases, source)
        parts = {"train": order[n_val:], "val": order[:n_val], "test": []}
    elif kind == "oracle":
        folds = np.array_split(np.array(domain_order(cases, target)), 3)
        rest = [i for k, f in enumerate(folds) if k != fold for i in f]
        parts = {"train": rest[n_val:], "val": rest[:n_val], "test": list(folds[fold])}
    else:
        order = domain_order(cases, target)
        parts = {"train": order[:n_add], "val": order[n_add:n_add + n_val], "test": order[n_add:]}
    for split, ids in parts.items():
        if split != "test" and not ids:
            raise DataError(f"{kind} split: no {split} scans left (domain sizes {cases.groupby('fold').size().to_dict()}, "
                            f"VAL={n_val}, NADD={n_add})")
    if kind != "baseline" and not parts["test"]:
        raise DataError(f"{kind} split: no test scans left (NADD={n_add})")
    return parts


def link_slices(prep: Path, names: Sequence[str], out: Path, folders: Sequence[str] = ("IMG", "GT")) -> None:
    """``out/<folder>/<name>.npy`` -> the cached slice, as relative symlinks."""
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            target = prep / "slices" / folder / f"{name}.npy"
            os.symlink(os.path.relpath(target, out / folder), out / folder / f"{name}.npy")


def match_histogram(values: np.ndarray, reference_sorted: np.ndarray) -> np.ndarray:
    """Map ``values`` onto the reference distribution by quantiles (skimage.exposure.match_histograms, 1D)."""
    uniq, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    quantiles = np.cumsum(counts) / values.size
    ref_quantiles = np.arange(1, reference_sorted.size + 1) / reference_sorted.size
    return np.interp(quantiles, ref_quantiles, reference_sorted)[inverse].reshape(values.shape)


def write_split(prep: Path, kind: str, source: Optional[int], target: Optional[int], fold: int,
                budget: Optional[int], n_val: int, n_add: int, out: Path) -> None:
    cases = pd.read_csv(prep / "cases.csv", dtype={"id": str})
    n_slices = dict(zip(cases["id"], cases["n_slices"]))
    parts = split_ids(cases, "pair" if kind == "hm" else kind, source, target, fold, n_val, n_add)
    tmp = out.with_name(out.name + "_tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    train = budget_slices(parts["train"], n_slices, budget if kind == "pair" else None)
    link_slices(prep, train, tmp / "train")
    if kind != "hm":
        link_slices(prep, budget_slices(parts["val"], n_slices, None), tmp / "val")
        if parts["test"]:
            link_slices(prep, budget_slices(parts["test"], n_slices, None), tmp / "test")
    else:
        src = split_ids(cases, "baseline", source, None, 0, n_val, n_add)["train"]
        reference = np.sort(np.concatenate([np.load(prep / "slices" / "IMG" / f"{n}.npy").ravel()
                                            for n in budget_slices(src, n_slices, None)]).astype(np.float32))
        for split in ("val", "test"):
            (tmp / split / "IMG").mkdir(parents=True)
            for case in parts[split]:                    # each volume matched as a whole
                names = budget_slices([case], n_slices, None)
                volume = np.stack([np.load(prep / "slices" / "IMG" / f"{n}.npy") for n in names]).astype(np.float32)
                for name, image in zip(names, match_histogram(volume, reference).astype(np.float16)):
                    np.save(tmp / split / "IMG" / f"{name}.npy", image)
                link_slices(prep, names, tmp / split, folders=("GT",))
    (tmp / "split.csv").write_text("split,id\n" + "".join(f"{s},{i}\n" for s, ids in parts.items() for i in ids))
    if out.exists():
        shutil.rmtree(out)
    tmp.replace(out)


# ---------------------------------------------------------------- command line

def parse_spacing(text: str) -> Tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"spacing {text!r}: expected three numbers like 1,0.95,0.95") from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"spacing {text!r}: expected three positive numbers")
    return values


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
    p_split.add_argument("--n_add", type=int, default=3, help="pair: scans in the target's annotation pool")
    p_split.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "meta":
            meta_from_release(args.root).to_csv(args.out, index=False)
            print(f"wrote {args.out}")
        elif args.command == "prep":
            write_prep(args.meta, args.spacing, args.out)
            print(f"wrote {args.out} at spacing {args.spacing} mm")
        else:
            need = {"baseline": ["source"], "oracle": ["target"], "pair": ["target"], "hm": ["source", "target"]}
            for name in need[args.kind]:
                if getattr(args, name) is None:
                    parser.error(f"--kind {args.kind} needs --{name}")
            if args.budget != "all" and not args.budget.isdigit():
                parser.error(f"--budget {args.budget!r}: a number of slices or 'all'")
            budget = None if args.budget == "all" else int(args.budget)
            if not (args.prep / "cases.csv").is_file():
                raise DataError(f"{args.prep}: no cases.csv (run cc359.py prep first)")
            write_split(args.prep, args.kind, args.source, args.target, args.fold, budget, args.n_val, args.n_add, args.out)
            print(f"wrote {args.out}")
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
