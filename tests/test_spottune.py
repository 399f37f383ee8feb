"""The residual U-Net of seed 000 and the SpotTUnet wrapper: routing, gradients, policy cost."""
import copy

import pytest
import torch

from losses import SpotTUnetPenalty
from networks import build_network
from spottune import SpotTUnet, gumbel_softmax_hard


def test_resunet_has_the_papers_32_units_and_any_input_size():
    net = build_network("ResUNet", 1, 2)
    names = [n for n, _ in net.blocks()]
    assert len(names) == 32 and names[:2] == ["init_path.0", "init_path.1"] and names[-3:] == ["shortcut0", "shortcut1", "shortcut2"]
    assert sum(p.numel() for _, b in net.blocks() for p in b.parameters()) == sum(p.numel() for p in net.parameters())
    with torch.no_grad():
        assert net.eval()(torch.randn(1, 1, 45, 61)).shape == (1, 2, 45, 61)


@pytest.fixture
def pair():
    torch.manual_seed(0)
    pretrained = build_network("ResUNet", 1, 2, width=4).eval()
    spot = SpotTUnet(copy.deepcopy(pretrained)).eval()
    with torch.no_grad():      # make the fine-tuned copies differ from the frozen ones
        for unit in spot.units:
            for p in unit.tuned.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return pretrained, spot


def test_forced_frozen_equals_pretrained_and_forced_tuned_equals_finetuned(pair):
    pretrained, spot = pair
    x = torch.randn(3, 1, 32, 32)
    finetuned = copy.deepcopy(pretrained)
    for (name, _), unit in zip(finetuned.blocks(), spot.units):
        parent, _, child = name.rpartition(".")
        setattr(finetuned.get_submodule(parent), child, copy.deepcopy(unit.tuned))
    with torch.no_grad():
        spot.force = "frozen"
        assert torch.allclose(spot(x), pretrained(x), atol=1e-6)
        spot.force = "tuned"
        out_tuned = spot(x)
        assert torch.allclose(out_tuned, finetuned(x), atol=1e-5)
        assert not torch.allclose(out_tuned, pretrained(x), atol=1e-3)


def test_gradients_reach_the_policy_through_gumbel_softmax(pair):
    _, spot = pair
    spot.train()
    out = spot(torch.randn(2, 1, 32, 32))
    out.square().mean().backward()
    grads = [p.grad for p in spot.policy.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    # frozen copies never receive gradients
    assert all(p.grad is None for u in spot.units for p in u.frozen.parameters())


def test_hard_gumbel_is_one_hot_forward_with_soft_gradient():
    logits = torch.tensor([[[0.2, 1.0], [3.0, -1.0]]], requires_grad=True)
    y = gumbel_softmax_hard(logits, tau=0.5, noise=False)
    assert y.tolist() == [[[0.0, 1.0], [1.0, 0.0]]]
    y[..., 1].sum().backward()
    assert logits.grad.abs().sum() > 0


def test_l1_term_counts_the_fine_tuned_units():
    actions = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])   # a = 1: frozen
    penalty = SpotTUnetPenalty(k_reg=1.0)
    # fine-tuned units: 2 in image 0, 4 in image 1 -> (2 + 4) / (2 images * 4 units)
    assert penalty(actions).item() == pytest.approx(6 / 8)
    assert SpotTUnetPenalty(k_reg=0.005)(actions).item() == pytest.approx(0.005 * 6 / 8)
