"""Small tensor helpers and the safe parser of the list-of-tuples option strings."""
import argparse
import ast
import importlib.metadata
import os
import shlex
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence, Tuple, Type

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor


# ---------------------------------------------------------------- tensors (B, C, H, W)

def simplex(t: Tensor, axis: int = 1) -> bool:
    """True when ``t`` sums to one along ``axis`` (probabilities or one-hot)."""
    sums = t.sum(dim=axis, dtype=torch.float32)
    return bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4))


def class2one_hot(seg: Tensor, n_class: int) -> Tensor:
    """(B, H, W) integer labels -> (B, C, H, W) float one-hot."""
    return torch.nn.functional.one_hot(seg.long(), n_class).movedim(-1, 1).float()


def probs2class(probs: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, H, W) index of the largest class (the first on ties).

    ``max(dim=1).indices`` rather than ``argmax(dim=1)``: the same result, much faster on CPU for a
    reduction over this non-innermost axis.
    """
    return probs.max(dim=1).indices


def soft_size(a: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C) pixel counts (soft for probabilities)."""
    return a.sum(dim=(2, 3))


def norm_soft_size(a: Tensor, power: float = 1) -> Tensor:
    """Class ratio of each image as in the SFDA code: (p / max_c p)^power summed, then normalised.

    Not the mean probability: the dominant class counts ~1 per pixel, the others their ratio to
    the max (docs/methods/sfda.md). Gradients flow through numerator and max. (B, C, H, W) -> (B, C).
    """
    ratio = a / (a.amax(dim=1, keepdim=True) + 1e-10)
    q = (ratio ** power).sum(dim=(2, 3))
    return q / (q.sum(dim=1, keepdim=True) + 1e-10)


def soft_ratio(a: Tensor, power: float = 1) -> Tensor:
    """The papers' plain soft size as a class ratio: sum of probabilities over W*H. (B, C, H, W) -> (B, C).

    Unlike norm_soft_size, a pixel at probability 0.3 counts 0.3, not 0.3/0.7 = 0.43, so diffuse low
    probabilities meet a size prior less cheaply. ``power`` is accepted for the loss's signature (p^1).
    """
    return a.mean(dim=(2, 3))


SIZE_FUNCTIONS = {"norm_soft_size": norm_soft_size, "soft_size": soft_size, "soft_ratio": soft_ratio}
RATIO_FUNCTIONS = ("norm_soft_size", "soft_ratio")      # the size functions that give a class ratio (a KL needs one)


def resized(features: Tensor, size: Sequence[int], at: Optional[np.ndarray] = None) -> Tensor:
    """Feature maps (B, C, *S) at the spatial ``size`` by linear interpolation (bilinear, trilinear),
    align_corners=False, unchanged when they have it already; integer maps are read as float64.

    ``at``: (m, 2) (row, column) output pixels of a 2D ``size``: only those, (B, C, m), sampled with grid_sample at
    the pixel centres, which gives the interpolated values without building the full-size map.
    """
    maps = features if features.is_floating_point() else features.double()
    if at is not None:
        h, w = size
        y = (at[:, 0] + 0.5) / h * 2 - 1                   # output pixel centres in grid_sample's [-1, 1] frame
        x = (at[:, 1] + 0.5) / w * 2 - 1
        grid = torch.from_numpy(np.stack([x, y], axis=1)).to(maps)[None, None].expand(len(maps), -1, -1, -1)
        values = F.grid_sample(maps.float(), grid.float(), mode="bilinear", padding_mode="border", align_corners=False)
        return values[:, :, 0]
    if tuple(maps.shape[2:]) == tuple(size):
        return maps
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(size)]
    return F.interpolate(maps, size=tuple(size), mode=mode, align_corners=False)


def evenly_spaced(n_total: int, n: int) -> np.ndarray:
    """Indices of ``n`` of ``n_total`` items spread evenly from the first to the last (all when n >= n_total)."""
    return np.unique(np.linspace(0, n_total - 1, min(n, n_total)).round().astype(np.int64))


# ---------------------------------------------------------------- safe option parsing

class OptionError(ValueError, argparse.ArgumentTypeError):
    """An option value of the wrong shape (argparse prints its message when a ``type=`` function raises it)."""


def parse_literal(text: str, names: Mapping[str, Any], option: str = "option") -> Any:
    """Parse a Python-literal option string; bare names resolve through ``names`` only.

    Accepted: numbers, strings, True/False/None, lists, tuples, dicts, unary minus, and bare
    names present in ``names`` (e.g. transforms). Calls, attribute access, subscripts, operators,
    lambdas and comprehensions are refused: nothing in the string is ever executed.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as e:
        raise OptionError(f"{option}: not a valid literal ({e.msg}): {text!r}") from None
    return _literal(tree.body, names, option)


def _literal(node: ast.AST, names: Mapping[str, Any], option: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        items = [_literal(e, names, option) for e in node.elts]
        return items if isinstance(node, ast.List) else tuple(items)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise OptionError(f"{option}: '**' unpacking is not allowed")
        return {_literal(k, names, option): _literal(v, names, option) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) \
            and isinstance(node.operand, ast.Constant) and isinstance(node.operand.value, (int, float)):
        return -node.operand.value if isinstance(node.op, ast.USub) else node.operand.value
    if isinstance(node, ast.Name):
        if node.id in names:
            return names[node.id]
        raise OptionError(f"{option}: unknown name {node.id!r}; known names: {', '.join(sorted(names)) or 'none'}")
    raise OptionError(f"{option}: {type(node).__name__} is not allowed in an option string "
                      f"(only literals and known names): {ast.unparse(node)!r}")


def instantiate(registry: Mapping[str, Callable[..., Any]], kind: str, name: str, kwargs: Any,
                **extra: Any) -> Any:
    """``registry[name](**kwargs, **extra)`` for an entry of an option's tuple (a loss, a bounds generator); an unknown
    name, parameters that are not a dict or that the class refuses: ValueError naming them."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {', '.join(sorted(registry))}")
    if not isinstance(kwargs, dict):
        raise ValueError(f"{kind} {name}: parameters must be a dict, got {kwargs!r}")
    try:
        return registry[name](**kwargs, **extra)
    except TypeError as e:
        raise ValueError(f"{kind} {name}: bad parameters {kwargs!r}: {e}") from None


def parse_spacing(text: str, option: str = "--spacing") -> Tuple[float, float, float]:
    """A voxel spacing ``1,0.95,0.95``: three positive millimetres."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise OptionError(f"{option} {text!r}: expected three numbers, e.g. 1,0.95,0.95") from None
    if len(values) != 3 or not all(v > 0 for v in values):
        raise OptionError(f"{option} {text!r}: expected three positive numbers")
    return values


def str2bool(text: str) -> bool:
    """Lenient boolean for the seed's ``type=bool`` options (``--saveim True``, ``--do_hd 90``)."""
    low = str(text).strip().lower()
    if low in {"false", "0", "no", "off", ""}:
        return False
    if low in {"true", "yes", "on"}:
        return True
    try:
        return float(low) != 0
    except ValueError:
        raise OptionError(f"not a boolean: {text!r}") from None


# ---------------------------------------------------------------- learning rate

def exp_lr_scheduler(optimizer: torch.optim.Optimizer, epoch: int, lr_decay: float, lr_decay_epoch: int = 20,
                     once: bool = False) -> None:
    """After epoch ``epoch``: multiply the lr by ``lr_decay`` when epoch > 0 and epoch % lr_decay_epoch == 0
    (seed 004's staircase), or with ``once`` only when epoch == lr_decay_epoch (seed 000: one drop)."""
    if (epoch == lr_decay_epoch) if once else (epoch > 0 and epoch % lr_decay_epoch == 0):
        for group in optimizer.param_groups:
            group["lr"] *= lr_decay


# ---------------------------------------------------------------- outputs

def remove_path(path: Path) -> None:
    """Remove a file, link or folder if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` (``<stem>_tmp<pid><suffix>``: unique to this process, same suffix)
    to write a file or a folder into; it replaces ``path`` only when the block completes, and is removed
    when the block fails, so ``path`` is either the old or the complete new result, never a partial one.
    An existing folder is moved aside, not merged into (a rebuild replaces it whole)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}_tmp{os.getpid()}{path.suffix}")
    remove_path(tmp)
    try:
        yield tmp
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f"{path.name}_old{os.getpid()}")
            path.replace(old)
            tmp.replace(path)
            shutil.rmtree(old)
        else:
            tmp.replace(path)
    except BaseException:
        remove_path(tmp)
        raise


def write_text_atomic(text: str, out: Path) -> None:
    with atomic_output(out) as tmp:
        tmp.write_text(text)


def publish(text: str, out: Path) -> None:
    """A markdown report written atomically to ``out``, and printed."""
    write_text_atomic(text, out)
    print(text)


def write_csv_atomic(table: pd.DataFrame, out: Path, **kwargs: object) -> None:
    with atomic_output(out) as tmp:
        table.to_csv(tmp, index=False, **kwargs)


def save_figure(fig: Any, out: Path, dpi: int = 120, tight: bool = True) -> None:
    """Save a matplotlib figure atomically."""
    if tight:               # not with a colorbar spanning several axes
        fig.tight_layout()
    with atomic_output(out) as tmp:
        fig.savefig(tmp, dpi=dpi)


INPUT_ERRORS: Tuple[Type[Exception], ...] = (FileNotFoundError, ValueError, KeyError)


def one_error_line(command: Callable[[Any], Optional[int]], argv: Any,
                   errors: Tuple[Type[Exception], ...] = INPUT_ERRORS) -> int:
    """``command(argv)``'s exit status (None: 0), with a missing or malformed input (file, run directory, csv, option)
    reported as one ``error: <file>: <problem>`` line and exit status 1 instead of a traceback."""
    try:
        return command(argv) or 0
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


# ---------------------------------------------------------------- provenance

def record_provenance(savedir: Path) -> None:
    """Write the exact command, git commit and diff, and installed package versions of this run."""
    here = Path(__file__).resolve().parent
    (savedir / "command.txt").write_text(shlex.join([sys.executable, *sys.orig_argv[1:]]) + "\n")

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""
    (savedir / "git_commit.txt").write_text((git("rev-parse", "HEAD").strip() or "not a git checkout") + "\n")
    (savedir / "git_diff.patch").write_text(git("diff", "HEAD"))
    versions = sorted(f"{d.metadata['Name']}=={d.version}" for d in importlib.metadata.distributions())
    (savedir / "versions.txt").write_text(f"python {sys.version.split()[0]}\n" + "\n".join(versions) + "\n")


def write_table_and_markdown(build: Callable[[], pd.DataFrame], render: Callable[[pd.DataFrame, str], str],
                             out: Path, title: str) -> int:
    """The table ``build`` makes as <out>.csv, ``render``'s markdown of it as <out>; a bad input: one error line."""

    def write(_: object) -> None:
        table = build()
        write_csv_atomic(table, out.with_suffix(".csv"), float_format="%.4f")
        publish(render(table, title), out)
    return one_error_line(write, None)
