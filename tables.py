"""The runs' own files, each read by one function here, and what the reports share.

Every reader refuses a missing or malformed file with FileNotFoundError / ValueError naming the file and the
problem (a report prints it as one ``error:`` line). A run directory (main.py) holds ``<IMG>_target_metrics.csv``
(one row per epoch), ``3dbestepoch.txt``, ``val_dice_3d_per_patient.csv``, ``run_stats.csv``, and with a test
split ``test_metrics*.csv`` and (SpotTUnet) ``policy.csv``; a ProtoSeg analysis folder (protoseg.py) holds
``sa_layers.csv`` among others.
"""
import ast
from pathlib import Path
from typing import Sequence, Tuple

import numpy as np
import pandas as pd

COLLAPSE = 0.05   # a run whose (last-epoch or test) Dice is below this predicts (almost) empty masks: a collapse
COLLAPSE_FILE = "collapse.txt"   # main.py --collapse_guard: the epoch it stopped at and the size ratio it saw
# the test csv of each tested weights: the last epoch's, and with --mu_images the epochs chosen by labels and by mu
TESTED_WEIGHTS = {"last": "test_metrics.csv", "best_3d.pkl": "test_metrics_best_3d.csv",
                  "best_mu.pkl": "test_metrics_best_mu.csv"}


def mean_sd(values: pd.Series, scale: float = 100, digits: int = 1) -> str:
    """``mean ± sd`` (ddof 1) of the finite values times ``scale``; the mean alone for one value, – for none."""
    v = scale * values.dropna()
    if v.empty:
        return "–"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}" if len(v) > 1 else f"{v.mean():.{digits}f}"


def read_table(path: Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """A csv, or a ValueError / FileNotFoundError naming the file and what is wrong with it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is the run complete?)")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable csv ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ValueError(f"{path}: no column {missing[0]!r} (columns: {', '.join(map(str, table.columns))})")
    return table


def metrics_file(run: Path) -> Path:
    """The run's per-epoch metrics csv, ``<first --target_folders folder>_target_<--csv>``."""
    found = sorted(run.glob("*_target_metrics.csv"))
    if not found:
        raise FileNotFoundError(f"{run}: no *_target_metrics.csv (is the run complete?)")
    return found[0]


def read_metrics(run: Path, columns: Sequence[str] = ("epoch", "val_dice_3d")) -> pd.DataFrame:
    return read_table(metrics_file(run), columns)


def read_best_epoch(run: Path) -> Tuple[int, float]:
    """(epoch, 3D Dice) of ``3dbestepoch.txt``."""
    path = run / "3dbestepoch.txt"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (is the run complete?)")
    try:
        epoch, dice = path.read_text().split(",")
        return int(epoch), float(dice)
    except ValueError:
        raise ValueError(f"{path}: expected 'epoch,dice', got {path.read_text()[:40]!r}") from None


def read_params(run: Path) -> dict:
    """A run's arguments as main.py resolved them (params.txt), chosen parameters included."""
    path = run / "params.txt"
    try:
        return ast.literal_eval(path.read_text())
    except (OSError, ValueError, SyntaxError) as e:
        raise ValueError(f"{path}: cannot read the run's arguments ({type(e).__name__}: {e})") from None


def read_per_patient(run: Path, metric: str = "dice_3d") -> np.ndarray:
    """Per-patient ``metric`` (dice_3d, hd95, assd) at the best epoch, averaged over the reported classes."""
    df = read_table(run / "val_dice_3d_per_patient.csv", ["patient"])
    return df.filter(like=f"{metric}_c").mean(axis=1, skipna=False).to_numpy()


def read_class_dice(run: Path) -> pd.DataFrame:
    """Each structure's 3D Dice in a run with several (main.py's per-class columns): cls, best (at the best epoch, mean
    over the patients) and last (the last epoch's); no row for a run of one structure."""
    per_patient = read_table(run / "val_dice_3d_per_patient.csv", ["patient"])
    classes = sorted(int(c.rsplit("_c", 1)[1]) for c in per_patient.filter(like="dice_3d_c").columns)
    if len(classes) < 2:
        return pd.DataFrame(columns=["cls", "best", "last"])
    last = read_metrics(run, [f"val_dice_3d_c{k}" for k in classes]).iloc[-1]
    return pd.DataFrame({"cls": classes, "best": [per_patient[f"dice_3d_c{k}"].mean() for k in classes],
                         "last": [last[f"val_dice_3d_c{k}"] for k in classes]})


def read_run_stats(run: Path) -> pd.Series:
    """Seconds per stage (load, train, val, ..., total) and peak memory of a run, by name."""
    return read_table(run / "run_stats.csv", ["name", "value"]).set_index("name")["value"]


def fell_back(run: Path) -> bool:
    """Whether the run's collapse guard stopped it and returned to the start model with AdaBN statistics."""
    return (run / COLLAPSE_FILE).is_file()


def read_test_metrics(run: Path, weights: str = "last") -> pd.DataFrame:
    """Dice and surface Dice per test volume of a run tested with its ``weights`` (a key of TESTED_WEIGHTS)."""
    path = run / TESTED_WEIGHTS[weights]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (is the run complete, and was it given --test_folder?)")
    return read_table(path, ["patient", "dice", "sdice"])


def read_policy(run: Path) -> pd.DataFrame:
    """A SpotTUnet test run's share of test slices that fine-tune each unit."""
    return read_table(run / "policy.csv", ["unit", "p_finetuned"])


def read_sa_layers(analysis: Path) -> pd.DataFrame:
    """A ProtoSeg analysis folder's SA score per feature layer, in forward order."""
    return read_table(analysis / "sa_layers.csv", ["layer", "order", "sa"])
