"""SpotTUnet (Zakazov et al. 2021, seed 000; docs/methods/spottunet.md) around a pre-trained BlockNet.

Every unit (block) of the pre-trained network exists twice, frozen and fine-tuned; a small ResNet policy picks one
per unit and per image with a hard Gumbel-softmax (straight-through). a = 1 selects the frozen unit:
out = a * frozen + (1 - a) * tuned.
"""
import copy
import pandas as pd
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from networks import BlockNet


def gumbel_softmax_hard(logits: Tensor, tau: float, noise: bool) -> Tensor:
    """Straight-through hard Gumbel-softmax over the last axis: one-hot forward, softmax gradient."""
    if noise:
        u = torch.rand_like(logits)
        logits = logits - torch.log(-torch.log(u + 1e-20) + 1e-20)
    y = torch.softmax(logits / tau, dim=-1)
    hard = F.one_hot(y.argmax(dim=-1), y.shape[-1]).to(y.dtype)
    return (hard - y).detach() + y


class PolicyBlock(nn.Module):
    """ResNet basic block, stride 2; the shortcut average-pools and pads channels with zeros."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(n_in, n_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(n_out),
                                  nn.ReLU(), nn.Conv2d(n_out, n_out, 3, padding=1, bias=False), nn.BatchNorm2d(n_out))
        self.extra = n_out - n_in

    def forward(self, x: Tensor) -> Tensor:
        shortcut = F.avg_pool2d(x, 2, ceil_mode=True)
        shortcut = F.pad(shortcut, [0, 0, 0, 0, 0, self.extra])
        body = self.body(x)
        return F.relu(body + shortcut[..., :body.shape[-2], :body.shape[-1]])


class PolicyNet(nn.Module):
    """The agent: conv3x3(32)+BN, three basic blocks (64, 128, 256, stride 2), BN-ReLU, pool, linear -> 2 logits per unit."""

    def __init__(self, in_dim: int, n_units: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_dim, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32),
                                      PolicyBlock(32, 64), PolicyBlock(64, 128), PolicyBlock(128, 256),
                                      nn.BatchNorm2d(256), nn.ReLU())
        self.head = nn.Linear(256, 2 * n_units)
        self.n_units = n_units
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, (2 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)) ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3))).view(-1, self.n_units, 2)


class RoutedUnit(nn.Module):
    """A unit and its frozen twin; the owner sets ``choice`` (B,) before each forward: 1 frozen, 0 tuned."""

    def __init__(self, unit: nn.Module):
        super().__init__()
        self.tuned = unit
        self.frozen = copy.deepcopy(unit).requires_grad_(False)
        self.choice: Optional[Tensor] = None

    def forward(self, *args: Tensor) -> Tensor:
        a = self.choice.view(-1, *([1] * (args[0].dim() - 1)))
        return self.frozen(*args) * a + self.tuned(*args) * (1 - a)


class SpotTUnet(nn.Module):
    """Wraps a pre-trained BlockNet: each of its blocks becomes a RoutedUnit driven by a PolicyNet.

    ``forward`` returns the segmentation logits; ``last_actions`` holds the (B, n_units) choices
    (1 = frozen). ``force`` (None, "frozen", "tuned") bypasses the policy, for analysis and tests; ``sample`` draws the
    routes with Gumbel noise outside training too (routes.py: the policy as training used it).
    """

    def __init__(self, backbone: BlockNet, in_dim: int = 1, tau: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.unit_names = [name for name, _ in backbone.blocks()]
        self.units = []
        for name in self.unit_names:
            parent_name, _, child = name.rpartition(".")
            routed = RoutedUnit(backbone.get_submodule(name))
            setattr(backbone.get_submodule(parent_name), child, routed)   # "" is the backbone; "0" a Sequential slot
            self.units.append(routed)
        self.policy = PolicyNet(in_dim, len(self.units))
        self.tau = tau
        self.init_kwargs = {"backbone": type(backbone).__name__, **getattr(backbone, "init_kwargs", {}), "tau": tau}
        self.force: Optional[str] = None
        self.sample = False
        self.last_actions: Optional[Tensor] = None

    def actions(self, x: Tensor) -> Tensor:
        if self.force is not None:
            value = 1.0 if self.force == "frozen" else 0.0
            return torch.full((x.shape[0], len(self.units)), value, device=x.device)
        one_hot = gumbel_softmax_hard(self.policy(x).float(), self.tau, noise=self.training or self.sample)
        return one_hot[..., 1]

    def forward(self, x: Tensor) -> Tensor:
        a = self.actions(x)
        for i, unit in enumerate(self.units):
            unit.choice = a[:, i]
        self.last_actions = a
        return self.backbone(x)


def tuned_copy(spot: SpotTUnet) -> BlockNet:
    """The backbone SpotTUnet fine-tuned: a plain network made of every unit's tuned twin (for layer analyses)."""
    net = copy.deepcopy(spot.backbone)
    for name in spot.unit_names:
        parent_name, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent_name), child, net.get_submodule(name).tuned)
    return net


def policy_table(net: SpotTUnet, frozen_sum: Tensor, n_slices: int) -> pd.DataFrame:
    """SpotTUnet on the test slices: per unit, the share of slices that chose the fine-tuned copy."""
    return pd.DataFrame({"unit": net.unit_names, "p_finetuned": (1 - frozen_sum / n_slices).numpy()})
