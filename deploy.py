"""Which adapted model to deploy when the target has no labels (deploy.py): the highest mean mu (ProtoSeg), a rule
that judge measures against the labels where they exist (docs/results/prostate.md: it is not the default).

Each candidate run (noadapt, adabn, sfda, ...) is scored by its mean mu over the target's *training* images, through
the weights a user would deploy (last.pkl: no label chose its epoch); mu reads the network's own features and output,
never a label, and an empty output scores 0, so a collapsed model ranks last. The highest mean mu is deployed.

    deploy.py choose --runs results/prostate/{noadapt,adabn,sfda} --out results/prostate/deploy.csv
    deploy.py report --choice results/prostate/deploy.csv --out results/prostate/report.md --title ...
    deploy.py judge --roots results/seed{0,1,2}/prostate --runs noadapt adabn sfda --out deploy_judged.md

``judge`` measures the rule where labels exist: per root, the run the target validation labels would pick (its
last-epoch 3D Dice), the run mu picks, and the regret (Dice points lost), beside the plain rules "always sfda" and
"always adabn".
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
import torch

from checkpoints import network_from_checkpoint
from dataloader import load_split
from prototypes import label_free_mu
from tables import COLLAPSE_FILE, read_metrics, read_params
from training import autocast
from utils import one_error_line, publish, write_csv_atomic

RULES = ("mu", "always sfda", "always adabn")


def candidate_mu(run: Path, weights: str, device: torch.device, batch_size: int = 16) -> float:
    """A run's mean mu over its target training images, through ``weights`` (no label is read)."""
    params = read_params(run)
    train = load_split(Path(params["target_dataset"]) / "train", params["target_folders"], params["n_class"],
                       params["grp_regex"], option="--target_folders", labelled=False)
    net = network_from_checkpoint(run / weights, "checkpoint", None).to(device).eval()
    return label_free_mu(net, train.images, batch_size, device, lambda: autocast(device, params["precision"]))[0]


def choose(runs: Sequence[Path], weights: str, device: torch.device) -> pd.DataFrame:
    """One row per candidate: its mean mu, whether its collapse guard fired, and the one deployed (highest mu)."""
    table = pd.DataFrame({"run": [str(r) for r in runs], "weights": weights,
                          "mean_mu": [round(candidate_mu(r, weights, device), 4) for r in runs],
                          "guard_fired": [(r / COLLAPSE_FILE).is_file() for r in runs]})
    table["deployed"] = table.index == table["mean_mu"].idxmax()
    return table


def last_dice(run: Path) -> float:
    """The run's last validated epoch's 3D Dice x100 (what its last.pkl scores on the target validation labels)."""
    return 100 * float(read_metrics(run)["val_dice_3d"].iloc[-1])


def judge(roots: Sequence[Path], names: Sequence[str], weights: str, device: torch.device) -> pd.DataFrame:
    """Per root: each rule's pick and its regret against the pick of the target validation labels."""
    rows = []
    for root in roots:
        runs = [root / n for n in names]
        mu = choose(runs, weights, device).set_index("run")["mean_mu"]
        dice = pd.Series({n: last_dice(r) for n, r in zip(names, runs)})
        picks = {"mu": names[int(mu.to_numpy().argmax())], "always sfda": "sfda", "always adabn": "adabn"}
        row = {"root": str(root), "labels pick": dice.idxmax(), "best Dice": round(dice.max(), 1)}
        for rule, pick in picks.items():
            row[f"{rule}: pick"], row[f"{rule}: regret"] = pick, round(dice.max() - dice[pick], 1)
        rows.append({**row, **{f"mu {n}": m for n, m in zip(names, mu)}, **{f"Dice {n}": round(d, 1)
                                                                            for n, d in dice.items()}})
    return pd.DataFrame(rows)


def judge_report(table: pd.DataFrame, title: str) -> str:
    """The per-root table, then per rule: how often it picks the labels' run, and its mean and worst regret."""
    summary = pd.DataFrame([{"rule": rule, "picks the labels' run": f"{(table[f'{rule}: pick'] == table['labels pick']).sum()}"
                             f"/{len(table)}", "mean regret": round(table[f"{rule}: regret"].mean(), 1),
                             "worst regret": table[f"{rule}: regret"].max()} for rule in RULES if f"{rule}: pick" in table])
    return (f"# {title}\n\nRegret: 3D Dice points (x100, target validation, last epoch) lost against the run the labels "
            f"would pick. mu reads no label.\n\n{summary.to_markdown(index=False)}\n\n{table.to_markdown(index=False)}\n")


def label_free_report(choice: pd.DataFrame, title: str) -> str:
    """The label-free chain's report: no target label, so no Dice; which model is deployed and why."""
    lines = [f"# {title}", "",
             "The target has no labels (a tags file only): no Dice is computed, and fs and sfda_truesize are not run "
             "(both read target labels). Each run is scored by its mean mu (ProtoSeg) over the target training images "
             "through its last epoch's weights; the highest is the model `predict PREDICT_RUN=auto` deploys. Where labels "
             "could judge it, that rule picked the unadapted model (docs/results/prostate.md), so `predict` deploys sfda "
             "by default. A run whose collapse guard fired returned AdaBN's model.", "",
             choice.to_markdown(index=False), ""]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ch = sub.add_parser("choose", help="each run's mean mu on the target training images; the highest deployed")
    ch.add_argument("--runs", type=Path, nargs="+", required=True)
    ch.add_argument("--out", type=Path, required=True)
    rp = sub.add_parser("report", help="the label-free chain's report from a choose csv")
    rp.add_argument("--choice", type=Path, required=True)
    rp.add_argument("--out", type=Path, required=True)
    rp.add_argument("--title", default="Source-free adaptation without target labels")
    jd = sub.add_parser("judge", help="where labels exist: how often mu picks the labels' run, and its regret")
    jd.add_argument("--roots", type=Path, nargs="+", required=True)
    jd.add_argument("--runs", nargs="+", default=["noadapt", "adabn", "sfda"], help="run names in every root")
    jd.add_argument("--out", type=Path, required=True)
    jd.add_argument("--title", default="Which model to deploy without target labels: mu against plain rules")
    for p in (ch, jd):
        p.add_argument("--weights", default="last.pkl")
        p.add_argument("--cpu", action="store_true", help="the CPU even where a GPU is present")
    return one_error_line(run, parser.parse_args(argv))


def run(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not getattr(args, "cpu", False) else "cpu")
    if args.command == "choose":
        write_csv_atomic(choose(args.runs, args.weights, device), args.out)
    elif args.command == "report":
        publish(label_free_report(pd.read_csv(args.choice), args.title), args.out)
    else:
        publish(judge_report(judge(args.roots, args.runs, args.weights, device), args.title), args.out)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
