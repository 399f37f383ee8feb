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
Its pieces: options.py (the command line), training.py (one pass over a split, AdaBN), resume.py (the run
directory's state), reuse.py (--reuse), spottune.py, checkpoints.py, metrics.py (the scores), networks.py,
losses.py, bounds.py, dataloader.py.
"""
import argparse
import random
import resource
import socket
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from checkpoints import load_checkpoint, network_from_checkpoint, save_checkpoint
from dataloader import (DataError, SliceSet, check_disjoint_patients, load_slices, parse_folders,
                        save_entropy_maps, save_predictions)
from metrics import dice_2d, evaluate, evaluate_volumes, size_stats
from networks import BlockNet, build_network
from options import LossSpec, check_options, get_args, parse_losses
from prototypes import label_free_mu, mu_subsample
from resume import RESUME, History, prepare_workdir, restore, resume_state, save_resume_state
from reuse import LWFT_DECAY, lwft_blocks, transfusion, truncated
from spottune import SpotTUnet, policy_table
from tables import COLLAPSE_FILE, TESTED_WEIGHTS
from training import (PassResult, autocast, guard_side, guarded, native_bf16, reestimate_batchnorm, run_pass,
                      size_ratios, structure_columns)
from utils import OptionError, class2one_hot, exp_lr_scheduler, one_error_line, record_provenance, write_csv_atomic

write_csv = partial(write_csv_atomic, float_format="%.4f")    # every table of a run: 4 decimals


# ---------------------------------------------------------------- setup

# the validation scores of an unlabelled split (--label_free): none, so no epoch is ever the best by Dice
UNSCORED: Dict[str, Any] = {"dice2d": float("nan"), "dice3d": float("nan"), "dice3d_sd": float("nan"), "per_patient": None}


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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
    one-hot (N x C x H x W x 4 bytes) is built only when a loss has bounds (supervised runs skip it); an
    unlabelled split gives its shape alone, to the bounds that read no label."""
    with_bounds = [spec for spec in specs if spec.bounds is not None]
    if data.labels is None:
        for spec in specs:
            if spec.loss.reads_labels or (spec.bounds is not None and spec.bounds.reads_labels):
                raise DataError(f"{data.root}: holds no labels (--label_free), but the loss {spec.name} "
                                f"{'or its bounds ' if spec.bounds is not None else ''}read them; use a label-free "
                                f"loss (SelfEntropy, EntKLProp with PredictionBounds)")
        targets = torch.empty(len(data), n_class, *data.images.shape[2:], device="meta")
    else:
        targets = class2one_hot(data.labels, n_class) if with_bounds else None
    data.bounds = [spec.bounds(data.filenames, targets) if spec.bounds is not None
                   else torch.zeros(len(data), n_class, 2) for spec in specs]

# ---------------------------------------------------------------- epoch statistics

def epoch_row(epoch: int, tra: Optional[PassResult], train: SliceSet, val_pass: PassResult,
              val_eval: Dict[str, Any], val: SliceSet, n_class: int = 2) -> Dict[str, float]:
    """One row of the metrics csv, in the seed's columns (+ HD95/ASSD); train columns NaN when not trained. With
    several structures, each one's validation 3D Dice and, on the training slices, its argmax and prior sizes."""
    nan = float("nan")
    tra_size = size_stats(tra.pred[tra.seen]) if tra else (nan, nan)
    val_size = size_stats(val_pass.pred)
    gt_size = size_stats(val.labels) if val.labels is not None else (nan, nan)
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
    return {**row, **structure_columns(tra, val_eval["per_patient"], n_class)} if n_class > 2 else row


# ---------------------------------------------------------------- the run, in its stages

@dataclass
class Data:
    train: SliceSet
    val: SliceSet
    test: Optional[SliceSet]
    mu_index: Optional[Tensor] = None    # --mu_images: the training slices that mu is measured on


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
    labelled = not args.label_free
    train = load_slices(root / "train", train_folders, args.n_class, args.grp_regex, args.debug, labelled)
    val = load_slices(root / "val", val_folders, args.n_class, args.grp_regex, args.debug, labelled)
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

    With --collapse_guard (and --overgrowth_guard), an epoch whose argmax foreground falls below the guard's share
    of the prior (or grows above its multiple) ends the training: the model falls back to ``start`` with AdaBN
    statistics and is validated as the last epoch (``collapse.txt`` records epoch, ratio and side)."""
    n_epochs = max(args.n_epoch, 1)
    seconds, best = history.seconds, history.best
    held = np.zeros(args.n_class - 1, bool)                 # the structures that have reached the guard's band
    for epoch in range(history.next_epoch, n_epochs):
        t0 = time.perf_counter()
        tra: Optional[PassResult] = None
        if args.n_epoch > 0:
            tra = run_pass(net, data.train, specs, args, device, optimizers, generator, f"train {epoch}")
            if data.train.labels is not None:
                tra.dice2d = dice_2d(tra.pred[tra.seen], data.train.labels[tra.seen], args.n_class, args.metric_axis)
            if not args.flr:
                for optimizer in optimizers:
                    exp_lr_scheduler(optimizer, epoch, args.lr_decay, args.lr_decay_epoch,
                                     once=args.lr_schedule == "step_once")
        if tra and epoch in args.save_epochs:
            save_checkpoint(savedir / f"epoch{epoch}.pkl", net, epoch=epoch)
        ratios = size_ratios(tra) if tra and guarded(args) else np.array([np.nan])
        held |= ratios >= args.collapse_guard
        side, ratio, k = guard_side(ratios, args, held if args.n_class > 2 else None)
        collapsed = side is not None
        if collapsed:
            where = f"class {k}" if args.n_class > 2 else "foreground"
            print(f">> epoch {epoch}: predicted {where} {ratio:.3f} x the prior's, {side} the guard's band "
                  f"[{args.collapse_guard:g}, {args.overgrowth_guard or float('inf'):g}]: stopped; the start model "
                  f"with AdaBN statistics is the result", flush=True)
            fall_back_to_adabn(net, start, data, args, device)
            (savedir / COLLAPSE_FILE).write_text(f"{epoch},{ratio:.4f},{side}" + (f",{k}" if args.n_class > 2 else "")
                                                 + "\n")
        t1 = time.perf_counter()
        seconds["train"] += t1 - t0
        seconds["compute"] += tra.compute_s if tra else 0.0
        if (epoch + 1) % args.val_every == 0 or epoch + 1 == n_epochs or collapsed:
            val_pass = run_pass(net, data.val, specs, args, device, [], generator, f"val {epoch}", keep_entropy=args.entmap)
            val_eval = (evaluate(val_pass.pred, data.val, args.n_class, args.metric_axis, args.hd95)
                        if data.val.labels is not None else UNSCORED)
            t2 = time.perf_counter()
            seconds["val"] += t2 - t1
            seconds["compute"] += val_pass.compute_s
            row = epoch_row(epoch, tra, data.train, val_pass, val_eval, data.val, args.n_class)
            if data.mu_index is not None:
                row.update(select_by_mu(net, epoch, data, args, device, savedir, history))
            history.rows.append(row)
            write_csv(pd.DataFrame(history.rows), savedir / metrics_csv(args))
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
                 savedir: Path, history: History) -> Dict[str, float]:
    """The epoch's mean mu over the fixed training subsample (no label read), its share of empty outputs and, with
    several structures, each one's mu (mu_c<k>); the best mean so far -> best_mu.pkl."""
    t0 = time.perf_counter()
    mu, empty, per_class = label_free_mu(net, data.train.images[data.mu_index], args.batch_size, device,
                                         lambda: autocast(device, args.precision))
    if mu > history.best_mu["mu"]:
        history.best_mu = {"mu": mu, "epoch": epoch}
        save_checkpoint(savedir / "best_mu.pkl", net, epoch=epoch, mu=mu)
        (savedir / "mubestepoch.txt").write_text(f"{epoch},{mu:.4f}")
    history.seconds["mu"] += time.perf_counter() - t0
    columns = {"mu": mu, "mu_empty_share": empty}
    if len(per_class) > 1:
        columns.update({f"mu_c{k}": value for k, value in enumerate(per_class, start=1)})
    return columns


def test_weights(net: torch.nn.Module, test: SliceSet, specs: Sequence[LossSpec], args: argparse.Namespace,
                 device: torch.device, generator: torch.Generator, savedir: Path, weights: str = "last") -> None:
    """Dice and surface Dice per test volume into TESTED_WEIGHTS[weights] and, for SpotTUnet, policy.csv."""
    if weights != "last":
        net.load_state_dict(load_checkpoint(savedir / weights)["state_dict"])
    test_pass = run_pass(net, test, specs, args, device, [], generator, f"test {weights}")
    per_volume = evaluate_volumes(test_pass.pred, test, args.metric_axis, args.sdice_tol, args.spacing)
    write_csv(per_volume, savedir / TESTED_WEIGHTS[weights])
    print(f">> test ({len(per_volume)} volumes, {weights}): Dice {per_volume['dice'].mean():.4f}  "
          f"surface Dice@{args.sdice_tol:g}mm {per_volume['sdice'].mean():.4f}")
    if test_pass.frozen_sum is not None:
        write_csv(policy_table(net, test_pass.frozen_sum, len(test)), savedir / "policy.csv")


def write_outputs(savedir: Path, args: argparse.Namespace, net: torch.nn.Module, val: SliceSet, history: History) -> None:
    """last.pkl, the best epoch's per-patient scores, predictions and entropy maps."""
    last = history.next_epoch - 1 if args.n_epoch > 0 else 0
    save_checkpoint(savedir / "last.pkl", net, epoch=last, val_dice_3d=history.rows[-1]["val_dice_3d"])
    (savedir / "last_epoch.txt").write_text(str(last))
    best = history.best
    if best["epoch"] < 0:                          # --label_free: no label chose an epoch
        return
    write_csv(best["per_patient"], savedir / "val_dice_3d_per_patient.csv")
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
    write_csv(stats, savedir / "run_stats.csv")


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
    # an evaluation-only run steps nothing: no optimizer (building one imports torch._dynamo, a slow start)
    optimizers = build_optimizers(net, args) if args.n_epoch > 0 else []
    savedir = Path(args.workdir)
    start = {k: v.clone() for k, v in net.state_dict().items()} if guarded(args) else None   # before any step
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
    best = (f"best 3D dice {history.best['dice']:.4f} at epoch {history.best['epoch']}" if history.best["epoch"] >= 0
            else "no labels, no Dice")
    print(f">> results in {savedir}; {best} ({history.seconds['total']:.0f}s)")


# what stops a run with one error line: bad options, data or checkpoints, an existing result, a diverging loss
RUN_ERRORS = (ValueError, FileNotFoundError, FileExistsError, FloatingPointError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args(argv)
    try:
        return one_error_line(run, args, RUN_ERRORS)
    except KeyboardInterrupt:
        print(f"interrupted: {args.workdir} is incomplete; the same command resumes it after its last complete epoch",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
