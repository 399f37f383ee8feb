"""volumes.py: nnU-Net / Decathlon / folder volumes to the slice layout, and predictions back onto each volume's grid."""
import ast
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

import main
import predict
import volumes
from conftest import run_make
from dataloader import DataError

# an oblique affine with anisotropic voxels: 0.7 x 0.5 mm in-plane, 3 mm slices, axes permuted and flipped
OBLIQUE = np.array([[0.0, 0.5, 0.0, -40.0], [-0.7, 0.0, 0.0, 30.0], [0.0, 0.0, 3.0, -12.0], [0.0, 0.0, 0.0, 1.0]])
OBLIQUE[:3, :3] = OBLIQUE[:3, :3] @ np.array([[1, 0, 0], [0, np.cos(0.2), -np.sin(0.2)], [0, np.sin(0.2), np.cos(0.2)]])


def ellipsoid(shape, centre, radii) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    return (sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) <= 1).astype(np.uint8)


def write_case(folder: Path, name: str, shape=(40, 36, 9), affine=OBLIQUE, channels: int = 0, seed: int = 0,
               label_name: str = None):
    rng = np.random.default_rng(seed)
    label = ellipsoid(shape, [s / 2 for s in shape], [shape[0] / 4, shape[1] / 3, shape[2] / 3])
    label[label.shape[0] // 2:] *= 2                      # two zones, as the Decathlon prostate's PZ and TZ
    image = 100 + 50 * (label > 0) + rng.normal(0, 5, shape)
    if channels:
        image = np.stack([image * (c + 1) for c in range(channels)], -1)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(folder / "images" / f"{name}.nii.gz"))
    nib.save(nib.Nifti1Image(label, affine), str(folder / "labels" / f"{label_name or name}.nii.gz"))
    return label


def one_hot(labels: np.ndarray, n_class: int) -> np.ndarray:
    return np.stack([(labels == k).astype(np.float32) for k in range(n_class)])


def test_slices_then_restore_gives_back_the_label_exactly_without_resampling(tmp_path):
    label = write_case(tmp_path, "p0")
    case = volumes.Case("p0", tmp_path / "images/p0.nii.gz", tmp_path / "labels/p0.nii.gz")
    images, labels, geometry = volumes.prepare(case, volumes.Preprocessing(size=(48, 48)))
    assert images.shape == labels.shape and images.shape[1:] == (48, 48) and images.dtype == np.float32
    assert 0 <= images.min() and images.max() <= 1
    assert np.array_equal(volumes.restore(one_hot(labels, 3), geometry), label)


def test_resampling_moves_the_label_by_at_most_one_voxel_at_boundaries(tmp_path):
    label = write_case(tmp_path, "p0")
    case = volumes.Case("p0", tmp_path / "images/p0.nii.gz", tmp_path / "labels/p0.nii.gz")
    images, labels, geometry = volumes.prepare(case, volumes.Preprocessing(spacing=(0.3, 0.3)))
    assert geometry["spacing"][:2] == [0.3, 0.3]
    back = volumes.restore(one_hot(labels, 3), geometry)
    assert back.shape == label.shape
    wrong = back != label
    boundary = ndimage.binary_dilation(label > 0) & ~ndimage.binary_erosion(label > 0)
    boundary |= ndimage.binary_dilation(label == 2) & ~ndimage.binary_erosion(label == 2)
    assert wrong.mean() < 0.02 and not (wrong & ~ndimage.binary_dilation(boundary)).any()


def nnunet(root: Path, n: int = 3) -> Path:
    ds = root / "Dataset001_Prostate"
    for i in range(n):
        write_case(ds, f"case_{i:03d}", seed=i)
        (ds / "imagesTr").mkdir(exist_ok=True)
        (ds / "labelsTr").mkdir(exist_ok=True)
        (ds / "images" / f"case_{i:03d}.nii.gz").rename(ds / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        (ds / "labels" / f"case_{i:03d}.nii.gz").rename(ds / "labelsTr" / f"case_{i:03d}.nii.gz")
    (ds / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "PZ": 1,
                                                 "TZ": 2}, "numTraining": n, "file_ending": ".nii.gz"}))
    return ds


def test_an_nnunet_dataset_becomes_the_slice_layout_with_a_manifest(tmp_path):
    ds = nnunet(tmp_path)
    out = tmp_path / "data" / "prostate_target"
    assert volumes.main(["slices", "--dataset", str(ds), "--labels", "1,2:1", "--out", str(out),
                         "--val_fraction", "0.34"]) == 0
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["split"]) == {"train", "val"} and len(manifest) == 3 * 9
    assert manifest.groupby("case")["split"].nunique().eq(1).all()          # a patient is in one split only
    gt = sorted((out / "train" / "GT").iterdir())
    assert all(p.name.startswith("Case") for p in gt)
    assert set(np.unique(np.concatenate([np.asarray(nib.load(str(p)).dataobj).ravel() for p in gt]))) <= {0, 1}
    prep = json.loads((out / "preprocessing.json").read_text())
    assert prep["labels"] == {"1": 1, "2": 1} and prep["axis"] == 2 and prep["clip"] == [0.5, 99.5]


def test_a_4d_decathlon_volume_needs_a_channel(tmp_path, capsys):
    task = tmp_path / "Task05_Prostate"
    write_case(task, "prostate_00", channels=2)
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "bg", "1": "PZ"},
                                                   "training": [{"image": "./images/prostate_00.nii.gz",
                                                                 "label": "./labels/prostate_00.nii.gz"}]}))
    out = tmp_path / "out"
    assert volumes.main(["slices", "--dataset", str(task), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "2 channels" in err and "--channel" in err and not out.exists()
    assert volumes.main(["slices", "--dataset", str(task), "--out", str(out), "--channel", "1"]) == 0


@pytest.mark.parametrize("problem, message", [
    ("shape", "label shape"), ("missing", "no label volume"), ("float", "non-integer"), ("empty", "no volumes"),
    ("other", "not a NIfTI volume")])
def test_bad_volumes_give_one_error_line_and_write_nothing(tmp_path, capsys, problem, message):
    write_case(tmp_path, "a")
    if problem == "shape":
        nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), OBLIQUE), str(tmp_path / "labels/a.nii.gz"))
    elif problem == "missing":
        (tmp_path / "labels/a.nii.gz").rename(tmp_path / "labels/b.nii.gz")
    elif problem == "float":
        nib.save(nib.Nifti1Image(np.full((40, 36, 9), 0.5, np.float32), OBLIQUE), str(tmp_path / "labels/a.nii.gz"))
    elif problem == "empty":
        for p in (tmp_path / "images").iterdir():
            p.unlink()
    else:
        (tmp_path / "images" / "notes.txt").write_text("x")
    out = tmp_path / "out"
    code = volumes.main(["slices", "--images", str(tmp_path / "images"), "--labels_dir", str(tmp_path / "labels"),
                         "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("error:") and message in err and "\n" not in err
    assert not out.exists() and not list(tmp_path.glob("out_tmp*"))


def test_a_crop_that_would_cut_the_label_is_refused(tmp_path):
    write_case(tmp_path, "a")
    case = volumes.Case("a", tmp_path / "images/a.nii.gz", tmp_path / "labels/a.nii.gz")
    with pytest.raises(DataError, match="would cut labelled voxels"):
        volumes.prepare(case, volumes.Preprocessing(size=(10, 10)))
    images, _, geometry = volumes.prepare(case, volumes.Preprocessing(size=(34, 40)))   # crops background only
    assert images.shape[1:] == (34, 40) and geometry["crop"][0] != [0, geometry["canonical_shape"][0]]


@pytest.mark.slow
def test_predict_writes_segmentations_on_each_inputs_grid_with_a_trust_flag(tmp_path):
    for i in range(3):
        write_case(tmp_path / "vols", f"p{i}", seed=i)
    data = tmp_path / "data"
    assert volumes.main(["slices", "--images", str(tmp_path / "vols/images"), "--labels_dir",
                         str(tmp_path / "vols/labels"), "--labels", "1,2:1", "--spacing", "0.6,0.6",
                         "--val_fraction", "0.34", "--out", str(data)]) == 0
    folders = "[('IMG', nii_transform, False), ('GT', gt_transform, False)]"
    run = tmp_path / "run"
    main.main(["--workdir", str(run), "--target_dataset", str(data), "--target_losses",
               "[('CrossEntropy', {'idc': [0,1], 'weights':[1,1]}, None, None, None, 1)]", "--target_folders", folders,
               "--val_target_folders", folders, "--network", "Dimwit", "--grp_regex", r"Case\d+_\d+", "--n_class", "2",
               "--metric_axis", "1", "--n_epoch", "1", "--batch_size", "4", "--threads", "1"])
    out = tmp_path / "pred"
    assert predict.main(["--run", str(run), "--weights", "last.pkl", "--input", str(tmp_path / "vols/images"),
                         "--reference", str(data / "val"), "--out", str(out), "--threads", "1"]) == 0
    table = pd.read_csv(out / "predictions.csv")
    assert sorted(table["volume"]) == ["p0", "p1", "p2"] and table["mu"].is_monotonic_increasing
    assert {"class1_ml", "mean_entropy", "flag", "mu_threshold", "threshold_rule"} <= set(table.columns)
    for name in ("p0", "p1", "p2"):
        given, seg = nib.load(str(tmp_path / f"vols/images/{name}.nii.gz")), nib.load(str(out / f"{name}.nii.gz"))
        assert seg.shape == given.shape and np.allclose(seg.affine, given.affine, atol=1e-6)
        assert seg.get_data_dtype() == np.uint8 and int(seg.header["sform_code"]) == int(given.header["sform_code"])
    assert (out / "overview.png").stat().st_size > 0


def test_predict_refuses_a_run_without_volume_preprocessing(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.txt").write_text(str({"target_dataset": str(tmp_path / "slices")}) + "\n")
    write_case(tmp_path / "vols", "p0")
    assert predict.main(["--run", str(run), "--input", str(tmp_path / "vols/images"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert "no preprocessing.json" in err and "\n" not in err and not (tmp_path / "o").exists()


@pytest.mark.slow
@pytest.mark.parametrize("classes", [["VOL_OPT=--labels 1,2:1"], ["N_CLASS=3"]], ids=["one structure", "two"])
def test_make_adapts_on_a_users_volumes_and_predicts_nifti_segmentations(tmp_path, classes):
    for domain, first in (("site_a", 0), ("site_b", 10)):
        for i in range(4):
            write_case(tmp_path / domain, f"{domain}_{i}", seed=first + i)
    volumes_vars = [f"SRC_VOLS={tmp_path / 'site_a'}", f"TGT_VOLS={tmp_path / 'site_b'}", *classes]
    tiny = ["NET=Dimwit", "EPC=1", "CFLAGS=-O", "THREADS=1"]
    out = run_make("prostate.make", tmp_path, "-j2", *volumes_vars, *tiny, "sourcefree")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    source, target = tmp_path / "data" / "site_a_slices", tmp_path / "data" / "site_b_slices"
    assert json.loads((target / "preprocessing.json").read_text())["size"] == \
        json.loads((source / "preprocessing.json").read_text())["size"]                  # sliced like the source
    assert (tmp_path / "results" / "site_b" / "sfda" / "last.pkl").is_file()
    assert (tmp_path / "results" / "site_a" / "cesource").is_dir()                  # never the embedded chain's
    out = run_make("prostate.make", tmp_path, *volumes_vars, *tiny, "predict", f"PREDICT_IN={tmp_path / 'site_b'}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    pred = tmp_path / "results" / "site_b" / "predict" / "sfda" / "site_b"
    predictions = pd.read_csv(pred / "predictions.csv")
    assert len(predictions) == 4 and ("class2_ml" in predictions) == ("N_CLASS=3" in classes)
    prior = pd.read_csv(tmp_path / "sizes" / "site_b.csv")["dumbpredwtags"].map(ast.literal_eval)
    assert {len(row) for row in prior} == {3 if "N_CLASS=3" in classes else 2}
    given = nib.load(str(tmp_path / "site_b" / "images" / "site_b_0.nii.gz"))
    assert np.allclose(nib.load(str(pred / "site_b_0.nii.gz")).affine, given.affine, atol=1e-6)
    assert run_make("prostate.make", tmp_path, *tiny, "predict").returncode != 0            # PREDICT_IN is needed


def test_a_layout_built_from_other_volumes_is_refused(tmp_path, capsys):
    write_case(tmp_path / "a", "a0")
    write_case(tmp_path / "b", "b0")
    out = tmp_path / "slices"
    assert volumes.main(["slices", "--volumes", str(tmp_path / "a"), "--out", str(out)]) == 0
    assert volumes.main(["slices", "--volumes", str(tmp_path / "b"), "--out", str(out)]) == 1
    assert "already holds slices of" in capsys.readouterr().err
    assert volumes.main(["slices", "--volumes", str(tmp_path / "a"), "--out", str(out)]) == 0      # the same: rebuilt


def test_tag_slices_are_counted_in_the_files_own_voxel_index():
    """A stack stored top-down (z flipped): its slices 2..4 of 10 are canonical slices 5..7; a permuted axis too."""
    flipped = np.diag([1.0, 1.0, -3.0, 1.0])
    assert volumes.canonical_slice_range(flipped, (4, 4, 10), 2, 2, 4, "t") == (5, 7)
    assert volumes.canonical_slice_range(np.diag([1.0, 1.0, 3.0, 1.0]), (4, 4, 10), 2, 2, 4, "t") == (2, 4)
    permuted = np.array([[0, 1.0, 0, 0], [0, 0, 1.0, 0], [2.0, 0, 0, 0], [0, 0, 0, 1]])   # file axis 0 is S
    assert volumes.canonical_slice_range(permuted, (6, 4, 4), 2, 1, 3, "t") == (1, 3)
    with pytest.raises(DataError, match="outside the volume's 0..9"):
        volumes.canonical_slice_range(flipped, (4, 4, 10), 2, 3, 10, "t")


def unlabelled_site(folder: Path, names, tags: Path, first: int = 2, last: int = 7) -> None:
    """Volumes without labels/ and their tags file (the ellipsoid of write_case spans slices 2..7 of 9)."""
    for i, name in enumerate(names):
        write_case(folder, name, seed=20 + i)
    for p in (folder / "labels").iterdir():
        p.unlink()
    (folder / "labels").rmdir()
    pd.DataFrame({"volume": names, "class": 1, "first": first, "last": last}).to_csv(tags, index=False)


def test_tags_give_the_size_prior_of_an_unlabelled_target(tmp_path, capsys):
    import sizes
    write_case(tmp_path / "src", "s0")
    unlabelled_site(tmp_path / "tgt", ["t0", "t1"], tmp_path / "tags.csv")
    src, tgt = tmp_path / "src_slices", tmp_path / "tgt_slices"
    assert volumes.main(["slices", "--volumes", str(tmp_path / "src"), "--labels", "1,2:1", "--out", str(src)]) == 0
    assert volumes.main(["slices", "--volumes", str(tmp_path / "tgt"), "--like", str(src), "--out", str(tgt)]) == 0
    assert not (tgt / "train" / "GT").exists()
    out = tmp_path / "sizes.csv"
    assert sizes.main(["--source", str(src), "--target", str(tgt), "--out", str(out)]) == 1      # no labels, no tags
    assert "give --tags FILE" in capsys.readouterr().err
    assert sizes.main(["--source", str(src), "--target", str(tgt), "--tags", str(tmp_path / "tags.csv"),
                       "--constant", "30", "--out", str(out)]) == 0
    table = pd.read_csv(out).merge(pd.read_csv(tgt / "manifest.csv"), left_on="val_ids", right_on="slice")
    fg = table["dumbpredwtags"].map(lambda c: json.loads(c)[1])
    assert sorted(table.loc[fg > 0, "index"].unique()) == [2, 3, 4, 5, 6, 7] and set(fg) == {0.0, 30.0}
    assert table["val_gt_size"].isna().all()                          # no true size without labels


@pytest.mark.parametrize("rows, message", [
    ([("t9", 1, 2, 7)], "unknown volume 't9'"),
    ([("t0", 1, 2, 9), ("t1", 1, 2, 7)], "slices 2..9 outside the volume's 0..8"),
    ([("t0", 1, 2, 7)], "no tag for volume t1"),
    ([("t0", 2, 2, 7), ("t1", 1, 2, 7)], "class 2 is not a foreground class 1..1"),
])
def test_a_bad_tags_file_gives_one_error_line(tmp_path, capsys, rows, message):
    import sizes
    write_case(tmp_path / "src", "s0")
    unlabelled_site(tmp_path / "tgt", ["t0", "t1"], tmp_path / "unused.csv")
    src, tgt = tmp_path / "src_slices", tmp_path / "tgt_slices"
    volumes.main(["slices", "--volumes", str(tmp_path / "src"), "--labels", "1,2:1", "--out", str(src)])
    volumes.main(["slices", "--volumes", str(tmp_path / "tgt"), "--like", str(src), "--out", str(tgt)])
    pd.DataFrame(rows, columns=["volume", "class", "first", "last"]).to_csv(tmp_path / "tags.csv", index=False)
    out = tmp_path / "sizes.csv"
    assert sizes.main(["--source", str(src), "--target", str(tgt), "--tags", str(tmp_path / "tags.csv"),
                       "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()


@pytest.mark.slow
def test_make_runs_the_label_free_chain_on_a_target_with_tags_and_deploys_by_mu(tmp_path):
    for i in range(4):
        write_case(tmp_path / "site_a", f"site_a_{i}", seed=i)
    unlabelled_site(tmp_path / "site_c", [f"site_c_{i}" for i in range(4)], tmp_path / "tags.csv")
    chain = [f"SRC_VOLS={tmp_path / 'site_a'}", f"TGT_VOLS={tmp_path / 'site_c'}", f"TGT_TAGS={tmp_path / 'tags.csv'}",
             "VOL_OPT=--labels 1,2:1", "NET=Dimwit", "EPC=1", "CFLAGS=-O", "THREADS=1"]
    out = run_make("prostate.make", tmp_path, "-j2", *chain)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    root = tmp_path / "results" / "site_c"
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["adabn", "noadapt", "sfda"]     # no fs, no TrueSize
    assert not (root / "sfda" / "best_3d.pkl").exists() and (root / "sfda" / "last.pkl").is_file()
    choice = pd.read_csv(root / "deploy.csv")
    assert choice["deployed"].sum() == 1 and choice.loc[choice["deployed"], "mean_mu"].item() == choice["mean_mu"].max()
    assert "no labels" in (root / "label_free.md").read_text()
    out = run_make("prostate.make", tmp_path, *chain, "predict", "PREDICT_RUN=auto", f"PREDICT_IN={tmp_path / 'site_c'}")
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    table = pd.read_csv(root / "predict" / "auto" / "site_c" / "predictions.csv")
    deployed = Path(choice.loc[choice["deployed"], "run"].item()).name
    assert len(table) == 4 and f"/{deployed}/" in table["model"][0] and "noadapt" in table["deployed_by"][0]
