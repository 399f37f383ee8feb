"""ivd.make: seed 004's spine application, discs between two Dixon contrasts (water -> in-phase)."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

import synth_ivd
from conftest import TINY_PROSTATE, run_make


def stack(root, folder):
    return np.stack([np.asarray(Image.open(p), float) for p in sorted((root / "train" / folder).glob("Case00_*.png"))])


def test_the_dixon_contrasts_share_the_anatomy_and_invert_disc_against_marrow(tmp_path):
    for contrast in ("water", "inphase", "fat"):
        assert synth_ivd.main(["--contrast", contrast, "--out", str(tmp_path / contrast), "--first_subject", "0",
                               "--n_train", "1", "--n_val", "1"]) == 0
    labels = stack(tmp_path / "water", "GT")
    assert np.array_equal(labels, stack(tmp_path / "inphase", "GT")) and set(np.unique(labels)) == {0, 1}
    present = (labels == 1).any(axis=(1, 2))
    assert present.any() and not present.all()                                  # the stack's lateral ends hold no disc
    discs = labels == 1
    water, inphase, fat = (stack(tmp_path / c, "IMG") for c in ("water", "inphase", "fat"))
    assert water[discs].mean() > water[~discs].mean()                            # water: discs bright
    assert fat[discs].mean() < fat[~discs].mean()                                # fat: discs dark
    assert inphase[discs].mean() / inphase[~discs].mean() < water[discs].mean() / water[~discs].mean()
    assert synth_ivd.main(["--contrast", "inphase", "--out", str(tmp_path / "other"), "--n_train", "1",
                           "--n_val", "1"]) == 0
    assert not np.array_equal(stack(tmp_path / "other", "GT"), labels)           # the target's own subjects


@pytest.mark.slow
def test_the_tiny_chain_runs_and_reports(tmp_path):
    out = run_make("ivd.make", tmp_path, "-j2", *TINY_PROSTATE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    ivd = tmp_path / "results" / "ivd"
    assert (tmp_path / "results" / "ivd_water" / "cesource" / "best_3d.pkl").is_file()
    for run in ("noadapt", "adabn", "sfda", "sfda_truesize", "fs"):
        assert len(pd.read_csv(ivd / run / "IMG_target_metrics.csv")) >= 1, run
    assert "## Claims on this run" in (ivd / "report.md").read_text()
    assert next((tmp_path / "archives").glob("*-ivd-seed0.tar.gz")).stat().st_size > 0
