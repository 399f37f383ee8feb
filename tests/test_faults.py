"""Bad inputs through make, as a user meets them: one clear message, a non-zero exit, no finished-looking result."""
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import run_make
from PIL import Image



def write_dataset(root: Path) -> None:
    """A valid SFDA-layout dataset: 2 train + 1 val patients, 3 slices of 16 x 16, PNG."""
    rng = np.random.default_rng(0)
    for split, cases in (("train", [0, 1]), ("val", [2])):
        for folder in ("IMG", "GT"):
            (root / split / folder).mkdir(parents=True, exist_ok=True)
        for case in cases:
            for m in range(3):
                gt = np.zeros((16, 16), np.uint8)
                gt[4:8 + m, 5:10] = 1
                img = (rng.uniform(0, 80, (16, 16)) + 120 * gt).astype(np.uint8)
                Image.fromarray(img).save(root / split / "IMG" / f"Case{case:02d}_{m}.png")
                Image.fromarray(gt).save(root / split / "GT" / f"Case{case:02d}_{m}.png")


def nan_nifti(root: Path) -> None:
    (root / "train" / "IMG" / "Case00_0.png").unlink()
    image = np.full((16, 16), np.nan, np.float32)
    nib.save(nib.Nifti1Image(image, np.eye(4)), root / "train" / "IMG" / "Case00_0.nii.gz")


def truncated_png(root: Path) -> None:
    path = root / "train" / "IMG" / "Case01_1.png"
    path.write_bytes(path.read_bytes()[:40])


def png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


BAD_INPUTS = {
    "image without its GT": (lambda r: (r / "train/GT/Case01_2.png").unlink(), "Case01_2.png: no matching file Case01_2.*"),
    "GT without its image": (lambda r: (r / "val/IMG/Case02_0.png").unlink(), "ground truth Case02_0 has no image"),
    "IMG and GT shapes differ": (lambda r: png(r / "train/GT/Case00_1.png", np.zeros((16, 15), np.uint8)),
                                 "differs from its ground truth"),
    "GT gray level >= n_class": (lambda r: png(r / "train/GT/Case00_2.png", np.full((16, 16), 255, np.uint8)),
                                 "Case00_2.png: "),
    "non-integer labels": (lambda r: ((r / "train/GT/Case00_0.png").unlink(),
                                      np.save(r / "train/GT/Case00_0.npy", np.full((16, 16), 0.5, np.float32))),
                           "non-integer labels"),
    "truncated PNG": (truncated_png, "Case01_1.png: cannot decode"),
    "NaN intensities in a NIfTI": (nan_nifti, "Case00_0.nii.gz: NaN or Inf intensities"),
    "empty data folder": (lambda r: [p.unlink() for p in (r / "train" / "IMG").iterdir()], "train/IMG: no slice files"),
    "patient in train and val": (lambda r: [shutil.copy(p, r / "val" / p.parent.name / p.name)
                                            for p in (r / "train").glob("*/Case00_*.png")],
                                 "patient Case00 appears in both"),
    "slice names not matching --grp_regex": (lambda r: [p.rename(p.with_name(p.name.replace("Case", "Pat")))
                                                        for p in (r / "val").glob("*/*.png")],
                                             "does not match --grp_regex"),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_through_make(tmp_path, name):
    mutate, message = BAD_INPUTS[name]
    for domain in ("source", "target"):
        write_dataset(tmp_path / "data" / f"prostate_{domain}")
    mutate(tmp_path / "data" / "prostate_source")
    earlier = tmp_path / "results" / "prostate" / "earlier.txt"     # a result that existed before
    earlier.parent.mkdir(parents=True)
    earlier.write_text("kept")
    out = run_make("prostate.make", tmp_path, "NET=Dimwit", "EPC=1", timeout=300)
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert str(tmp_path / "data" / "prostate_source") in errors[0]          # names the file or folder
    finished = [p for p in (tmp_path / "results" / "prostate").iterdir() if not p.name.endswith("_tmp")]
    assert finished == [earlier] and earlier.read_text() == "kept"
    assert not (tmp_path / "archives").exists()
