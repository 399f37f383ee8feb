"""One pass of a network over a slice set, training (optimizers given) or evaluating; and AdaBN's statistics.

main.py runs the passes of its epochs through ``run_pass``: losses and predictions accumulate on the device and
come back to the host once per pass, under the run's autocast precision.
"""
import argparse
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import ContextManager, Dict, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm import tqdm

from dataloader import SliceSet
from losses import SpotTUnetPenalty
from networks import tapped
from options import PRECISIONS, LossSpec
from spottune import SpotTUnet
from utils import class2one_hot, norm_soft_size, probs2class


class _StopForward(Exception):
    """Raised by a forward hook once the layer being measured has seen its input."""


def reestimate_batchnorm(net: torch.nn.Module, data: SliceSet, batch_size: int, device: torch.device,
                         precision: str) -> None:
    """AdaBN (Li et al. 2016): every BatchNorm's running statistics become those of its input over all of ``data``.

    Layer by layer in forward order, with the network in eval mode: layer k's input is computed with
    layers < k already normalised by their new target statistics, so each mean and (unbiased)
    variance is exactly the statistic over the whole set, between-patient variation included (a
    one-pass average of batch statistics would miss it). Each pass stops at the measured layer.
    No gradient step; momenta and train/eval modes are left as they were.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    was_training = net.training
    net.eval()
    for bn in norms:
        sums = {"n": 0, "s": 0.0, "ss": 0.0}

        def accumulate(module: torch.nn.Module, inputs: Tuple[Tensor, ...], sums=sums) -> None:
            x = inputs[0].detach().double().transpose(0, 1).flatten(1)      # (C, N*H*W)
            sums["n"] += x.shape[1]
            sums["s"] = sums["s"] + x.sum(dim=1)
            sums["ss"] = sums["ss"] + (x * x).sum(dim=1)
            raise _StopForward
        handle = bn.register_forward_pre_hook(accumulate)
        try:
            with torch.no_grad(), autocast(device, precision):
                for idx in data.batches(batch_size, shuffle=False, generator=torch.Generator()):
                    try:
                        net(data.images[idx].to(device, torch.float32))
                    except _StopForward:
                        pass
        finally:
            handle.remove()
        n = sums["n"]
        if n == 0:            # a layer this forward never reaches keeps its statistics
            continue
        mean = sums["s"] / n
        var = (sums["ss"] - n * mean * mean) / max(n - 1, 1)               # unbiased, as BatchNorm keeps it
        bn.running_mean.copy_(mean.to(bn.running_mean.dtype))
        bn.running_var.copy_(var.clamp(min=0).to(bn.running_var.dtype))
    net.train(was_training)


def autocast(device: torch.device, precision: str) -> ContextManager:
    """torch.autocast at --precision (bf16), or nothing (fp32)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


@dataclass
class PassResult:
    loss_s: float
    loss_cons: float
    pred: Tensor          # (N, H, W) uint8 argmax (0 for slices a random-batch epoch did not draw)
    seen: Tensor          # (N,) bool: slices predicted in this pass
    entropy: Optional[Tensor]  # (N, H, W) float16, only when asked
    compute_s: float      # seconds in forward, losses, backward and optimizer step
    frozen_sum: Optional[Tensor] = None   # SpotTUnet: (units,) sum over slices of a (1 = frozen unit)
    dice2d: float = float("nan")
    # mean foreground pixels per slice: sum of probabilities, the SFDA code's norm_soft_size x W*H, the prior
    soft_size: float = float("nan")
    norm_soft_size: float = float("nan")
    prior_size: float = float("nan")
    prior_class_size: Optional[Tensor] = None   # (C - 1,) the prior's mean pixels per slice of each foreground class


def run_pass(net: torch.nn.Module, data: SliceSet, specs: Sequence[LossSpec], args: argparse.Namespace,
             device: torch.device, optimizers: Sequence[torch.optim.Optimizer], generator: torch.Generator,
             desc: str, keep_entropy: bool = False) -> PassResult:
    """One epoch of training (optimizers given) or evaluation (none) over ``data``.

    Training visits every slice once in random order, or draws ``--iterations`` random batches.
    Losses and predictions accumulate on the device and come back to the host once per pass.
    """
    training = bool(optimizers)
    net.train(training)
    spot = net if isinstance(net, SpotTUnet) else None
    penalty = SpotTUnetPenalty(args.k_reg)
    shape = (len(data), *data.images.shape[2:])                    # (N, H, W)
    pred = torch.zeros(shape, dtype=torch.uint8, device=device)
    seen = torch.zeros(len(data), dtype=torch.bool, device=device)
    entropy = torch.empty(shape, dtype=torch.float16, device=device) if keep_entropy else None
    frozen_sum = torch.zeros(len(spot.units), dtype=torch.float64, device=device) if spot else None
    sums = torch.zeros(2, dtype=torch.float64, device=device)     # (loss_s, loss_cons) summed over slices
    size_sums = torch.zeros(3, dtype=torch.float64, device=device)  # PassResult's three sizes summed over slices
    prior = next((b for spec, b in zip(specs, data.bounds) if spec.bounds is not None), None)
    class_prior = torch.zeros(args.n_class - 1, dtype=torch.float64)   # the prior per foreground class, summed
    n_seen = 0
    compute_s = 0.0
    memory = torch.channels_last if args.channels_last else torch.contiguous_format
    if training and args.iterations:
        batches = list(data.random_batches(args.batch_size, args.iterations, generator))
    else:
        batches = list(data.batches(args.batch_size, training, generator))
    tap_names = sorted({name for spec in specs for name in spec.loss.layers})      # losses that read features
    with torch.enable_grad() if training else torch.no_grad(), tapped(net, tap_names) as taps:
        for idx in tqdm(batches, desc=desc, leave=False, disable=None):
            images = data.images[idx].to(device, torch.float32, memory_format=memory)
            target = class2one_hot(data.labels[idx], args.n_class).to(device) if data.labels is not None else None
            t0 = time.perf_counter()
            with autocast(device, args.precision):
                logits = net(images)
            probs = logits.float().softmax(dim=1)
            loss_s = loss_cons = torch.zeros((), device=device)
            for spec, bounds in zip(specs, data.bounds):
                features = {"features": taps} if spec.loss.layers else {}
                s, cons = spec.loss.terms(probs, target, bounds[idx].to(device), **features)
                loss_s, loss_cons = loss_s + spec.weight * s, loss_cons + spec.weight * cons
            if spot is not None:
                loss_cons = loss_cons + penalty(spot.last_actions)     # lambda x share of fine-tuned units
                frozen_sum += spot.last_actions.detach().sum(dim=0).double()
            if training:
                for optimizer in optimizers:
                    optimizer.zero_grad(set_to_none=True)
                (loss_s + loss_cons).backward()
                for optimizer in optimizers:
                    optimizer.step()
            compute_s += time.perf_counter() - t0   # on a GPU this is launch time: kernels run asynchronously
            sums += torch.stack([loss_s.detach(), loss_cons.detach()]).double() * len(idx)
            size_sums += foreground_sizes(probs.detach(), prior[idx] if prior is not None else None)
            if prior is not None:
                class_prior += prior[idx][:, 1:, 0].sum(dim=0).double()
            n_seen += len(idx)
            at = idx.to(device)
            pred[at] = probs2class(probs).to(torch.uint8)
            seen[at] = True
            if entropy is not None:
                entropy[at] = (-(probs * (probs + 1e-10).log()).sum(dim=1) / np.log(args.n_class)).half()
    loss_s, loss_cons = (sums / max(n_seen, 1)).tolist()
    if not (np.isfinite(loss_s) and np.isfinite(loss_cons)):
        raise FloatingPointError(f"{desc}: the loss became non-finite (mean entropy/CE term {loss_s}, prior term "
                                 f"{loss_cons}); stopped before saving these weights. Try a lower --l_rate.")
    soft, norm_soft, prior_size = (size_sums / max(n_seen, 1)).tolist()
    return PassResult(loss_s, loss_cons, pred.cpu(), seen.cpu(), entropy.cpu() if entropy is not None else None,
                      compute_s, frozen_sum.cpu() if frozen_sum is not None else None, soft_size=soft,
                      norm_soft_size=norm_soft, prior_size=prior_size if prior is not None else float("nan"),
                      prior_class_size=class_prior / max(n_seen, 1) if prior is not None else None)


def foreground_sizes(probs: Tensor, bounds: Optional[Tensor]) -> Tensor:
    """Foreground (classes > 0) pixels summed over the batch: soft size, norm_soft_size x W*H, prior (3,).

    Logged each epoch to see how a size prior is met: by confident masks (the soft sizes near the
    argmax size) or by diffuse probabilities that never win the argmax (soft sizes far above it).
    """
    b, c, h, w = probs.shape
    soft = (1 - probs[:, 0]).sum()
    norm_soft = (1 - norm_soft_size(probs.float())[:, 0]).sum() * h * w
    prior = bounds[:, 1:, 0].sum().to(probs.device) if bounds is not None else torch.zeros((), device=probs.device)
    return torch.stack([soft.double(), norm_soft.double(), prior.double()])


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the device computes bfloat16 in hardware: a bf16 GPU, or a CPU with AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = cpuinfo.read_text().split()
    except OSError:                     # not Linux: no cheap way to know, so not assumed
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


# ---------------------------------------------------------------- the collapse guard (main.py)

def class_sizes(pred: Tensor, n_class: int) -> np.ndarray:
    """(C - 1,) mean pixels per slice of each foreground class in (N, H, W) argmax labels."""
    counts = torch.bincount(pred.flatten().long(), minlength=n_class)[1:n_class].double()
    return (counts / max(len(pred), 1)).numpy()


def size_ratios(tra: PassResult) -> np.ndarray:
    """Per foreground class, the mean predicted (argmax) size over the prior's mean size on the slices of a training
    pass, (C - 1,); NaN for a class the prior never gives (or without a prior). A structure that vanishes while the
    others hold shows in its own ratio."""
    if tra.prior_class_size is None:
        return np.array([float("nan")])
    prior = tra.prior_class_size.numpy()
    predicted = class_sizes(tra.pred[tra.seen], len(prior) + 1)
    return np.where(prior > 0, predicted / np.where(prior > 0, prior, 1), float("nan"))


def structure_columns(tra: Optional[PassResult], per_patient: Optional[pd.DataFrame], n_class: int) -> Dict[str, float]:
    """The metrics csv's columns of each structure k: its validation 3D Dice (mean over patients) and, on the training
    slices, its argmax and prior sizes per slice (NaN where not trained, unlabelled or without a prior)."""
    nan = np.full(n_class - 1, np.nan)
    sizes = class_sizes(tra.pred[tra.seen], n_class) if tra else nan
    prior = tra.prior_class_size.numpy() if tra and tra.prior_class_size is not None else nan
    columns = {}
    for k in range(1, n_class):
        dice3d = per_patient[f"dice_3d_c{k}"].mean() if per_patient is not None else np.nan
        columns.update({f"val_dice_3d_c{k}": dice3d, f"tra_size_c{k}": sizes[k - 1], f"tra_prior_c{k}": prior[k - 1]})
    return columns


def guarded(args: argparse.Namespace) -> bool:
    return bool(args.collapse_guard or args.overgrowth_guard)


def guard_side(ratios: np.ndarray, args: argparse.Namespace, held: Optional[np.ndarray] = None
               ) -> Tuple[Optional[str], float, int]:
    """Which side of the guard's band [--collapse_guard, --overgrowth_guard] a class's size ratio left first:
    ("below" (a collapse) | "above" (over-segmentation) | None, the ratio, its class 1..C-1). Below is checked
    first, on the smallest ratio; None (inside, off, or no ratio) reports the smallest ratio. ``held`` (several
    structures): those whose ratio has reached the band in some epoch; only they can collapse (a structure the model
    never predicted has nothing to lose, and stopping for it would throw away what the others gain)."""
    if np.isnan(ratios).all():
        return None, float("nan"), 0
    watched = ratios if held is None else np.where(held, ratios, np.nan)
    low, high = int(np.nanargmin(ratios)), int(np.nanargmax(ratios))
    if not np.isnan(watched).all() and np.nanmin(watched) < args.collapse_guard:
        low = int(np.nanargmin(watched))
        return "below", float(ratios[low]), low + 1
    if args.overgrowth_guard and ratios[high] > args.overgrowth_guard:
        return "above", float(ratios[high]), high + 1
    return None, float(ratios[low]), low + 1
