"""CC359: meta.csv reader, preprocessing, splits, histogram matching, the volume prior, the report's arithmetic."""
import argparse
import random as pyrandom
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import KFold, ShuffleSplit, train_test_split

import cc359
import cc359_report
import main
import sizes
from dataloader import DataError
from networks import Dimwit, ResUNet


def write_case(root: Path, case: str, vendor: str, tesla: int, shape=(6, 8, 5), mask_shape=None) -> dict:
    """A tiny NIfTI image + mask pair in the release layout; returns its meta.csv row."""
    (root / "Original").mkdir(exist_ok=True)
    (root / "Silver-standard").mkdir(exist_ok=True)
    rng = np.random.default_rng(len(case))
    image = rng.uniform(0, 100, shape).astype(np.float32)
    mask = np.zeros(mask_shape or shape, np.uint8)
    mask[1:-1, 1:-1, 1:-1] = 1
    stem = f"{case}_{vendor}_{tesla}_50_M"
    nib.save(nib.Nifti1Image(image, np.diag([1.0, 1.0, 1.0, 1.0])), root / "Original" / f"{stem}.nii.gz")
    nib.save(nib.Nifti1Image(mask, np.diag([1.0, 1.0, 1.0, 1.0])), root / "Silver-standard" / f"{stem}_ss.nii.gz")
    return {"id": case, "MRI": f"Original/{stem}.nii.gz", "brain_mask": f"Silver-standard/{stem}_ss.nii.gz",
            "fold": cc359.DOMAINS.index((vendor, tesla)), "tomograph_model": vendor, "tesla_value": tesla}


@pytest.fixture
def release(tmp_path):
    rows = [write_case(tmp_path, "CC0001", "siemens", 15), write_case(tmp_path, "CC0002", "philips", 3)]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    return tmp_path


def test_meta_reader_reads_domains_and_header_spacing(release):
    meta = cc359.read_meta(release / "meta.csv")
    assert meta["fold"].tolist() == [0, 5]
    assert meta[["x", "y", "z"]].to_numpy().tolist() == [[1, 1, 1], [1, 1, 1]]


def test_meta_from_release_names_matches_the_written_csv(release):
    derived = cc359.meta_from_release(release)
    written = pd.read_csv(release / "meta.csv")
    assert derived[["id", "MRI", "brain_mask", "fold"]].to_dict("records") == \
        written[["id", "MRI", "brain_mask", "fold"]].to_dict("records")


@pytest.mark.parametrize("edit, message", [
    (lambda m, root: m.assign(MRI=m["MRI"].str.replace("CC0002", "CC9999")), "CC9999_philips_3_50_M.nii.gz does not exist"),
    (lambda m, root: m.assign(tomograph_model=["siemens", "toshiba"]), "unknown domain 'toshiba'"),
    (lambda m, root: m.assign(tesla_value=[15, 7]), "unknown domain"),
    (lambda m, root: m.assign(fold=[0, 4]), "fold 4 does not match philips 3"),
    (lambda m, root: m.drop(columns=["brain_mask"]), "missing column(s) brain_mask"),
    (lambda m, root: pd.concat([m, m.iloc[:1]]), "CC0001 appears twice"),
])
def test_meta_reader_rejects_bad_rows(release, edit, message):
    meta = edit(pd.read_csv(release / "meta.csv"), release)
    meta.to_csv(release / "meta.csv", index=False)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        cc359.read_meta(release / "meta.csv")
    assert "meta.csv" in str(e.value)


def test_meta_reader_rejects_a_mask_of_another_shape(tmp_path):
    rows = [write_case(tmp_path, "CC0001", "ge", 3, shape=(6, 8, 5), mask_shape=(6, 8, 4))]
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    with pytest.raises(DataError, match=r"mask .* has shape \(6, 8, 4\) but image .* has \(6, 8, 5\)"):
        cc359.read_meta(tmp_path / "meta.csv")


def test_meta_reader_rejects_a_missing_csv(tmp_path):
    with pytest.raises(DataError, match="meta.csv does not exist"):
        cc359.read_meta(tmp_path / "meta.csv")


def test_preprocess_resamples_to_the_spacing_and_scales_to_unit_range():
    image = np.arange(8 * 12 * 20, dtype=np.float32).reshape(8, 12, 20)
    mask = np.zeros((8, 12, 20), np.uint8)
    mask[2:6, 3:9, 4:16] = 1
    out, out_mask = cc359.preprocess(image, mask, (2.0, 1.0, 1.0), (1.0, 1.0, 2.0))
    assert out.shape == out_mask.shape == (16, 12, 10)        # x doubled, z halved
    assert out.min() == 0.0 and out.max() == 1.0 and out.dtype == np.float32
    assert set(np.unique(out_mask)) == {0, 1}
    assert out_mask.sum() == pytest.approx(mask.sum(), rel=0.15)   # same volume in mm^3 (2x voxels in x, 1/2 in z)


def test_preprocess_clips_the_percentiles():
    image = np.zeros((10, 10, 10), np.float32)
    image[0, 0, 0] = 1e6                                      # one hot voxel must not set the scale
    image[5:, :, :] = 10.0
    out, _ = cc359.preprocess(image, np.zeros_like(image, np.uint8), (1, 1, 1), (1, 1, 1))
    assert out[0, 0, 0] == 1.0 and out[7, 3, 3] == 1.0 and out[1, 1, 1] == 0.0


def test_budget_pool_mode_spreads_over_the_pool_and_refuses_too_many():
    n_slices = {"A": 4, "B": 4}
    assert cc359.budget_slices(["A", "B"], n_slices, 3, "pool") == ["A_0", "B_0", "B_3"]   # indices 0, 3.5 -> 4, 7
    assert cc359.budget_slices(["A"], n_slices, None) == ["A_0", "A_1", "A_2", "A_3"]
    with pytest.raises(DataError, match="budget 9 slices: the annotation pool \\(2 scans\\) holds 8 slices"):
        cc359.budget_slices(["A", "B"], n_slices, 9)


def test_budget_within_a_scan_comes_from_one_scan_evenly_spaced():
    """The paper's code: a budget below one scan annotates one scan, at the stride n / N (its slice interval)."""
    n_slices = {"A": 12, "B": 12, "C": 12}
    assert cc359.budget_slices(["A", "B", "C"], n_slices, 4) == ["A_0", "A_3", "A_6", "A_9"]
    assert cc359.budget_slices(["A", "B", "C"], n_slices, 5) == ["A_0", "A_2", "A_4", "A_7", "A_9"]
    assert cc359.budget_slices(["A", "B", "C"], n_slices, 12) == [f"A_{k}" for k in range(12)]


def test_budget_beyond_a_scan_takes_whole_scans_then_the_rest():
    n_slices = {"A": 12, "B": 10, "C": 12}
    got = cc359.budget_slices(["A", "B", "C"], n_slices, 25)
    assert got == [f"A_{k}" for k in range(12)] + [f"B_{k}" for k in range(10)] + ["C_0", "C_4", "C_8"]
    assert len(cc359.budget_slices(["A", "B", "C"], n_slices, 34)) == 34
    with pytest.raises(DataError, match="budget 35 slices"):
        cc359.budget_slices(["A", "B", "C"], n_slices, 35)


def six_domains(sizes=(7, 6, 8, 6, 7, 9)) -> pd.DataFrame:
    """cases.csv of six domains whose ids are interleaved in meta.csv order (as the release lists them)."""
    rows = [(f"CC{1000 - 13 * i:04d}", fold) for fold, n in enumerate(sizes) for i in range(n)]
    rows = [rows[i] for i in np.random.default_rng(3).permutation(len(rows))]
    return pd.DataFrame({"id": [r[0] for r in rows], "fold": [r[1] for r in rows], "n_slices": 5})


def reference_splits(cases: pd.DataFrame, val_one2all: int, val_cv: int, val_pair: int, n_add: int):
    """The paper's spottunet/split.py (one2all, single_cv via dpipe, one2one), restated on a DataFrame indexed by id."""
    seed = 0xBadCafe
    df = cases.set_index("id")
    folds = sorted(df.fold.unique())
    one2all = {}
    for f in folds:
        train, val = train_test_split(df[df.fold == f].index.tolist(), test_size=val_one2all, random_state=seed)
        one2all[f] = (train, val)
    single_cv = {}
    for f in folds:
        ids = df[df.fold == f].index.tolist()
        for k, (train_val, test) in enumerate(KFold(3, shuffle=True, random_state=seed).split(X=ids)):
            tr, va = next(ShuffleSplit(test_size=val_cv, random_state=seed).split(X=train_val))
            single_cv[f, k] = ([ids[i] for i in train_val[tr]], [ids[i] for i in train_val[va]], [ids[i] for i in test])
    pyrandom.seed(seed)
    one2one = {}
    for fb in folds:
        for fo in set(folds) - {fb}:
            ids_test, ids_add = train_test_split(df[df.fold == fo].index.tolist(), test_size=n_add, random_state=seed)
            one2one[fb, fo] = (ids_add, pyrandom.sample(ids_test, val_pair), ids_test)
    return one2all, single_cv, one2one


def test_splits_are_the_papers_own():
    """Same scans, in the same order, as spottunet/split.py draws them with seed 0xBadCafe."""
    cases = six_domains()
    one2all, single_cv, one2one = reference_splits(cases, 4, 2, 2, 3)
    for f, (train, val) in one2all.items():
        assert cc359.split_ids(cases, "baseline", f, None, 0, 4, 3) == {"train": train, "val": val, "test": []}
    for (f, k), (train, val, test) in single_cv.items():
        assert cc359.split_ids(cases, "oracle", None, f, k, 2, 3) == {"train": train, "val": val, "test": test}
    for (s, t), (add, val, test) in one2one.items():
        assert cc359.split_ids(cases, "pair", s, t, 0, 2, 3) == {"train": add, "val": val, "test": test}, (s, t)
    # one scan of a budget below a scan is the one the paper's n_add_ids = 1 experiments annotate
    add1 = reference_splits(cases, 4, 2, 2, 1)[2]
    assert all(one2one[p][0][0] == add1[p][0][0] for p in one2one)


def test_splits_are_disjoint_and_validation_scans_are_test_scans_in_pairs():
    cases = six_domains()
    pair = cc359.split_ids(cases, "pair", 0, 2, 0, n_val=2, n_add=3)
    assert len(pair["train"]) == 3 and len(pair["test"]) == 5
    assert set(pair["val"]) <= set(pair["test"]) and not set(pair["train"]) & set(pair["test"])
    folds = [cc359.split_ids(cases, "oracle", None, 2, k, n_val=2, n_add=3) for k in range(3)]
    assert sorted(i for f in folds for i in f["test"]) == sorted(cases.loc[cases["fold"] == 2, "id"])
    for f in folds:
        assert not set(f["train"]) & set(f["test"]) and not set(f["val"]) & set(f["test"])
    assert cc359.split_ids(cases, "pair", 0, 2, 0, 2, 3) == pair                  # seeded: the same every time
    with pytest.raises(DataError, match="no case of domain 4"):
        cc359.split_ids(cases[cases["fold"] != 4], "baseline", 4, None, 0, 2, 3)
    with pytest.raises(DataError, match="pair 0_1: NADD=6 scans must leave at least one of the 6 scans"):
        cc359.split_ids(cases, "pair", 0, 1, 0, 2, 6)
    with pytest.raises(DataError, match="VAL=5 validation scans but only 3 test scans"):
        cc359.split_ids(cases, "pair", 0, 1, 0, 5, 3)


def test_histogram_matching_maps_ranks_to_reference_quantiles():
    values = np.array([[3.0, 1.0], [2.0, 1.0]])
    reference = np.array([10.0, 20.0, 30.0, 40.0])
    # ranks: 1 -> quantile 0.5, 2 -> 0.75, 3 -> 1.0 of the reference (quantiles .25 .5 .75 1)
    assert cc359.match_histogram(values, reference).tolist() == [[40.0, 20.0], [30.0, 20.0]]


def fake_prep(root: Path, values: dict, shape=(4, 4), region=(2, 2)) -> Path:
    """A cache of 2-slice cases whose (2, 2) image sits in zero padding; values: id -> (fold, image values)."""
    for folder in ("IMG", "GT"):
        (root / "slices" / folder).mkdir(parents=True)
    top, left = (shape[0] - region[0]) // 2, (shape[1] - region[1]) // 2
    for case, (fold, image) in values.items():
        for k in range(2):
            slice_ = np.zeros(shape, np.float16)
            slice_[top:top + region[0], left:left + region[1]] = np.asarray(image[k], np.float16).reshape(region)
            np.save(root / "slices" / "IMG" / f"{case}_{k}.npy", slice_)
            np.save(root / "slices" / "GT" / f"{case}_{k}.npy", np.zeros(shape, np.uint8))
    pd.DataFrame({"id": list(values), "fold": [f for f, _ in values.values()], "n_slices": 2, "brain_ml": 1.0,
                  "h": region[0], "w": region[1]}).to_csv(root / "cases.csv", index=False)
    return root


def test_histogram_matching_maps_image_voxels_not_the_padding(tmp_path):
    bright = [np.linspace(0.5, 1.0, 4), np.linspace(0.6, 0.9, 4)]          # source scans: image voxels in [0.5, 1]
    dark = [[0.0, 0.0, 0.1, 0.2], [0.0, 0.05, 0.15, 0.2]]                  # target scans: real zeros inside the image
    values = {**{f"S{i}": (0, bright) for i in range(4)}, **{f"T{i}": (1, dark) for i in range(4)}}
    prep = fake_prep(tmp_path / "prep", values)
    cc359.write_split(prep, "hm", 0, 1, 0, None, n_val=1, n_add=1, out=tmp_path / "hm", n_val_source=1)
    for f in (tmp_path / "hm" / "test" / "IMG").iterdir():
        matched = np.load(f).astype(np.float32)
        assert (matched[1:3, 1:3] >= 0.5).all(), f       # the target's zeros map into the source's image range
        matched[1:3, 1:3] = 0
        assert not matched.any(), f                      # the padding stays as cached
    (prep / "cases.csv").write_text(pd.read_csv(prep / "cases.csv").drop(columns=["h", "w"]).to_csv(index=False))
    with pytest.raises(DataError, match="cases.csv: no h, w columns"):
        cc359.write_split(prep, "hm", 0, 1, 0, None, n_val=1, n_add=1, out=tmp_path / "hm2", n_val_source=1)


def test_prep_records_the_unpadded_slice_shape(release, tmp_path):
    cc359.write_prep(release / "meta.csv", (1.0, 1.0, 1.0), tmp_path / "prep")
    cases = pd.read_csv(tmp_path / "prep" / "cases.csv")
    assert cases[["h", "w", "n_slices"]].to_numpy().tolist() == [[6, 8, 5], [6, 8, 5]]
    assert np.load(tmp_path / "prep" / "slices" / "IMG" / "CC0001_0.npy").shape == (8, 8)


def test_prep_rebuild_replaces_an_existing_cache_with_the_shapes_the_headers_predict(release, tmp_path):
    """make -B reran prep over a complete cache and ended in OSError; the slice shape now comes from the
    headers before any volume is resampled (one volume in memory at a time)."""
    (tmp_path / "prep" / "slices").mkdir(parents=True)
    (tmp_path / "prep" / "stale.txt").write_text("from an earlier prep")
    cc359.write_prep(release / "meta.csv", (0.7, 0.7, 1.3), tmp_path / "prep")
    assert not (tmp_path / "prep" / "stale.txt").exists()
    image = np.load(tmp_path / "prep" / "slices" / "IMG" / "CC0001_0.npy")
    resampled, _ = cc359.preprocess(cc359.load_volume(release / "Original" / "CC0001_siemens_15_50_M.nii.gz"),
                                    cc359.load_volume(release / "Silver-standard" / "CC0001_siemens_15_50_M_ss.nii.gz"),
                                    (1, 1, 1), (0.7, 0.7, 1.3))
    cases = pd.read_csv(tmp_path / "prep" / "cases.csv")
    assert cases.loc[0, ["h", "w", "n_slices"]].tolist() == list(resampled.shape)
    assert image.shape == tuple(int(np.ceil(n / 8) * 8) for n in resampled.shape[:2])


def test_volume_prior_spreads_the_published_volume_over_tagged_slices(tmp_path):
    gt = tmp_path / "GT"
    gt.mkdir()
    slices = {"CC0001_0": 0, "CC0001_1": 3, "CC0001_2": 1, "CC0002_0": 2}       # foreground pixels per 4x4 slice
    for name, n in slices.items():
        a = np.zeros(16, np.uint8)
        a[:n] = 1
        np.save(gt / f"{name}.npy", a.reshape(4, 4))
    table = sizes.volume_prior_table(gt, volume_ml=0.012, spacing=(1, 1, 1), grp_regex=r"CC\d+_\d+")
    prior = dict(zip(table["val_ids"], table["dumbpredwtags"]))
    # 12 voxels of 1 mm^3 spread over CC0001's 2 tagged slices -> 6 each; CC0002's single slice -> 12
    assert prior == {"CC0001_0.npy": "[16.0, 0.0]", "CC0001_1.npy": "[10.0, 6.0]", "CC0001_2.npy": "[10.0, 6.0]",
                     "CC0002_0.npy": "[4.0, 12.0]"}
    assert dict(zip(table["val_ids"], table["val_gt_size"]))["CC0001_1.npy"] == "[13.0, 3.0]"


def test_run_names_parse():
    got = cc359_report.parse_run(Path("r/cc359/spottune_val/0_3_n8_tau0.1_lam0.005"))
    assert (got["method"], got["source"], got["target"], got["budget"], got["tau"], got["lam"]) == \
        ("spottune_val", 0, 3, 8.0, 0.1, 0.005)
    got = cc359_report.parse_run(Path("r/cc359/oracle/5/fold2"))
    assert (got["method"], got["target"], got["fold"]) == ("oracle", 5, 2)
    assert np.isnan(cc359_report.parse_run(Path("r/cc359/sfda/2_5"))["budget"])
    with pytest.raises(ValueError, match="not a CC359 run name"):
        cc359_report.parse_run(Path("r/cc359/ft_all/whatever"))


def val_rows(grid: dict, patients=("x",)) -> pd.DataFrame:
    """Validation scores: grid maps (pair, budget, tau, lambda) -> surface Dice of each of the run's volumes."""
    rows = []
    for (pair, budget, tau, lam), value in grid.items():
        for k, patient in enumerate(patients):
            rows.append({"run": f"{pair}_n{budget}_tau{tau}_lam{lam}", "method": "spottune_val", "source": int(pair[0]),
                         "target": int(pair[-1]), "budget": float(budget), "tau": tau, "lam": lam, "fold": np.nan,
                         "patient": patient, "dice": 1.0, "sdice": np.atleast_1d(value)[k]})
    return pd.DataFrame(rows)


def test_choose_takes_the_best_mean_over_validation_pairs():
    scores = val_rows({("0_1", 8, 0.1, 0.0): 0.8, ("0_1", 8, 0.1, 0.01): 0.9,
                       ("0_2", 8, 0.1, 0.0): 0.8, ("0_2", 8, 0.1, 0.01): 0.6})
    chosen = cc359_report.choose(scores, 0.1)
    assert chosen.to_dict("records") == [{"budget": 8, "tau": 0.1, "lambda": 0.0, "val_sdice": 0.8}]   # 0.8 > 0.75


def test_tau_is_chosen_once_at_tau_budget_with_lambda_zero_then_lambda_per_budget():
    """The paper: tau from the lambda = 0 runs at one budget; other budgets never pick their own tau."""
    scores = val_rows({("0_1", 45, 0.1, 0.0): 0.90, ("0_1", 45, 1.0, 0.0): 0.85,     # the tau grid at N = 45
                       ("0_1", 45, 1.0, 0.01): 0.99,                                  # lambda > 0 does not choose tau
                       ("0_1", 8, 0.1, 0.0): 0.70, ("0_1", 8, 0.1, 0.01): 0.75,       # the lambda grid at tau 0.1
                       ("0_1", 8, 1.0, 0.0): 0.95})                                   # a better tau at N = 8 is ignored
    tau = cc359_report.choose_tau(scores, 45)
    assert tau.to_dict("records") == [{"budget": 45, "tau": 0.1, "val_sdice": 0.9}]
    chosen = cc359_report.choose(scores, 0.1)
    assert chosen[["budget", "tau", "lambda"]].to_dict("records") == [
        {"budget": 8, "tau": 0.1, "lambda": 0.01}, {"budget": 45, "tau": 0.1, "lambda": 0.0}]
    with pytest.raises(ValueError, match="chosen tau 5 at budget\\(s\\) 8, 45"):
        cc359_report.choose(scores, 5.0)
    with pytest.raises(ValueError, match="TAU_BUDGET = 90"):
        cc359_report.choose_tau(scores, 90)


def test_lambda_runs_read_the_tau_they_chose_from_their_params(tmp_path):
    run = tmp_path / "spottune_val" / "0_3_n8_lam0.01"
    run.mkdir(parents=True)
    (run / "params.txt").write_text(str({"spottune": True, "tau": 0.5, "k_reg": 0.01, "seed": 0}) + "\n")
    got = cc359_report.parse_run(run)
    assert (got["budget"], got["tau"], got["lam"]) == (8.0, 0.5, 0.01)
    with pytest.raises(ValueError, match="params.txt"):                   # a run that never started: no tau
        cc359_report.parse_run(tmp_path / "spottune_val" / "0_3_n8")


def test_wilcoxon_reports_n_p_and_when_n_is_too_small():
    x, y = np.array([0.9, 0.8, 0.7, 0.95]), np.array([0.8, 0.7, 0.6, 0.9])
    r = cc359_report.wilcoxon_greater(x, y)
    assert r["n"] == 4 and r["p"] == pytest.approx(0.0625)                         # 4 wins of 4: p = 1/16
    assert "n too small" in cc359_report.reading(r["n"], r["p"])
    r = cc359_report.wilcoxon_greater(np.append(x, [0.5, 0.6]), np.append(y, [0.4, 0.6]))  # a zero difference is dropped
    assert r["n"] == 5 and r["p"] == pytest.approx(1 / 32)
    assert cc359_report.reading(r["n"], r["p"]).startswith("significant")
    assert cc359_report.reading(8, 0.2).startswith("not significant")
    assert cc359_report.wilcoxon_greater(x, x)["n"] == 0


def test_statistics_section_tests_chosen_lambda_and_spottune_against_the_better_fine_tuning():
    patients = [f"p{i}" for i in range(6)]
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.8, 6)
    val = val_rows({("0_1", 8, 0.1, 0.0): base, ("0_1", 8, 0.1, 0.01): base + 0.05}, patients)
    params = pd.DataFrame({"budget": [8], "tau": [0.1], "lambda": [0.01], "val_sdice": [0.7]})
    rows = []
    for method, shift in (("ft_all", 0.0), ("ft_first", -0.1), ("spottune", 0.02)):
        for k, patient in enumerate(patients):
            rows.append({"run": method, "method": method, "source": 2, "target": 5, "budget": 8.0, "tau": np.nan,
                         "lam": np.nan, "fold": np.nan, "patient": patient, "dice": 1.0, "sdice": base[k] + shift})
    text = cc359_report.cc359_statistics(pd.DataFrame(rows), params, val, [8])
    assert "| 8 | lambda = 0.01 | lambda = 0 (tau 0.1) | 6 | 6 | +5.00 | 21 | 0.0156 | significant (p < 0.05) |" in text
    assert "| 8 | spottune | ft_all (the better of ft_all / ft_first) | 6 | 6 | +2.00 |" in text
    assert "n <= 4 cannot reach p < 0.05" in text


def test_budget_equivalent_interpolates_in_log_budget():
    curve = pd.Series({8: 80.0, 32: 90.0})
    assert cc359_report.budget_equivalent(85.0, curve) == "≈ 16 slices"          # halfway in log2: 8 * 2
    assert cc359_report.budget_equivalent(70.0, curve) == "below N = 8"
    assert cc359_report.budget_equivalent(95.0, curve) == "above N = 32"


def test_relative_score_is_the_share_of_the_gap_to_the_oracle_closed():
    runs = pd.DataFrame([
        {"run": "a", "method": "noadapt", "source": 2, "target": 5, "budget": np.nan, "sdice": 0.2},
        {"run": "b", "method": "ft_all", "source": 2, "target": 5, "budget": 8.0, "sdice": 0.6},
        {"run": "c", "method": "oracle", "source": np.nan, "target": 5, "budget": np.nan, "sdice": 0.7},
        {"run": "d", "method": "oracle", "source": np.nan, "target": 5, "budget": np.nan, "sdice": 0.9},
    ])
    rel = cc359_report.relative_scores(runs)
    assert rel["method"].tolist() == ["ft_all"]
    assert rel["sdice"].iloc[0] == pytest.approx((0.6 - 0.2) / (0.8 - 0.2))     # oracle = mean of its folds


def test_ft_last_keeps_the_final_batchnorm_affine_frozen():
    """The paper's unfreeze_last trains out_path.2 and out_path.3; its final BatchNorm2d(1) (out_path.4) stays frozen."""
    net = ResUNet(1, 2, width=4)
    assert net.block_group("last") == ["out_path.2", "out_path.3"]
    frozen = net.frozen_in_group("last")
    assert frozen == ["out_path.3.1.weight", "out_path.3.1.bias"]
    assert isinstance(net.get_submodule("out_path.3.1"), torch.nn.BatchNorm2d)
    assert all(name.startswith("out_path.3.") for name in frozen) and net.frozen_in_group("first") == []
    assert Dimwit(1, 2).frozen_in_group("last") == []


def test_main_ft_last_freezes_the_final_batchnorm_affine():
    args = argparse.Namespace(model_weights=None, network="ResUNet", n_class=2, net_width=4, trainable="last",
                              spottune=False, tau=0.1, reuse="")
    net = main.build_model(args)
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert "out_path.3.0.2.weight" in trainable and "out_path.2.body.0.0.weight" in trainable
    assert not {"out_path.3.1.weight", "out_path.3.1.bias"} & trainable


def seed_scores(values: dict, tmp_path: Path, guarded=()) -> pd.DataFrame:
    """Test scores of one seed: values maps (method, pair, budget) -> surface Dice (= Dice) of the run's one volume."""
    rows = []
    for (method, pair, budget), value in values.items():
        run = tmp_path / method / (f"{pair}_n{budget}" if budget else pair)
        run.mkdir(parents=True, exist_ok=True)
        if (method, pair) in guarded:
            (run / "collapse.txt").write_text("1,0.1000\n")
        rows.append({"run": str(run), "method": method, "source": int(pair[0]), "target": int(pair[-1]),
                     "budget": float(budget) if budget else np.nan, "tau": np.nan, "lam": np.nan, "fold": np.nan,
                     "patient": "x", "dice": value, "sdice": value})
    return pd.DataFrame(rows)


def test_seeds_report_averages_pair_means_over_seeds_and_counts_collapses(tmp_path):
    seeds = [seed_scores({("noadapt", "2_5", None): 0.5, ("noadapt", "4_1", None): 0.3,
                          ("adabn", "2_5", None): 0.6, ("adabn", "4_1", None): 0.4,
                          ("sfda", "2_5", None): 0.7, ("sfda", "4_1", None): 0.02,
                          ("ft_all", "2_5", 8): 0.8, ("ft_all", "4_1", 8): 0.6}, tmp_path / "s0", [("sfda", "4_1")]),
             seed_scores({("noadapt", "2_5", None): 0.5, ("noadapt", "4_1", None): 0.5,
                          ("adabn", "2_5", None): 0.6, ("adabn", "4_1", None): 0.6,
                          ("sfda", "2_5", None): 0.8, ("sfda", "4_1", None): 0.6,
                          ("ft_all", "2_5", 8): 0.8, ("ft_all", "4_1", 8): 0.8}, tmp_path / "s1")]
    text = cc359_report.cc359_seeds_report(seeds, ["s0", "s1"], "t")
    # noadapt: seed means 40 and 50 -> 45.0 ± 7.1; ft_all at N = 8: 70 and 80
    assert "| baseline (no adaptation) | 45.0 ± 7.1 |" in text
    assert "| ft_all | 75.0 ± 7.1 |" in text
    assert "| sfda | 53.0 ± 24.0 | 36.0, 70.0 | 1/4 | 1/4 |" in text          # seed 0's 4_1 collapsed and was guarded
    assert "| adabn | 55.0 ± 7.1 | 50.0, 60.0 | 0/4 | 0/4 |" in text
    assert "| SFDA at least AdaBN | -2.0 | **no** |" in text and "Targets checked on the means over seeds" in text


def test_seeds_report_of_the_source_free_chain_alone(tmp_path):
    seeds = [seed_scores({("noadapt", "2_5", None): 0.5, ("adabn", "2_5", None): 0.6, ("sfda", "2_5", None): 0.7},
                         tmp_path / f"s{k}") for k in range(3)]
    text = cc359_report.cc359_seeds_report(seeds, ["s0", "s1", "s2"], "t")
    assert "| method | no target labels |" in text and "| sfda | 70.0 ± 0.0 |" in text
    assert "| SFDA at least AdaBN | +10.0 | yes |" in text
    assert "nan" not in text and "oracle" not in text and "SpotTUnet" not in text
