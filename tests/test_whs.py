"""whs.make: seed 004's cardiac application, four structures (MR -> CT), its data, its dry run and a tiny real chain."""
import ast
import tarfile

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import sizes
import synth_whs
from bounds import PredictionBounds
from conftest import TINY_PROSTATE, run_make

STRUCTURES = ["MYO", "LAC", "LVC", "AA"]


def labels_of(root, split="train"):
    return np.stack([np.asarray(Image.open(p)) for p in sorted((root / split / "GT").glob("*.png"))])


def test_both_modalities_hold_the_four_structures_along_the_stack_and_differ_in_contrast(tmp_path):
    for domain in ("mr", "ct"):
        assert synth_whs.main(["--domain", domain, "--out", str(tmp_path / domain), "--n_train", "2", "--n_val", "1"]) == 0
    mr, ct = labels_of(tmp_path / "mr"), labels_of(tmp_path / "ct")
    assert set(np.unique(mr)) == set(np.unique(ct)) == {0, 1, 2, 3, 4}
    present = np.stack([(mr == k).any(axis=(1, 2)) for k in range(1, 5)])            # (structure, slice)
    assert 0 < present.mean() < 1 and not present.all(axis=0).all()                    # structures come and go
    assert (mr == 1).sum() > (ct == 1).sum()                                             # CT's wider field of view
    image = lambda d: np.asarray(Image.open(sorted((tmp_path / d / "train" / "IMG").glob("*.png"))[5]), float)
    assert abs(image("mr").mean() - image("ct").mean()) > 5 or abs(image("mr").std() - image("ct").std()) > 5
    again = tmp_path / "again"
    synth_whs.main(["--domain", "ct", "--out", str(again), "--n_train", "2", "--n_val", "1"])
    assert np.array_equal(labels_of(again), ct)                                          # deterministic per seed


def test_the_prior_has_one_size_per_structure_summing_to_the_slice(tmp_path):
    for domain in ("mr", "ct"):
        synth_whs.main(["--domain", domain, "--out", str(tmp_path / domain), "--n_train", "2", "--n_val", "1"])
    out = tmp_path / "whs.csv"
    assert sizes.main(["--source", str(tmp_path / "mr"), "--target", str(tmp_path / "ct"), "--n_class", "5",
                       "--out", str(out)]) == 0
    table = pd.read_csv(out)
    truth, tags = [table[c].map(ast.literal_eval) for c in ("val_gt_size", "dumbpredwtags")]
    assert all(len(t) == 5 and sum(t) == 96 * 96 for t in (*truth, *tags))
    assert all((np.array(g[1:]) > 0).tolist() == (np.array(t[1:]) > 0).tolist() for g, t in zip(truth, tags))  # the tags


def test_a_label_beyond_the_classes_and_a_prior_of_the_wrong_width_are_refused(tmp_path, capsys):
    synth_whs.main(["--domain", "mr", "--out", str(tmp_path / "mr"), "--n_train", "1", "--n_val", "1"])
    assert sizes.main(["--source", str(tmp_path / "mr"), "--target", str(tmp_path / "mr"), "--n_class", "3",
                       "--out", str(tmp_path / "x.csv")]) == 1
    assert "Case00_" in (err := capsys.readouterr().err) and "but n_class is 3" in err
    sizefile = tmp_path / "two.csv"
    pd.DataFrame({"val_ids": ["Case00_0.png"], "dumbpredwtags": ["[9000.0, 216.0]"]}).to_csv(sizefile, index=False)
    with pytest.raises(ValueError, match="two.csv: row 'Case00_0.png' column 'dumbpredwtags' has 2 sizes, expected 5"):
        PredictionBounds(str(sizefile))(["Case00_0.png"], torch.zeros(1, 5, 96, 96))


@pytest.mark.slow
def test_the_tiny_chain_reports_each_structure_over_two_seeds(tmp_path):
    out = run_make("whs.make", tmp_path, "-j2", "SEEDS=0 1", *TINY_PROSTATE)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for seed in (0, 1):
        whs = tmp_path / "results" / f"seed{seed}" / "whs"
        for run in ("cesource", "noadapt", "adabn", "sfda", "sfda_truesize", "fs"):
            metrics = pd.read_csv(whs / run / "IMG_target_metrics.csv")
            assert {f"val_dice_3d_c{k}" for k in range(1, 5)} <= set(metrics.columns), run
        assert {f"mu_c{k}" for k in range(1, 5)} <= set(pd.read_csv(whs / "sfda" / "IMG_target_metrics.csv").columns)
        report = (whs / "report.md").read_text()
        assert "## Each structure" in report and all(f"### {name}" in report for name in STRUCTURES)
        assert (whs / "qualitative.png").is_file() and (whs / "boxplot.png").is_file()
        archive = next((tmp_path / "archives").glob(f"*-whs-seed{seed}.tar.gz"))
        assert any(n.endswith("whs/report.md") for n in tarfile.open(archive).getnames())
    seeds = (tmp_path / "results" / "seeds" / "whs.md").read_text()
    assert "over 2 seeds" in seeds and all(f"{name} best" in seeds for name in STRUCTURES)
