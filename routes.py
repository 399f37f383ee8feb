#!/usr/bin/env python3
"""SpotTUnet's routes on new volumes (seed 000): does a policy learnt on a few target slices carry to other scans?

    routes.py --run results/cc359/spottune/2_5_n8 --out results/cc359/routes/2_5_n8
    routes.py report --runs results/cc359/routes/* --out results/cc359/routes.md

A finished SpotTUnet run's last weights, on its pair's test volumes, four ways: ``policy`` (each unit takes its larger
logit, as the run's own test did), ``sampled`` (routes drawn with Gumbel noise as in training, --draws times, the
scores averaged), ``tuned`` (every unit's fine-tuned copy: the routes ignored) and ``frozen`` (every unit's baseline
copy). And each unit's share of fine-tuned routes on the slices it trained on against on the test volumes (policy
mode). Writes ``scores.csv`` (mode, patient, dice, sdice), ``usage.csv`` (unit, p_finetuned_train, p_finetuned_test)
and ``summary.md``; ``report`` puts runs side by side.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence, Tuple

import pandas as pd
import torch

from checkpoints import network_from_checkpoint
from dataloader import SliceSet, load_split
from metrics import evaluate_volumes
from spottune import SpotTUnet, policy_table
from tables import read_params, read_table
from utils import one_error_line, publish, write_csv_atomic

MODES = ("policy", "sampled", "tuned", "frozen")


def predict(net: SpotTUnet, data: SliceSet, batch_size: int = 16) -> Tuple[torch.Tensor, torch.Tensor]:
    """(argmax labels (N, H, W), frozen routes summed per unit) of the network in eval mode on every slice."""
    net.eval()
    preds, frozen = [], torch.zeros(len(net.units), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(data), batch_size):
            logits = net(data.images[start:start + batch_size].float())
            preds.append(logits.argmax(1).to(torch.uint8))
            frozen += net.last_actions.double().sum(0)
    return torch.cat(preds), frozen


def score_routes(run: Path, draws: int, seed: int) -> Tuple[pd.DataFrame, pd.DataFrame]:
    """(scores per mode and test volume, each unit's fine-tuned share on the training and the test slices)."""
    params = read_params(run)
    net = network_from_checkpoint(run / "last.pkl", "checkpoint", None)
    if not isinstance(net, SpotTUnet):
        raise ValueError(f"{run}/last.pkl: a {type(net).__name__}, not a SpotTUnet run")
    if not params.get("test_folder"):
        raise ValueError(f"{run}/params.txt: the run has no --test_folder, so no test volumes to score")
    root = Path(params["target_dataset"])
    split = lambda name: load_split(root / name, params["val_target_folders"], params["n_class"], params["grp_regex"])
    train, test = split("train"), split(params["test_folder"])
    axis, tol, spacing = params["metric_axis"], params["sdice_tol"], params["spacing"] or None
    torch.manual_seed(seed)
    rows = []
    for mode in MODES:
        net.force, net.sample = (mode if mode in ("tuned", "frozen") else None), mode == "sampled"
        for draw in range(draws if mode == "sampled" else 1):
            pred, frozen = predict(net, test)
            if mode == "policy":
                usage_test = policy_table(net, frozen, len(test))
            rows.append(evaluate_volumes(pred, test, axis, tol, spacing).assign(mode=mode, draw=draw))
    net.force, net.sample = None, False
    usage_train = policy_table(net, predict(net, train)[1], len(train))
    scores = pd.concat(rows).groupby(["mode", "patient"], sort=False, as_index=False)[["dice", "sdice"]].mean()
    usage = usage_train.rename(columns={"p_finetuned": "p_finetuned_train"}).assign(
        p_finetuned_test=usage_test["p_finetuned"].to_numpy())
    return scores, usage


def summary(run: str, scores: pd.DataFrame, usage: pd.DataFrame) -> str:
    means = scores.groupby("mode", sort=False)[["dice", "sdice"]].mean().mul(100).round(1)
    moved = (usage["p_finetuned_train"] - usage["p_finetuned_test"]).abs()
    return (f"# SpotTUnet's routes: {run}\n\nTest volumes, mean x100 over {scores['patient'].nunique()} volumes: "
            f"policy (the run's own test), sampled (Gumbel noise as in training), every unit tuned, every unit "
            f"frozen.\n\n{means.to_markdown()}\n\nFine-tuned share per unit, training slices against test volumes: "
            f"mean absolute difference {moved.mean():.3f}, largest {moved.max():.3f} ({usage['unit'][moved.idxmax()]})."
            f"\n\n{usage.round(3).to_markdown(index=False)}\n")


def report(folders: Sequence[Path], out: Path) -> None:
    rows = []
    for folder in folders:
        means = read_table(folder / "scores.csv", ["mode", "sdice"]).groupby("mode")["sdice"].mean() * 100
        usage = read_table(folder / "usage.csv", ["p_finetuned_train", "p_finetuned_test"])
        rows.append({"run": folder.name, **means.round(1).to_dict(),
                     "usage moved": (usage["p_finetuned_train"] - usage["p_finetuned_test"]).abs().mean().round(3)})
    table = pd.DataFrame(rows)[["run", *MODES, "usage moved"]]
    publish("# SpotTUnet's routes on the test volumes\n\nSurface Dice x100 per mode (routes.py); `usage moved`: "
            "the mean over units of |fine-tuned share on the training slices - on the test volumes|.\n\n"
            + table.to_markdown(index=False) + "\n", out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    if argv[:1] == ["report"]:
        parser.add_argument("command")
        parser.add_argument("--runs", nargs="+", type=Path, required=True, help="routes.py output folders")
        parser.add_argument("--out", type=Path, required=True)
        args = parser.parse_args(argv)
        return one_error_line(lambda a: report(a.runs, a.out), args)
    parser.add_argument("--run", type=Path, required=True, help="a finished SpotTUnet run with a --test_folder")
    parser.add_argument("--draws", type=int, default=5, help="sampled routes: draws averaged")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    def write(a: argparse.Namespace) -> None:
        if a.threads:
            torch.set_num_threads(a.threads)
        scores, usage = score_routes(a.run, a.draws, a.seed)
        a.out.mkdir(parents=True, exist_ok=True)
        write_csv_atomic(scores, a.out / "scores.csv", float_format="%.4f")
        write_csv_atomic(usage, a.out / "usage.csv", float_format="%.4f")
        publish(summary(str(a.run), scores, usage), a.out / "summary.md")
    return one_error_line(write, args)


if __name__ == "__main__":
    sys.exit(main())
