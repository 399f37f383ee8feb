"""ProtoSeg (seed 003, methods/protoseg.md): how well a feature map segments, without training anything.

Algorithm 1: a guide map (the ground truth, or the network's own output) weights two prototypes per image,
the mean feature vector of the foreground and of the background; every pixel goes to the nearer one
(squared Euclidean distance), which gives a segmentation of the feature map (SAM). Its Dice against the
ground truth is the layer's segmentation ability (SA score, Eq. 8); per unit, the same on one channel. The
mean SA score mu of an image (Eq. 12) compares every unit of the network's last two feature layers with the
network's binarised output: no label is read, so mu estimates the output's quality on unlabelled images.

Shapes: features (B, C, *S') from any layer, resized (bilinear / trilinear, align_corners=False) to the
guide's (B, 1, *S); S is 2D or 3D. Sums run over positions, per image, never over the batch.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def resized(features: Tensor, size: Sequence[int]) -> Tensor:
    """Features at the guide's spatial size (linear interpolation; unchanged when the size matches)."""
    if tuple(features.shape[2:]) == tuple(size):
        return features
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(features, size=tuple(size), mode=mode, align_corners=False)


def check_guide(features: Tensor, guide: Tensor, mask: Optional[Tensor]) -> None:
    if guide.dim() != features.dim() or guide.shape[0] != features.shape[0] or guide.shape[1] != 1:
        raise ValueError(f"the guide must be (B, 1, *spatial) with B = {features.shape[0]} and as many spatial "
                         f"dimensions as the features {tuple(features.shape)}; got {tuple(guide.shape)}")
    if mask is not None and mask.shape != guide.shape:
        raise ValueError(f"the mask must have the guide's shape {tuple(guide.shape)}; got {tuple(mask.shape)}")


def distances(features: Tensor, guide: Tensor, mask: Optional[Tensor] = None, per_unit: bool = False) -> Tensor:
    """(B, 2, [C,] *S): squared distances of every position to the background (0) and foreground (1) prototypes.

    Prototypes are guide-weighted means (Eq. 6) inside ``mask``; per_unit: each channel alone (C = 1 each).
    An image whose guide has no foreground (or no background) inside the mask gets NaN distances.
    """
    check_guide(features, guide, mask)
    x = resized(features.float(), guide.shape[2:])
    weights = guide.float() if mask is None else guide.float() * mask.float()
    rest = (1 - guide.float()) if mask is None else (1 - guide.float()) * mask.float()
    dims = tuple(range(2, x.dim()))
    pos = (x * weights).sum(dims, keepdim=True) / weights.sum(dims, keepdim=True)   # (B, C, 1..): 0/0 -> NaN
    neg = (x * rest).sum(dims, keepdim=True) / rest.sum(dims, keepdim=True)
    d_pos, d_neg = (x - pos) ** 2, (x - neg) ** 2
    if not per_unit:
        d_pos, d_neg = d_pos.sum(1), d_neg.sum(1)
    return torch.stack([d_neg, d_pos], dim=1)


def protoseg(features: Tensor, guide: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Algorithm 1: (B, 2, *S) probabilities, background then foreground, softmax of the negated distances.

    Unscaled squared distances, no temperature (the reference's behaviour): wide layers saturate to 0/1. The map
    is ``segmentation_map`` of the result (the mask shapes the prototypes, not the map)."""
    return torch.softmax(-distances(features, guide, mask), dim=1)


def segmentation_map(probs_or_distances: Tensor, from_distances: bool = False) -> Tensor:
    """The SAM: foreground where the foreground prototype is strictly nearer (a tie goes to the background)."""
    if from_distances:
        return probs_or_distances[:, 1] < probs_or_distances[:, 0]
    return probs_or_distances[:, 1] > probs_or_distances[:, 0]


def dice(pred: Tensor, target: Tensor, n_spatial: int) -> Tensor:
    """Dice over the last ``n_spatial`` dimensions (bool inputs, broadcast), 1 when both are empty."""
    dims = tuple(range(-n_spatial, 0))
    inter = (pred & target).sum(dims).double()
    total = (pred.sum(dims) + target.sum(dims)).double()
    return torch.where(total > 0, 2 * inter / total.clamp(min=1), torch.ones_like(total))


def has_prototypes(guide: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """(B,) whether the binary guide has both foreground and background inside the mask (else no prototype)."""
    g = guide.bool() if mask is None else guide.bool() & mask.bool()
    rest = ~guide.bool() if mask is None else ~guide.bool() & mask.bool()
    return g.flatten(1).any(1) & rest.flatten(1).any(1)


def sa_scores(features: Tensor, gt: Tensor, mask: Optional[Tensor] = None, per_unit: bool = False) -> Tensor:
    """SA score (Eq. 8) of a layer per image, (B,), or of each unit, (B, C): Dice(SAM, GT) with GT prototypes.

    gt: (B, 1, *S) binary. Images whose ground truth has no foreground (or no background) inside the mask
    have no prototype: NaN, for the caller to skip and count (``torch.isnan``)."""
    target = gt.bool()
    sam = segmentation_map(distances(features, gt, mask, per_unit), from_distances=True)   # (B, [C,] *S)
    n_spatial = gt.dim() - 2
    scores = dice(sam, target if per_unit else target[:, 0], n_spatial)                   # (B, C) or (B,)
    ok = has_prototypes(gt, mask).view(-1, *[1] * (scores.dim() - 1))
    return torch.where(ok, scores, torch.full_like(scores, float("nan")))


def mean_sa_score(last_features: Sequence[Tensor], output_probs: Tensor) -> Tensor:
    """mu per image (Eq. 12), (B,): the mean SA score of every unit of the last feature layers against the
    network's binarised output (argmax of its (B, 2, *S) probabilities), prototypes from that output too. No
    label is read. An image whose output is empty (or all foreground: no contrast) gets 0, never NaN."""
    if not last_features:
        raise ValueError("mean_sa_score needs the network's last feature layer(s)")
    output = (output_probs.argmax(dim=1, keepdim=True) == 1)
    scores = torch.cat([sa_scores(f, output, per_unit=True) for f in last_features], dim=1)    # (B, units)
    mu = scores.mean(dim=1)
    return torch.where(torch.isnan(mu), torch.zeros_like(mu), mu)
