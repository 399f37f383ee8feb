"""Segmentation networks as ordered lists of named blocks.

Every network exposes ``blocks()``: its blocks as (name, module) pairs in forward order. Freezing
the first/last layers, policies, truncation and feature taps all ask for blocks through it, so
"the first layers" is defined once, here.
"""
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class BlockNet(nn.Module):
    """Base class: subclasses fill ``self.block_order`` with their block names in forward order, and
    ``self.feature_order`` with their feature layers (modules whose outputs are feature maps) in forward order:
    finer than the blocks where a block holds two convolutions, without the output layer."""

    block_order: List[str]
    feature_order: List[str]
    decoder_order: List[str]   # the last feature layer of each of the (up to) three finest decoder scales, coarse first
    init_kwargs: Dict[str, Any]
    n_first = n_last = 1     # how many blocks "the first / last layers" are (fine-tuning baselines)
    n_last_features = 2      # the last feature layers before the output layer (seed 003's layers 17 and 18)

    def blocks(self) -> List[Tuple[str, nn.Module]]:
        return [(name, self.get_submodule(name)) for name in self.block_order]   # names may be dotted

    def feature_layers(self) -> List[str]:
        return list(self.feature_order)

    def last_feature_layers(self) -> List[str]:
        return self.feature_order[-self.n_last_features:]

    def decoder_scales(self) -> List[str]:
        """Feature layers read by the transferability estimators (seed 001 hooks three decoder stages)."""
        return list(self.decoder_order)

    def crop_to_input(self, feature: Tensor, size: Tuple[int, int]) -> Tensor:
        """The part of a feature map that covers an input of ``size`` (networks that pad their input crop)."""
        return feature

    def block_group(self, name: str) -> List[str]:
        """Block names of ``first`` or ``last`` (the layers fine-tuned by ft_first / ft_last)."""
        if name == "first":
            return self.block_order[:self.n_first]
        if name == "last":
            decoder = [b for b in self.block_order if not b.startswith("shortcut")]
            return decoder[-self.n_last:]
        raise KeyError(name)

    def frozen_in_group(self, name: str) -> List[str]:
        """Parameter names that stay frozen inside the blocks of ``block_group(name)`` (none by default)."""
        self.block_group(name)                                    # KeyError for an unknown group
        return []


def conv_bn_relu(n_in: int, n_out: int, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=kernel // 2, bias=False),
                         nn.BatchNorm2d(n_out),
                         nn.ReLU(inplace=True))


class Dimwit(BlockNet):
    """Two-layer dummy network for debugging recipes in seconds; its one feature layer is its last."""

    n_last_features = 1

    def __init__(self, in_dim: int, out_dim: int, width: int = 8):
        super().__init__()
        self.conv = conv_bn_relu(in_dim, width)
        self.head = nn.Conv2d(width, out_dim, 1)
        self.block_order = ["conv", "head"]
        self.feature_order = ["conv"]
        self.decoder_order = ["conv"]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.conv(x))


class UNet(BlockNet):
    """U-Net (Ronneberger et al. 2015) with BatchNorm; ``width`` channels at full resolution.

    Blocks: enc1..enc4, bottleneck, dec4..dec1 (each up-sampling then two convolutions), head. Feature layers:
    each block's two convolutions, 18 at depth 4 as in seed 003 (early 1-4, deep 5-14, late 15-18).
    """

    def __init__(self, in_dim: int, out_dim: int, width: int = 16, depth: int = 4):
        super().__init__()
        widths = [width * 2 ** i for i in range(depth + 1)]
        self.depth = depth
        self.block_order = []
        n_prev = in_dim
        for i in range(depth):
            self._add(f"enc{i + 1}", nn.Sequential(conv_bn_relu(n_prev, widths[i]), conv_bn_relu(widths[i], widths[i])))
            n_prev = widths[i]
        self._add("bottleneck", nn.Sequential(conv_bn_relu(widths[depth - 1], widths[depth]),
                                              conv_bn_relu(widths[depth], widths[depth])))
        for i in reversed(range(depth)):
            self._add(f"dec{i + 1}", UpBlock(widths[i + 1], widths[i]))
        self._add("head", nn.Conv2d(width, out_dim, 1))
        # seed 003's 18 feature maps: two convolutions per level, encoder, bottleneck, decoder
        self.feature_order = ([f"enc{i + 1}.{k}" for i in range(depth) for k in (0, 1)] + ["bottleneck.0", "bottleneck.1"]
                              + [f"dec{i + 1}.convs.{k}" for i in reversed(range(depth)) for k in (0, 1)])
        self.decoder_order = [f"dec{i + 1}.convs.1" for i in reversed(range(min(depth, 3)))]

    def _add(self, name: str, module: nn.Module) -> None:
        setattr(self, name, module)
        self.block_order.append(name)

    def forward(self, x: Tensor) -> Tensor:
        skips: List[Tensor] = []
        for i in range(self.depth):
            x = getattr(self, f"enc{i + 1}")(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = self.bottleneck(F.max_pool2d(x, 2))
        for i in reversed(range(self.depth)):
            x = getattr(self, f"dec{i + 1}")(x, skips[i])
        return self.head(x)


class UpBlock(nn.Module):
    """Transposed-conv up-sampling, concatenation with the skip, two convolutions."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(n_in, n_out, 2, stride=2)
        self.convs = nn.Sequential(conv_bn_relu(2 * n_out, n_out), conv_bn_relu(n_out, n_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        if x.shape[-2:] != skip.shape[-2:]:  # odd sizes: pad the up-sampled map to the skip's size
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, [dw // 2, dw - dw // 2, dh // 2, dh - dh // 2])
        return self.convs(torch.cat([x, skip], dim=1))


# ENet (Paszke et al. 2016, "ENet: A Deep Neural Network Architecture for Real-Time Semantic
# Segmentation"): initial block, 5 stages of bottlenecks; stages 4-5 decode.

class ENetInitial(nn.Module):
    def __init__(self, in_dim: int, n_out: int = 16):
        super().__init__()
        self.conv = nn.Conv2d(in_dim, n_out - in_dim, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(n_out)
        self.act = nn.PReLU(n_out)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.bn(torch.cat([self.conv(x), F.max_pool2d(x, 2, ceil_mode=True)], dim=1)))


class ENetBottleneck(nn.Module):
    """Regular, dilated, asymmetric or down-sampling bottleneck (1x1 reduce, main conv, 1x1 expand)."""

    def __init__(self, n_in: int, n_out: int, kind: str = "regular", dilation: int = 1, dropout: float = 0.1):
        super().__init__()
        mid = n_in // 4
        self.down = kind == "down"
        self.n_pad = n_out - n_in
        if self.down:
            reduce = nn.Conv2d(n_in, mid, 2, stride=2, bias=False)
        else:
            reduce = nn.Conv2d(n_in, mid, 1, bias=False)
        if kind == "asymmetric":
            main: nn.Module = nn.Sequential(nn.Conv2d(mid, mid, (5, 1), padding=(2, 0), bias=False),
                                            nn.Conv2d(mid, mid, (1, 5), padding=(0, 2), bias=False))
        else:
            main = nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation, bias=False)
        self.branch = nn.Sequential(reduce, nn.BatchNorm2d(mid), nn.PReLU(mid),
                                    main, nn.BatchNorm2d(mid), nn.PReLU(mid),
                                    nn.Conv2d(mid, n_out, 1, bias=False), nn.BatchNorm2d(n_out),
                                    nn.Dropout2d(dropout))
        self.act = nn.PReLU(n_out)

    def forward(self, x: Tensor) -> Tensor:
        skip = F.max_pool2d(x, 2, ceil_mode=True) if self.down else x
        if self.n_pad > 0:
            skip = F.pad(skip, [0, 0, 0, 0, 0, self.n_pad])
        branch = self.branch(x)
        if branch.shape[-2:] != skip.shape[-2:]:
            skip = skip[..., :branch.shape[-2], :branch.shape[-1]]
        return self.act(branch + skip)


class ENetUpsample(nn.Module):
    """Decoder bottleneck: up-sample the main branch, add a skip from the encoder at that scale."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        mid = n_in // 4
        self.skip_conv = nn.Sequential(nn.Conv2d(n_in, n_out, 1, bias=False), nn.BatchNorm2d(n_out))
        self.branch = nn.Sequential(nn.Conv2d(n_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.PReLU(mid),
                                    nn.ConvTranspose2d(mid, mid, 2, stride=2, bias=False), nn.BatchNorm2d(mid),
                                    nn.PReLU(mid), nn.Conv2d(mid, n_out, 1, bias=False), nn.BatchNorm2d(n_out))
        self.act = nn.PReLU(n_out)

    def forward(self, x: Tensor, size: Tuple[int, int]) -> Tensor:
        skip = F.interpolate(self.skip_conv(x), size=size, mode="nearest")
        branch = self.branch(x)
        if branch.shape[-2:] != tuple(size):
            branch = F.interpolate(branch, size=size, mode="nearest")
        return self.act(branch + skip)


class ENet(BlockNet):
    """ENet; blocks: initial, stage1..stage3 (encoder), stage4, stage5 (decoder), head."""

    def __init__(self, in_dim: int, out_dim: int, width: int = 16):
        super().__init__()
        w1, w2 = 4 * width, 8 * width
        self.initial = ENetInitial(in_dim, width)
        self.stage1 = nn.Sequential(ENetBottleneck(width, w1, "down", dropout=0.01),
                                    *[ENetBottleneck(w1, w1, dropout=0.01) for _ in range(4)])
        middle = [("regular", 1), ("regular", 2), ("asymmetric", 1), ("regular", 4),
                  ("regular", 1), ("regular", 8), ("asymmetric", 1), ("regular", 16)]
        self.stage2 = nn.Sequential(ENetBottleneck(w1, w2, "down"),
                                    *[ENetBottleneck(w2, w2, k, d) for k, d in middle])
        self.stage3 = nn.Sequential(*[ENetBottleneck(w2, w2, k, d) for k, d in middle])
        self.stage4 = ENetUpsample(w2, w1)
        self.stage4_refine = nn.Sequential(ENetBottleneck(w1, w1), ENetBottleneck(w1, w1))
        self.stage5 = ENetUpsample(w1, width)
        self.stage5_refine = ENetBottleneck(width, width)
        self.head = nn.ConvTranspose2d(width, out_dim, 2, stride=2)
        self.block_order = ["initial", "stage1", "stage2", "stage3", "stage4", "stage4_refine",
                            "stage5", "stage5_refine", "head"]
        self.feature_order = (["initial"] + [f"stage1.{i}" for i in range(5)] + [f"stage2.{i}" for i in range(9)]
                              + [f"stage3.{i}" for i in range(8)] + ["stage4", "stage4_refine.0", "stage4_refine.1",
                                                                      "stage5", "stage5_refine"])
        self.decoder_order = ["stage3.7", "stage4_refine.1", "stage5_refine"]          # 1/8, 1/4, 1/2

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        x0 = self.initial(x)
        x1 = self.stage1(x0)
        x = self.stage3(self.stage2(x1))
        x = self.stage4_refine(self.stage4(x, x1.shape[-2:]))
        x = self.stage5_refine(self.stage5(x, x0.shape[-2:]))
        x = self.head(x)
        if x.shape[-2:] != size:
            x = F.interpolate(x, size=size, mode="nearest")
        return x


# Residual U-Net 2D of seed 000 (Zakazov et al. 2021; neuro-ml/domain_shift_anatomy), docs/methods/spottunet.md:
# pre-activation residual blocks, skips merged by addition, n = 16 filters at full resolution.

def pre_act(n_in: int, n_out: int, kernel: int = 3, stride: int = 1, bias: bool = False) -> nn.Sequential:
    """BatchNorm -> ReLU -> Conv."""
    return nn.Sequential(nn.BatchNorm2d(n_in), nn.ReLU(inplace=False),
                         nn.Conv2d(n_in, n_out, kernel, stride=stride, padding=kernel // 2 if stride == 1 else 0,
                                   bias=bias))


class ResBlock(nn.Module):
    """x + PreAct3x3(PreAct3x3(x))."""

    def __init__(self, n: int):
        super().__init__()
        self.body = nn.Sequential(pre_act(n, n), pre_act(n, n))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def check_level(option: str, value: int, valid: range, what: str = "level") -> None:
    if value not in valid:
        raise ValueError(f"{option} {value}: the residual U-Net has no such {what}; valid: "
                         f"{', '.join(map(str, valid))}")


class ResUNet(BlockNet):
    """The 2D residual U-Net of seed 000.

    Its 32 units, in the paper's order (SpotTUnet gives each a policy entry): init_path.0-3 (conv +
    3 ResBlocks), down1.0-3, down2.0-3, bottleneck.0-4 (PreAct, 3 ResBlocks, ConvT), up2.0-3, up1.0-3,
    out_path.0-3 (3 ResBlocks + the final 1x1 PreAct and BatchNorm), shortcut0-2. The reference
    routes the final BatchNorm with shortcut0's decision; here it belongs to the last out_path unit.
    "First layers" (fine-tuning as in the paper's ref. [12]) = init_path.0 and init_path.1;
    "last layers" = out_path.2 and out_path.3, but the final BatchNorm's affine (frozen_in_group).

    Level l (0-3) runs at 1/2^l of the input with width x 2^l channels: its encoder stage (init_path, down1,
    down2, bottleneck), its skip (shortcut<l>) and its decoder stage (out_path, up1, up2; the bottleneck is
    both). Seed 002's reuse strategies cut or rebuild levels: ``depth`` k keeps levels 0..k (TruncatedTL: the
    deepest kept skip feeds the decoder alone), ``halved_above`` k halves the width of every level above k
    (TransFusion). The defaults build the whole network, unchanged.
    """
    n_first = n_last = 2
    LEVELS = 3                                    # down-samplings of the whole network; level 3 is the bottleneck
    DECODERS = ("out_path", "up1", "up2")         # the decoder stage of levels 0, 1, 2

    def frozen_in_group(self, name: str) -> List[str]:
        """ft_last (the paper's unfreeze_last: out_path.2 and out_path.3 train) leaves the final
        BatchNorm's affine frozen: in the paper's U-Net that BatchNorm is out_path.4, outside the group."""
        self.block_group(name)
        return ["out_path.3.1.weight", "out_path.3.1.bias"] if name == "last" else []

    def __init__(self, in_dim: int, out_dim: int, width: int = 16, depth: int = 3, halved_above: Optional[int] = None):
        super().__init__()
        check_level("depth", depth, range(self.LEVELS + 1))
        if halved_above is not None:
            check_level("halved_above", halved_above, range(self.LEVELS))
        w = [width * 2 ** lv // (2 if halved_above is not None and lv > halved_above else 1) for lv in range(4)]
        self.depth = depth
        kept = min(depth, self.LEVELS - 1)        # the levels with a skip and a decoder stage
        # modules are created in the whole network's order, so that a seed gives the same initial weights
        self.init_path = nn.Sequential(nn.Conv2d(in_dim, w[0], 3, padding=1, bias=False), *[ResBlock(w[0]) for _ in range(3)])
        for lv in range(1, kept + 1):
            setattr(self, f"down{lv}", nn.Sequential(pre_act(w[lv - 1], w[lv], 2, 2), *[ResBlock(w[lv]) for _ in range(3)]))
        if depth == self.LEVELS:
            self.bottleneck = nn.Sequential(pre_act(w[2], w[3], 2, 2), *[ResBlock(w[3]) for _ in range(3)],
                                            nn.ConvTranspose2d(w[3], w[2], 2, stride=2, bias=False))
        for lv in reversed(range(1, kept + 1)):
            setattr(self, f"up{lv}", nn.Sequential(*[ResBlock(w[lv]) for _ in range(3)],
                                                   nn.ConvTranspose2d(w[lv], w[lv - 1], 2, stride=2, bias=False)))
        self.out_path = nn.Sequential(*[ResBlock(w[0]) for _ in range(3)],
                                      nn.Sequential(pre_act(w[0], out_dim, 1, bias=True), nn.BatchNorm2d(out_dim)))
        for lv in range(kept + 1):
            setattr(self, f"shortcut{lv}", nn.Conv2d(w[lv], w[lv], 1))
        self.block_order = [f"{path}.{i}" for path, k in (("init_path", 4), ("down1", 4), ("down2", 4), ("bottleneck", 5),
                                                         ("up2", 4), ("up1", 4), ("out_path", 4))
                            if hasattr(self, path) for i in range(k)]
        self.block_order += [f"shortcut{lv}" for lv in range(kept + 1)]
        self.feature_order = self.block_order[:self.block_order.index("out_path.3")]   # the units but the output's
        self.decoder_order = [n for n in ("up2.2", "up1.2", "out_path.2") if n in self.block_order]  # 1/4, 1/2, 1

    def level(self, block: str) -> int:
        """The level (0 = full resolution, 3 = the bottleneck) a block belongs to."""
        stage = block.split(".")[0]
        if stage == "bottleneck":
            return self.LEVELS
        if stage.startswith(("down", "up", "shortcut")):
            return int(stage.rstrip("_")[-1])                        # down1, up1, shortcut1: level 1
        return 0                                                     # init_path, out_path

    def stages_top_down(self) -> List[List[str]]:
        """The blocks by stage from the output down (LWFT's order): out_path with its skip shortcut0, up1 with
        shortcut1, up2 with shortcut2, the bottleneck, then the encoder stages down2, down1, init_path."""
        groups = [(d, f"shortcut{lv}") for lv, d in enumerate(self.DECODERS)]
        order = [*groups, ("bottleneck",), ("down2",), ("down1",), ("init_path",)]
        stages = [[b for b in self.block_order if b.split(".")[0] in names] for names in order]
        return [s for s in stages if s]

    def crop_to_input(self, feature: Tensor, size: Tuple[int, int]) -> Tensor:
        """forward pads the input to multiples of 2^depth: a map at 1/k of the padded size covers ceil(size / k)."""
        m = 2 ** self.depth
        k = -(-size[0] // m) * m // feature.shape[-2]
        return feature[..., :-(-size[0] // k), :-(-size[1] // k)]

    def forward(self, x: Tensor) -> Tensor:
        size, m = x.shape[-2:], 2 ** self.depth
        pad = [0, -size[1] % m, 0, -size[0] % m]           # every 2x down-sampling needs an even size
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        skips = [self.init_path(x)]
        for lv in range(1, min(self.depth, self.LEVELS - 1) + 1):
            skips.append(getattr(self, f"down{lv}")(skips[-1]))
        x = self.bottleneck(skips[-1]) if self.depth == self.LEVELS else 0
        for lv in reversed(range(len(skips))):
            x = getattr(self, self.DECODERS[lv])(x + getattr(self, f"shortcut{lv}")(skips[lv]))
        return x[..., :size[0], :size[1]]


NETWORKS: Dict[str, Callable[..., BlockNet]] = {"Dimwit": Dimwit, "UNet": UNet, "ENet": ENet, "ResUNet": ResUNet}


@contextmanager
def tapped(net: BlockNet, names: Sequence[str]) -> Iterator[Dict[str, Tensor]]:
    """Within the block, every forward of ``net`` fills the yielded dict with the outputs of the named feature
    layers, cropped to the input they cover. A name that is not one of the net's feature layers is refused."""
    if not names:                                   # nothing to tap: any module, no hook
        yield {}
        return
    known = net.feature_layers() if hasattr(net, "feature_layers") else []
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"{type(net).__name__} has no feature layer {unknown[0]!r} (its feature layers, in forward "
                         f"order: {', '.join(known)})")
    taps: Dict[str, Tensor] = {}
    size: List[Tuple[int, int]] = []

    def keep(name: str) -> Callable:
        return lambda module, inputs, output: taps.__setitem__(name, net.crop_to_input(output, size[-1]))

    handles = [net.register_forward_pre_hook(lambda module, inputs: size.__setitem__(slice(None), [inputs[0].shape[-2:]]))]
    handles += [net.get_submodule(name).register_forward_hook(keep(name)) for name in names]
    try:
        yield taps
    finally:
        for handle in handles:
            handle.remove()


def build_network(name: str, in_dim: int, out_dim: int, **kwargs: Any) -> BlockNet:
    """Instantiate a network by name; unknown names raise ValueError listing the known ones."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(sorted(NETWORKS))}")
    net = NETWORKS[name](in_dim, out_dim, **kwargs)
    net.init_kwargs = {"in_dim": in_dim, "out_dim": out_dim, **kwargs}  # what a checkpoint needs to rebuild it
    return net
