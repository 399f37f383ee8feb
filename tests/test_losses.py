"""Exact values of the losses on small hand-checked tensors."""
import math

import pytest
import torch

from losses import CrossEntropy, DiceLoss, EntKLProp, NaivePenalty, ProtoSegLoss, SelfEntropy, build_loss, soft_dice
from utils import norm_soft_size, soft_ratio

# one image, two classes, 1 x 2 pixels: pixel a is uncertain (0.5 / 0.5), pixel b is background (1 / 0)
PROBS = torch.tensor([[[[0.5, 1.0]], [[0.5, 0.0]]]])
TARGET = torch.tensor([[[[0.0, 1.0]], [[1.0, 0.0]]]])     # a is foreground, b background
BOUNDS_HALF = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])     # prior: one pixel of each class


def test_norm_soft_size_is_ratio_to_max_not_mean_probability():
    # pixel a: both classes equal the max -> 1 each; pixel b: background 1, foreground 0
    assert torch.allclose(norm_soft_size(PROBS), torch.tensor([[2 / 3, 1 / 3]]))


def test_entklprop_exact_terms():
    loss = EntKLProp(weights_se=[0.1, 0.9], lamb_se=1, lamb_consprior=1, curi=True, ivd=True, power=1,
                     idc_c=[1], fn="norm_soft_size")
    ent, kl = loss.terms(PROBS, TARGET, BOUNDS_HALF)
    # entropy: pixel a: -(0.1 + 0.9) * 0.5 ln 0.5; pixel b: 0; divided by sum(p) = 2
    assert ent.item() == pytest.approx(-0.5 * math.log(0.5) / 2, abs=1e-6)
    # KL(tau || tau*) with tau = (2/3, 1/3), tau* = (1/2, 1/2)
    expected_kl = 2 / 3 * math.log((2 / 3) / 0.5) + 1 / 3 * math.log((1 / 3) / 0.5)
    assert kl.item() == pytest.approx(expected_kl, abs=1e-6)
    assert loss(PROBS, TARGET, BOUNDS_HALF).item() == pytest.approx(ent.item() + kl.item(), abs=1e-7)


def test_entklprop_negative_slice_punishes_foreground_hard():
    loss = EntKLProp(weights_se=[0.1, 0.9], fn="norm_soft_size")
    negative = torch.tensor([[[2.0, 2.0], [0.0, 0.0]]])     # prior: w*h background, 0 foreground
    _, kl = loss.terms(PROBS, TARGET, negative)
    # tau* = (1, 0): the foreground term is 1/3 * (ln(1/3) - ln(1e-10))
    expected = 2 / 3 * math.log(2 / 3) + 1 / 3 * (math.log(1 / 3) - math.log(1e-10))
    assert kl.item() == pytest.approx(expected, rel=1e-5)


def test_entklprop_lambdas_scale_terms_and_curi_false_uses_gt():
    loss = EntKLProp(weights_se=[0.1, 0.9], lamb_se=2, lamb_consprior=0.5, curi=False, fn="norm_soft_size")
    ent, kl = loss.terms(PROBS, TARGET, torch.zeros(1, 2, 2))
    assert ent.item() == pytest.approx(-0.5 * math.log(0.5), abs=1e-6)
    # GT ratio = (1/2, 1/2) -> same KL as above, halved
    assert kl.item() == pytest.approx(0.5 * (2 / 3 * math.log(4 / 3) + 1 / 3 * math.log(2 / 3)), abs=1e-6)


def test_entklprop_gradient_reaches_probabilities():
    probs = PROBS.clone().requires_grad_(True)
    EntKLProp(weights_se=[0.1, 0.9], fn="norm_soft_size")(probs, TARGET, BOUNDS_HALF).backward()
    assert probs.grad is not None and probs.grad.abs().sum() > 0


def test_cross_entropy_exact():
    ce = CrossEntropy(idc=[0, 1], weights=[1, 1])
    s, cons = ce.terms(PROBS, TARGET, BOUNDS_HALF)
    assert s.item() == pytest.approx(-(math.log(0.5) + math.log(1.0)) / 2, abs=1e-6)
    assert cons.item() == 0
    weighted = CrossEntropy(idc=[0, 1], weights=[1, 3])(PROBS, TARGET, BOUNDS_HALF)
    assert weighted.item() == pytest.approx(-3 * math.log(0.5) / 2, abs=1e-6)
    only_fg = CrossEntropy(idc=[1], weights=[1])(PROBS, TARGET, BOUNDS_HALF)
    assert only_fg.item() == pytest.approx(-math.log(0.5), abs=1e-6)


def test_self_entropy_equals_entklprop_entropy_term():
    se = SelfEntropy(idc=[0, 1], weights=[0.1, 0.9])(PROBS, TARGET, BOUNDS_HALF)
    ent, _ = EntKLProp(weights_se=[0.1, 0.9], fn="norm_soft_size").terms(PROBS, TARGET, BOUNDS_HALF)
    assert se.item() == pytest.approx(ent.item(), abs=1e-7)


def test_naive_penalty_exact():
    # soft sizes: background 1.5, foreground 0.5; bounds for foreground [1, 2] -> lower violated by 0.5
    bounds = torch.tensor([[[0.0, 10.0], [1.0, 2.0]]])
    _, pen = NaivePenalty(idc=[1], fn="soft_size").terms(PROBS, TARGET, bounds)
    assert pen.item() == pytest.approx(0.5 ** 2 / 2 ** 2, abs=1e-7)


@pytest.mark.parametrize("name, params, message", [
    ("Nope", {}, "unknown loss"),
    ("CrossEntropy", {"idc": [0, 1], "weights": [1]}, "weights"),
    ("CrossEntropy", {"idc": [0, 1], "typo": 1}, "bad parameters"),
])
def test_build_loss_rejects_bad_specs(name, params, message):
    with pytest.raises(ValueError, match=message):
        build_loss(name, params, None)


def test_soft_ratio_is_the_mean_probability_and_entklprop_uses_it():
    assert torch.allclose(soft_ratio(PROBS), torch.tensor([[0.75, 0.25]]))
    _, kl = EntKLProp(weights_se=[0.1, 0.9], fn="soft_ratio").terms(PROBS, TARGET, BOUNDS_HALF)
    assert kl.item() == pytest.approx(0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5), abs=1e-6)


def test_entklprop_refuses_a_size_function_that_is_not_a_ratio():
    with pytest.raises(ValueError, match="does not give a class ratio"):
        build_loss("EntKLProp", {"weights_se": [0.1, 0.9]}, "soft_size")


def test_entklprop_refuses_predictions_that_are_not_probabilities():
    with pytest.raises(ValueError, match=r"EntKLProp: the predictions \(1, 2, 1, 2\) do not sum to 1"):
        EntKLProp(weights_se=[0.1, 0.9]).terms(2 * PROBS, TARGET, BOUNDS_HALF)


def test_soft_dice_by_hand_and_its_empty_rule():
    probs = torch.tensor([[[[0.5, 1.0]], [[0.0, 0.0]]]])         # class 0: 1.5 predicted; class 1: nothing
    target = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])        # class 0: pixel a; class 1: empty on both sides
    assert soft_dice(probs, target)[0].tolist() == pytest.approx([2 * 0.5 / (1.5 + 1.0), 1.0])
    assert soft_dice(probs, torch.tensor([[[[0.0, 0.0]], [[1.0, 0.0]]]]))[0, 1].item() == 0.0     # one side empty
    loss, zero = DiceLoss(idc=[0, 1]).terms(probs, target, BOUNDS_HALF)
    assert loss.item() == pytest.approx((1 - 0.4) / 2) and zero.item() == 0


# ---------------------------------------------------------------- online ProtoSeg (seed 003)

def test_protoseg_loss_is_one_minus_the_soft_dice_of_the_feature_map_and_skips_images_without_foreground():
    gt = torch.zeros(2, 1, 4, 4)
    gt[0, 0, :2, :] = 1                                     # image 0: 8 foreground, 8 background pixels
    target = torch.cat([1 - gt, gt], dim=1)                 # image 1: no foreground -> no prototype, left out
    feature = gt.clone().requires_grad_(True)               # one channel equal to the ground truth
    loss = ProtoSegLoss(["f"])
    s, cons = loss.terms(torch.full((2, 2, 4, 4), 0.5), target, torch.zeros(2, 2, 2), features={"f": feature})
    sig = 1 / (1 + math.exp(-1))                            # foreground prob: sigmoid(d_neg - d_pos) = sigmoid(+-1)
    dice = 2 * 8 * sig / (8 * sig + 8 * (1 - sig) + 8)
    assert s.item() == 0 and cons.item() == pytest.approx(1 - dice, abs=1e-6)
    cons.backward()
    assert feature.grad is not None and feature.grad[0].abs().sum() > 0      # the gradient reaches the features
    assert feature.grad[1].abs().sum() == 0


def test_protoseg_loss_needs_layer_names_and_features():
    with pytest.raises(ValueError, match="'last' or a non-empty list of feature layer names"):
        build_loss("ProtoSegLoss", {"layers": "up4"}, None)
    with pytest.raises(ValueError, match="needs the feature maps"):
        ProtoSegLoss(["up4"]).terms(torch.rand(1, 2, 4, 4), torch.rand(1, 2, 4, 4), torch.zeros(1, 2, 2))


def test_entklprop_with_five_classes_equals_its_definition_computed_pixel_by_pixel():
    """The seed's EntKLProp on five classes (the SFDA code's WHS entropy weights), with per-class KL weights, against the
    definition written out with loops: weighted entropy over sum p; KL of norm_soft_size's ratio (p / max_c p summed,
    normalised) to the prior's bounds / (W*H), summed over classes, over the batch."""
    probs = torch.softmax(torch.randn(2, 5, 3, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    prior = torch.tensor([[8.0, 1, 1, 2, 0], [5, 3, 0, 2, 2]])                  # each row sums to w*h = 12
    w, v = [0.02, 0.27, 0.18, 0.21, 0.32], [1.0, 2.0, 1.0, 1.0, 0.5]
    ent, kl = EntKLProp(weights_se=w, weights_kl=v, fn="norm_soft_size").terms(probs, None, torch.stack([prior] * 2, -1))
    p = probs.double().tolist()
    cells = [(b, c, i, j) for b in range(2) for c in range(5) for i in range(3) for j in range(4)]
    expected_ent = -sum(w[c] * p[b][c][i][j] * math.log(p[b][c][i][j] + 1e-10) for b, c, i, j in cells) \
        / sum(p[b][c][i][j] for b, c, i, j in cells)
    expected_kl = 0.0
    for b in range(2):
        top = [[max(p[b][c][i][j] for c in range(5)) for j in range(4)] for i in range(3)]
        sizes = [sum(p[b][c][i][j] / top[i][j] for i in range(3) for j in range(4)) for c in range(5)]
        for c in range(5):
            tau, target = sizes[c] / sum(sizes), prior[b, c].item() / 12
            expected_kl += v[c] * tau * (math.log(tau + 1e-10) - math.log(target + 1e-10)) / 2
    assert ent.item() == pytest.approx(expected_ent, rel=1e-5)
    assert kl.item() == pytest.approx(expected_kl, rel=1e-5)
    with pytest.raises(ValueError, match="weights_kl has 2 entries for 5 classes"):
        EntKLProp(weights_se=w, weights_kl=[1, 1]).terms(probs, None, torch.stack([prior] * 2, -1))
