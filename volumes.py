"""3D volumes to the slice layout, and slice predictions back onto each volume's own grid (volumes.py).

Reads an nnU-Net v2 raw dataset, a Medical Segmentation Decathlon task, or two folders of image and label volumes
matched by name (NIfTI: .nii / .nii.gz). Each volume is reoriented to the closest canonical (RAS) orientation, cut
along one axis (axial by default), resampled in-plane to one spacing (images linear, labels nearest), padded to one
size, and its intensities clipped at two percentiles then scaled to [0, 1]. Patients are split into train and val
(seeded). Written: <out>/{train,val}/{IMG,GT}/CaseNN_M.nii.gz (or .png), manifest.csv (every slice's volume, index
and the geometry to undo) and preprocessing.json (every parameter). predict.py replays the same steps and
``restore`` undoes them.

    python volumes.py slices --dataset Task05_Prostate --channel 0 --labels "1,2:1" --spacing 0.6,0.6 --out data/p
"""
import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import pandas as pd
from PIL import Image
from scipy import ndimage
from sklearn.model_selection import train_test_split

from dataloader import DataError
from utils import atomic_output, one_error_line

SUFFIXES = (".nii.gz", ".nii")


@dataclass
class Case:
    name: str
    image: Path
    label: Optional[Path]


@dataclass
class Preprocessing:
    """Every parameter of the slicing, stored in preprocessing.json and replayed by predict.py."""
    axis: int = 2                       # the slicing axis in the canonical (RAS) array: 2 axial, 1 coronal, 0 sagittal
    spacing: Optional[Tuple[float, float]] = None   # in-plane mm after resampling; None: as stored
    size: Optional[Tuple[int, int]] = None          # in-plane size after padding; None: the largest volume's
    channel: Optional[int] = None       # the channel of a 4D volume the network reads
    clip: Tuple[float, float] = (0.5, 99.5)         # percentiles clipped before scaling to [0, 1]
    labels: Dict[int, int] = None       # label value -> class (values absent: as they are)

    def label_map(self) -> Dict[int, int]:
        return self.labels or {}


def strip_suffix(name: str) -> str:
    for s in SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return name


def volume_files(folder: Path) -> List[Path]:
    """The NIfTI volumes of a folder; anything else there is named in one error line."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    others = [p.name for p in files if not p.name.endswith(SUFFIXES)]
    if others:
        raise DataError(f"{folder / others[0]}: not a NIfTI volume (.nii or .nii.gz are supported)")
    if not files:
        raise DataError(f"{folder}: no volumes (.nii or .nii.gz)")
    return files


def read_dataset(root: Path, channel: Optional[int] = None, split: str = "Tr") -> List[Case]:
    """The cases of an nnU-Net v2 raw dataset or a Decathlon task (told apart by dataset.json); ``split`` Tr: the
    labelled training cases, Ts: the unlabelled test images. nnU-Net keeps each channel in its own file
    (<case>_000k): ``channel`` picks it; a Decathlon volume holds its channels along a 4th axis (load_image picks)."""
    meta_path = root / "dataset.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: cannot read ({e})") from None
    if "file_ending" in meta:
        ending, suffix = meta["file_ending"], f"_{channel or 0:04d}{meta['file_ending']}"
        images = [p for p in volume_files(root / f"images{split}") if p.name.endswith(suffix)]
        if not images:
            raise DataError(f"{root / f'images{split}'}: no image of channel {channel or 0} (*{suffix})")
        cases = [Case(p.name[: -len(suffix)], p, None) for p in images]
        if split == "Tr":
            for c in cases:
                c.label = root / "labelsTr" / f"{c.name}{ending}"
                if not c.label.is_file():
                    raise DataError(f"{c.image}: no label {c.label.name} in {c.label.parent}")
        return cases
    if "training" in meta:
        if split == "Ts":
            return [Case(strip_suffix(Path(t).name), root / t, None) for t in meta.get("test", [])]
        cases = [Case(strip_suffix(Path(t["image"]).name), root / t["image"], root / t["label"])
                 for t in meta["training"]]
        for c in cases:
            for p in (c.image, c.label):
                if not p.is_file():
                    raise DataError(f"{meta_path}: {p} is listed but missing")
        return cases
    raise DataError(f"{meta_path}: neither an nnU-Net v2 dataset (file_ending) nor a Decathlon task (training)")


def read_folders(images: Path, labels: Optional[Path]) -> List[Case]:
    """Image volumes and, when given, label volumes of the same names."""
    cases = [Case(strip_suffix(p.name), p, None) for p in volume_files(images)]
    if labels is None:
        return cases
    by_name = {strip_suffix(p.name): p for p in volume_files(labels)}
    for c in cases:
        if c.name not in by_name:
            raise DataError(f"{c.image}: no label volume {c.name}.nii[.gz] in {labels}")
        c.label = by_name.pop(c.name)
    if by_name:
        raise DataError(f"{next(iter(by_name.values()))}: label volume without an image in {images}")
    return cases


def read_volumes(root: Path, channel: Optional[int]) -> List[Case]:
    """A dataset with dataset.json (nnU-Net v2, Decathlon), or a folder with images/ and, if labelled, labels/."""
    if (root / "dataset.json").is_file():
        return read_dataset(root, channel)
    if not (root / "images").is_dir():
        raise DataError(f"{root}: neither a dataset (dataset.json) nor a folder with images/ (and labels/)")
    return read_folders(root / "images", root / "labels" if (root / "labels").is_dir() else None)


def check_not_other_input(out: Path, source: str) -> None:
    """An existing layout built from other volumes is refused, never silently reused or replaced."""
    stored = out / "preprocessing.json"
    built_from = json.loads(stored.read_text()).get("input") if stored.is_file() else source
    if built_from != source:
        raise DataError(f"{out}: already holds slices of {built_from}, not of {source}; choose another output folder")


def like(layout: Path) -> Preprocessing:
    """The preprocessing another layout used (its axis, spacing, size, channel, clip, labels): a target sliced like
    its source, so the network sees the same grid and intensities."""
    path = layout / "preprocessing.json"
    if not path.is_file():
        raise DataError(f"{path}: no such file (--like names a folder volumes.py slices wrote)")
    stored = json.loads(path.read_text())
    return Preprocessing(axis=stored["axis"], spacing=stored["spacing"] and tuple(stored["spacing"]),
                         size=tuple(stored["size"]), channel=stored["channel"], clip=tuple(stored["clip"]),
                         labels={int(k): v for k, v in (stored["labels"] or {}).items()})


def load_image(path: Path, channel: Optional[int]) -> nib.Nifti1Image:
    """A 3D image (one channel of a 4D one), reoriented to the closest canonical orientation."""
    img = nib.load(str(path))
    if img.ndim == 4:
        if channel is None:
            raise DataError(f"{path}: a 4D volume of {img.shape[3]} channels (0..{img.shape[3] - 1}); "
                            f"choose the one the network reads with --channel")
        if not 0 <= channel < img.shape[3]:
            raise DataError(f"{path}: --channel {channel} out of range: it has channels 0..{img.shape[3] - 1}")
        img = img.slicer[..., channel]
    elif img.ndim != 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {img.shape}")
    return nib.as_closest_canonical(img)


def load_label(path: Path, image: nib.Nifti1Image, reference: Path, label_map: Dict[int, int]) -> np.ndarray:
    """Class indices on the image's canonical grid: same shape and affine, integers, mapped by ``label_map``."""
    img = nib.load(str(path))
    if img.ndim != 3:
        raise DataError(f"{path}: expected a 3D label volume, got shape {img.shape}")
    img = nib.as_closest_canonical(img)
    if img.shape != image.shape:
        raise DataError(f"{path}: label shape {img.shape} differs from its image {reference} {image.shape}")
    if not np.allclose(img.affine, image.affine, atol=1e-3):
        raise DataError(f"{path}: label affine differs from its image {reference}'s")
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer) and not np.array_equal(data, np.round(data)):
        raise DataError(f"{path}: non-integer label values")
    data = data.astype(np.int64)
    if data.min() < 0:
        raise DataError(f"{path}: negative label value {data.min()}")
    if label_map:
        lut = np.arange(data.max() + 1)
        for value, cls in label_map.items():
            if value < len(lut):
                lut[value] = cls
        data = lut[data]
    return data.astype(np.uint8)


def normalise(volume: np.ndarray, clip: Tuple[float, float]) -> np.ndarray:
    """Intensities clipped at the two percentiles of the whole volume, then scaled to [0, 1]."""
    lo, hi = np.percentile(volume, clip)
    scaled = (np.clip(volume, lo, hi) - lo) / (hi - lo) if hi > lo else np.zeros_like(volume)
    return scaled.astype(np.float32)


def inplane_zoom(zooms: Sequence[float], axis: int, spacing: Optional[Tuple[float, float]]) -> Tuple[float, float]:
    """The factors that bring the two in-plane axes from the volume's spacing to ``spacing`` (1 when None)."""
    current = inplane(zooms, axis)
    return (1.0, 1.0) if spacing is None else (float(current[0] / spacing[0]), float(current[1] / spacing[1]))


def to_slices(volume: np.ndarray, axis: int, zoom: Tuple[float, float], order: int) -> np.ndarray:
    """(S, H, W): the volume's slices along ``axis``, each resampled in-plane by ``zoom`` (spline ``order``)."""
    stack = np.moveaxis(volume, axis, 0)
    if zoom == (1.0, 1.0):
        return stack
    return ndimage.zoom(stack, (1.0, *zoom), order=order, mode="nearest", grid_mode=order > 0)


def fit(slices: np.ndarray, size: Tuple[int, int], label: Optional[np.ndarray], path: Path) -> Tuple[np.ndarray, list, list]:
    """Pad (centred) or crop each in-plane axis to ``size``; a crop that would cut a labelled voxel is refused."""
    crop, pad = [], []
    for ax, want in zip((1, 2), size):
        have = slices.shape[ax]
        lo = max(have - want, 0) // 2
        hi = lo + min(have, want)
        if label is not None and np.take(label, np.r_[0:lo, hi:have], axis=ax).any():
            raise DataError(f"{path}: cropping to {tuple(size)} would cut labelled voxels; give a larger --size")
        crop.append([lo, hi])
        before = max(want - have, 0) // 2
        pad.append([before, max(want - have, 0) - before])
    index = (slice(None), slice(*crop[0]), slice(*crop[1]))
    out = np.pad(slices[index], [(0, 0), *pad])
    return out, crop, pad


def canonical_grid(path: Path) -> Tuple[List[int], List[float]]:
    """A volume's shape and voxel sizes once reoriented to RAS, read from its header alone."""
    img = nib.load(str(path))
    axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)
    order = np.argsort(axes)                            # canonical axis j holds original axis order[j]
    return [int(img.shape[i]) for i in order], [float(img.header.get_zooms()[i]) for i in order]


def canonical_slice_range(affine: np.ndarray, shape: Sequence[int], axis: int, first: int, last: int,
                          where: str) -> Tuple[int, int]:
    """Slices first..last of a volume file, counted along the file's own axis that becomes the canonical ``axis``
    (the voxel index a viewer shows), as indices of the canonical slice stack (the layout's slice numbers)."""
    ornt = nib.orientations.io_orientation(affine)
    original = int(np.flatnonzero(ornt[:, 0] == axis)[0])
    n = int(shape[original])
    if not 0 <= first <= last < n:
        raise DataError(f"{where}: slices {first}..{last} outside the volume's 0..{n - 1} along its axis {original}")
    return (first, last) if ornt[original, 1] > 0 else (n - 1 - last, n - 1 - first)


def inplane(values: Sequence, axis: int) -> list:
    return [v for i, v in enumerate(values[:3]) if i != axis]


def prepare(case: Case, prep: Preprocessing) -> Tuple[np.ndarray, Optional[np.ndarray], dict]:
    """(S, H, W) image slices in [0, 1], label slices or None, and the geometry that ``restore`` undoes."""
    original = nib.load(str(case.image))
    image = load_image(case.image, prep.channel)
    label = load_label(case.label, image, case.image, prep.label_map()) if case.label else None
    zooms = image.header.get_zooms()
    zoom = inplane_zoom(zooms, prep.axis, prep.spacing)
    images = to_slices(normalise(np.asarray(image.dataobj, dtype=np.float32), prep.clip), prep.axis, zoom, 1)
    labels = to_slices(label, prep.axis, zoom, 0) if label is not None else None
    size = prep.size or images.shape[1:]
    images, crop, pad = fit(images, size, labels, case.image)
    if labels is not None:
        labels = fit(labels, size, None, case.label)[0]
    geometry = {"case": case.name, "image": str(case.image), "label": str(case.label or ""),
                "shape": list(original.shape[:3]), "affine": original.affine.round(6).tolist(), "axis": prep.axis,
                "canonical_shape": list(image.shape), "zoom": list(zoom), "crop": crop, "pad": pad,
                "spacing": [float(v) for v in (*(prep.spacing or inplane(zooms, prep.axis)), zooms[prep.axis])]}
    return images, labels, geometry


def restore(probabilities: np.ndarray, geometry: dict) -> np.ndarray:
    """(K, S, H, W) class probabilities of a volume's slices -> class indices on the original volume's grid."""
    crop, pad = geometry["crop"], geometry["pad"]
    canonical = geometry["canonical_shape"]
    size = inplane(canonical, geometry["axis"])
    unpadded = probabilities[:, :, pad[0][0]: probabilities.shape[2] - pad[0][1], pad[1][0]: probabilities.shape[3] - pad[1][1]]
    zoomed = [int(round(n * z)) for n, z in zip(size, geometry["zoom"])]
    full = np.zeros((probabilities.shape[0], unpadded.shape[1], *zoomed), np.float32)
    full[0] = 1.0                                   # what a crop removed is background
    full[:, :, crop[0][0]: crop[0][1], crop[1][0]: crop[1][1]] = unpadded
    if tuple(zoomed) != tuple(size):
        factors = (1.0, 1.0, size[0] / zoomed[0], size[1] / zoomed[1])
        full = ndimage.zoom(full, factors, order=1, mode="nearest", grid_mode=True)
    classes = np.moveaxis(full.argmax(0), 0, geometry["axis"]).astype(np.uint8)
    affine = np.asarray(geometry["affine"])
    to_original = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")),
                                                  nib.orientations.io_orientation(affine))
    return nib.orientations.apply_orientation(classes, to_original)


def split_patients(names: Sequence[str], val_fraction: float, seed: int) -> Dict[str, str]:
    """Each case's split (train or val), by patient, seeded; one case: train."""
    if len(names) < 2 or val_fraction <= 0:
        return {n: "train" for n in names}
    train, val = train_test_split(list(names), test_size=val_fraction, random_state=seed)
    return {**{n: "train" for n in train}, **{n: "val" for n in val}}


def write_slice(path: Path, array: np.ndarray, spacing: Tuple[float, float, float]) -> None:
    """One slice: NIfTI with the patient's spacing in its header, or PNG (16-bit images, 8-bit labels)."""
    if path.name.endswith(".png"):
        data = (array * 65535).round().astype(np.uint16) if array.dtype == np.float32 else array.astype(np.uint8)
        Image.fromarray(data).save(path)
    else:
        nib.save(nib.Nifti1Image(array[..., None], np.diag([*spacing, 1.0])), str(path))


def write_layout(cases: List[Case], prep: Preprocessing, out: Path, val_fraction: float, seed: int,
                 fmt: str, source: str = "") -> None:
    """The slice layout, manifest.csv and preprocessing.json of ``cases`` into ``out`` (written whole, then renamed)."""
    splits = split_patients([c.name for c in cases], val_fraction, seed)
    if prep.size is None:               # one size for every volume: the largest after resampling
        grids = [canonical_grid(c.image) for c in cases]
        shapes = [[round(n * z) for n, z in zip(inplane(shape, prep.axis), inplane_zoom(zooms, prep.axis, prep.spacing))]
                  for shape, zooms in grids]
        prep.size = tuple(int(v) for v in np.max(shapes, axis=0))
    rows = []
    with atomic_output(out) as tmp:
        for number, case in enumerate(cases):
            images, labels, geometry = prepare(case, prep)
            split = splits[case.name]
            for index in range(len(images)):
                name = f"Case{number:02d}_{index}.{'png' if fmt == 'png' else 'nii.gz'}"
                for sub, array in (("IMG", images[index]), ("GT", None if labels is None else labels[index])):
                    if array is None:
                        continue
                    (tmp / split / sub).mkdir(parents=True, exist_ok=True)
                    write_slice(tmp / split / sub / name, array, geometry["spacing"])
                rows.append({"slice": name, "split": split, "index": index, **{k: json.dumps(v) if isinstance(v, list) else v
                                                                              for k, v in geometry.items()}})
        pd.DataFrame(rows).to_csv(tmp / "manifest.csv", index=False)
        (tmp / "preprocessing.json").write_text(json.dumps({**asdict(prep), "format": fmt, "val_fraction": val_fraction,
                                                             "seed": seed, "input": source}, indent=1) + "\n")


def parse_label_map(text: str) -> Dict[int, int]:
    """"1,2:1;3:2" -> {1: 1, 2: 1, 3: 2}: label values merged or renamed into classes."""
    out = {}
    for part in filter(None, text.split(";")):
        values, _, cls = part.partition(":")
        try:
            out.update({int(v): int(cls) for v in values.split(",")})
        except ValueError:
            raise DataError(f"--labels {text!r}: expected VALUES:CLASS pairs separated by ';', e.g. 1,2:1") from None
    return out


def pair(text: Optional[str], kind: type, option: str) -> Optional[tuple]:
    if not text:
        return None
    try:
        values = tuple(kind(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2 or min(values) <= 0:
        raise DataError(f"{option} {text!r}: expected two positive numbers, e.g. 0.6,0.6")
    return values


def main(argv: Optional[Sequence[str]] = None) -> int:
    return one_error_line(run, argv)


def run(argv: Optional[Sequence[str]]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sl = sub.add_parser("slices", help="volumes -> the slice layout, manifest.csv, preprocessing.json")
    sl.add_argument("--volumes", type=Path, help="a dataset (dataset.json: nnU-Net v2, Decathlon) or a folder with "
                                                 "images/ and, if labelled, labels/")
    sl.add_argument("--dataset", type=Path, help="an nnU-Net v2 raw dataset or a Decathlon task (dataset.json)")
    sl.add_argument("--images", type=Path, help="a folder of image volumes (without --dataset)")
    sl.add_argument("--labels_dir", type=Path, help="a folder of label volumes named as the images")
    sl.add_argument("--out", type=Path, required=True)
    sl.add_argument("--axis", type=int, default=2, choices=[0, 1, 2], help="slicing axis in RAS: 2 axial")
    sl.add_argument("--spacing", default="", help="in-plane mm after resampling, e.g. 0.6,0.6 (default: as stored)")
    sl.add_argument("--size", default="", help="in-plane size after padding (default: the largest volume's)")
    sl.add_argument("--channel", type=int, default=None, help="the channel of 4D volumes the network reads")
    sl.add_argument("--labels", default="", help="label values -> classes, e.g. '1,2:1' merges 1 and 2 into 1")
    sl.add_argument("--clip", default="0.5,99.5", help="intensity percentiles clipped before scaling to [0, 1]")
    sl.add_argument("--val_fraction", type=float, default=0.2, help="share of patients in val/")
    sl.add_argument("--seed", type=int, default=0)
    sl.add_argument("--format", choices=["nii", "png"], default="nii")
    sl.add_argument("--like", type=Path, help="slice as this layout was (its preprocessing.json): a target like its source")
    args = parser.parse_args(argv)
    given = [a for a in (args.volumes, args.dataset, args.images) if a]
    if len(given) != 1:
        raise DataError("volumes.py slices: give one of --volumes DIR, --dataset DIR, --images DIR [--labels_dir DIR]")
    source = str(given[0].resolve())
    check_not_other_input(args.out, source)
    prep = like(args.like) if args.like else Preprocessing(
        axis=args.axis, spacing=pair(args.spacing, float, "--spacing"), size=pair(args.size, int, "--size"),
        channel=args.channel, clip=pair(args.clip, float, "--clip"), labels=parse_label_map(args.labels))
    cases = (read_volumes(args.volumes, prep.channel) if args.volumes else read_dataset(args.dataset, prep.channel)
             if args.dataset else read_folders(args.images, args.labels_dir))
    write_layout(cases, prep, args.out, args.val_fraction, args.seed, args.format, source)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
