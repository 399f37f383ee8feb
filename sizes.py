#!/usr/bin/env python3
r"""Class-ratio prior: write the size csv of every target train and val slice.

    sizes.py --source data/prostate_source --target data/prostate_target --out sizes/prostate.csv
    sizes.py --gt_dir data/cc359_prep/slices/GT --volume_ml 1883 --spacing 3,2.85,2.85 \
        --grp_regex 'CC\d+_\d+' --out sizes/cc359.csv

Columns (seed 004): ``val_ids`` (the slice file name, the key the loader looks up),
``val_gt_size`` (true pixel count per class, for the SFDA_TrueSize upper bound),
``dumbpredwtags`` (the tag-based estimate used by SFDA: for a slice whose image-level tag says a
class is present, a constant size from anatomical knowledge; [w*h, 0, ...] for a negative slice)
and ``dumbprednotags`` (the constant on every slice, no tags). Each cell sums to w*h.

The constant per class defaults to the mean positive size of that class in the *source* training
labels: a statistic the provider of a source model can publish without sharing images.
``--constant`` overrides it (the seed's prostate value is 8000 px at 385 x 385).

``--volume_ml`` (CC359) derives the prior from a published organ volume instead, in pixels of the
slice's ``--spacing``: each tagged slice of a volume gets volume / (number of tagged slices x slice
thickness) (``--profile flat``), or, with ``--profile mni152``, a share proportional to the MNI152
brain's axial area at the slice's relative position between the volume's first and last tagged
slices (a brain's area changes several-fold from the skull base to the vertex). It reads every slice of ``--gt_dir`` (the preprocessed
cache), so one csv serves every experiment drawn from it.
"""
import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage

from dataloader import DataError, gt_transform, list_slices, parse_slice_name
from utils import one_error_line, parse_spacing, write_csv_atomic
from volumes import canonical_slice_range


def class_counts(path: Path, n_class: int) -> np.ndarray:
    """Pixels of each class in the label slice ``path``; a label outside 0..n_class-1 is refused, the file named."""
    label = gt_transform(path)
    if label.min() < 0 or label.max() >= n_class:
        raise DataError(f"{path}: labels span [{label.min():g}, {label.max():g}] but n_class is {n_class} "
                        f"(values 0..{n_class - 1}; set N_CLASS, or merge classes with volumes.py --labels)")
    return np.bincount(label.ravel().astype(np.int64), minlength=n_class).astype(np.float64)


def mean_positive_sizes(folder: Path, n_class: int) -> np.ndarray:
    """Per foreground class: mean pixel count over the label slices of ``folder`` where it is present (0 if never)."""
    counts = np.stack([class_counts(path, n_class) for path in list_slices(folder)])
    means = np.zeros(n_class)
    for k in range(1, n_class):
        present = counts[:, k] > 0
        means[k] = counts[present, k].mean() if present.any() else 0.0
    return means


def tag_estimate(gt_size: np.ndarray, constant: np.ndarray) -> np.ndarray:
    """Foreground classes present (tag) get the constant, absent ones 0; background takes the rest."""
    fg = np.where(gt_size[1:] > 0, constant[1:], 0.0)
    return np.concatenate([[gt_size.sum() - fg.sum()], fg])


def fmt(sizes: np.ndarray) -> str:
    return str([float(v) for v in sizes])


def size_table(target: Path, constant: np.ndarray, n_class: int) -> pd.DataFrame:
    rows = []
    for split in ("train", "val"):
        for path in list_slices(target / split / "GT"):
            gt = class_counts(path, n_class)
            if constant[1:].sum() > gt.sum():
                raise DataError(f"{path}: the constant sizes {constant[1:].tolist()} exceed the slice's w*h = {gt.sum():g}")
            no_tags = np.concatenate([[gt.sum() - constant[1:].sum()], constant[1:]])
            rows.append({"val_ids": path.name, "val_gt_size": fmt(gt),
                         "dumbpredwtags": fmt(tag_estimate(gt, constant)), "dumbprednotags": fmt(no_tags)})
    table = pd.DataFrame(rows)
    if table["val_ids"].duplicated().any():
        raise DataError(f"{target}: slice {table.loc[table['val_ids'].duplicated(), 'val_ids'].iloc[0]} "
                        f"is in both train and val")
    return table


def read_tags(tags_file: Path, manifest: pd.DataFrame, n_class: int) -> pd.DataFrame:
    """The tags file (volume, class, first, last: the first and last slice containing the class, in the volume
    file's own voxel index), checked against the layout's volumes and turned into layout slice numbers."""
    try:
        tags = pd.read_csv(tags_file)
    except (OSError, ValueError) as e:
        raise DataError(f"{tags_file}: cannot read ({e})") from None
    missing = {"volume", "class", "first", "last"} - set(tags.columns)
    if missing:
        raise DataError(f"{tags_file}: no column {', '.join(sorted(missing))} (expected volume,class,first,last)")
    tags = tags[["volume", "class", "first", "last"]].rename(columns={"class": "cls"}).astype({"volume": str})
    volumes = manifest.groupby("case").first()
    for row in tags.itertuples():
        where = f"{tags_file} line {row.Index + 2}"
        if row.volume not in volumes.index:
            raise DataError(f"{where}: unknown volume {row.volume!r} (the layout's: {', '.join(volumes.index[:5])}...)")
        if not (str(row.cls).isdigit() and 1 <= int(row.cls) < n_class):
            raise DataError(f"{where}: class {row.cls!r} is not a foreground class 1..{n_class - 1}")
        if not all(str(v).lstrip("-").isdigit() for v in (row.first, row.last)):
            raise DataError(f"{where}: first and last are slice indices, got {row.first!r}, {row.last!r}")
    untagged = sorted(set(volumes.index) - set(tags["volume"]))
    if untagged:
        raise DataError(f"{tags_file}: no tag for volume {untagged[0]} ({len(untagged)} untagged): give the first and "
                        f"last slice of each class it contains")
    ranges = [canonical_slice_range(np.array(json.loads(volumes.at[r.volume, "affine"])),
                                    json.loads(volumes.at[r.volume, "shape"]), int(volumes.at[r.volume, "axis"]),
                                    int(r.first), int(r.last), f"{tags_file} line {r.Index + 2} ({r.volume})")
              for r in tags.itertuples()]
    return tags.assign(lo=[lo for lo, _ in ranges], hi=[hi for _, hi in ranges], cls=tags["cls"].astype(int))


def tags_table(target: Path, tags_file: Path, constant: np.ndarray, n_class: int) -> pd.DataFrame:
    """The size csv of an unlabelled target from its tags: a tagged class gets the constant, others 0; no true size."""
    if not (target / "manifest.csv").is_file():
        raise DataError(f"{target}: no manifest.csv; --tags reads a layout that volumes.py slices wrote")
    manifest = pd.read_csv(target / "manifest.csv")
    tags = read_tags(tags_file, manifest, n_class)
    h, w = json.loads((target / "preprocessing.json").read_text())["size"]
    present = np.zeros((len(manifest), n_class), bool)
    for tag in tags.itertuples():
        present[:, tag.cls] |= ((manifest["case"] == tag.volume) & manifest["index"].between(tag.lo, tag.hi)).to_numpy()
    if constant[1:].sum() > h * w:
        raise DataError(f"{target}: the constant sizes {constant[1:].tolist()} exceed the slice's w*h = {h * w}")
    fg = np.where(present[:, 1:], constant[1:], 0.0)
    no_tags = np.concatenate([[h * w - constant[1:].sum()], constant[1:]])
    return pd.DataFrame({"val_ids": manifest["slice"], "val_gt_size": "",
                         "dumbpredwtags": [fmt(np.concatenate([[h * w - f.sum()], f])) for f in fg],
                         "dumbprednotags": fmt(no_tags)})


def template_slice_profile() -> np.ndarray:
    """Brain area per axial slice of the MNI152 2009a brain mask (nilearn's package data), bottom to top, summing to 1."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nilearn import datasets
        brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    area = ndimage.binary_fill_holes(brain).sum(axis=(0, 1)).astype(float)     # the template's z axis is axial
    area = area[area > 0]
    return area / area.sum()


def slice_weights(slice_numbers: np.ndarray, tagged: np.ndarray, patients: pd.Series,
                  profile: Optional[np.ndarray]) -> np.ndarray:
    """Each tagged slice's share of its volume: equal (profile None), or the profile at the slice's relative
    position between the volume's first and last tagged slices (0 = bottom, 1 = top). Untagged: 0."""
    if profile is None:
        weight = tagged.astype(float)
    else:
        z = pd.Series(np.where(tagged, slice_numbers, np.nan))
        first, last = z.groupby(patients).transform("min"), z.groupby(patients).transform("max")
        rel = ((z - first) / (last - first).replace(0, 1)).fillna(0).to_numpy()
        weight = np.where(tagged, np.interp(rel, np.linspace(0, 1, len(profile)), profile), 0.0)
    total = pd.Series(weight).groupby(patients).transform("sum").to_numpy()
    return weight / np.where(total > 0, total, 1)


def volume_prior_table(gt_dir: Path, volume_ml: float, spacing: Sequence[float], grp_regex: str,
                       profile: Optional[np.ndarray] = None) -> pd.DataFrame:
    """Tag prior from a published volume (binary task), spread over each volume's tagged slices evenly or,
    with ``profile``, in proportion to the anatomy's area at each slice's relative position."""
    paths = list_slices(gt_dir)
    counts = np.stack([class_counts(p, 2) for p in paths])
    names = [parse_slice_name(p.name, grp_regex) for p in paths]
    patients = pd.Series([patient for patient, _ in names])
    tagged = counts[:, 1] > 0
    pixel_ml = spacing[0] * spacing[1] * spacing[2] / 1000.0          # one voxel of a slice, in mL
    share = slice_weights(np.array([k for _, k in names], float), tagged, patients, profile)
    area = volume_ml / pixel_ml * share
    total = counts.sum(axis=1)
    area = np.minimum(np.round(area), total)
    slices_per_volume = len(paths) / patients.nunique()
    no_tags = np.minimum(np.round(volume_ml / slices_per_volume / pixel_ml), total)   # the same size on every slice
    rows = [{"val_ids": p.name, "val_gt_size": fmt(c), "dumbpredwtags": fmt(np.array([t - a, a])),
             "dumbprednotags": fmt(np.array([t - n, n]))}
            for p, c, t, a, n in zip(paths, counts, total, area, no_tags)]
    return pd.DataFrame(rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", type=Path, help="source dataset root (for the published mean size)")
    parser.add_argument("--target", type=Path, help="target dataset root with train/ and val/")
    parser.add_argument("--gt_dir", type=Path, help="a folder of GT slices (instead of --target)")
    parser.add_argument("--volume_ml", type=float, help="published organ volume in mL (with --gt_dir)")
    parser.add_argument("--spacing", help="voxel spacing row,column,slice in mm (with --volume_ml)")
    parser.add_argument("--grp_regex", default=r"CC\d+_\d+", help="slice name -> volume (with --volume_ml)")
    parser.add_argument("--profile", choices=["flat", "mni152"], default="flat",
                        help="with --volume_ml: spread the volume evenly over the tagged slices (flat) or as the "
                             "MNI152 brain's axial area profile (mni152; the slice axis must be axial)")
    parser.add_argument("--tags", type=Path, help="an unlabelled target's tags csv (volume,class,first,last: the first "
                                                  "and last slice containing the class, the volume file's voxel index)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--n_class", type=int, default=2)
    parser.add_argument("--constant", type=float, nargs="*", help="foreground sizes in pixels, one per class > 0")
    return one_error_line(write_sizes, parser.parse_args(argv))


def write_sizes(args: argparse.Namespace) -> None:
    """The size csv of the options: from a published volume (--volume_ml), a constant, or the source's mean size."""
    if args.volume_ml is not None:
        if args.gt_dir is None or not args.spacing:
            raise DataError("--volume_ml needs --gt_dir and --spacing")
        if args.volume_ml <= 0:
            raise DataError(f"--volume_ml {args.volume_ml:g}: a volume is positive")
        profile = template_slice_profile() if args.profile == "mni152" else None
        table = volume_prior_table(args.gt_dir, args.volume_ml, parse_spacing(args.spacing), args.grp_regex, profile)
        constant = np.array([0.0, args.volume_ml])
    elif args.target is None:
        raise DataError("give --target (a dataset root) or --gt_dir with --volume_ml")
    elif args.constant:
        if len(args.constant) != args.n_class - 1:
            raise DataError(f"--constant needs {args.n_class - 1} values, got {len(args.constant)}")
        constant = np.array([0.0, *args.constant])
    elif args.source is not None:
        constant = np.round(mean_positive_sizes(args.source / "train" / "GT", args.n_class))
    else:
        raise DataError("give --source (to publish its mean organ size) or --constant")
    if args.tags is not None:
        table = tags_table(args.target, args.tags, constant, args.n_class)
    elif args.volume_ml is None:
        if not (args.target / "train" / "GT").is_dir():
            raise DataError(f"{args.target}: no labels (train/GT); give --tags FILE: per volume and class, the first "
                            f"and last slice that contain the class (volume,class,first,last)")
        table = size_table(args.target, constant, args.n_class)
    write_csv_atomic(table, args.out)
    unit = "mL per volume" if args.volume_ml is not None else "px"
    print(f"wrote {args.out}: {len(table)} slices, tag prior foreground {constant[1:].tolist()} {unit}")


if __name__ == "__main__":
    sys.exit(main())
