import numpy as np
import pytest
import torch
from torch import nn

from simdex.indexer.sources import IdxSource, ImageRecord
from simdex.indexer.sparsity import active_ratio, sparsity_gamma, weight_sparsity_loss
from simdex.indexer.train import TrainConfig, train
from synth import blob_images


def test_weight_sparsity_loss_by_hand():
    conv = nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        conv.weight[:] = torch.tensor([[[[0.5]]], [[[-0.25]]]])
        conv.bias[:] = torch.tensor([0.1, -0.2])
    # channel 0: 0.5 + 0.1, channel 1: 0 + (-0.2); mean = 0.2
    assert weight_sparsity_loss([conv]).item() == pytest.approx(0.2)


def test_active_ratio_counts_channels_with_any_activation():
    a = torch.zeros(2, 4, 3, 3)
    a[1, 0, 2, 2] = 0.01
    a[0, 3] = 1.0
    b = torch.zeros(2, 4, 1, 1)
    assert active_ratio([a, b]) == pytest.approx(2 / 8)


def test_gamma_clamps_at_target():
    assert sparsity_gamma(0.3, beta=0.3, alpha=1) == 0
    assert sparsity_gamma(0.1, beta=0.3, alpha=2) == 0
    assert sparsity_gamma(0.65, beta=0.3, alpha=1) == pytest.approx(0.5)
    assert sparsity_gamma(0.65, beta=0.3, alpha=2) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        sparsity_gamma(0.5, beta=1.0, alpha=1)


def _blob_source(n=192, size=16, seed=0):
    imgs = (blob_images(n, size, seed)[:, 0] * 255).astype(np.uint8)
    return IdxSource("blobs", imgs, [ImageRecord(f"blobs#{i}", i) for i in range(n)])


@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_sparsity_term_drives_active_ratio_to_beta(tmp_path, lam):
    torch.manual_seed(0)
    # The control run without the term needs only one epoch to show that channels stay active.
    cfg = TrainConfig(epochs=3 if lam else 1, batch_size=16, beta=0.4, lam=lam, width=0.25, image_size=16,
                      augment=False, val_fraction=0.25)
    history = train(_blob_source(), tmp_path, cfg)
    r_sp0 = history[-1].val_r_sp0  # inactive ratio on the validation images = 1 - R_sp
    if lam:
        # Target R_sp = beta = 0.4, i.e. R_sp^0 = 0.6; the pressure stops at the target.
        assert 0.6 - 0.03 <= r_sp0 <= 0.6 + 0.12
    else:
        assert r_sp0 < 0.2  # without the term almost every channel stays active
