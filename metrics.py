"""Segmentation metrics: 2D Dice per slice, 3D Dice per patient, surface Dice, HD95 and ASSD (spacing-aware).

Dice is 2|P & G| / (|P| + |G|), 1 when both masks are empty (dice_from_sizes); every Dice of the project is this one.
HD95/ASSD follow medpy's definitions: surfaces are the voxels removed by one erosion with the face-connected
structure, distances come from a Euclidean distance transform with the voxel spacing.
"""
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from scipy import ndimage
from surface_distance import lookup_tables   # DeepMind's exact marching-cubes tables (Apache-2.0)
from torch import Tensor

from dataloader import SliceSet


def confusion_sizes(pred: Tensor, gt: Tensor, n_class: int, chunk: int = 256) -> Tuple[Tensor, Tensor, Tensor]:
    """Per slice and class: intersection, predicted size, GT size. pred, gt: (N, H, W) labels -> (N, C) each.

    ``chunk`` slices at a time: the (chunk, C, H, W) masks stay small whatever N (a whole test split at once
    would hold three such masks of every slice)."""
    classes = torch.arange(n_class, device=pred.device).view(1, -1, 1, 1)
    parts = []
    for start in range(0, len(pred), chunk):
        p = pred[start:start + chunk].unsqueeze(1) == classes
        g = gt[start:start + chunk].unsqueeze(1) == classes
        parts.append(((p & g).sum(dim=(2, 3)), p.sum(dim=(2, 3)), g.sum(dim=(2, 3))))
    if not parts:
        empty = torch.zeros((0, n_class), dtype=torch.float64, device=pred.device)
        return empty, empty, empty
    return tuple(torch.cat(column).double() for column in zip(*parts))


def dice_from_sizes(inter: Tensor, pred_size: Tensor, gt_size: Tensor) -> Tensor:
    """Dice from the sizes of the intersection, the prediction and the ground truth: 2I / (|P| + |G|).

    Empty masks: both empty (nothing to find, nothing found) score 1; one empty against a non-empty one scores 0
    (I = 0). The SFDA code's (2I + 1e-8) / (|P| + |G| + 1e-8) gives the same to within 1e-8.
    """
    total = pred_size + gt_size
    return torch.where(total > 0, 2 * inter / torch.where(total > 0, total, torch.ones_like(total)),
                       torch.ones_like(total))


def dice(pred: Tensor, gt: Tensor, n_spatial: int) -> Tensor:
    """Dice (dice_from_sizes) of boolean masks over their last ``n_spatial`` dimensions, broadcast over the others."""
    dims = tuple(range(-n_spatial, 0))
    return dice_from_sizes((pred & gt).sum(dims).double(), pred.sum(dims).double(), gt.sum(dims).double())


def dice_3d(inter: Tensor, pred_size: Tensor, gt_size: Tensor, patients: Sequence[str]) -> Tuple[List[str], Tensor]:
    """3D Dice per patient: sums of the slices' I, |P|, |G| over each patient. Returns (ids, (P, C))."""
    ids = sorted(set(patients))
    position = {pid: i for i, pid in enumerate(ids)}
    index = torch.tensor([position[p] for p in patients])
    sums = [torch.zeros(len(ids), inter.shape[1], dtype=inter.dtype).index_add_(0, index, t)
            for t in (inter, pred_size, gt_size)]
    return ids, dice_from_sizes(*sums)


def surface_distances(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> Tuple[np.ndarray, np.ndarray]:
    """Distances from each surface voxel of ``pred`` to the surface of ``gt``, and back (medpy's definition)."""
    structure = ndimage.generate_binary_structure(pred.ndim, 1)

    def border(mask: np.ndarray) -> np.ndarray:
        return mask & ~ndimage.binary_erosion(mask, structure=structure, iterations=1)

    pred_border, gt_border = border(pred), border(gt)
    to_gt = ndimage.distance_transform_edt(~gt_border, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~pred_border, sampling=spacing)
    return to_gt[pred_border], to_pred[gt_border]


def hd95_assd(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> Tuple[float, float]:
    """(HD95, ASSD) between two binary masks; NaN when either mask is empty (undefined)."""
    pred, gt = pred.astype(bool), gt.astype(bool)
    if not pred.any() or not gt.any():
        return float("nan"), float("nan")
    d_pg, d_gp = surface_distances(pred, gt, spacing)
    hd95 = float(np.percentile(np.concatenate([d_pg, d_gp]), 95))
    assd = float((d_pg.mean() + d_gp.mean()) / 2)
    return hd95, assd


def patient_volumes(pred: np.ndarray, gt: np.ndarray, patients: Sequence[str],
                    slice_numbers: Sequence[int]) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
    """(patient, pred volume, gt volume) for each patient (sorted), slices stacked in slice order: (S, H, W)."""
    pats, nums = np.asarray(patients), np.asarray(slice_numbers)
    for pid in sorted(set(patients)):
        rows = np.flatnonzero(pats == pid)
        rows = rows[np.argsort(nums[rows], kind="stable")]
        yield pid, pred[rows], gt[rows]


def volume_spacing(spacing: Sequence[float]) -> Tuple[float, float, float]:
    """(row, column, slice) as the files give it -> the order of a stacked volume (slice, row, column)."""
    return (spacing[2], spacing[0], spacing[1])


def per_patient_hd(pred: Tensor, gt: Tensor, patients: Sequence[str], slice_numbers: Sequence[int],
                   spacings: Mapping[str, Sequence[float]], classes: Sequence[int]) -> Dict[str, np.ndarray]:
    """HD95 and ASSD per patient (slices stacked in slice order) for each class of ``classes``.

    pred, gt: (N, H, W) labels. ``spacings``: each patient's (row, column, slice) as read from its files.
    Returns {"hd95": (P, len(classes)), "assd": (P, len(classes))}, patients sorted.
    """
    n_patients = len(set(patients))
    hd = np.full((n_patients, len(classes)), np.nan)
    asd = np.full((n_patients, len(classes)), np.nan)
    volumes = patient_volumes(pred.cpu().numpy(), gt.cpu().numpy(), patients, slice_numbers)
    for i, (pid, p, g) in enumerate(volumes):
        for j, k in enumerate(classes):
            hd[i, j], asd[i, j] = hd95_assd(p == k, g == k, volume_spacing(spacings[pid]))
    return {"hd95": hd, "assd": asd}


# ---------------------------------------------------------------- surface Dice (Nikolov et al. 2018)
# Faithful to the DeepMind surface-distance definition (docs/methods/surface_dice.md): surfaces live on the
# corner lattice (shape + 1), each border corner carries its marching-cubes surfel area (3D) or
# contour length (2D) from the reference package's lookup tables, distances come from an EDT with
# the spacing, and a surface element counts when its distance is <= the tolerance.

def _neighbour_codes(mask: np.ndarray) -> np.ndarray:
    """Code of every lattice corner from its 2^n surrounding voxels; (-1,..,-1) weighs most. Shape + 1."""
    padded = np.pad(mask.astype(np.uint8), 1)
    n = mask.ndim
    codes = np.zeros(tuple(s + 1 for s in mask.shape), dtype=np.uint8)
    for bit, offset in enumerate(np.ndindex(*(2,) * n)):      # lexicographic: (0,..,0) ~ offset -1 first
        window = tuple(slice(o, o + s + 1) for o, s in zip(offset, mask.shape))
        codes |= padded[window] << np.uint8(2 ** n - 1 - bit)
    return codes


def _element_sizes(spacing: Sequence[float]) -> np.ndarray:
    """Surfel area (3D) or contour length (2D) of each neighbour code, from DeepMind's tables."""
    if len(spacing) == 3:
        return lookup_tables.create_table_neighbour_code_to_surface_area(tuple(spacing))
    return lookup_tables.create_table_neighbour_code_to_contour_length(tuple(spacing))


def surface_elements(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float]):
    """Directed corner distances and element sizes: (d_gt->pred, size_gt, d_pred->gt, size_pred)."""
    gt, pred = gt.astype(bool), pred.astype(bool)
    if gt.shape != pred.shape or gt.ndim != len(spacing) or gt.ndim not in (2, 3):
        raise ValueError(f"masks {gt.shape} / {pred.shape} and spacing {tuple(spacing)} do not agree (2D or 3D)")
    union = gt | pred
    empty = np.zeros(0)
    if not union.any():
        return empty, empty, empty, empty
    where = np.nonzero(union)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in where)   # cropping does not change the result
    full = 2 ** (2 ** gt.ndim) - 1
    sizes = _element_sizes(spacing)
    borders, element_sizes = [], []
    for mask in (gt[box], pred[box]):
        codes = _neighbour_codes(mask)
        border = (codes != 0) & (codes != full)
        borders.append(border)
        element_sizes.append(sizes[codes[border]])

    def distance_to(border: np.ndarray) -> np.ndarray:
        if not border.any():
            return np.full(border.shape, np.inf)
        return ndimage.distance_transform_edt(~border, sampling=spacing)

    b_gt, b_pred = borders
    return distance_to(b_pred)[b_gt], element_sizes[0], distance_to(b_gt)[b_pred], element_sizes[1]


def surface_dice(gt: np.ndarray, pred: np.ndarray, spacing: Sequence[float], tolerance: float = 1.0) -> float:
    """Surface Dice at ``tolerance`` (same unit as spacing, inclusive <=). NaN if both empty, 0 if one is."""
    d_gp, s_g, d_pg, s_p = surface_elements(gt, pred, spacing)
    total = s_g.sum() + s_p.sum()
    if total == 0:
        return float("nan")
    return float((s_g[d_gp <= tolerance].sum() + s_p[d_pg <= tolerance].sum()) / total)


# ---------------------------------------------------------------- a run's predictions on a split (main.py)

def size_stats(labels: Tensor) -> Tuple[int, int]:
    """(mean foreground size over slices, mean over slices with foreground), foreground = any class > 0."""
    fg = (labels > 0).sum(dim=(1, 2)).double()
    pos = fg[fg > 0]
    return int(fg.mean().item()), int(pos.mean().item()) if len(pos) else 0


def dice_2d(pred: Tensor, labels: Tensor, n_class: int, metric_axis: Sequence[int]) -> float:
    """Mean over slices of the 2D Dice of the ``--metric_axis`` classes."""
    return dice_from_sizes(*confusion_sizes(pred, labels, n_class))[:, list(metric_axis)].mean().item()


def evaluate(pred: Tensor, data: SliceSet, n_class: int, metric_axis: Sequence[int], do_hd: bool = False
             ) -> Dict[str, Any]:
    """2D Dice (mean over slices), 3D Dice per patient, and HD95/ASSD per patient when asked."""
    axis = list(metric_axis)
    inter, psize, gsize = confusion_sizes(pred, data.labels, n_class)
    dice2d = dice_from_sizes(inter, psize, gsize)[:, axis].mean().item()
    ids, d3 = dice_3d(inter, psize, gsize, data.patients)
    per_patient = pd.DataFrame({"patient": ids})
    for k in axis:
        per_patient[f"dice_3d_c{k}"] = d3[:, k].numpy()
    d3_mean = d3[:, axis].mean(dim=1)
    out = {"dice2d": dice2d, "dice3d": round(d3_mean.mean().item(), 4),
           "dice3d_sd": round(d3_mean.std().item(), 4) if len(ids) > 1 else 0.0, "per_patient": per_patient}
    if do_hd:
        hd = per_patient_hd(pred, data.labels, data.patients, data.slice_numbers, data.spacings, axis)
        for j, k in enumerate(axis):
            per_patient[f"hd95_c{k}"], per_patient[f"assd_c{k}"] = hd["hd95"][:, j], hd["assd"][:, j]
        out["hd95"] = float(np.nanmean(hd["hd95"])) if np.isfinite(hd["hd95"]).any() else float("nan")
        out["assd"] = float(np.nanmean(hd["assd"])) if np.isfinite(hd["assd"]).any() else float("nan")
    return out


def evaluate_volumes(pred: Tensor, data: SliceSet, metric_axis: Sequence[int], tolerance: float,
                     spacing: Optional[Sequence[float]] = None) -> pd.DataFrame:
    """Per test volume: 3D Dice and surface Dice at ``tolerance`` mm of each metric_axis class, and their means;
    ``spacing`` (row, column, slice) replaces each patient's own (its files') when given."""
    rows = []
    for pid, p, g in patient_volumes(pred.numpy(), data.labels.numpy(), data.patients, data.slice_numbers):
        vol_spacing = volume_spacing(spacing or data.spacings[pid])
        row: Dict[str, Any] = {"patient": pid}
        for k in metric_axis:
            pk, gk = p == k, g == k
            row[f"dice_c{k}"] = dice(torch.from_numpy(pk), torch.from_numpy(gk), pk.ndim).item()
            row[f"sdice_c{k}"] = surface_dice(gk, pk, vol_spacing, tolerance)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["dice"] = table[[f"dice_c{k}" for k in metric_axis]].mean(axis=1)
    table["sdice"] = table[[f"sdice_c{k}" for k in metric_axis]].mean(axis=1)
    return table
