"""Loss classes. Each takes (probs, target, bounds) and returns its two logged terms.

``terms(probs, target, bounds) -> (loss_s, loss_cons)``: the supervised/entropy term and the
constraint/prior term, logged as ``*_loss_s`` and ``*_loss_cons``; the loss is their sum.
Shapes: probs and target (B, C, H, W), bounds (B, C, 2) as produced by bounds.py.
A loss that reads feature maps names them in ``layers``; training.run_pass taps them and passes ``features`` (name -> map).
"""
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor

from prototypes import has_prototypes, protoseg
from utils import RATIO_FUNCTIONS, SIZE_FUNCTIONS, instantiate, simplex

Terms = Tuple[Tensor, Tensor]


class Loss:
    layers: Tuple[str, ...] = ()        # the feature layers the loss reads (networks.tapped names)
    reads_labels = True                 # False: target is never read, so an unlabelled split (None) can use it

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        raise NotImplementedError

    def __call__(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Tensor:
        s, cons = self.terms(probs, target, bounds)
        return s + cons


def _weighted_entropy_sum(probs: Tensor, weights: Tensor) -> Tensor:
    """- sum_{b,c,x} w_c p log(p + 1e-10)."""
    return -torch.einsum("bcwh,c->", probs * (probs + 1e-10).log(), weights)


def soft_dice(probs: Tensor, target: Tensor) -> Tensor:
    """Soft Dice per image and class, (B, C, *S) -> (B, C): 2 sum(p t) / sum(p + t), 1 where both sum to 0.

    A loss term, not metrics.dice: it scores probabilities, not masks, and must stay differentiable in them; its
    empty rule is the metric's."""
    inter = (probs * target).flatten(2).sum(2)
    total = (probs + target).flatten(2).sum(2)
    return torch.where(total > 0, 2 * inter / total.clamp(min=1e-10), torch.ones_like(total))


class CrossEntropy(Loss):
    """Weighted CE on classes ``idc``, normalised by the number of labelled pixels of those classes."""

    def __init__(self, idc: Sequence[int], weights: Sequence[float] = ()):
        self.idc = list(idc)
        self.weights = torch.tensor(list(weights) or [1.0] * len(self.idc), dtype=torch.float32)
        if len(self.weights) != len(self.idc):
            raise ValueError(f"CrossEntropy: {len(self.weights)} weights for {len(self.idc)} classes")

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        log_p = (probs[:, self.idc].float() + 1e-10).log()
        mask = target[:, self.idc].float()
        loss = -torch.einsum("bcwh,bcwh,c->", mask, log_p, self.weights.to(probs.device))
        loss = loss / (mask.sum() + 1e-10)
        return loss, torch.zeros_like(loss)


class DiceLoss(Loss):
    """1 - soft Dice per image and class of ``idc``, averaged."""

    def __init__(self, idc: Sequence[int]):
        self.idc = list(idc)

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        loss = (1 - soft_dice(probs[:, self.idc].float(), target[:, self.idc].float())).mean()
        return loss, torch.zeros_like(loss)


class SelfEntropy(Loss):
    """Class-weighted Shannon entropy of the prediction (AdaEnt), per-pixel mean over classes ``idc``."""
    reads_labels = False

    def __init__(self, idc: Sequence[int], weights: Sequence[float]):
        self.idc = list(idc)
        self.weights = torch.tensor(list(weights), dtype=torch.float32)
        if len(self.weights) != len(self.idc):
            raise ValueError(f"SelfEntropy: {len(self.weights)} weights for {len(self.idc)} classes")

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        p = probs[:, self.idc].float()
        loss = _weighted_entropy_sum(p, self.weights.to(p.device)) / (p.sum() + 1e-10)
        return loss, torch.zeros_like(loss)


class EntKLProp(Loss):
    """Weighted entropy + KL(predicted class ratio || prior class ratio) (Bateson et al. 2020/2022).

    L = lamb_se * L_ent + lamb_consprior * L_KL, both over all classes (docs/methods/sfda.md):
      L_ent = - sum w_c p log(p + 1e-10) / sum p
      tau   = fn(p, power) per image: norm_soft_size (the code) or soft_ratio (the papers' sum p / (W*H)),
      tau*  = bounds[:, :, 0] / (W*H)
      L_KL  = (1/B) sum_b sum_c v_c tau [log(tau + 1e-10) - log(tau* + 1e-10)], v_c = weights_kl (1: the seed's)
    ``curi=False`` takes the prior from the batch's ground truth (the "cheat" upper bound).
    ``idc_c``, ``lamb_conspred`` and ``inv_consloss`` are accepted for compatibility with the seed's
    recipes; the seed's EntKLProp does not use them either.
    """

    def __init__(self, weights_se: Sequence[float], lamb_se: float = 1, lamb_consprior: float = 1,
                 power: float = 1, curi: bool = True, ivd: bool = True, fn: str = "norm_soft_size",
                 idc_c: Sequence[int] = (1,), lamb_conspred: float = 0, inv_consloss: bool = False,
                 weights_kl: Optional[Sequence[float]] = None):
        if fn not in RATIO_FUNCTIONS:
            raise ValueError(f"EntKLProp: size function {fn!r} does not give a class ratio; "
                             f"use one of {', '.join(RATIO_FUNCTIONS)}")
        self.weights = torch.tensor(list(weights_se), dtype=torch.float32)
        self.weights_kl = torch.tensor(list(weights_kl), dtype=torch.float32) if weights_kl is not None else None
        self.lamb_se, self.lamb_consprior = float(lamb_se), float(lamb_consprior)
        self.power, self.curi, self.ivd = power, bool(curi), bool(ivd)
        self.size_fn = SIZE_FUNCTIONS[fn]
        self.reads_labels = not self.curi              # the prior from the bounds, or from the batch's labels

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        if not simplex(probs):
            raise ValueError(f"EntKLProp: the predictions {tuple(probs.shape)} do not sum to 1 over the classes "
                             f"(axis 1); it needs softmax probabilities")
        b, c, w, h = probs.shape
        if len(self.weights) != c:
            raise ValueError(f"EntKLProp: weights_se has {len(self.weights)} entries for {c} classes")
        if self.weights_kl is not None and len(self.weights_kl) != c:
            raise ValueError(f"EntKLProp: weights_kl has {len(self.weights_kl)} entries for {c} classes")
        probs = probs.float()
        loss_se = _weighted_entropy_sum(probs, self.weights.to(probs.device)) / (probs.sum() + 1e-10)

        est_prop = self.size_fn(probs, self.power)                   # (B, C)
        if self.curi:
            prior = bounds[:, :, 0] if self.ivd else bounds[..., 0]
            gt_prop = prior.float().reshape(b, c) / (w * h)
        else:
            gt_prop = self.size_fn(target.float(), self.power)
        kl = est_prop * ((est_prop + 1e-10).log() - (gt_prop + 1e-10).log())                 # (B, C)
        loss_kl = (kl if self.weights_kl is None else kl * self.weights_kl.to(kl.device)).sum() / b
        return self.lamb_se * loss_se, self.lamb_consprior * loss_kl


class NaivePenalty(Loss):
    """Quadratic penalty outside [lower, upper] of the predicted size, on classes ``idc``.

    sum_b,c (max(0, v - upper)^2 + max(0, lower - v)^2) / (W*H)^2 with v = fn(probs); with
    norm_soft_size the bounds are divided by W*H first (as in the SFDA code).
    """
    reads_labels = False

    def __init__(self, idc: Sequence[int], power: float = 1, fn: str = "soft_size", curi: bool = True):
        if fn not in SIZE_FUNCTIONS:
            raise ValueError(f"NaivePenalty: unknown size function {fn!r}; known: {', '.join(SIZE_FUNCTIONS)}")
        self.idc, self.power, self.fn = list(idc), power, fn
        self.size_fn = SIZE_FUNCTIONS[fn]

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor) -> Terms:
        b, c, w, h = probs.shape
        if self.fn == "norm_soft_size":
            value = self.size_fn(probs.float(), self.power)[:, self.idc]
            lower, upper = bounds[:, self.idc, 0] / (w * h), bounds[:, self.idc, 1] / (w * h)
        else:
            value = self.size_fn(probs[:, self.idc].float())
            lower, upper = bounds[:, self.idc, 0], bounds[:, self.idc, 1]
        penalty = torch.relu(value - upper) ** 2 + torch.relu(lower - value) ** 2
        loss = penalty.sum() / (w * h) ** 2
        return torch.zeros_like(loss), loss


class ProtoSegLoss(Loss):
    """Online ProtoSeg (seed 003, Table 1): the mean over the named feature maps of 1 - soft Dice between the
    ProtoSeg foreground probability (prototypes from this batch's ground truth) and the ground truth.

    Foreground = every class > 0. The seed adds "the SA score" of the N feature segmentation maps to the output's
    loss; its equation is lost, so the differentiable Dice stands for it (docs/methods/protoseg.md, section 5). Images
    whose ground truth is all background or all foreground have no prototype and are left out of the mean.
    The tuple's weight is the term's only weight; the term is logged as loss_cons. ``layers``: feature layer names,
    or 'last': the network's last two feature layers (mu's; main.py resolves it).
    """
    LAST = "last"

    def __init__(self, layers: Any):
        if layers == self.LAST:
            layers = [self.LAST]
        if isinstance(layers, str) or not layers or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"ProtoSegLoss: 'layers' must be 'last' or a non-empty list of feature layer names, "
                             f"got {layers!r}")
        self.layers = tuple(layers)

    def terms(self, probs: Tensor, target: Tensor, bounds: Tensor, features: Optional[Dict[str, Tensor]] = None) -> Terms:
        if features is None or any(n not in features for n in self.layers):
            raise ValueError(f"ProtoSegLoss: needs the feature maps {list(self.layers)} (training.run_pass taps them)")
        gt = (1 - target[:, :1].float())                                  # (B, 1, H, W) foreground
        ok = has_prototypes(gt)
        zero = probs.sum() * 0
        if not ok.any():
            return zero, zero
        per_layer = [(1 - soft_dice(protoseg(features[name][ok], gt[ok])[:, 1:], gt[ok])).mean() for name in self.layers]
        return zero, torch.stack(per_layer).mean()


class SpotTUnetPenalty:
    """SpotTUnet's L1 policy cost: k_reg * (number of fine-tuned units) / (B * units); a = 1 means frozen."""

    def __init__(self, k_reg: float):
        self.k_reg = float(k_reg)

    def __call__(self, actions: Tensor) -> Tensor:
        return self.k_reg * (1 - actions).sum() / actions.numel()


LOSSES = {"CrossEntropy": CrossEntropy, "DiceLoss": DiceLoss, "SelfEntropy": SelfEntropy,
          "EntKLProp": EntKLProp, "NaivePenalty": NaivePenalty, "ProtoSegLoss": ProtoSegLoss}


def build_loss(name: str, kwargs: Dict[str, Any], fn: Any) -> Loss:
    """Instantiate a loss of the ``--target_losses`` tuple; ``fn`` (5th element) is passed on when given."""
    return instantiate(LOSSES, "loss", name, kwargs, **({"fn": fn} if fn is not None else {}))
