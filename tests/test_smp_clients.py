"""Zoo backbones as segmentation_models_pytorch ``tu-`` encoders, exactly as an smp user writes them.

No zoo-specific kwargs: smp builds ``timm.create_model(name, features_only=True, out_indices=..., in_chans=3,
pretrained=False)`` itself, so BiFormer must take any reasonable size by default (its region grid, n_win=7,
divides none of these stage maps; ``auto_pad`` is on by default) and report the feature strides smp expects.
One case per (architecture, encoder, size): a train-mode forward + backward, logits ``(B, classes, H, W)`` and
a gradient on every trainable parameter.
"""

from __future__ import annotations

import pytest
import torch

smp = pytest.importorskip("segmentation_models_pytorch")

import visionzoo  # noqa: E402,F401  (registers the zoo models with timm)

ENCODERS = ["tu-biformer_tiny", "tu-reid_resnet50_lab"]
ARCHS = ["Unet", "FPN", "UPerNet", "Segformer"]
# thin decoders (smp's own kwargs) keep the time on the encoder, which is what these tests are about
DECODERS = {
    "Unet": dict(decoder_channels=(64, 32, 16, 16, 16)),
    "FPN": dict(decoder_pyramid_channels=64, decoder_segmentation_channels=32),
    "UPerNet": dict(decoder_channels=64),
    "Segformer": dict(decoder_segmentation_channels=64),
}
SIZES = [(224, 224), (256, 256), (512, 512), (320, 480)]

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("size", SIZES, ids=lambda hw: f"{hw[0]}x{hw[1]}")
@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("arch", ARCHS)
def test_smp_tu_encoder_forward_backward(arch: str, encoder: str, size: tuple[int, int]) -> None:
    torch.manual_seed(0)
    model = getattr(smp, arch)(
        encoder_name=encoder, encoder_weights=None, classes=2, **DECODERS[arch]
    ).train()
    # UPerNet's PSP module batch-norms 1x1 pooled maps: a batch of one cannot train there (smp's own limit)
    batch = 2 if arch == "UPerNet" else 1
    x = torch.randn(batch, 3, *size)
    out = model(x)
    assert out.shape == (batch, 2, *size)
    out.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without a gradient: {no_grad[:5]}"
