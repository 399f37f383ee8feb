"""main.py's command line: the SFDA code's options (seed 004) and the CC359 protocol's, parsed and checked.

Option strings that hold Python literals (--target_losses, --target_folders) are read with ast, never eval;
every failure is one ``error:`` line naming the option.
"""
import argparse
import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch

from bounds import Bounds, build_bounds
from losses import Loss, build_loss
from reuse import METHODS
from utils import OptionError, parse_literal, parse_spacing, str2bool

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# a choice csv's columns (report.py choose_tau, choose, choose_lr, choose_k) and the options they set (--chosen)
CHOSEN_OPTIONS = {"tau": "tau", "lambda": "k_reg", "lr": "l_rate", "k": "reuse"}
# options of the seed's recipes that are accepted and change nothing: what they asked for is always on, or is moot
IGNORED = {"--dice_3d": "3D Dice per patient (always computed)", "--in_memory": "decode data once (always)",
           "--pprint": "no effect"}


@dataclass
class LossSpec:
    name: str
    loss: Loss
    bounds: Optional[Bounds]
    weight: float


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
    parser = argparse.ArgumentParser(description="Train, adapt or evaluate a segmentation network on a slice "
                                                 "dataset: one loop, one run directory (main.py).")
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
    parser.add_argument("--overgrowth_guard", type=float, default=0.0,
                        help="the guard's other side: stop and fall back the same way when that foreground grows above "
                             "this multiple of the prior's (over-segmentation; 0: off)")
    parser.add_argument("--adabn", action="store_true",
                        help="re-estimate BatchNorm statistics on the training images before anything else (AdaBN)")
    parser.add_argument("--hd95", action="store_true", help="HD95 and ASSD per val patient")
    parser.add_argument("--do_hd", dest="hd95", type=str2bool, help="(seed compatibility) any true value: --hd95")
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
    parser.add_argument("--label_free", action="store_true",
                        help="the target's train and val splits hold images only (a target with tags): no Dice, no "
                             "best_3d.pkl; last.pkl and, with --mu_images, best_mu.pkl are the run's models")
    parser.add_argument("--spacing", default="", help="voxel spacing row,column,slice in mm (default: file headers)")
    parser.add_argument("--sdice_tol", type=float, default=1.0, help="surface Dice tolerance in mm")
    parser.add_argument("--chosen", default="", metavar="FILE[:COLUMN=VALUE]",
                        help="set the options a choice csv holds (tau, lambda -> --k_reg, lr -> --l_rate, k -> the "
                             "level of --reuse METHOD) from its only row, or from the row whose COLUMN is VALUE")
    for flag, meaning in IGNORED.items():
        parser.add_argument(flag, action="store_true", help=f"(seed compatibility) {meaning}")
    args = parser.parse_args(argv)
    if args.chosen:
        apply_chosen(args, args.chosen, parser)
    for name in ("n_epoch", "l_rate", "lr_decay", "lr_decay_epoch", "weight_decay"):     # nargs="?" as in the seed
        if getattr(args, name) is None:
            parser.error(f"--{name} needs a value")
    if args.n_epoch < 0 or args.batch_size < 1:
        parser.error("--n_epoch must be >= 0 and --batch_size >= 1")
    if any(not 0 <= k < args.n_class for k in args.metric_axis):
        parser.error(f"--metric_axis {args.metric_axis} out of range for --n_class {args.n_class}")
    if args.threads < 0 or args.collapse_guard < 0 or args.overgrowth_guard < 0:
        parser.error("--threads, --collapse_guard and --overgrowth_guard must be >= 0")
    if args.overgrowth_guard and args.overgrowth_guard <= max(args.collapse_guard, 1.0):
        parser.error(f"--overgrowth_guard {args.overgrowth_guard:g}: the upper edge lies above the prior (> 1) and "
                     f"above --collapse_guard")
    if args.iterations < 0 or args.val_every < 1 or args.tau <= 0 or args.k_reg < 0:
        parser.error("--iterations must be >= 0, --val_every >= 1, --tau > 0 and --k_reg >= 0")
    if args.spottune and not args.model_weights:
        parser.error("--spottune needs --model_weights (the pre-trained network it fine-tunes)")
    if args.spacing:
        try:
            args.spacing = parse_spacing(args.spacing)
        except OptionError as e:
            parser.error(str(e))
    if args.reuse:
        args.reuse = parse_reuse(args.reuse, parser)
        if not args.model_weights or args.spottune or args.trainable:
            parser.error("--reuse needs --model_weights (the pre-trained network) and no --spottune or --trainable")
    return args


def apply_chosen(args: argparse.Namespace, spec: str, parser: argparse.ArgumentParser) -> None:
    """--chosen FILE[:COLUMN=VALUE]: the options of one row of a choice csv, read when the run starts."""
    path, _, key = spec.partition(":")
    column, _, wanted = key.partition("=")
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        parser.error(f"--chosen {spec}: cannot read {path} ({e.strerror})")
    if column:
        rows = [r for r in rows if column in r and same_value(r[column], wanted)]
    if len(rows) != 1:
        parser.error(f"--chosen {spec}: {path} has {len(rows)} rows{f' with {column} = {wanted}' if column else ''}, "
                     f"expected one")
    found = {CHOSEN_OPTIONS[c]: v for c, v in rows[0].items() if c in CHOSEN_OPTIONS}
    if not found:
        parser.error(f"--chosen {spec}: {Path(path).name} has none of the columns {', '.join(CHOSEN_OPTIONS)}")
    for option, value in found.items():
        if option == "reuse":
            args.reuse = f"{args.reuse.partition(':')[0]}:{int(float(value))}"
        else:
            setattr(args, option, float(value))


def same_value(cell: str, wanted: str) -> bool:
    """A csv cell equals a wanted value, as numbers where both are numbers (budget 8 = 8.0)."""
    try:
        return float(cell) == float(wanted)
    except ValueError:
        return cell == wanted


def parse_reuse(text: str, parser: argparse.ArgumentParser) -> Tuple[str, int]:
    """--reuse ttl:2 -> ("ttl", 2); the level is checked against the network once it is loaded."""
    method, _, k = text.partition(":")
    if method not in METHODS or not k.strip().isdigit():
        parser.error(f"--reuse {text!r}: expected METHOD:K with METHOD one of {', '.join(METHODS)}, e.g. ttl:2")
    return method, int(k)


def check_options(args: argparse.Namespace) -> None:
    """Checks that argparse cannot express; each failure is one ``error:`` line (OptionError)."""
    if not args.metric_axis:
        raise OptionError("--metric_axis needs at least one class, e.g. --metric_axis 1")
    if args.network == "checkpoint" and not args.model_weights:
        raise OptionError("--network checkpoint reads the architecture from --model_weights, which is missing")
    if args.label_free and args.test_folder:
        raise OptionError("--label_free and --test_folder: a test split is scored against labels; drop one")
    if args.mu_images < 0 or (args.mu_images and args.spottune):
        raise OptionError(f"--mu_images {args.mu_images}: expected a slice count >= 0, and no --spottune "
                          f"(mu reads a plain network's last feature layers)")
    try:
        re.compile(args.grp_regex)
    except re.error as e:
        raise OptionError(f"--grp_regex {args.grp_regex!r} is not a valid regular expression: {e}") from None
