#!/usr/bin/env python3
"""Train, adapt or evaluate a segmentation network on a slice dataset: one loop, one run directory.

Accepts the options of the SFDA code (seed 004) verbatim, e.g.
    main.py --target_dataset data/prostate_target --workdir results/prostate/sfda_tmp \\
        --target_losses="[('EntKLProp', {...}, 'PredictionBounds', {...}, 'norm_soft_size', 1)]" \\
        --target_folders="[('IMG', nii_transform2, False), ('GT', nii_gt_transform2, False)]" ...
Outputs (run directory): params.txt, IMG_target_metrics.csv, 3dbestepoch.txt, best_3d.pkl,
last.pkl, val_dice_3d_per_patient.csv, best_epoch_3d/val/*.png (--saveim), provenance files;
with --test_folder: test_metrics.csv (Dice and surface Dice per test volume, last-epoch weights)
and, for --spottune, policy.csv (how often the test slices chose each fine-tuned unit).

A killed run leaves resume.pt in its ``*_tmp`` workdir (the state after its last complete epoch);
the same command resumes it, other options restart it. --collapse_guard stops a prior-driven
adaptation that loses its foreground and falls back to the start model with AdaBN statistics.

The CC359 protocol (seed 000) adds: --optimizer sgd, --iterations (random batches per epoch),
--trainable (fine-tune only these blocks), --spottune (SpotTUnet around the loaded network).
"""
import argparse
import random
import re
import resource
import shutil
import socket
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch import Tensor
from tqdm import tqdm

from bounds import Bounds, build_bounds
from dataloader import TRANSFORMS, DataError, SliceSet, check_disjoint_patients, load_slices, strip_extension
from losses import Loss, SpotTUnetPenalty, build_loss
from metrics import confusion_sizes, dice_3d, dice_from_sizes, patient_volumes, per_patient_hd, surface_dice
from networks import (BlockNet, CheckpointError, SpotTUnet, build_network, load_checkpoint, network_from_checkpoint,
                      lwft_blocks, save_checkpoint, tapped, transfusion, truncated)
from protoseg import label_free_mu, mu_subsample
from utils import (OptionError, atomic_output, class2one_hot, exp_lr_scheduler, norm_soft_size, parse_literal, probs2class,
                   record_provenance, str2bool)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
LWFT_DECAY = 10      # seed 002's ptl_decay: LWFT's pre-trained layers learn at lr / 10


# ---------------------------------------------------------------- options

@dataclass
class LossSpec:
    name: str
    loss: Loss
    bounds: Optional[Bounds]
    weight: float


def parse_folders(text: str, option: str) -> List[Tuple[str, Any, bool]]:
    """``[('IMG', nii_transform2, False), ...]`` -> list of (subfolder, transform function, is_hot)."""
    value = parse_literal(text, TRANSFORMS, option)
    if not isinstance(value, list) or not value:
        raise OptionError(f"{option}: expected a non-empty list of (folder, transform, is_hot) tuples")
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str) and callable(item[1])):
            raise OptionError(f"{option}: each entry must be (folder, transform, is_hot), got {item!r}")
    return value


def parse_losses(text: str) -> List[LossSpec]:
    """``[(loss, {params}, bounds or None, {params} or None, fn or None, weight), ...]`` -> LossSpecs."""
    value = parse_literal(text, {}, "--target_losses")
    if not isinstance(value, list) or not value:
        raise OptionError("--target_losses: expected a non-empty list of 6-tuples")
    specs = []
    for item in value:
        if not (isinstance(item, tuple) and len(item) == 6):
            raise OptionError(f"--target_losses: each entry must be a 6-tuple (loss, params, bounds, params, fn, weight), "
                              f"got {item!r}")
        name, kwargs, bounds_name, bounds_kwargs, fn, weight = item
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or weight <= 0:
            raise OptionError(f"--target_losses: weight of {name} must be a positive number, got {weight!r}")
        specs.append(LossSpec(name, build_loss(name, kwargs, fn), build_bounds(bounds_name, bounds_kwargs), float(weight)))
    return specs


def get_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target_dataset", required=True, help="dataset root with train/ and val/")
    parser.add_argument("--workdir", required=True, help="run directory (make passes $@_tmp)")
    parser.add_argument("--target_losses", required=True,
                        help="list of (loss, params, bounds, bounds params, fn, weight)")
    parser.add_argument("--target_folders", required=True, help="list of (subfolder, transform, is_hot) for train")
    parser.add_argument("--val_target_folders", required=True, help="same for val")
    parser.add_argument("--network", required=True,
                        help="UNet, ResUNet, ENet or Dimwit; checkpoint: the one --model_weights names")
    parser.add_argument("--grp_regex", required=True, help="regex of a slice name; group 1 (if any) is the patient")
    parser.add_argument("--n_class", type=int, required=True)
    parser.add_argument("--metric_axis", type=int, nargs="*", required=True, help="classes reported in the metrics")
    parser.add_argument("--n_epoch", nargs="?", type=int, default=200, help="0: only evaluate --model_weights")
    parser.add_argument("--l_rate", nargs="?", type=float, default=5e-4)
    parser.add_argument("--lr_decay", nargs="?", type=float, default=0.7)
    parser.add_argument("--lr_decay_epoch", nargs="?", type=int, default=20)
    parser.add_argument("--flr", action="store_true", help="fixed learning rate (no decay)")
    parser.add_argument("--lr_schedule", choices=["staircase", "step_once"], default="staircase",
                        help="staircase: x lr_decay every lr_decay_epoch epochs (seed 004); step_once: only after "
                             "epoch lr_decay_epoch (seed 000)")
    parser.add_argument("--weight_decay", nargs="?", type=float, default=1e-5)
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--model_weights", default="", help="checkpoint to start from")
    parser.add_argument("--collapse_guard", type=float, default=0.0,
                        help="stop a prior-driven adaptation whose mean predicted (argmax) foreground on the training "
                             "slices falls below this fraction of the prior's, and fall back to the start model with "
                             "AdaBN statistics (label-free; 0: off)")
    parser.add_argument("--adabn", action="store_true",
                        help="re-estimate BatchNorm statistics on the training images before anything else (AdaBN)")
    parser.add_argument("--do_hd", type=str2bool, default=False, help="HD95 and ASSD per val patient")
    parser.add_argument("--saveim", type=str2bool, default=False, help="save the best epoch's val predictions")
    parser.add_argument("--mu_images", type=int, default=0,
                        help="label-free selection (ProtoSeg's mu, seed 003): at every validated epoch, the mean mu "
                             "over a fixed subsample of about this many training slices (at least 2 per patient) is "
                             "logged, the best epoch saved as best_mu.pkl, and with a test folder the best-mu and "
                             "best-label checkpoints are tested too (0: off)")
    parser.add_argument("--new_head", action="store_true",
                        help="--model_weights of another class count: load all but the output layer, which starts "
                             "fresh (seed 001); with --network checkpoint any architecture the checkpoint names")
    parser.add_argument("--save_epochs", type=int, nargs="*", default=[],
                        help="also save the weights after these (0-based) epochs, as epoch<k>.pkl")
    parser.add_argument("--entmap", action="store_true", help="save the best epoch's entropy maps")
    parser.add_argument("--csv", default="metrics.csv")
    parser.add_argument("--debug", action="store_true", help="10 images per loader")
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=sorted(PRECISIONS) + ["auto"], default="fp32",
                        help="autocast precision; auto: bf16 with channels_last where the hardware computes bf16 "
                             "natively (AMX / AVX512-BF16 CPU, bf16 GPU), else fp32 (params.txt records the choice)")
    parser.add_argument("--channels_last", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); one per job under make -j")
    parser.add_argument("--net_width", type=int, default=None, help="channels of the network's first block")
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                        help="adam (seed 004) or SGD with Nesterov momentum 0.9 (seed 000)")
    parser.add_argument("--iterations", type=int, default=0,
                        help="batches per epoch drawn at random with replacement (seed 000); 0: one pass over train")
    parser.add_argument("--val_every", type=int, default=1, help="validate every N epochs (and after the last)")
    parser.add_argument("--trainable", default="",
                        help="block names (networks.py blocks(), comma-separated), or first / last: fine-tune "
                             "only those, freeze the others")
    parser.add_argument("--reuse", default="",
                        help="seed 002's reuse of the --model_weights ResUNet: ttl:K (cut after encoder level K, all "
                             "fine-tuned), lwft:K (the top K stages fine-tuned, the output layer at --l_rate, the "
                             "others at --l_rate / 10, the rest frozen) or transfusion:K (levels above K halved and "
                             "trained from scratch)")
    parser.add_argument("--spottune", action="store_true", help="SpotTUnet around --model_weights (seed 000)")
    parser.add_argument("--tau", type=float, default=0.1, help="SpotTUnet Gumbel-softmax temperature")
    parser.add_argument("--k_reg", type=float, default=0.0, help="SpotTUnet cost per fine-tuned unit (lambda)")
    parser.add_argument("--policy_lr", type=float, default=0.01, help="SpotTUnet policy SGD learning rate")
    parser.add_argument("--policy_wd", type=float, default=1e-3, help="SpotTUnet policy weight decay")
    parser.add_argument("--test_folder", default="", help="split of --target_dataset evaluated with the last weights")
    parser.add_argument("--spacing", default="", help="voxel spacing row,column,slice in mm (default: file headers)")
    parser.add_argument("--sdice_tol", type=float, default=1.0, help="surface Dice tolerance in mm")
    # accepted for compatibility with the seed's recipes; the behaviour they asked for is always on
    parser.add_argument("--dice_3d", action="store_true", help="(always on) 3D Dice per patient")
    parser.add_argument("--in_memory", action="store_true", help="(always on) decode data once")
    parser.add_argument("--pprint", action="store_true", help="(no effect)")
    args = parser.parse_args(argv)
    for name in ("n_epoch", "l_rate", "lr_decay", "lr_decay_epoch", "weight_decay"):     # nargs="?" as in the seed
        if getattr(args, name) is None:
            parser.error(f"--{name} needs a value")
    if args.n_epoch < 0 or args.batch_size < 1:
        parser.error("--n_epoch must be >= 0 and --batch_size >= 1")
    if any(not 0 <= k < args.n_class for k in args.metric_axis):
        parser.error(f"--metric_axis {args.metric_axis} out of range for --n_class {args.n_class}")
    if args.threads < 0 or args.collapse_guard < 0:
        parser.error("--threads and --collapse_guard must be >= 0")
    if args.iterations < 0 or args.val_every < 1 or args.tau <= 0 or args.k_reg < 0:
        parser.error("--iterations must be >= 0, --val_every >= 1, --tau > 0 and --k_reg >= 0")
    if args.spottune and not args.model_weights:
        parser.error("--spottune needs --model_weights (the pre-trained network it fine-tunes)")
    if args.reuse:
        args.reuse = parse_reuse(args.reuse, parser)
        if not args.model_weights or args.spottune or args.trainable:
            parser.error("--reuse needs --model_weights (the pre-trained network) and no --spottune or --trainable")
    if args.spacing:
        try:
            args.spacing = tuple(float(v) for v in args.spacing.split(","))
        except ValueError:
            parser.error(f"--spacing {args.spacing!r}: expected three numbers, e.g. 1,0.95,0.95")
        if len(args.spacing) != 3 or min(args.spacing) <= 0:
            parser.error(f"--spacing {args.spacing}: expected three positive numbers")
    return args


REUSE_METHODS = ("ttl", "lwft", "transfusion")


def parse_reuse(text: str, parser: argparse.ArgumentParser) -> Tuple[str, int]:
    """--reuse ttl:2 -> ("ttl", 2); the level is checked against the network once it is loaded."""
    method, _, k = text.partition(":")
    if method not in REUSE_METHODS or not k.strip().isdigit():
        parser.error(f"--reuse {text!r}: expected METHOD:K with METHOD one of {', '.join(REUSE_METHODS)}, e.g. ttl:2")
    return method, int(k)


def check_options(args: argparse.Namespace) -> None:
    """Checks that argparse cannot express; each failure is one ``error:`` line (OptionError)."""
    if not args.metric_axis:
        raise OptionError("--metric_axis needs at least one class, e.g. --metric_axis 1")
    if args.network == "checkpoint" and not args.model_weights:
        raise OptionError("--network checkpoint reads the architecture from --model_weights, which is missing")
    if args.mu_images < 0 or (args.mu_images and args.spottune):
        raise OptionError(f"--mu_images {args.mu_images}: expected a slice count >= 0, and no --spottune "
                          f"(mu reads a plain network's last feature layers)")
    try:
        re.compile(args.grp_regex)
    except re.error as e:
        raise OptionError(f"--grp_regex {args.grp_regex!r} is not a valid regular expression: {e}") from None


# ---------------------------------------------------------------- setup

def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def prepare_workdir(workdir: Path) -> None:
    """A ``*_tmp`` directory is scratch and restarts empty; any other existing non-empty directory is refused."""
    if workdir.exists():
        if workdir.name.endswith("_tmp"):
            shutil.rmtree(workdir)
        elif any(workdir.iterdir()):
            raise FileExistsError(f"{workdir}: already exists and is not empty; refusing to overwrite a result")
    workdir.mkdir(parents=True, exist_ok=True)


def build_model(args: argparse.Namespace) -> BlockNet:
    if args.model_weights:
        net = network_from_checkpoint(Path(args.model_weights), args.network, args.n_class, args.new_head)
        args.network = type(net).__name__          # --network checkpoint: the run records what it read
        print(f">> loaded {args.model_weights}")
    else:
        kwargs = {} if args.net_width is None else {"width": args.net_width}
        net = build_network(args.network, 1, args.n_class, **kwargs)
    if args.reuse:
        net = reused(net, *args.reuse)
    if args.trainable:
        names = [name.strip() for name in args.trainable.split(",") if name.strip()]
        group = names[0] if names in (["first"], ["last"]) else None
        if group:
            names = net.block_group(group)
        freeze_except(net, names)
        for name in net.frozen_in_group(group) if group else []:      # e.g. ResUNet ft_last: the final BN's affine
            net.get_parameter(name).requires_grad_(False)
    if args.spottune:
        net = SpotTUnet(net, 1, args.tau)
    return net


def reused(net: BlockNet, method: str, k: int) -> BlockNet:
    """Seed 002's strategies on the pre-trained network (networks.py): TTL and TransFusion build a new network
    from its levels 0..k; LWFT freezes all but the top k stages (its two learning rates: build_optimizers)."""
    try:
        if method == "ttl":
            return truncated(net, k)
        if method == "transfusion":
            return transfusion(net, k)
        head, rest = lwft_blocks(net, k)
    except ValueError as e:
        raise OptionError(f"--reuse {method}:{k}: {e}") from None
    freeze_except(net, head + rest)
    return net


def check_loss_layers(net: torch.nn.Module, specs: Sequence[LossSpec]) -> None:
    """Every feature layer a loss reads (e.g. ProtoSegLoss's) exists in the network; 'last' becomes its last ones."""
    known = net.feature_layers() if isinstance(net, BlockNet) else []
    for spec in specs:
        if spec.loss.layers == ("last",) and known:
            spec.loss.layers = tuple(net.last_feature_layers())
        unknown = [name for name in spec.loss.layers if name not in known]
        if unknown:
            raise OptionError(f"--target_losses: {spec.name} reads layer {unknown[0]!r}, which {type(net).__name__} "
                              f"does not have; its feature layers: {', '.join(known) or 'none'}")


def freeze_except(net: BlockNet, names: Sequence[str]) -> None:
    """requires_grad only for the named blocks; BatchNorm statistics still update everywhere (seed 000)."""
    known = [name for name, _ in net.blocks()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise OptionError(f"--trainable: {type(net).__name__} has no block {unknown[0]!r}; blocks: {', '.join(known)}")
    net.requires_grad_(False)
    for name in names:
        net.get_submodule(name).requires_grad_(True)


def build_optimizers(net: torch.nn.Module, args: argparse.Namespace) -> List[torch.optim.Optimizer]:
    """The network's optimizer (Adam, or SGD as in seed 000) and, for SpotTUnet, the policy's SGD."""
    policy = list(net.policy.parameters()) if isinstance(net, SpotTUnet) else []
    policy_ids = {id(p) for p in policy}
    params = [p for p in net.parameters() if p.requires_grad and id(p) not in policy_ids]
    if args.reuse and args.reuse[0] == "lwft":                  # the output layer at lr, the other stages at lr / 10
        head = {id(p) for p in net.get_submodule(lwft_blocks(net, args.reuse[1])[0][0]).parameters()}
        params = [{"params": [p for p in params if id(p) in head]},
                  {"params": [p for p in params if id(p) not in head], "lr": args.l_rate / LWFT_DECAY}]
    if args.optimizer == "adam":
        optimizers = [torch.optim.Adam(params, lr=args.l_rate, betas=(0.9, 0.999), weight_decay=args.weight_decay)]
    else:
        optimizers = [torch.optim.SGD(params, lr=args.l_rate, momentum=0.9, nesterov=True, weight_decay=args.weight_decay)]
    if policy:
        optimizers.append(torch.optim.SGD(policy, lr=args.policy_lr, momentum=0.9, nesterov=True,
                                          weight_decay=args.policy_wd))
    return optimizers


def attach_bounds(data: SliceSet, specs: Sequence[LossSpec], n_class: int) -> None:
    """Compute every loss's bounds for every slice once: data.bounds[i] is (N, C, 2). The split's float
    one-hot (N x C x H x W x 4 bytes) is built only when a loss has bounds (supervised runs skip it)."""
    targets = class2one_hot(data.labels, n_class) if any(spec.bounds is not None for spec in specs) else None
    data.bounds = [spec.bounds(data.filenames, targets) if spec.bounds is not None
                   else torch.zeros(len(data), n_class, 2) for spec in specs]


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


def autocast(device: torch.device, precision: str):
    dtype = PRECISIONS[precision]
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


# ---------------------------------------------------------------- one pass over a split

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
    pred = torch.zeros(data.labels.shape, dtype=torch.uint8, device=device)
    seen = torch.zeros(len(data), dtype=torch.bool, device=device)
    entropy = torch.empty(data.labels.shape, dtype=torch.float16, device=device) if keep_entropy else None
    frozen_sum = torch.zeros(len(spot.units), dtype=torch.float64, device=device) if spot else None
    sums = torch.zeros(2, dtype=torch.float64, device=device)     # (loss_s, loss_cons) summed over slices
    size_sums = torch.zeros(3, dtype=torch.float64, device=device)  # PassResult's three sizes summed over slices
    prior = next((b for spec, b in zip(specs, data.bounds) if spec.bounds is not None), None)
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
            target = class2one_hot(data.labels[idx], args.n_class).to(device)
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
                      norm_soft_size=norm_soft, prior_size=prior_size if prior is not None else float("nan"))


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


# ---------------------------------------------------------------- epoch statistics

def size_stats(labels: Tensor) -> Tuple[int, int]:
    """(mean foreground size over slices, mean over slices with foreground), foreground = any class > 0."""
    fg = (labels > 0).sum(dim=(1, 2)).double()
    pos = fg[fg > 0]
    return int(fg.mean().item()), int(pos.mean().item()) if len(pos) else 0


def dice_2d(pred: Tensor, labels: Tensor, args: argparse.Namespace) -> float:
    """Mean over slices of the 2D Dice of the ``--metric_axis`` classes."""
    return dice_from_sizes(*confusion_sizes(pred, labels, args.n_class))[:, list(args.metric_axis)].mean().item()


def evaluate(pred: Tensor, data: SliceSet, args: argparse.Namespace) -> Dict[str, Any]:
    """2D Dice (mean over slices), 3D Dice per patient, and HD95/ASSD per patient when asked."""
    axis = list(args.metric_axis)
    inter, psize, gsize = confusion_sizes(pred, data.labels, args.n_class)
    dice2d = dice_from_sizes(inter, psize, gsize)[:, axis].mean().item()
    ids, d3 = dice_3d(inter, psize, gsize, data.patients)
    per_patient = pd.DataFrame({"patient": ids})
    for k in axis:
        per_patient[f"dice_3d_c{k}"] = d3[:, k].numpy()
    d3_mean = d3[:, axis].mean(dim=1)
    out = {"dice2d": dice2d, "dice3d": round(d3_mean.mean().item(), 4),
           "dice3d_sd": round(d3_mean.std().item(), 4) if len(ids) > 1 else 0.0, "per_patient": per_patient}
    if args.do_hd:
        hd = per_patient_hd(pred, data.labels, data.patients, data.slice_numbers, data.spacing, axis)
        for j, k in enumerate(axis):
            per_patient[f"hd95_c{k}"], per_patient[f"assd_c{k}"] = hd["hd95"][:, j], hd["assd"][:, j]
        out["hd95"] = float(np.nanmean(hd["hd95"])) if np.isfinite(hd["hd95"]).any() else float("nan")
        out["assd"] = float(np.nanmean(hd["assd"])) if np.isfinite(hd["assd"]).any() else float("nan")
    return out


def epoch_row(epoch: int, tra: Optional[PassResult], train: SliceSet, val_pass: PassResult,
              val_eval: Dict[str, Any], val: SliceSet) -> Dict[str, float]:
    """One row of the metrics csv, in the seed's columns (+ HD95/ASSD); train columns NaN when not trained."""
    nan = float("nan")
    tra_size = size_stats(tra.pred[tra.seen]) if tra else (nan, nan)
    val_size, gt_size = size_stats(val_pass.pred), size_stats(val.labels)
    row = {"epoch": epoch,
           "tra_loss_s": tra.loss_s if tra else nan, "tra_loss_cons": tra.loss_cons if tra else nan,
           "tra_loss_tot": tra.loss_s + tra.loss_cons if tra else nan,
           "tra_size_mean": tra_size[0], "tra_size_mean_pos": tra_size[1],
           "val_loss_s": val_pass.loss_s, "val_loss_cons": val_pass.loss_cons,
           "val_loss_tot": val_pass.loss_s + val_pass.loss_cons,
           "val_size_mean": val_size[0], "val_size_mean_pos": val_size[1],
           "val_gt_size_mean": gt_size[0], "val_gt_size_mean_pos": gt_size[1],
           "tra_dice": tra.dice2d if tra else nan, "val_dice": val_eval["dice2d"],
           "val_dice_3d_sd": val_eval["dice3d_sd"], "val_dice_3d": val_eval["dice3d"]}
    for split, result in (("tra", tra), ("val", val_pass)):     # how the size prior is met (soft vs argmax)
        for name in ("soft_size", "norm_soft_size", "prior_size"):
            row[f"{split}_{name}_mean"] = getattr(result, name) if result else nan
    if "hd95" in val_eval:
        row["val_hd95"], row["val_assd"] = val_eval["hd95"], val_eval["assd"]
    return row


def evaluate_volumes(pred: Tensor, data: SliceSet, args: argparse.Namespace) -> pd.DataFrame:
    """Per test volume: 3D Dice and surface Dice at ``--sdice_tol`` mm of each --metric_axis class, and their means."""
    spacing = args.spacing or data.spacing            # (row, column, slice)
    vol_spacing = (spacing[2], spacing[0], spacing[1])  # volumes are stacked as (slice, row, column)
    rows = []
    for pid, p, g in patient_volumes(pred.numpy(), data.labels.numpy(), data.patients, data.slice_numbers):
        row: Dict[str, Any] = {"patient": pid}
        for k in args.metric_axis:
            pk, gk = p == k, g == k
            row[f"dice_c{k}"] = 2 * (pk & gk).sum() / max(pk.sum() + gk.sum(), 1) if (pk.any() or gk.any()) else 1.0
            row[f"sdice_c{k}"] = surface_dice(gk, pk, vol_spacing, args.sdice_tol)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["dice"] = table[[f"dice_c{k}" for k in args.metric_axis]].mean(axis=1)
    table["sdice"] = table[[f"sdice_c{k}" for k in args.metric_axis]].mean(axis=1)
    return table


def policy_table(net: SpotTUnet, frozen_sum: Tensor, n_slices: int) -> pd.DataFrame:
    """SpotTUnet on the test slices: per unit, the share of slices that chose the fine-tuned copy."""
    return pd.DataFrame({"unit": net.unit_names, "p_finetuned": (1 - frozen_sum / n_slices).numpy()})


def write_csv_atomic(df: pd.DataFrame, path: Path) -> None:
    with atomic_output(path) as tmp:
        df.to_csv(tmp, float_format="%.4f", index=False)


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


# ---------------------------------------------------------------- the run, in its stages

RESUME = "resume.pt"     # in <run>_tmp: the state after the last complete epoch, removed when the run completes


@dataclass
class Data:
    train: SliceSet
    val: SliceSet
    test: Optional[SliceSet]
    mu_index: Optional[Tensor] = None    # --mu_images: the training slices that mu is measured on


@dataclass
class History:
    """What the epochs produced so far; with the weights and optimizers, all a resumed run needs."""
    rows: List[Dict[str, float]] = field(default_factory=list)
    best: Dict[str, Any] = field(default_factory=lambda: {"dice": -1.0, "epoch": -1})
    best_mu: Dict[str, float] = field(default_factory=lambda: {"mu": -1.0, "epoch": -1})
    seconds: Dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("load", "train", "val", "mu", "test", "compute", "epochs", "total"), 0.0))   # summed over the run's lives
    next_epoch: int = 0
    life_start: float = field(default_factory=time.perf_counter)                # this process's start

    def total_seconds(self) -> float:
        return self.seconds["total"] + time.perf_counter() - self.life_start


def native_bf16(device: torch.device, cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the device computes bfloat16 in hardware: a bf16 GPU, or a CPU with AMX-BF16 or AVX512-BF16."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = cpuinfo.read_text().split()
    except OSError:                     # not Linux: no cheap way to know, so not assumed
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(args: argparse.Namespace) -> torch.device:
    """The device; --precision auto becomes bf16 + channels_last or fp32 here, so the run records what it used."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    if args.precision == "auto":
        args.precision = "bf16" if native_bf16(device) else "fp32"
        args.channels_last = args.channels_last or args.precision == "bf16"
    if args.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise OptionError("--precision bf16: this GPU does not support bfloat16")
    return device


def load_data(args: argparse.Namespace, specs: Sequence[LossSpec]) -> Data:
    """train / val (/ test) slice sets of --target_dataset, decoded once, with every loss's bounds attached."""
    train_folders = parse_folders(args.target_folders, "--target_folders")
    val_folders = parse_folders(args.val_target_folders, "--val_target_folders")
    root = Path(args.target_dataset)
    train = load_slices(root / "train", train_folders, args.n_class, args.grp_regex, args.debug)
    val = load_slices(root / "val", val_folders, args.n_class, args.grp_regex, args.debug)
    check_disjoint_patients(train, val)
    test = None
    if args.test_folder:
        test = load_slices(root / args.test_folder, val_folders, args.n_class, args.grp_regex, args.debug)
        check_disjoint_patients(train, test)
    for data in (train, val, test):
        if data is not None:
            attach_bounds(data, specs, args.n_class)
    print(f">> {root}: {len(train)} train slices ({len(set(train.patients))} patients), "
          f"{len(val)} val slices ({len(set(val.patients))} patients)"
          + (f", {len(test)} test slices ({len(set(test.patients))} patients)" if test is not None else ""))
    return Data(train, val, test)


def metrics_csv(args: argparse.Namespace) -> str:
    return f"{parse_folders(args.target_folders, '--target_folders')[0][0]}_target_{args.csv}"


def run_identity(args: argparse.Namespace) -> Dict[str, Any]:
    """The options that define a run: a run directory resumes only under the same ones."""
    return {k: v for k, v in vars(args).items() if k not in ("workdir", "threads")}


def save_resume_state(savedir: Path, args: argparse.Namespace, net: torch.nn.Module,
                      optimizers: Sequence[torch.optim.Optimizer], generator: torch.Generator, history: History) -> None:
    """Everything needed to continue after the epoch just finished, every random generator included."""
    np_state = np.random.get_state()
    best = {k: ({c: v[c].tolist() for c in v.columns} if isinstance(v, pd.DataFrame) else v)
            for k, v in history.best.items()}
    state = {"identity": repr(run_identity(args)), "net": net.state_dict(),
             "optimizers": [o.state_dict() for o in optimizers], "torch_rng": torch.get_rng_state(),
             "generator": generator.get_state(), "numpy_rng": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)),
                                                             *np_state[2:]],
             "python_rng": random.getstate(), "rows": history.rows, "best": best, "best_mu": history.best_mu,
             "seconds": {**history.seconds, "total": history.total_seconds()}, "next_epoch": history.next_epoch}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    with atomic_output(savedir / RESUME) as tmp:
        torch.save(state, tmp)


def resume_state(savedir: Path, args: argparse.Namespace) -> Optional[Dict[str, Any]]:
    """The saved state of an interrupted run of the same options in ``savedir``, or None."""
    path = savedir / RESUME
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                       # a state cut by the kill itself: start over
        return None
    return state if state.get("identity") == repr(run_identity(args)) else None


def restore(state: Dict[str, Any], net: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
            generator: torch.Generator, life_start: float) -> History:
    net.load_state_dict(state["net"])
    for optimizer, saved in zip(optimizers, state["optimizers"]):
        optimizer.load_state_dict(saved)
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    generator.set_state(state["generator"])
    kind, keys, *rest = state["numpy_rng"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python_rng"]
    random.setstate((version, tuple(internal), gauss))
    best = dict(state["best"])
    if isinstance(best.get("per_patient"), dict):
        best["per_patient"] = pd.DataFrame(best["per_patient"])
    best_mu = dict(state.get("best_mu", {"mu": -1.0, "epoch": -1}))
    return History(rows=list(state["rows"]), best=best, best_mu=best_mu, seconds=dict(state["seconds"]),
                   next_epoch=state["next_epoch"], life_start=life_start)


def start_run(savedir: Path, args: argparse.Namespace, net: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer],
              generator: torch.Generator, data: Data, device: torch.device, life_start: float) -> History:
    """Resume an interrupted run of the same options, or start in an empty directory (params, provenance, AdaBN)."""
    state = resume_state(savedir, args) if savedir.name.endswith("_tmp") else None
    if state is not None:
        history = restore(state, net, optimizers, generator, life_start)
        print(f">> resumed {savedir} after epoch {history.next_epoch - 1}")
        return history
    prepare_workdir(savedir)
    params = {**vars(args), "time": time.strftime("%Y-%m-%d %H:%M:%S"), "server": socket.gethostname()}
    (savedir / "params.txt").write_text(str(params) + "\n")
    record_provenance(savedir)
    if args.adabn:
        reestimate_batchnorm(net, data.train, args.batch_size, device, args.precision)
        print(f">> BatchNorm statistics re-estimated on {len(data.train)} training images")
    return History(life_start=life_start)


def size_ratio(tra: PassResult) -> float:
    """Mean predicted (argmax) foreground over the mean prior foreground on the slices of a training pass."""
    predicted = size_stats(tra.pred[tra.seen])[0]
    return predicted / tra.prior_size if np.isfinite(tra.prior_size) and tra.prior_size > 0 else float("nan")


def fall_back_to_adabn(net: torch.nn.Module, start: Dict[str, Tensor], data: Data, args: argparse.Namespace,
                       device: torch.device) -> None:
    """The collapse guard's fallback: the start weights with the target's BatchNorm statistics (the adabn run)."""
    net.load_state_dict(start)
    reestimate_batchnorm(net, data.train, args.batch_size, device, args.precision)


def train_and_validate(net: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer], data: Data,
                       specs: Sequence[LossSpec], args: argparse.Namespace, device: torch.device,
                       generator: torch.Generator, savedir: Path, history: History,
                       start: Optional[Dict[str, Tensor]] = None) -> History:
    """The epochs: train, decay the lr, validate (every --val_every), log, keep the best; state saved after each.

    With --collapse_guard, an epoch whose argmax foreground falls below the guard's share of the prior
    ends the training: the model falls back to ``start`` with AdaBN statistics and is validated as the
    last epoch (``collapse.txt`` records it). Collapsed SFDA runs lose their foreground within 1-3
    epochs (argmax/prior 0.0-0.1) while healthy ones stay at 0.6-1.9 (README)."""
    n_epochs = max(args.n_epoch, 1)
    seconds, best = history.seconds, history.best
    for epoch in range(history.next_epoch, n_epochs):
        t0 = time.perf_counter()
        tra: Optional[PassResult] = None
        if args.n_epoch > 0:
            tra = run_pass(net, data.train, specs, args, device, optimizers, generator, f"train {epoch}")
            tra.dice2d = dice_2d(tra.pred[tra.seen], data.train.labels[tra.seen], args)
            if not args.flr:
                for optimizer in optimizers:
                    exp_lr_scheduler(optimizer, epoch, args.lr_decay, args.lr_decay_epoch,
                                     once=args.lr_schedule == "step_once")
        if tra and epoch in args.save_epochs:
            save_checkpoint(savedir / f"epoch{epoch}.pkl", net, epoch=epoch)
        ratio = size_ratio(tra) if tra and args.collapse_guard else float("nan")
        collapsed = bool(ratio < args.collapse_guard)
        if collapsed:
            print(f">> epoch {epoch}: predicted foreground {ratio:.3f} x the prior's, below the collapse guard "
                  f"{args.collapse_guard:g}: stopped; the start model with AdaBN statistics is the result", flush=True)
            fall_back_to_adabn(net, start, data, args, device)
            (savedir / "collapse.txt").write_text(f"{epoch},{ratio:.4f}\n")
        t1 = time.perf_counter()
        seconds["train"] += t1 - t0
        seconds["compute"] += tra.compute_s if tra else 0.0
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == n_epochs or collapsed:
            val_pass = run_pass(net, data.val, specs, args, device, [], generator, f"val {epoch}", keep_entropy=args.entmap)
            val_eval = evaluate(val_pass.pred, data.val, args)
            t2 = time.perf_counter()
            seconds["val"] += t2 - t1
            seconds["compute"] += val_pass.compute_s
            row = epoch_row(epoch, tra, data.train, val_pass, val_eval, data.val)
            if data.mu_index is not None:
                row["mu"], row["mu_empty_share"] = select_by_mu(net, epoch, data, args, device, savedir, history)
            history.rows.append(row)
            write_csv_atomic(pd.DataFrame(history.rows), savedir / metrics_csv(args))
            if val_eval["dice3d"] > best["dice"]:
                best.update({"dice": val_eval["dice3d"], "epoch": epoch, "pred": val_pass.pred,
                             "entropy": val_pass.entropy, "per_patient": val_eval["per_patient"]})
                save_checkpoint(savedir / "best_3d.pkl", net, epoch=epoch, val_dice_3d=val_eval["dice3d"])
                (savedir / "3dbestepoch.txt").write_text(f"{epoch},{val_eval['dice3d']}")
            print(f"epoch {epoch:3d}  train loss {row['tra_loss_tot']:.4f}  val 2D dice {val_eval['dice2d']:.4f}  "
                  f"val 3D dice {val_eval['dice3d']:.4f} ± {val_eval['dice3d_sd']:.4f}  (best {best['dice']:.4f} "
                  f"@ {best['epoch']})  {t2 - t0:.1f}s", flush=True)
        else:
            print(f"epoch {epoch:3d}  train loss {tra.loss_s + tra.loss_cons:.4f}  {t1 - t0:.1f}s", flush=True)
        seconds["epochs"] += time.perf_counter() - t0
        history.next_epoch = epoch + 1
        if collapsed:
            break
        if args.n_epoch > 0 and epoch + 1 < n_epochs:
            save_resume_state(savedir, args, net, optimizers, generator, history)
    return history


def select_by_mu(net: torch.nn.Module, epoch: int, data: Data, args: argparse.Namespace, device: torch.device,
                 savedir: Path, history: History) -> Tuple[float, float]:
    """The epoch's mean mu over the fixed training subsample (no label read); the best so far -> best_mu.pkl."""
    t0 = time.perf_counter()
    mu, empty = label_free_mu(net, data.train.images[data.mu_index], args.batch_size, device,
                              lambda: autocast(device, args.precision))
    if mu > history.best_mu["mu"]:
        history.best_mu = {"mu": mu, "epoch": epoch}
        save_checkpoint(savedir / "best_mu.pkl", net, epoch=epoch, mu=mu)
        (savedir / "mubestepoch.txt").write_text(f"{epoch},{mu:.4f}")
    history.seconds["mu"] += time.perf_counter() - t0
    return mu, empty


# what a run tests: the last epoch's weights, and with --mu_images the epochs chosen by labels and by mu
TESTED_WEIGHTS = {"last": "test_metrics.csv", "best_3d.pkl": "test_metrics_best_3d.csv",
                  "best_mu.pkl": "test_metrics_best_mu.csv"}


def test_weights(net: torch.nn.Module, test: SliceSet, specs: Sequence[LossSpec], args: argparse.Namespace,
                 device: torch.device, generator: torch.Generator, savedir: Path, weights: str = "last") -> None:
    """Dice and surface Dice per test volume into TESTED_WEIGHTS[weights] and, for SpotTUnet, policy.csv."""
    if weights != "last":
        net.load_state_dict(load_checkpoint(savedir / weights)["state_dict"])
    test_pass = run_pass(net, test, specs, args, device, [], generator, f"test {weights}")
    per_volume = evaluate_volumes(test_pass.pred, test, args)
    write_csv_atomic(per_volume, savedir / TESTED_WEIGHTS[weights])
    print(f">> test ({len(per_volume)} volumes, {weights}): Dice {per_volume['dice'].mean():.4f}  "
          f"surface Dice@{args.sdice_tol:g}mm {per_volume['sdice'].mean():.4f}")
    if test_pass.frozen_sum is not None:
        write_csv_atomic(policy_table(net, test_pass.frozen_sum, len(test)), savedir / "policy.csv")


def write_outputs(savedir: Path, args: argparse.Namespace, net: torch.nn.Module, val: SliceSet, history: History) -> None:
    """last.pkl, the best epoch's per-patient scores, predictions and entropy maps."""
    last = history.next_epoch - 1 if args.n_epoch > 0 else 0
    save_checkpoint(savedir / "last.pkl", net, epoch=last, val_dice_3d=history.rows[-1]["val_dice_3d"])
    (savedir / "last_epoch.txt").write_text(str(last))
    best = history.best
    write_csv_atomic(best["per_patient"], savedir / "val_dice_3d_per_patient.csv")
    if args.saveim:
        save_predictions(savedir / "best_epoch_3d" / "val", val.filenames, best["pred"])
    if args.entmap:
        save_entropy_maps(savedir / "best_epoch_3d" / "entmap", val.filenames, best["entropy"])


def write_run_stats(savedir: Path, seconds: Dict[str, float]) -> None:
    """Seconds per stage (compute: forward/backward/step only; epochs: their wall time incl. metrics, logging,
    saving) and peak memory; a resumed run adds the stages of its earlier lives."""
    stats = pd.DataFrame([*((name, value, "s") for name, value in seconds.items()),
                          ("peak_memory", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")],
                         columns=["name", "value", "unit"])
    write_csv_atomic(stats, savedir / "run_stats.csv")


def run(args: argparse.Namespace) -> None:
    t_start = time.perf_counter()
    check_options(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    generator = seed_everything(args.seed)
    device = pick_device(args)
    specs = parse_losses(args.target_losses)
    data = load_data(args, specs)
    if args.mu_images:
        data.mu_index = mu_subsample(data.train.patients, data.train.slice_numbers, args.mu_images)
    net = build_model(args).to(device)
    check_loss_layers(net, specs)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    # an evaluation-only run steps nothing, and skips the import of torch._dynamo (about 3 s) an optimizer triggers
    optimizers = build_optimizers(net, args) if args.n_epoch > 0 else []
    savedir = Path(args.workdir)
    start = {k: v.clone() for k, v in net.state_dict().items()} if args.collapse_guard else None   # before any step
    history = start_run(savedir, args, net, optimizers, generator, data, device, t_start)
    history.seconds["load"] += time.perf_counter() - t_start

    history = train_and_validate(net, optimizers, data, specs, args, device, generator, savedir, history, start)
    t_test = time.perf_counter()
    if data.test is not None:
        test_weights(net, data.test, specs, args, device, generator, savedir)
    write_outputs(savedir, args, net, data.val, history)
    if data.test is not None and args.mu_images:       # after last.pkl is written: these load other weights
        for weights in ("best_3d.pkl", "best_mu.pkl"):
            test_weights(net, data.test, specs, args, device, generator, savedir, weights)
    history.seconds["test"] = time.perf_counter() - t_test
    history.seconds["total"] = history.total_seconds()
    (savedir / RESUME).unlink(missing_ok=True)
    write_run_stats(savedir, history.seconds)
    print(f">> results in {savedir}; best 3D dice {history.best['dice']:.4f} at epoch {history.best['epoch']} "
          f"({history.seconds['total']:.0f}s)")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args(argv)
    try:
        run(args)
    except (OptionError, DataError, CheckpointError, FileNotFoundError, FileExistsError,
            FloatingPointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"interrupted: {args.workdir} is incomplete; the same command resumes it after its last complete epoch",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
