"""The size csv: written by sizes.py, read back by PredictionBounds, and every bad cell refused."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import sizes
from sizes import slice_weights, template_slice_profile
from bounds import PredictionBounds, TagBounds, PreciseBounds, ConstantBounds, parse_size_cell

H, W = 6, 5


def write_split(root, split, labels):
    for folder in ("IMG", "GT"):
        (root / split / folder).mkdir(parents=True, exist_ok=True)
    for name, lab in labels.items():
        Image.fromarray(np.full((H, W), 100, np.uint8)).save(root / split / "IMG" / name)
        Image.fromarray(lab.astype(np.uint8)).save(root / split / "GT" / name)


def blob(n):
    lab = np.zeros((H, W), np.uint8)
    lab.flat[:n] = 1
    return lab


@pytest.fixture
def datasets(tmp_path):
    src, tgt = tmp_path / "src", tmp_path / "tgt"
    write_split(src, "train", {"Case00_0.png": blob(4), "Case00_1.png": blob(0), "Case01_0.png": blob(8)})
    write_split(src, "val", {"Case02_0.png": blob(1)})
    write_split(tgt, "train", {"Case00_0.png": blob(3), "Case00_1.png": blob(0)})
    write_split(tgt, "val", {"Case01_0.png": blob(10)})
    return src, tgt


def test_round_trip(datasets, tmp_path):
    src, tgt = datasets
    out = tmp_path / "sizes" / "prostate.csv"
    assert sizes.main(["--source", str(src), "--target", str(tgt), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert list(df.columns[:3]) == ["val_ids", "val_gt_size", "dumbpredwtags"]
    assert df["val_ids"].tolist() == ["Case00_0.png", "Case00_1.png", "Case01_0.png"]
    # the published constant is the mean positive source-train size: (4 + 8) / 2 = 6
    assert df["dumbpredwtags"].tolist() == ["[24.0, 6.0]", "[30.0, 0.0]", "[24.0, 6.0]"]
    assert df["val_gt_size"].tolist() == ["[27.0, 3.0]", "[30.0, 0.0]", "[20.0, 10.0]"]
    targets = torch.zeros(3, 2, H, W)
    for col, expected in [("dumbpredwtags", [6.0, 0.0, 6.0]), ("val_gt_size", [3.0, 0.0, 10.0])]:
        b = PredictionBounds(sizefile=str(out), predcol=col)(df["val_ids"].tolist(), targets)
        assert b.shape == (3, 2, 2)
        assert b[:, 1, 0].tolist() == expected and b[:, :, 0].sum(dim=1).tolist() == [H * W] * 3


def test_constant_override(datasets, tmp_path):
    src, tgt = datasets
    out = tmp_path / "s.csv"
    assert sizes.main(["--target", str(tgt), "--out", str(out), "--constant", "7"]) == 0
    assert pd.read_csv(out)["dumbpredwtags"].tolist()[0] == "[23.0, 7.0]"


def write_csv(path, rows, column="dumbpredwtags"):
    pd.DataFrame({"val_ids": [r[0] for r in rows], column: [r[1] for r in rows]}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("cell, message", [
    ("[25.0, 5", "malformed"),
    ("__import__('os')", "malformed"),
    ("[30.0]", "has 1 sizes"),
    ("[35.0, -5.0]", "negative"),
    ("[20.0, 5.0]", "sums to 25"),
    ("'abc'", "not a list"),
])
def test_bad_cells_refused(tmp_path, cell, message):
    path = write_csv(tmp_path / "s.csv", [("Case00_0.png", cell)])
    with pytest.raises(ValueError, match=message):
        PredictionBounds(sizefile=str(path))(["Case00_0.png"], torch.zeros(1, 2, H, W))


def test_missing_slice_and_missing_column(tmp_path):
    path = write_csv(tmp_path / "s.csv", [("Case00_0.png", "[25.0, 5.0]")])
    with pytest.raises(ValueError, match="no row for slice 'Case09_0.png'"):
        PredictionBounds(sizefile=str(path))(["Case09_0.png"], torch.zeros(1, 2, H, W))
    with pytest.raises(ValueError, match="no column 'val_gt_size'"):
        PredictionBounds(sizefile=str(path), predcol="val_gt_size")
    with pytest.raises(FileNotFoundError):
        PredictionBounds(sizefile=str(tmp_path / "absent.csv"))


def test_parse_size_cell():
    assert parse_size_cell("[147398.0, 827.0]", "x") == [147398.0, 827.0]


def test_tag_precise_constant_bounds():
    targets = torch.zeros(2, 2, 2, 2)
    targets[0, 1, 0, 0] = 1; targets[0, 0] = 1 - targets[0, 1]
    targets[1, 0] = 1
    tag = TagBounds(values={1: 2})(["a", "b"], targets)
    assert tag[:, :, 0].tolist() == [[2.0, 2.0], [4.0, 0.0]]
    precise = PreciseBounds(margin=0.5)(["a", "b"], targets)
    assert precise[0].tolist() == [[3.0, 4.5], [1.0, 1.5]]
    const = ConstantBounds(values={1: 3}, margin=1, mode="abs")(["a", "b"], targets)
    assert const[1].tolist() == [[0.0, 1.0], [3.0, 4.0]]


def test_volume_prior_follows_the_anatomy_profile_over_tagged_slices():
    numbers = np.array([0, 1, 2, 3, 4, 0, 1], float)
    tagged = np.array([False, True, True, True, False, True, True])
    patients = pd.Series(["A"] * 5 + ["B"] * 2)
    profiled = slice_weights(numbers, tagged, patients, np.array([1.0, 3.0, 1.0]))
    assert np.allclose(profiled, [0, 0.2, 0.6, 0.2, 0, 0.5, 0.5])       # relative positions 0, 0.5, 1 of A
    assert np.allclose(slice_weights(numbers, tagged, patients, None), [0, 1 / 3, 1 / 3, 1 / 3, 0, 0.5, 0.5])
    profile = template_slice_profile()
    assert profile.sum() == pytest.approx(1) and profile.max() > 4 * profile[[0, -1]].max()
