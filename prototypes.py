"""Prototype segmentation (ProtoSeg, seed 003, docs/methods/protoseg.md): how well a feature map segments.

Algorithm 1: a guide map (the ground truth, or the network's own output) weights two prototypes per image,
the mean feature vector of the foreground and of the background; every pixel goes to the nearer one
(squared Euclidean distance), which gives a segmentation of the feature map (SAM). Its Dice against the
ground truth is the layer's segmentation ability (SA score, Eq. 8); per unit, the same on one channel. The
mean SA score mu of an image (Eq. 12) compares every unit of the network's last two feature layers with the
network's own output, one foreground class against the others at a time, and averages over the classes the output
holds: no label is read, so mu estimates the output's quality on unlabelled images.

Shapes: features (B, C, *S') from any layer, resized (bilinear / trilinear, align_corners=False) to the
guide's (B, 1, *S); S is 2D or 3D. Sums run over positions, per image, never over the batch.
"""
import contextlib
from typing import Callable, ContextManager, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from metrics import dice
from networks import BlockNet, tapped
from utils import resized


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


def has_prototypes(guide: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """(B,) whether the binary guide has both foreground and background inside the mask (else no prototype)."""
    g = guide.bool() if mask is None else guide.bool() & mask.bool()
    rest = ~guide.bool() if mask is None else ~guide.bool() & mask.bool()
    return g.flatten(1).any(1) & rest.flatten(1).any(1)


def _pooled_weights(weights: Tensor, size: Sequence[int]) -> Tensor:
    """The adjoint of ``resized`` applied to (B, K, *S) weights: (B, K, *size) with sum(w * resized(x)) = sum(that
    * x) for every x (interpolation is linear), so weighted means of the resized features never build them."""
    if tuple(weights.shape[2:]) == tuple(size):
        return weights
    probe = torch.zeros(*weights.shape[:2], *size, dtype=weights.dtype, device=weights.device, requires_grad=True)
    with torch.enable_grad():
        (pooled,) = torch.autograd.grad((resized(probe, weights.shape[2:]) * weights).sum(), probe)
    return pooled


def sam(features: Tensor, guide: Tensor, mask: Optional[Tensor] = None, per_unit: bool = False) -> Tensor:
    """The SAM, (B, [C,] *S) bool: ``segmentation_map(distances(...), from_distances=True)`` computed in float64
    without the full-size features where it can. The foreground prototype p is nearer than the background's n iff
    2 x.(p - n) > |p|^2 - |n|^2, linear in x, so the dot product is taken at the layer's own resolution and then
    resized; the prototypes come from the adjoint of the resize. Per unit, every channel is resized (1D test)."""
    check_guide(features, guide, mask)
    size, x = guide.shape[2:], features.double()
    g = guide.double()
    m = torch.ones_like(g) if mask is None else mask.double()
    weights = torch.cat([g * m, (1 - g) * m], dim=1)                                       # (B, 2, *S)
    dims = tuple(range(2, x.dim()))
    pooled = _pooled_weights(weights, x.shape[2:])                                         # (B, 2, *s)
    protos = torch.einsum("bc...,bk...->bkc", x, pooled) / weights.sum(dims)[..., None]   # (B, 2, C): 0/0 -> NaN
    pos, neg = protos[:, 0], protos[:, 1]
    if per_unit:
        view = (*pos.shape, *[1] * len(size))
        return (pos - neg).view(view) * (2 * resized(x, size) - (pos + neg).view(view)) > 0
    score = resized(torch.einsum("bc...,bc->b...", x, pos - neg)[:, None], size)[:, 0]    # (B, *S)
    return 2 * score > ((pos ** 2).sum(1) - (neg ** 2).sum(1)).view(-1, *[1] * len(size))


def sa_scores(features: Tensor, gt: Tensor, mask: Optional[Tensor] = None, per_unit: bool = False) -> Tensor:
    """SA score (Eq. 8) of a layer per image, (B,), or of each unit, (B, C): Dice(SAM, GT) with GT prototypes.

    gt: (B, 1, *S) binary. Images whose ground truth has no foreground (or no background) inside the mask
    have no prototype: NaN, for the caller to skip and count (``torch.isnan``)."""
    target = gt.bool()
    n_spatial = gt.dim() - 2
    scores = dice(sam(features, gt, mask, per_unit), target if per_unit else target[:, 0], n_spatial)  # (B, [C])
    ok = has_prototypes(gt, mask).view(-1, *[1] * (scores.dim() - 1))
    return torch.where(ok, scores, torch.full_like(scores, float("nan")))


def output_masks(probs: Tensor) -> Tensor:
    """(B, C, *S) class probabilities -> (B, C - 1, 1, *S) bool: where the argmax is class k, for k = 1..C-1.

    Two classes: a comparison of the two (ties go to the background, as argmax's first index does), no argmax."""
    if probs.shape[1] == 2:
        return (probs[:, 1:2] > probs[:, :1]).unsqueeze(2)
    return (probs.argmax(dim=1, keepdim=True) == torch.arange(1, probs.shape[1], device=probs.device)
            .view(1, -1, *[1] * (probs.dim() - 2))).unsqueeze(2)


def class_sa_scores(last_features: Sequence[Tensor], output_probs: Tensor) -> Tensor:
    """(B, C - 1): per image and foreground class k, the mean SA score of every unit of the last feature layers
    against the network's own mask of k (one class against all the others, prototypes from that mask too). NaN
    where the output has no k, or nothing but k (no contrast). No label is read."""
    if not last_features:
        raise ValueError("mean_sa_score needs the network's last feature layer(s)")
    masks = output_masks(output_probs)
    return torch.stack([torch.cat([sa_scores(f, masks[:, k], per_unit=True) for f in last_features], dim=1).mean(dim=1)
                        for k in range(masks.shape[1])], dim=1)


def image_mu(class_scores: Tensor) -> Tensor:
    """mu per image (Eq. 12) from class_sa_scores: the mean over the classes its output holds; 0 for an output
    with none (empty: a collapsed model scores low), never NaN. Two classes: the one class's score."""
    present = ~torch.isnan(class_scores)
    total = torch.where(present, class_scores, torch.zeros_like(class_scores)).sum(dim=1)
    return torch.where(present.any(dim=1), total / present.sum(dim=1).clamp(min=1), torch.zeros_like(total))


def mean_sa_score(last_features: Sequence[Tensor], output_probs: Tensor) -> Tensor:
    """mu per image (Eq. 12), (B,), of the (B, C, *S) output probabilities: image_mu of class_sa_scores."""
    return image_mu(class_sa_scores(last_features, output_probs))


def class_means(class_scores: Tensor) -> List[float]:
    """Each foreground class's mu over the images whose output holds it; 0 for a class no output holds (a
    structure that vanished scores low)."""
    present = ~torch.isnan(class_scores)
    total = torch.where(present, class_scores, torch.zeros_like(class_scores)).sum(dim=0)
    return (total / present.sum(dim=0).clamp(min=1)).tolist()


# ---------------------------------------------------------------- label-free model selection

def mu_subsample(patients: Sequence[str], slice_numbers: Sequence[int], n_images: int) -> Tensor:
    """Indices of a fixed, label-free subsample of about ``n_images`` slices: per patient, k = max(2, round(n /
    patients)) slices at the centres of k equal bins of its slices in slice order (no label is read)."""
    table = pd.DataFrame({"patient": list(patients), "slice": list(slice_numbers), "index": range(len(patients))})
    k = max(2, round(n_images / max(table["patient"].nunique(), 1)))
    chosen: List[int] = []
    for _, group in table.sort_values(["patient", "slice"], kind="stable").groupby("patient", sort=True):
        index = group["index"].to_numpy()
        chosen.extend(index[np.unique(((np.arange(k) + 0.5) * len(index) / k).astype(int))].tolist())
    return torch.tensor(sorted(chosen), dtype=torch.long)


class MuScores(NamedTuple):
    mu: Tensor                      # (N,) mu per image (image_mu)
    empty: Tensor                   # (N,) bool: the output has no foreground
    per_class: Tensor               # (N, C - 1) class_sa_scores, NaN where the output lacks the class
    probs: Optional[Tensor]         # (N, C, H, W) class probabilities with keep_probs, else None


def mu_per_image(net: BlockNet, images: Tensor, batch_size: int, device: torch.device,
                 autocast: Callable[[], ContextManager] = contextlib.nullcontext,
                 keep_probs: bool = False) -> MuScores:
    """mu of ``net`` on ``images`` (N, 1, H, W) per image and class, from the network's last feature layers and its
    own output; with ``keep_probs``, its class probabilities too. No label is read."""
    last = net.last_feature_layers()
    was_training = net.training
    net.eval()
    scores, empty, probs = [], [], []
    with tapped(net, last) as taps, torch.no_grad():
        for start in range(0, len(images), batch_size):
            with autocast():
                logits = net(images[start:start + batch_size].to(device, torch.float32))
            batch_probs = logits.float().softmax(dim=1)
            scores.append(class_sa_scores([taps[name].float() for name in last], batch_probs).cpu())
            empty.append(~output_masks(batch_probs).flatten(1).any(1).cpu())
            if keep_probs:
                probs.append(batch_probs.cpu())
    net.train(was_training)
    per_class = torch.cat(scores)
    return MuScores(image_mu(per_class), torch.cat(empty), per_class, torch.cat(probs) if keep_probs else None)


def label_free_mu(net: BlockNet, images: Tensor, batch_size: int, device: torch.device,
                  autocast: Callable[[], ContextManager] = contextlib.nullcontext) -> Tuple[float, float, List[float]]:
    """(mean mu, share of empty outputs, each class's mu) of ``net`` over ``images``: a collapsed model, whose
    outputs are empty, scores low, and so does a model that lost one structure, in that structure's mu."""
    scores = mu_per_image(net, images, batch_size, device, autocast)
    return scores.mu.mean().item(), scores.empty.double().mean().item(), class_means(scores.per_class)
