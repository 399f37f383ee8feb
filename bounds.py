"""Bounds generators fed to the losses: a (C, 2) [lower, upper] size per slice and class, in pixels.

Each generator is called once per dataset with all slices at once:
``bounds(filenames, targets) -> (N, C, 2)``, targets being the (N, C, H, W) one-hot ground truth. A generator
that does not ``reads_labels`` gets a shape-only tensor (device "meta") on a split without labels.
"""
import ast
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd
import torch
from torch import Tensor

from utils import instantiate


class Bounds:
    reads_labels = True             # False: only the targets' shape is read, so an unlabelled split can use it

    def __call__(self, filenames: Sequence[str], targets: Tensor) -> Tensor:
        raise NotImplementedError


def _with_margin(value: Tensor, margin: float, mode: str) -> Tensor:
    """[value, value + margin] ('abs') or [value, value * (1 + margin)] ('percentage'), clamped >= 0."""
    if mode not in {"percentage", "abs"}:
        raise ValueError(f"bounds mode must be 'percentage' or 'abs', got {mode!r}")
    upper = value * (1 + margin) if mode == "percentage" else value + margin
    return torch.stack([value, upper], dim=-1).clamp(min=0)


def parse_size_cell(cell: Any, where: str) -> List[float]:
    """A size-csv cell such as ``"[147398.0, 827.0]"`` -> list of floats (ast.literal_eval, never eval)."""
    try:
        value = ast.literal_eval(str(cell))
    except (ValueError, SyntaxError):
        raise ValueError(f"{where}: malformed size cell {cell!r} (expected a list such as [147398.0, 827.0])") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{where}: size cell {cell!r} is not a list of numbers")
    if any(v < 0 for v in value):
        raise ValueError(f"{where}: negative size in {cell!r}")
    return [float(v) for v in value]


def read_size_column(sizefile: str, column: str) -> Dict[str, List[float]]:
    """Read column ``column`` of a size csv into {val_ids: sizes}, validating every cell."""
    path = Path(sizefile)
    if not path.is_file():
        raise FileNotFoundError(f"size file {sizefile} does not exist (build it with sizes.py)")
    df = pd.read_csv(path, dtype=str)
    for needed in ("val_ids", column):
        if needed not in df.columns:
            raise ValueError(f"{sizefile}: no column {needed!r} (columns: {', '.join(df.columns)})")
    if df["val_ids"].duplicated().any():
        dup = df.loc[df["val_ids"].duplicated(), "val_ids"].iloc[0]
        raise ValueError(f"{sizefile}: slice {dup!r} appears twice in val_ids")
    return {vid: parse_size_cell(cell, f"{sizefile} row {vid!r} column {column!r}")
            for vid, cell in zip(df["val_ids"], df[column])}


class PredictionBounds(Bounds):
    """Sizes read from column ``predcol`` of ``sizefile``, row ``val_ids == filename`` (the class-ratio prior)."""
    reads_labels = False

    def __init__(self, sizefile: str, predcol: str = "dumbpredwtags", margin: float = 0, mode: str = "percentage",
                 idc: Optional[Sequence[int]] = None, dir: str = "high", power: float = 1):
        self.sizefile, self.predcol, self.margin, self.mode = sizefile, predcol, float(margin), mode
        self.table = read_size_column(sizefile, predcol)

    def __call__(self, filenames: Sequence[str], targets: Tensor) -> Tensor:
        n, c, h, w = targets.shape
        missing = [f for f in filenames if f not in self.table]
        if missing:
            raise ValueError(f"{self.sizefile}: no row for slice {missing[0]!r} "
                             f"({len(missing)} of {len(filenames)} slices missing; val_ids must be the image file names)")
        rows = [self.table[f] for f in filenames]
        for f, row in zip(filenames, rows):
            if len(row) != c:
                raise ValueError(f"{self.sizefile}: row {f!r} column {self.predcol!r} has {len(row)} sizes, expected {c} classes")
            if abs(sum(row) - h * w) > 0.5:
                raise ValueError(f"{self.sizefile}: row {f!r} column {self.predcol!r} sums to {sum(row):g}, "
                                 f"not to the slice's w*h = {h * w}")
        return _with_margin(torch.tensor(rows, dtype=torch.float32), self.margin, self.mode)


class PreciseBounds(Bounds):
    """The true size of each class from the ground truth, widened by ``margin``."""

    def __init__(self, margin: float = 0, mode: str = "percentage", **_compat: Any):
        self.margin, self.mode = float(margin), mode

    def __call__(self, filenames: Sequence[str], targets: Tensor) -> Tensor:
        return _with_margin(targets.float().sum(dim=(2, 3)), self.margin, self.mode)


class TagBounds(Bounds):
    """Image-level tags: class k present in the GT -> [values[k]] (widened by margin), absent -> [0, 0].

    ``values`` maps class index to a size in pixels; classes without a value get the slice's
    remainder (w*h minus the other classes) when present, which suits the background.
    """

    def __init__(self, values: Dict[int, float], margin: float = 0, mode: str = "percentage", **_compat: Any):
        self.values, self.margin, self.mode = {int(k): float(v) for k, v in values.items()}, float(margin), mode

    def __call__(self, filenames: Sequence[str], targets: Tensor) -> Tensor:
        n, c, h, w = targets.shape
        present = targets.float().sum(dim=(2, 3)) > 0                         # (N, C)
        sizes = torch.zeros(n, c)
        fixed = [k for k in range(c) if k in self.values]
        for k in fixed:
            sizes[:, k] = self.values[k]
        sizes = sizes * present
        free = [k for k in range(c) if k not in self.values]
        if free:  # the remainder goes to the (usually single) class without a value
            sizes[:, free] = ((h * w - sizes.sum(dim=1, keepdim=True)) / len(free)).clamp(min=0) * present[:, free]
        return _with_margin(sizes, self.margin, self.mode)


class ConstantBounds(Bounds):
    """The same [value, value + margin] for every slice; ``values`` maps class index to pixels."""
    reads_labels = False

    def __init__(self, values: Dict[int, float], margin: float = 0, mode: str = "percentage", **_compat: Any):
        self.values, self.margin, self.mode = {int(k): float(v) for k, v in values.items()}, float(margin), mode

    def __call__(self, filenames: Sequence[str], targets: Tensor) -> Tensor:
        n, c = targets.shape[:2]
        sizes = torch.zeros(n, c)
        for k, v in self.values.items():
            if not 0 <= k < c:
                raise ValueError(f"ConstantBounds: class {k} out of range for {c} classes")
            sizes[:, k] = v
        return _with_margin(sizes, self.margin, self.mode)


BOUNDS = {"PredictionBounds": PredictionBounds, "PreciseBounds": PreciseBounds,
          "TagBounds": TagBounds, "ConstantBounds": ConstantBounds}


def build_bounds(name: Optional[str], kwargs: Optional[Dict[str, Any]]) -> Optional[Bounds]:
    """Instantiate a bounds generator of a ``--target_losses`` tuple; None when the tuple gives None."""
    return None if name is None else instantiate(BOUNDS, "bounds", name, kwargs)
