"""A run's directory and its state after the last complete epoch: History, saved to resume a killed run.

A killed run leaves resume.pt in its ``*_tmp`` workdir; main.py's same command restores the weights, the
optimizers, every random generator and the history from it and goes on, other options restart the run.
"""
import argparse
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pandas as pd
import torch

from utils import atomic_output

RESUME = "resume.pt"     # in <run>_tmp: the state after the last complete epoch, removed when the run completes


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


def prepare_workdir(workdir: Path) -> None:
    """A ``*_tmp`` directory is scratch and restarts empty; any other existing non-empty directory is refused."""
    if workdir.exists():
        if workdir.name.endswith("_tmp"):
            shutil.rmtree(workdir)
        elif any(workdir.iterdir()):
            raise FileExistsError(f"{workdir}: already exists and is not empty; refusing to overwrite a result")
    workdir.mkdir(parents=True, exist_ok=True)
