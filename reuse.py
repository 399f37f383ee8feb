"""Which layers to reuse (seed 002): TruncatedTL, LWFT and TransFusion built from a pre-trained residual U-Net.

Our segmentation variant of docs/methods/svcca_ttl.md: TruncatedTL keeps levels 0..k with their trained weights;
TransFusion keeps levels 0..k and rebuilds the levels above at half width from scratch; LWFT trains the top k
stages, the output layer at the full lr and the others at lr / LWFT_DECAY. main.py --reuse METHOD:K runs them.
"""
from typing import List, Tuple

from networks import ResUNet, build_network, check_level

METHODS = ("ttl", "lwft", "transfusion")
LWFT_DECAY = 10      # seed 002's ptl_decay: LWFT's pre-trained layers learn at lr / 10


def reused_levels(pretrained: ResUNet, net: ResUNet, k: int) -> ResUNet:
    """``net`` with every weight of ``pretrained``'s levels 0..k copied in (their shapes must agree)."""
    state = pretrained.state_dict()
    kept = {key: value for key, value in state.items()
            if key in net.state_dict() and pretrained.level(key.split(".")[0]) <= k}
    net.load_state_dict({**net.state_dict(), **kept})
    return net


def truncated(pretrained: ResUNet, k: int) -> ResUNet:
    """TruncatedTL: the network cut after encoder level k, every retained weight the pre-trained one's."""
    if not isinstance(pretrained, ResUNet):
        raise ValueError(f"TruncatedTL cuts a residual U-Net's levels; got a {type(pretrained).__name__}")
    check_level("ttl", k, range(ResUNet.LEVELS + 1))
    if k == pretrained.depth:                     # the whole network: TTL is ft_all (nothing rebuilt, no RNG drawn)
        return pretrained
    return reused_levels(pretrained, build_network("ResUNet", **{**pretrained.init_kwargs, "depth": k}), k)


def transfusion(pretrained: ResUNet, k: int) -> ResUNet:
    """TransFusion: levels 0..k pre-trained, every level above at half width and freshly initialised."""
    if not isinstance(pretrained, ResUNet):
        raise ValueError(f"TransFusion rebuilds a residual U-Net's levels; got a {type(pretrained).__name__}")
    check_level("transfusion", k, range(ResUNet.LEVELS))
    net = build_network("ResUNet", **{**pretrained.init_kwargs, "halved_above": k})
    return reused_levels(pretrained, net, k)


def lwft_blocks(net: ResUNet, k: int) -> Tuple[List[str], List[str]]:
    """LWFT with the top k stages: (blocks at the full lr: the output layer; blocks at lr / 10: the rest of them)."""
    if not isinstance(net, ResUNet):
        raise ValueError(f"LWFT counts a residual U-Net's stages; got a {type(net).__name__}")
    stages = net.stages_top_down()
    check_level("lwft", k, range(1, len(stages) + 1), "count of top stages")
    blocks = [b for stage in stages[:k] for b in stage]
    return ["out_path.3"], [b for b in blocks if b != "out_path.3"]
