"""The option parser accepts the seed's recipes and refuses anything that would run code."""
import os

import pytest
import torch

from dataloader import TRANSFORMS, gt_transform, nii_transform2, parse_folders
from options import parse_losses
from utils import OptionError, atomic_output, exp_lr_scheduler, parse_literal, str2bool

# the SFDA_TrueSize example of seed 004, verbatim (with the make variable expanded)
TRUESIZE = ("[('EntKLProp', {'lamb_se':1,'lamb_consprior':1,'ivd':True,'weights_se':[0.1,0.9],'idc_c': [1],"
            "'curi':True,'power': 1},'PredictionBounds', \\\n{'margin':0,'dir':'high','idc':[0,1],"
            "'predcol':'val_gt_size','power': 1, 'mode':'percentage','sizefile':'SIZEFILE'},'norm_soft_size',1)]")
TT_DATA = "[('IMG', nii_transform2, False), ('GT', nii_gt_transform2, False), ('GT', nii_gt_transform2, False)]"


def test_seed_folders_parse_to_transforms():
    folders = parse_folders(TT_DATA, "--target_folders")
    assert folders[0] == ("IMG", nii_transform2, False)
    assert folders[1][1] is gt_transform and len(folders) == 3


def test_seed_truesize_losses_parse(tmp_path):
    sizefile = tmp_path / "sizes.csv"
    sizefile.write_text('val_ids,val_gt_size\nCase00_0.nii,"[3.0, 1.0]"\n')
    specs = parse_losses(TRUESIZE.replace("\\\n", "").replace("SIZEFILE", str(sizefile)))
    assert [s.name for s in specs] == ["EntKLProp"]
    assert specs[0].bounds.predcol == "val_gt_size" and specs[0].weight == 1.0


@pytest.mark.parametrize("text", [
    "__import__('os').system('touch /tmp/pwned')",
    "[('IMG', os.system, False)]",
    "[('IMG', png_transform.__globals__, False)]",
    "[(lambda: 1)()]",
    "[x for x in ()]",
    "{'a': 1}['a']",
    "[1 + 1]",
    "[open('/etc/passwd')]",
    "{**{'a': 1}}",
])
def test_parser_refuses_code(text, tmp_path):
    with pytest.raises(OptionError):
        parse_literal(text, TRANSFORMS, "--target_folders")


def test_parser_names_unknown_transform():
    with pytest.raises(OptionError, match="unknown name 'nii_transform9'"):
        parse_folders("[('IMG', nii_transform9, False)]", "--target_folders")


@pytest.mark.parametrize("text, message", [
    ("[('CrossEntropy', {'idc': [0, 1]}, None, None, 1)]", "6-tuple"),
    ("[('CrossEntropy', {'idc': [0, 1]}, None, None, None, 0)]", "positive"),
    ("[('Bogus', {}, None, None, None, 1)]", "unknown loss"),
    ("[('CrossEntropy', {'idc': [0, 1]}, 'Bogus', {}, None, 1)]", "unknown bounds"),
    ("[]", "non-empty"),
])
def test_bad_loss_specs(text, message):
    with pytest.raises(ValueError, match=message):
        parse_losses(text)


def test_parser_literals():
    assert parse_literal("[(-1, 2.5, 'a', None, True)]", {}) == [(-1, 2.5, "a", None, True)]


@pytest.mark.parametrize("text, value", [("True", True), ("False", False), ("90", True), ("0", False), ("yes", True)])
def test_str2bool_matches_seed_usage(text, value):
    assert str2bool(text) is value


def test_str2bool_refuses_garbage():
    with pytest.raises(OptionError):
        str2bool("maybe")


def test_lr_staircase_decays_every_period_and_step_once_only_once():
    lrs = {}
    for once in (False, True):
        opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        for epoch in range(12):
            exp_lr_scheduler(opt, epoch, 0.1, 4, once=once)
        lrs[once] = opt.param_groups[0]["lr"]
    assert lrs[False] == pytest.approx(1e-2)      # after epochs 4 and 8
    assert lrs[True] == pytest.approx(1e-1)       # after epoch 4 only


def test_atomic_output_replaces_whole_results_and_leaves_the_old_one_on_failure(tmp_path):
    out = tmp_path / "cache"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with atomic_output(out) as tmp:
        assert tmp.name == f"cache_tmp{os.getpid()}" and not tmp.exists()
        tmp.mkdir()
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]          # replaced whole, not merged
    with pytest.raises(RuntimeError):
        with atomic_output(out / "new.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert (out / "new.txt").read_text() == "new" and sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
