"""Networks: shapes, named blocks in forward order, and the checkpoint loader's refusals."""
import pytest
import torch

from checkpoints import CheckpointError, load_checkpoint, network_from_checkpoint, save_checkpoint
from networks import build_network, tapped
from reuse import lwft_blocks, transfusion, truncated


@pytest.mark.parametrize("name", ["Dimwit", "UNet", "ENet"])
@pytest.mark.parametrize("size", [(64, 64), (50, 38)])
def test_output_shape(name, size):
    net = build_network(name, 1, 3).eval()
    with torch.no_grad():
        assert net(torch.randn(2, 1, *size)).shape == (2, 3, *size)


def test_blocks_are_named_in_forward_order_and_cover_the_parameters():
    net = build_network("UNet", 1, 2)
    names = [n for n, _ in net.blocks()]
    assert names == ["enc1", "enc2", "enc3", "enc4", "bottleneck", "dec4", "dec3", "dec2", "dec1", "head"]
    in_blocks = sum(p.numel() for _, b in net.blocks() for p in b.parameters())
    assert in_blocks == sum(p.numel() for p in net.parameters())
    enet = build_network("ENet", 1, 2)
    assert sum(p.numel() for _, b in enet.blocks() for p in b.parameters()) == sum(p.numel() for p in enet.parameters())


def test_unknown_network():
    with pytest.raises(ValueError, match="unknown network 'VNet'"):
        build_network("VNet", 1, 2)


def test_checkpoint_round_trip(tmp_path):
    net = build_network("UNet", 1, 2, width=4)
    save_checkpoint(tmp_path / "w.pkl", net, epoch=3)
    back = network_from_checkpoint(tmp_path / "w.pkl", "UNet", 2)
    assert load_checkpoint(tmp_path / "w.pkl")["epoch"] == 3
    for a, b in zip(net.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_pickled_whole_model_is_refused(tmp_path):
    torch.save(build_network("Dimwit", 1, 2), tmp_path / "model.pkl")    # the seed's format
    with pytest.raises(CheckpointError, match="pickled whole model"):
        load_checkpoint(tmp_path / "model.pkl")


def test_truncated_wrong_architecture_and_class_count_refused(tmp_path):
    net = build_network("Dimwit", 1, 2)
    save_checkpoint(tmp_path / "w.pkl", net)
    data = (tmp_path / "w.pkl").read_bytes()
    (tmp_path / "cut.pkl").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pkl")
    with pytest.raises(CheckpointError, match="holds a Dimwit but --network is UNet"):
        network_from_checkpoint(tmp_path / "w.pkl", "UNet", 2)
    with pytest.raises(CheckpointError, match="2 classes but --n_class is 3"):
        network_from_checkpoint(tmp_path / "w.pkl", "Dimwit", 3)
    torch.save({"network": "Dimwit"}, tmp_path / "partial.pkl")
    with pytest.raises(CheckpointError, match="keys"):
        load_checkpoint(tmp_path / "partial.pkl")


def test_checkpoint_whose_network_arguments_do_not_fit_is_refused(tmp_path):
    net = build_network("UNet", 1, 2, width=4)
    ckpt = {"network": "UNet", "kwargs": {**net.init_kwargs, "depth_of_field": 3}, "state_dict": net.state_dict()}
    torch.save(ckpt, tmp_path / "w.pkl")
    with pytest.raises(CheckpointError, match="cannot build UNet from the checkpoint's arguments"):
        network_from_checkpoint(tmp_path / "w.pkl", "UNet", 2)


@pytest.mark.parametrize("name", ["UNet", "ResUNet", "ENet", "Dimwit"])
def test_decoder_scales_are_feature_layers_from_coarse_to_fine(name):
    net = build_network(name, 1, 2).eval()
    scales = net.decoder_scales()
    assert set(scales) <= set(net.feature_layers()) and len(scales) == (1 if name == "Dimwit" else 3)
    with tapped(net, scales) as taps, torch.no_grad():
        net(torch.rand(1, 1, 64, 64))
    sizes = [taps[s].shape[-1] for s in scales]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)


def test_a_checkpoint_of_another_class_count_loads_all_but_the_output_layer(tmp_path, capsys):
    torch.manual_seed(0)
    source = build_network("ResUNet", 1, 3, width=4)
    save_checkpoint(tmp_path / "m.pkl", source)
    with pytest.raises(CheckpointError, match="trained for 3 classes but --n_class is 2"):
        network_from_checkpoint(tmp_path / "m.pkl", "ResUNet", 2)
    net = network_from_checkpoint(tmp_path / "m.pkl", "checkpoint", 2, new_head=True)
    reset = {k for k, v in net.state_dict().items() if v.shape != source.state_dict()[k].shape}
    assert reset and all(k.startswith("out_path.3") for k in reset)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in net.state_dict().items() if k not in reset)
    assert "re-initialised for 2 classes" in capsys.readouterr().out


# ---------------------------------------------------------------- seed 002's reuse strategies on the ResUNet

def resunet(**kwargs):
    torch.manual_seed(0)
    return build_network("ResUNet", 1, 2, width=4, **kwargs).eval()


def test_the_whole_resunet_is_unchanged_by_the_level_options():
    """depth 3 and no halving are the defaults: same blocks, same initial weights for a seed."""
    a, b = resunet(), resunet(depth=3, halved_above=None)
    assert a.block_order == b.block_order and len(a.block_order) == 32
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("k", [0, 1, 2, 3])
@pytest.mark.parametrize("size", [(40, 40), (37, 29)])
def test_a_truncated_resunet_keeps_the_retained_weights_exactly_and_outputs_full_size(k, size):
    full = resunet()
    for p in full.parameters():                      # trained-looking weights, not the initial ones
        p.data.normal_()
    cut = truncated(full, k).eval()
    state, own = full.state_dict(), cut.state_dict()
    assert set(own) <= set(state) and all(torch.equal(own[key], state[key]) for key in own)
    dropped = {key.split(".")[0] for key in set(state) - set(own)}
    assert dropped == {"down1", "down2", "bottleneck", "up1", "up2", "shortcut1", "shortcut2"} \
        if k == 0 else all(full.level(s) > k for s in dropped)
    with torch.no_grad():
        out = cut(torch.randn(2, 1, *size))
    assert out.shape == (2, 2, *size) and torch.isfinite(out).all()
    assert cut.decoder_order[-1] == "out_path.2" and cut.feature_order[-1] == "out_path.2"
    if k == 3:
        with torch.no_grad():
            x = torch.randn(1, 1, *size)
            assert torch.equal(cut(x), full(x))


def test_a_truncated_resunet_reloads_from_its_checkpoint(tmp_path):
    cut = truncated(resunet(), 1)
    save_checkpoint(tmp_path / "ttl.pkl", cut)
    back = network_from_checkpoint(tmp_path / "ttl.pkl", "ResUNet", 2)
    assert back.depth == 1 and back.block_order == cut.block_order


@pytest.mark.parametrize("k", [0, 1, 2])
def test_transfusion_halves_the_levels_above_k_and_keeps_the_ones_below(k):
    full = resunet()
    for p in full.parameters():
        p.data.normal_()
    tf = transfusion(full, k)
    state = full.state_dict()
    for key, value in tf.state_dict().items():
        stage = key.split(".")[0]
        if full.level(stage) <= k:
            assert torch.equal(value, state[key]), key
    widths = {lv: 4 * 2 ** lv // (2 if lv > k else 1) for lv in range(4)}
    assert tf.bottleneck[1].body[0][2].out_channels == widths[3] == 16        # 32 / 2
    for lv in range(1, 3):
        assert getattr(tf, f"down{lv}")[1].body[0][2].out_channels == widths[lv]
        assert getattr(tf, f"up{lv}")[0].body[0][2].out_channels == widths[lv]
    assert tf.init_path[0].out_channels == 4
    with torch.no_grad():
        assert tf(torch.randn(1, 1, 24, 20)).shape == (1, 2, 24, 20)


def test_lwft_counts_stages_from_the_output_and_a_missing_level_is_one_clear_error():
    net = resunet()
    head, rest = lwft_blocks(net, 2)
    assert head == ["out_path.3"]
    assert rest == ["out_path.0", "out_path.1", "out_path.2", "shortcut0", "up1.0", "up1.1", "up1.2", "up1.3", "shortcut1"]
    assert len(lwft_blocks(net, 7)[1]) == 31
    with pytest.raises(ValueError, match=r"ttl 4: the residual U-Net has no such level; valid: 0, 1, 2, 3"):
        truncated(net, 4)
    with pytest.raises(ValueError, match=r"transfusion 3: .* valid: 0, 1, 2"):
        transfusion(net, 3)
    with pytest.raises(ValueError, match=r"lwft 8: .*valid: 1, 2, 3, 4, 5, 6, 7"):
        lwft_blocks(net, 8)
    with pytest.raises(ValueError, match="residual U-Net"):
        truncated(build_network("UNet", 1, 2, width=4), 1)
