"""Slice datasets (PNG / NIfTI / npy) decoded once into memory, grouped into patients by regex.

Layout (seed 004): ``<dataset>/<split>/<folder>/CaseNN_M.<ext>``, one file per 2D slice; the
``--target_folders`` option lists (folder, transform, is_hot): the first folder holds the images,
the second the ground truth the losses see (GT gray level = class index).
"""
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch import Tensor

from utils import OptionError, parse_literal

EXTENSIONS = (".png", ".nii.gz", ".nii", ".npy")


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it."""


# ---------------------------------------------------------------- decoding one file

def _read_png(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGB", "RGBA", "P", "LA"):
            img = img.convert("L")
        arr = np.asarray(img)
    return arr


def _read_nii(path: Path) -> np.ndarray:
    arr = np.asarray(nib.load(str(path)).dataobj)
    return arr.squeeze()


def _read_any(path: Path) -> np.ndarray:
    try:
        if path.name.endswith(".png"):
            arr = _read_png(path)
        elif path.name.endswith((".nii", ".nii.gz")):
            arr = _read_nii(path)
        else:
            arr = np.load(path, allow_pickle=False).squeeze()
    except Exception as e:  # PIL, nibabel and numpy raise many types for corrupt files
        raise DataError(f"{path}: cannot decode ({type(e).__name__}: {e})") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2D slice, got shape {arr.shape}")
    return arr


def png_transform(path: Path) -> np.ndarray:
    """Image: integer gray levels scaled to [0, 1] by the type's maximum."""
    arr = _read_any(path)
    scale = float(np.iinfo(arr.dtype).max) if np.issubdtype(arr.dtype, np.integer) else 1.0
    return arr.astype(np.float32) / scale


def nii_transform(path: Path) -> np.ndarray:
    """Image: intensities as stored; float16 stays float16 (the CC359 cache's type: the loader keeps it, half the
    memory, and batches become float32 exactly), every other type becomes float32."""
    arr = _read_any(path)
    return arr if arr.dtype == np.float16 else arr.astype(np.float32)


def nii_transform2(path: Path) -> np.ndarray:
    """Image: intensities divided by the slice's maximum (an empty slice stays 0)."""
    arr = _read_any(path).astype(np.float32)
    peak = float(np.abs(arr).max()) if np.isfinite(arr).all() else 1.0
    return arr / peak if peak > 0 else arr


def gt_transform(path: Path) -> np.ndarray:
    """Ground truth: gray level = class index."""
    return _read_any(path)


TRANSFORMS: Dict[str, Callable[[Path], np.ndarray]] = {
    "png_transform": png_transform, "nii_transform": nii_transform, "nii_transform2": nii_transform2,
    "npy_transform": nii_transform,
    "gt_transform": gt_transform, "nii_gt_transform": gt_transform, "nii_gt_transform2": gt_transform,
    "dummy_gt_transform": gt_transform,
}
IMAGE_TRANSFORMS = {png_transform, nii_transform, nii_transform2}
Folders = List[Tuple[str, Callable[[Path], np.ndarray], bool]]


def parse_folders(text: str, option: str) -> Folders:
    """``[('IMG', nii_transform2, False), ...]`` -> list of (subfolder, transform function, is_hot)."""
    value = parse_literal(text, TRANSFORMS, option)
    if not isinstance(value, list) or not value:
        raise OptionError(f"{option}: expected a non-empty list of (folder, transform, is_hot) tuples")
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str) and callable(item[1])):
            raise OptionError(f"{option}: each entry must be (folder, transform, is_hot), got {item!r}")
    return value


def pixel_spacing(path: Path) -> Tuple[float, float, float]:
    """In-plane spacing and slice thickness (mm) from a NIfTI header's pixdim[1:4]; (1, 1, 1) otherwise.

    pixdim, not get_zooms(): a 2D slice's zooms have two values, so its slice thickness (pixdim[3])
    would be lost. A 0 (unset) entry counts as 1 mm; a negative one by its magnitude.
    """
    if not path.name.endswith((".nii", ".nii.gz")):
        return (1.0, 1.0, 1.0)
    try:
        pixdim = np.asarray(nib.load(str(path)).header["pixdim"][1:4], dtype=np.float64)
    except Exception as e:  # nibabel raises several types for non-NIfTI files
        raise DataError(f"{path}: cannot read the NIfTI header ({type(e).__name__}: {e})") from None
    if not np.isfinite(pixdim).all():
        raise DataError(f"{path}: pixdim[1:4] {pixdim.tolist()} holds NaN or Inf; the voxel spacing is unknown")
    pixdim = np.abs(pixdim)
    return tuple(float(v) for v in np.where(pixdim > 0, pixdim, 1.0))


# ---------------------------------------------------------------- patients

def parse_slice_name(name: str, grp_regex: str) -> Tuple[str, int]:
    """(patient id, slice number) of a slice file name.

    The regex must match the start of the name. With a capture group, group 1 is the patient;
    without one (the seed's ``Case\\d+_\\d+``) the patient is the match minus its trailing ``_M``.
    The slice number is the last integer of the stem.
    """
    stem = strip_extension(name)
    match = re.match(grp_regex, stem)
    if match is None:
        raise DataError(f"slice {name!r} does not match --grp_regex {grp_regex!r}")
    patient = match.group(1) if match.groups() else re.sub(r"_\d+$", "", match.group(0))
    numbers = re.findall(r"\d+", stem)
    return patient, int(numbers[-1]) if numbers else 0


def strip_extension(name: str) -> str:
    for ext in EXTENSIONS:
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


# ---------------------------------------------------------------- the in-memory slice set

@dataclass
class SliceSet:
    """All slices of one split, decoded once: images (N, 1, H, W) float32 (float16 when every file stores float16:
    the network gets them as float32, exactly), labels (N, H, W) uint8 (None: an unlabelled split)."""

    root: Path
    filenames: List[str]
    images: Tensor
    labels: Optional[Tensor]
    patients: List[str]
    slice_numbers: List[int]
    spacings: Dict[str, Tuple[float, float, float]]     # per patient (row, column, slice) mm, from its first file
    bounds: List[Tensor] = field(default_factory=list)  # one (N, C, 2) per loss

    def __len__(self) -> int:
        return len(self.filenames)

    def batches(self, batch_size: int, shuffle: bool, generator: torch.Generator) -> Iterator[Tensor]:
        order = torch.randperm(len(self), generator=generator) if shuffle else torch.arange(len(self))
        return iter(order.split(batch_size))

    def random_batches(self, batch_size: int, iterations: int, generator: torch.Generator) -> Iterator[Tensor]:
        """``iterations`` batches of slices drawn uniformly with replacement (seed 000's sampler, whole slices)."""
        return iter(torch.randint(len(self), (iterations, batch_size), generator=generator))


def list_slices(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.name.endswith(EXTENSIONS) and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no slice files ({', '.join(EXTENSIONS)})")
    return files


def _resolve(folder: Path, stem: str, reference: Path) -> Path:
    for ext in EXTENSIONS:
        candidate = folder / (stem + ext)
        if candidate.is_file():
            return candidate
    raise DataError(f"{reference}: no matching file {stem}.* in {folder}")


def load_split(root: Path, folders: str, n_class: int, grp_regex: str, debug: bool = False,
               option: str = "--folders", labelled: bool = True) -> SliceSet:
    """``load_slices`` with the folders given as an option string (``option`` names it in errors)."""
    return load_slices(root, parse_folders(folders, option), n_class, grp_regex, debug, labelled)


def load_slices(root: Path, folders: Folders, n_class: int, grp_regex: str, debug: bool = False,
                labelled: bool = True) -> SliceSet:
    """Decode every slice of ``root`` once. Images come from folders[0], labels from folders[1]; an unlabelled
    split (``labelled`` False: a target with tags only) reads no label and its ``labels`` is None."""
    if len(folders) < 2:
        raise DataError(f"{root}: --target_folders needs an image folder and a GT folder, got {len(folders)}")
    for sub, transform, is_hot in folders:
        if is_hot:
            raise DataError(f"{root}/{sub}: one-hot ground-truth files (is_hot=True) are not supported; store class indices")
    img_dir, gt_dir = root / folders[0][0], root / folders[1][0]
    img_tf, gt_tf = folders[0][1], folders[1][1]
    if img_tf not in IMAGE_TRANSFORMS:
        raise DataError(f"{img_dir}: the first folder must use an image transform, got {img_tf.__name__}")

    img_files = list_slices(img_dir)
    if labelled:
        gt_names = {strip_extension(p.name) for p in list_slices(gt_dir)}
        orphans = sorted(gt_names - {strip_extension(p.name) for p in img_files})
        if orphans:
            raise DataError(f"{gt_dir}: ground truth {orphans[0]} has no image in {img_dir}")
    if debug:
        img_files = img_files[:10]
    gt_files = [_resolve(gt_dir, strip_extension(p.name), p) for p in img_files] if labelled else [None] * len(img_files)
    for sub, _, _ in folders[2:] if labelled else ():
        for p in img_files:  # extra folders (the seed lists GT twice) must be complete too
            _resolve(root / sub, strip_extension(p.name), p)

    images = labels = None          # filled in place: a list of slices and its stacked copy would double the peak
    for i, (ip, gp) in enumerate(zip(img_files, gt_files)):
        img = img_tf(ip)
        gt = gt_tf(gp) if labelled else None
        if labelled and img.shape != gt.shape:
            raise DataError(f"{ip}: image shape {img.shape} differs from its ground truth {gp} {gt.shape}")
        if not np.isfinite(img).all():
            raise DataError(f"{ip}: NaN or Inf intensities")
        if images is None:
            images = np.empty((len(img_files), *img.shape), img.dtype)
            labels = np.empty((len(img_files), *img.shape), np.uint8) if labelled else None
        elif img.shape != images.shape[1:]:
            raise DataError(f"{img_dir}: slices of different shapes {sorted({images.shape[1:], img.shape})} "
                            f"({img_files[0].name}, {ip.name}); resample them to one shape")
        elif images.dtype != img.dtype == np.float32:      # float16 files, then another type: all float32 (once)
            images = images.astype(np.float32)
        images[i] = img
        if labelled:
            labels[i] = _check_labels(gt, gp, n_class)

    names = [p.name for p in img_files]
    try:
        parsed = [parse_slice_name(n, grp_regex) for n in names]
    except DataError as e:
        raise DataError(f"{img_dir}: {e}") from None
    patients = [p for p, _ in parsed]
    first_file = dict(zip(reversed(patients), reversed(gt_files if labelled else img_files)))
    return SliceSet(root=root, filenames=names, images=torch.from_numpy(images).unsqueeze(1),
                    labels=torch.from_numpy(labels) if labelled else None,
                    patients=patients, slice_numbers=[s for _, s in parsed],
                    spacings={pid: pixel_spacing(path) for pid, path in first_file.items()})


def _check_labels(gt: np.ndarray, path: Path, n_class: int) -> np.ndarray:
    if not np.issubdtype(gt.dtype, np.integer):
        if not np.isfinite(gt).all() or not np.array_equal(gt, np.round(gt)):
            raise DataError(f"{path}: ground truth holds non-integer labels")
    lo, hi = gt.min(), gt.max()
    if lo < 0 or hi >= n_class:
        raise DataError(f"{path}: ground-truth gray levels span [{lo:g}, {hi:g}] but --n_class is {n_class} "
                        f"(gray level = class index, so values must lie in 0..{n_class - 1})")
    return gt.astype(np.uint8)


def check_disjoint_patients(train: SliceSet, val: SliceSet) -> None:
    """No patient may appear in both train and val (seed 004, NB 1)."""
    shared = sorted(set(train.patients) & set(val.patients))
    if shared:
        raise DataError(f"patient {shared[0]} appears in both {train.root} and {val.root} "
                        f"({len(shared)} shared patients); splits must be disjoint")


def save_predictions(folder: Path, filenames: Sequence[str], pred: Tensor) -> None:
    """Predicted labels as PNG, gray level = class index (the GT convention)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, p in zip(filenames, pred.numpy()):
        Image.fromarray(p).save(folder / f"{strip_extension(name)}.png")


def save_entropy_maps(folder: Path, filenames: Sequence[str], entropy: Tensor) -> None:
    """Normalised entropy (0 = certain, 255 = uniform) as 8-bit PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, e in zip(filenames, entropy.float().numpy()):
        Image.fromarray(np.clip(e * 255 + 0.5, 0, 255).astype(np.uint8)).save(folder / f"{strip_extension(name)}.png")
