#!/usr/bin/env python3
"""Which pre-trained model of a bank to reuse on a target (seed 001): cc359.make's transfer stage, per target domain.

    transfer.py sample --pool <pair set>/train --folders ... --grp_regex ... --out voxels.npz
    transfer.py score --model <checkpoint> --name <candidate> --voxels voxels.npz --pool ... --out score/<candidate>.csv
    transfer.py report --scores <target>/score/*.csv ... --ft <target>/ft/<candidate>_s<seed> ... --out report.md

bank.py does the work; the estimators (CC-FV, LogME, LEEP, GBC, TransRate) are transferability.py's.
"""
import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from bank import CAPS, FEATURES, report_main, sample_main, score_main
from utils import one_error_line


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="transferability of a model bank to a target (seed 001)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sample", "score"):
        p = sub.add_parser(name)
        p.add_argument("--pool", type=Path, required=True, help="the target's annotated slices (a split folder)")
        p.add_argument("--folders", required=True, help="[('IMG', transform, False), ('GT', transform, False)]")
        p.add_argument("--grp_regex", required=True)
        p.add_argument("--n_class", type=int, default=2)
        p.add_argument("--out", type=Path, required=True)
    sample = sub.choices["sample"]
    sample.add_argument("--caps", type=int, nargs="+", default=list(CAPS), help="voxels per label and case per scale")
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--slices_per_case", type=int, help="draw from this many slices of each case (default: all)")
    score = sub.choices["score"]
    score.add_argument("--model", type=Path, required=True, help="a state-dict checkpoint (checkpoints.save_checkpoint)")
    score.add_argument("--name", required=True, help="the candidate's name in the tables")
    score.add_argument("--voxels", type=Path, required=True, help="the coordinates `sample` wrote")
    score.add_argument("--threads", type=int)
    score.add_argument("--features", choices=FEATURES, default="raw",
                       help="the taps as they are (raw) or standardised per case and channel, then LeakyReLU, as the "
                            "input of nnU-Net's heads that the official CC-FV code reads (instnorm)")
    rep = sub.add_parser("report")
    rep.add_argument("--scores", type=Path, nargs="+", required=True, help="<target>/score/<candidate>.csv")
    rep.add_argument("--ft", type=Path, nargs="+", required=True, help="<target>/ft/<candidate>_s<seed> runs")
    rep.add_argument("--title", default="Which pre-trained model to reuse")
    rep.add_argument("--out", type=Path, required=True)
    rep.add_argument("--table", type=Path, help="every score beside the truth (default: scores.csv beside --out)")
    rep.add_argument("--plot", type=Path, help="the scatter plots (default: scatter.png beside --out)")
    args = parser.parse_args(argv)
    command = {"sample": sample_main, "score": score_main, "report": report_main}[args.command]
    return one_error_line(command, args)


if __name__ == "__main__":
    sys.exit(main())
