"""The slice loader: decoded once, grouped into patients, and every malformed input named."""
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from dataloader import (DataError, check_disjoint_patients, gt_transform, load_slices, nii_transform, nii_transform2,
                        parse_slice_name, pixel_spacing, png_transform)

PNG = [("IMG", png_transform, False), ("GT", gt_transform, False)]
RGX = r"Case\d+_\d+"


def write_png(root, name, img=None, gt=None, shape=(6, 6)):
    for folder in ("IMG", "GT"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if img is not False:
        Image.fromarray(np.full(shape, 128, np.uint8) if img is None else img).save(root / "IMG" / name)
    if gt is not False:
        Image.fromarray(np.zeros(shape, np.uint8) if gt is None else gt).save(root / "GT" / name)


def test_loads_and_groups(tmp_path):
    for name in ["Case03_10.png", "Case03_2.png", "Case07_0.png"]:
        write_png(tmp_path, name)
    data = load_slices(tmp_path, PNG, 2, RGX)
    assert data.images.shape == (3, 1, 6, 6) and data.labels.shape == (3, 6, 6)
    assert data.images.max().item() == pytest.approx(128 / 255)
    assert data.patients == ["Case03", "Case03", "Case07"] and data.slice_numbers == [10, 2, 0]
    assert data.spacings == {"Case03": (1.0, 1.0, 1.0), "Case07": (1.0, 1.0, 1.0)}


def test_capture_group_names_the_patient():
    assert parse_slice_name("pat_12_slice_7.nii.gz", r"(pat_\d+)_slice_\d+") == ("pat_12", 7)


def test_nifti_spacing_and_scaling(tmp_path):
    """2D slices (the seed's NIfTI layout): the slice thickness is pixdim[3], not lost with the 2-value zooms."""
    for folder in ("IMG", "GT"):
        (tmp_path / folder).mkdir()
    affine = np.diag([0.5, 0.5, 3.0, 1])
    for folder, data in (("IMG", np.full((4, 4), 50, np.float32)), ("GT", np.zeros((4, 4), np.uint8))):
        img = nib.Nifti1Image(data, affine)
        assert tuple(img.header["pixdim"][1:4]) == (0.5, 0.5, 3.0) and len(img.header.get_zooms()) == 2
        nib.save(img, tmp_path / folder / "Case00_0.nii.gz")
    data = load_slices(tmp_path, [("IMG", nii_transform2, False), ("GT", gt_transform, False)], 2, RGX)
    assert data.spacings["Case00"] == pytest.approx((0.5, 0.5, 3.0)) and data.images.max().item() == 1.0


def test_nifti_spacing_unset_pixdim_is_one_mm_and_nan_is_refused(tmp_path):
    img = nib.Nifti1Image(np.zeros((4, 4), np.uint8), None)
    img.header["pixdim"][1:4] = [0.7, 0.8, 0.0]
    nib.save(img, tmp_path / "a.nii")
    assert pixel_spacing(tmp_path / "a.nii") == pytest.approx((0.7, 0.8, 1.0))
    img.header["pixdim"][1:4] = [0.7, np.nan, 2.0]
    nib.save(img, tmp_path / "b.nii")
    with pytest.raises(DataError, match=r"b.nii: pixdim\[1:4\] .* NaN or Inf"):
        pixel_spacing(tmp_path / "b.nii")


@pytest.mark.parametrize("setup, message", [
    (lambda r: (write_png(r, "Case00_0.png", gt=False), write_png(r, "Case00_1.png")), "no matching file Case00_0"),
    (lambda r: (write_png(r, "Case00_0.png"), write_png(r, "Case00_1.png", img=False)), "has no image"),
    (lambda r: write_png(r, "Case00_0.png", gt=np.zeros((5, 6), np.uint8)), "differs from its ground truth"),
    (lambda r: write_png(r, "Case00_0.png", gt=np.full((6, 6), 2, np.uint8)), "gray levels span"),
    (lambda r: write_png(r, "Patient_0.png"), "does not match --grp_regex"),
    (lambda r: ((r / "IMG").mkdir(), (r / "GT").mkdir()), "no slice files"),
])
def test_bad_inputs_named(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message):
        load_slices(tmp_path, PNG, 2, RGX)


def test_corrupt_png_and_nan_nifti(tmp_path):
    write_png(tmp_path, "Case00_0.png")
    data = (tmp_path / "IMG" / "Case00_0.png").read_bytes()
    (tmp_path / "IMG" / "Case00_0.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"Case00_0.png: cannot decode"):
        load_slices(tmp_path, PNG, 2, RGX)
    nan_dir = tmp_path / "nan"
    for folder in ("IMG", "GT"):
        (nan_dir / folder).mkdir(parents=True)
    img = np.ones((4, 4), np.float32); img[0, 0] = np.nan
    nib.save(nib.Nifti1Image(img, np.eye(4)), nan_dir / "IMG" / "Case00_0.nii")
    nib.save(nib.Nifti1Image(np.zeros((4, 4), np.uint8), np.eye(4)), nan_dir / "GT" / "Case00_0.nii")
    with pytest.raises(DataError, match="NaN or Inf"):
        load_slices(nan_dir, [("IMG", nii_transform2, False), ("GT", gt_transform, False)], 2, RGX)


def test_patient_in_train_and_val_refused(tmp_path):
    write_png(tmp_path / "train", "Case00_0.png")
    write_png(tmp_path / "val", "Case00_5.png")
    with pytest.raises(DataError, match="Case00 appears in both"):
        check_disjoint_patients(load_slices(tmp_path / "train", PNG, 2, RGX), load_slices(tmp_path / "val", PNG, 2, RGX))


def test_debug_keeps_ten(tmp_path):
    for m in range(12):
        write_png(tmp_path, f"Case00_{m}.png")
    assert len(load_slices(tmp_path, PNG, 2, RGX, debug=True)) == 10


def test_float16_slices_stay_float16_in_memory_and_reach_the_network_as_the_float32_decode(tmp_path):
    """The CC359 cache stores float16: kept as is (half the memory of float32), cast exactly per batch."""
    rng = np.random.default_rng(0)
    for sub in ("IMG", "GT"):
        (tmp_path / sub).mkdir()
    for k in range(3):
        np.save(tmp_path / "IMG" / f"CC0001_{k}.npy", rng.uniform(0, 1, (5, 4)).astype(np.float16))
        np.save(tmp_path / "GT" / f"CC0001_{k}.npy", (rng.uniform(0, 1, (5, 4)) > 0.5).astype(np.uint8))
    folders = [("IMG", nii_transform, False), ("GT", gt_transform, False)]
    data = load_slices(tmp_path, folders, 2, r"CC\d+_\d+")
    assert data.images.dtype == torch.float16 and data.images.shape == (3, 1, 5, 4)
    decoded = np.stack([np.load(tmp_path / "IMG" / f"CC0001_{k}.npy").astype(np.float32) for k in range(3)])
    assert torch.equal(data.images.to(torch.float32)[:, 0], torch.from_numpy(decoded))
    np.save(tmp_path / "IMG" / "CC0001_3.npy", np.full((5, 4), 0.1, np.float32))   # one float32 file: all float32
    np.save(tmp_path / "GT" / "CC0001_3.npy", np.zeros((5, 4), np.uint8))
    data = load_slices(tmp_path, folders, 2, r"CC\d+_\d+")
    assert data.images.dtype == torch.float32 and torch.equal(data.images[:3, 0], torch.from_numpy(decoded))
    assert data.images[3, 0, 0, 0].item() == np.float32(0.1)
