"""Checkpoints: ``{network, kwargs, state_dict, ...}`` dicts, saved atomically and read with weights_only=True.

A checkpoint names its network and the arguments that rebuild it; a SpotTUnet's names its backbone's too. A file that
is not such a dict (e.g. a pickled whole model, which can execute code when loaded) is refused with a clear message.
"""
import pickle
from pathlib import Path
from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from networks import build_network
from spottune import SpotTUnet
from utils import atomic_output


def build_saved(name: str, in_dim: int, out_dim: int, **kwargs: Any) -> nn.Module:
    """The network a checkpoint names: a BlockNet by name, or a SpotTUnet from its backbone's name, kwargs and tau."""
    if name == "SpotTUnet":
        tau = kwargs.pop("tau", 0.1)
        return SpotTUnet(build_network(kwargs.pop("backbone", "ResUNet"), in_dim, out_dim, **kwargs), in_dim, tau)
    return build_network(name, in_dim, out_dim, **kwargs)


class CheckpointError(ValueError):
    """A checkpoint file that is not a state-dict checkpoint of the expected network."""


def save_checkpoint(path: Path, net: nn.Module, **meta: Any) -> None:
    """Save {network, kwargs, state_dict, **meta} atomically (write then rename)."""
    payload = {"network": type(net).__name__, "kwargs": dict(net.init_kwargs),
               "state_dict": net.state_dict(), **meta}
    with atomic_output(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a checkpoint dict with weights_only=True; anything else (e.g. a pickled model) is refused."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: not a plain state-dict checkpoint (a pickled whole model can "
                              f"execute code when loaded; re-save it as a state dict). Detail: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read checkpoint, truncated or corrupt ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or not {"network", "kwargs", "state_dict"} <= set(ckpt):
        raise CheckpointError(f"{path}: not a checkpoint dict with keys network, kwargs, state_dict")
    return ckpt


def network_from_checkpoint(path: Path, expected_network: str, n_class: Optional[int],
                            new_head: bool = False) -> nn.Module:
    """Rebuild the network a checkpoint describes, checking it is the expected architecture (``checkpoint``: any) and
    class count (None: the checkpoint's own). ``new_head``: another class count is accepted; every weight but the
    output layer's is loaded (seed 001 loads everything but the last convolution) and the output layer keeps its
    fresh initialisation."""
    ckpt = load_checkpoint(path)
    if expected_network not in ("checkpoint", ckpt["network"]):
        raise CheckpointError(f"{path}: holds a {ckpt['network']} but --network is {expected_network}")
    kwargs = dict(ckpt["kwargs"])
    n_class = kwargs.get("out_dim") if n_class is None else n_class
    if kwargs.get("out_dim") != n_class and not new_head:
        raise CheckpointError(f"{path}: trained for {kwargs.get('out_dim')} classes but --n_class is {n_class}")
    kwargs["out_dim"] = n_class
    try:
        net = build_saved(ckpt["network"], **kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot build {ckpt['network']} from the checkpoint's arguments {kwargs}: {e}") from None
    state = ckpt["state_dict"]
    if new_head:
        own = net.state_dict()
        reset = [k for k in own if k in state and state[k].shape != own[k].shape]
        state = {**state, **{k: own[k] for k in reset}}
        if reset:
            print(f">> {path}: {len(reset)} output-layer tensor(s) re-initialised for {n_class} classes: {', '.join(reset)}")
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {ckpt['network']}({kwargs}): {str(e).splitlines()[0]}") from None
    return net
