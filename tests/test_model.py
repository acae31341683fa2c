import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from simdex.indexer.model import SparseUNet, UNetConfig, _Level, phi_layers


def test_phi_at_full_width_is_table_one():
    phi = phi_layers(UNetConfig(width=1.0))
    assert [s.name for s in phi] == [f"C{lvl}{c}" for lvl in range(1, 10) for c in (1, 2)]
    assert [s.channels for s in phi[::2]] == [32, 64, 96, 128, 160, 128, 96, 64, 32]
    assert sum(s.channels for s in phi) == 1600
    assert [s.stride for s in phi[::2]] == [1, 2, 4, 8, 8, 8, 4, 2, 1]
    assert [s.offset for s in phi[:3]] == [0, 32, 64]
    assert phi[-1].offset + phi[-1].channels == 1600


@pytest.mark.parametrize("width,features", [(0.5, 800), (0.25, 400)])
def test_width_multiplier(width, features):
    assert SparseUNet(UNetConfig(width=width)).num_features == features


def test_forward_returns_logits_and_phi_maps_for_rgb_non_square_input():
    net = SparseUNet(UNetConfig(width=0.25, in_channels=3))
    x = torch.rand(2, 3, 40, 24)
    logits, acts = net(x)
    assert logits.shape == (2, 2, 40, 24)
    assert len(acts) == 18
    for spec, a in zip(net.phi, acts):
        assert a.shape == (2, spec.channels, 40 // spec.stride, 24 // spec.stride)
        assert (a >= 0).all()  # after ReLU


def test_input_size_must_be_divisible_by_eight():
    net = SparseUNet(UNetConfig(width=0.25))
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.rand(1, 1, 28, 28))
    with pytest.raises(ValueError, match="shape"):
        net(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match="divisible by 8"):
        UNetConfig(image_size=28)


def test_xavier_initialisation():
    torch.manual_seed(0)
    net = SparseUNet(UNetConfig(width=1.0))
    conv = net.levels[4].conv2  # 160 -> 160, 3x3
    fan = 160 * 9
    bound = math.sqrt(6.0 / (fan + fan))
    assert conv.weight.abs().max().item() <= bound + 1e-6
    assert conv.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert torch.count_nonzero(conv.bias) == 0


def test_inference_relu_in_place_gives_the_training_forward():
    """Without autograd the ReLUs overwrite their inputs (no second map); the values are the same."""
    torch.manual_seed(0)
    net = SparseUNet(UNetConfig(width=0.25, in_channels=3)).eval()
    x = torch.rand(2, 3, 32, 32)
    logits, acts = net(x)  # autograd on: out-of-place
    with torch.inference_mode():
        logits_i, acts_i = net(x)
    # the encoder and bottom levels (1–6: 12 maps) are the same computation; levels 7–9 fold the
    # upsampling into conv1 (`_Level.forward_up`): the same values to float rounding
    assert all(torch.equal(a.detach(), b) for a, b in zip(acts[:12], acts_i[:12], strict=True))
    for a, b in zip(acts[12:], acts_i[12:], strict=True):
        torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits_i, logits.detach(), rtol=1e-5, atol=1e-5)
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(acts_i[::2], acts_i[1::2]))  # φ's maps stay apart


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_upsampling_gives_the_upsampled_concatenation(channels_last):
    """`_Level.forward_up(low, skip)` = `forward(cat([upsample2x(low), skip]))`, at every border and
    parity of a non-square map, in either memory layout."""
    torch.manual_seed(1)
    level = _Level(5 + 3, 4)
    nn.init.normal_(level.conv1.bias)  # the bias is added once, by the skip channels' convolution
    low, skip = torch.randn(2, 5, 3, 4), torch.randn(2, 3, 6, 8)
    if channels_last:
        low, skip = (t.contiguous(memory_format=torch.channels_last) for t in (low, skip))
    with torch.inference_mode():
        want = level(torch.cat([F.interpolate(low, scale_factor=2, mode="nearest"), skip], 1))
        got = level.forward_up(low, skip)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
