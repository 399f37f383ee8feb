"""Segmentation metrics: 2D Dice per slice, 3D Dice per patient, HD95 and ASSD (spacing-aware).

Dice follows the SFDA code (methods/sfda.md): (2I + 1e-8) / (|P| + |G| + 1e-8), so an empty
prediction on an empty slice scores 1. HD95/ASSD follow medpy's definitions: surfaces are the
voxels removed by one erosion with the face-connected structure, distances come from a Euclidean
distance transform with the voxel spacing.
"""
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

EPS = 1e-8


def confusion_sizes(pred: Tensor, gt: Tensor, n_class: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Per slice and class: intersection, predicted size, GT size. pred, gt: (N, H, W) labels -> (N, C) each."""
    classes = torch.arange(n_class, device=pred.device).view(1, -1, 1, 1)
    p = pred.unsqueeze(1) == classes
    g = gt.unsqueeze(1) == classes
    return ((p & g).sum(dim=(2, 3)).double(), p.sum(dim=(2, 3)).double(), g.sum(dim=(2, 3)).double())


def dice_from_sizes(inter: Tensor, pred_size: Tensor, gt_size: Tensor) -> Tensor:
    return (2 * inter + EPS) / (pred_size + gt_size + EPS)


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


def per_patient_hd(pred: Tensor, gt: Tensor, patients: Sequence[str], slice_numbers: Sequence[int],
                   spacing: Sequence[float], classes: Sequence[int]) -> Dict[str, np.ndarray]:
    """HD95 and ASSD per patient (slices stacked in slice order) for each class of ``classes``.

    pred, gt: (N, H, W) labels. ``spacing`` is (row, column, slice) as read from the files.
    Returns {"hd95": (P, len(classes)), "assd": (P, len(classes))}, patients sorted.
    """
    ids = sorted(set(patients))
    pred_np, gt_np = pred.cpu().numpy(), gt.cpu().numpy()
    hd = np.full((len(ids), len(classes)), np.nan)
    asd = np.full((len(ids), len(classes)), np.nan)
    pats, nums = np.asarray(patients), np.asarray(slice_numbers)
    vol_spacing = (spacing[2], spacing[0], spacing[1])  # volumes are stacked as (slice, row, column)
    for i, pid in enumerate(ids):
        rows = np.flatnonzero(pats == pid)
        rows = rows[np.argsort(nums[rows], kind="stable")]
        for j, k in enumerate(classes):
            hd[i, j], asd[i, j] = hd95_assd(pred_np[rows] == k, gt_np[rows] == k, vol_spacing)
    return {"hd95": hd, "assd": asd}
