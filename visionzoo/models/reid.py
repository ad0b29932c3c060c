"""Re-ID ResNet-50 with attention blocks inserted between bottlenecks (after Eisenbach et al., ICRA 2023).

Paper: "A Little Bit Attention Is All You Need for Person Re-Identification", arXiv 2302.14574. The paper's full
text and code were not reachable here, so its block structure and its placement rule are **not** reproduced:
``attn_block='lab'`` is our own lightweight block (:mod:`visionzoo.models.layers.reid_attention`) and the default
positions are our choice. What this module gives is the experimental frame the paper describes: a ResNet-50 into
which one attention block type is inserted after chosen bottlenecks, compared against SE / CBAM / ECA / non-local.

Anatomy: timm's :class:`~timm.models.resnet.ResNet` (``resnet50`` layout) whose ``layerN`` ``nn.Sequential`` gets
extra children named ``attn<j>`` placed right after bottleneck ``j``. Bottleneck keys stay timm's
(``layer2.3.conv1.weight``), so timm's ``resnet50`` ImageNet weights load as they are; the attention blocks keep
their initialisation (:func:`checkpoint_filter_fn`). ``forward_features`` / ``forward_intermediates`` /
``features_only`` are timm's own, since they call ``self.layerN``. Starting from ImageNet weights::

    sd = timm.create_model("resnet50.tv_in1k", pretrained=True).state_dict()
    model = timm.create_model("reid_resnet50_lab", pretrained=True, pretrained_cfg_overlay=dict(state_dict=sd))

Options: ``attn_positions`` -- ``[(stage, block), ...]`` with stage 0..3 (= ``layer1..layer4``) and block indices
that may be negative (``-1`` = last bottleneck of the stage), or names ``"layer3.5"``; ``attn_block`` -- ``lab``
(ours), ``se``, ``cbam``, ``eca``, ``nonlocal`` (timm's blocks); ``last_stride`` -- 1 keeps ``layer4`` at stride 16
(the usual Re-ID setting: 16x8 maps at 256x128).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs
from timm.models.resnet import Bottleneck, ResNet
from torch import nn

from ._registry import register_zoo_model
from .layers.reid_attention import ATTN_BLOCKS, create_reid_attn

__all__ = ["DEFAULT_ATTN_POSITIONS", "ReIDResNet", "checkpoint_filter_fn", "parse_attn_positions"]

#: Our default (not the paper's, which could not be read): after the last bottleneck of layer2 and of layer3.
DEFAULT_ATTN_POSITIONS: tuple[tuple[int, int], ...] = ((1, -1), (2, -1))


def parse_attn_positions(
    positions: Sequence[Sequence[int] | str], layers: Sequence[int]
) -> list[tuple[int, int]]:
    """Normalise ``[(stage, block) | "layerN.j", ...]`` to sorted unique non-negative ``(stage, block)`` pairs."""
    out = set()
    for pos in positions:
        if isinstance(pos, str):
            m = re.fullmatch(r"layer([1-4])\.(-?\d+)", pos.strip())
            if m is None:
                raise ValueError(f"attention position {pos!r} is not of the form 'layerN.j' (N in 1..4).")
            stage, block = int(m.group(1)) - 1, int(m.group(2))
        else:
            if len(pos) != 2:
                raise ValueError(f"attention position {pos!r} is not a (stage, block) pair.")
            stage, block = int(pos[0]), int(pos[1])
        if not 0 <= stage < len(layers):
            raise ValueError(f"attention position {pos!r}: stage must be in 0..{len(layers) - 1}.")
        n = int(layers[stage])
        if not -n <= block < n:
            raise ValueError(f"attention position {pos!r}: stage {stage} has {n} bottlenecks.")
        out.add((stage, block % n))
    return sorted(out)


class ReIDResNet(ResNet):
    """timm ResNet with attention blocks after chosen bottlenecks and an optional stride-1 last stage.

    Args (besides timm ``ResNet``'s):
        attn_positions: where to insert blocks (see the module docstring); ``()`` for a plain ResNet.
        attn_block: ``lab`` | ``se`` | ``cbam`` | ``eca`` | ``nonlocal``.
        last_stride: 1 or 2, the stride of ``layer4``.
        bnneck: add the "Bag of Tricks" BNNeck: ``neck`` = BatchNorm1d on the pooled feature (bias frozen at 0) and
            a bias-free ``fc`` (init std 0.001). ``forward_head(pre_logits=True)`` then returns the post-BN
            embedding (the test feature); :meth:`forward_embeddings` returns both (pre-BN for a triplet loss).
    """

    def __init__(
        self,
        *args,
        attn_positions: Sequence[Sequence[int] | str] = DEFAULT_ATTN_POSITIONS,
        attn_block: str = "lab",
        last_stride: int = 2,
        bnneck: bool = False,
        device=None,
        dtype=None,
        **kwargs,
    ):
        super().__init__(*args, device=device, dtype=dtype, **kwargs)
        if attn_block not in ATTN_BLOCKS:
            raise ValueError(f"attn_block must be one of {', '.join(ATTN_BLOCKS)}, got {attn_block!r}.")
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride!r}.")
        self.attn_block = attn_block
        self.last_stride = last_stride
        stages = [self.layer1, self.layer2, self.layer3, self.layer4]
        self.attn_positions = parse_attn_positions(attn_positions, [len(s) for s in stages])
        for stage_idx, stage in enumerate(stages):
            wanted = {b for s, b in self.attn_positions if s == stage_idx}
            if not wanted:
                continue
            children: OrderedDict[str, nn.Module] = OrderedDict()
            for j, block in enumerate(stage):
                children[str(j)] = block
                if j in wanted:
                    channels = (
                        block.conv3.out_channels
                        if isinstance(block, Bottleneck)
                        else block.conv2.out_channels
                    )
                    children[f"attn{j}"] = create_reid_attn(attn_block, channels, device=device, dtype=dtype)
            setattr(self, f"layer{stage_idx + 1}", nn.Sequential(children))
        if last_stride == 1:
            first = self.layer4[0]
            conv = first.conv2 if isinstance(first, Bottleneck) else first.conv1
            conv.stride = (1, 1)
            if first.downsample is not None:
                for m in first.downsample.modules():
                    if isinstance(m, nn.Conv2d):
                        m.stride = (1, 1)
                    elif isinstance(m, nn.AvgPool2d):  # 'd' variants: avg-pool downsample
                        m.stride, m.kernel_size = 1, 1
            self.feature_info[-1]["reduction"] = self.feature_info[-2]["reduction"]
        self.bnneck = bool(bnneck)
        self.neck: nn.Module = nn.Identity()
        self._build_neck(device=device, dtype=dtype)

    def _build_neck(self, device=None, dtype=None) -> None:
        if not self.bnneck:
            return
        width = self.num_features * self.global_pool.feat_mult()
        pooled = bool(self.global_pool.pool_type)  # unpooled maps (global_pool='') get no neck
        self.neck = nn.BatchNorm1d(width, device=device, dtype=dtype) if pooled else nn.Identity()
        if isinstance(self.neck, nn.BatchNorm1d):
            self.neck.bias.requires_grad_(False)
        if self.num_classes > 0:
            self.fc = nn.Linear(width, self.num_classes, bias=False, device=device, dtype=dtype)
            nn.init.normal_(self.fc.weight, std=0.001)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        super().reset_classifier(num_classes, global_pool)
        p = next(self.parameters())
        self._build_neck(device=p.device, dtype=p.dtype)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.neck(self.global_pool(x))
        if self.drop_rate:
            x = nn.functional.dropout(x, p=float(self.drop_rate), training=self.training)
        return x if pre_logits else self.fc(x)

    @torch.jit.ignore
    def forward_embeddings(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pooled feature, after the neck)`` for an image batch (equal when ``bnneck`` is off)."""
        pooled = self.global_pool(self.forward_features(x))
        return pooled, self.neck(pooled)

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> dict:
        """timm ResNet's groups; ``layerN.attn<j>`` joins bottleneck ``layerN.<j>``."""
        return dict(
            stem=r"^conv1|bn1|maxpool", blocks=r"^layer(\d+)" if coarse else r"^layer(\d+)\.(?:attn)?(\d+)"
        )


def checkpoint_filter_fn(state_dict: dict, model: ReIDResNet) -> dict:
    """Plain timm ``resnet50`` weights -> this model: attention blocks and BNNeck missing from the checkpoint keep
    their init, and the classifier bias is dropped when the BNNeck classifier has none."""
    if "state_dict" in state_dict:
        state_dict = state_dict["state_dict"]
    out = dict(state_dict)
    own = model.state_dict()
    for k, v in own.items():
        if (".attn" in k or k.startswith("neck.")) and k not in out:
            out[k] = v
    if "fc.bias" in out and "fc.bias" not in own:
        del out["fc.bias"]
    return out


def _cfg(**kwargs) -> dict:
    return {
        "num_classes": 1000,
        "input_size": (3, 256, 128),
        "pool_size": (8, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "conv1",
        "classifier": "fc",
        "license": "bsd-3-clause",
        "paper_ids": "arXiv:2302.14574",
        **kwargs,
    }


default_cfgs = generate_default_cfgs(
    {
        # no Re-ID weights are published; start from timm's resnet50 ImageNet weights (see the module docstring)
        "reid_resnet50_lab.untrained": _cfg(),
    }
)


def _create(variant: str, pretrained: bool = False, **kwargs) -> ReIDResNet:
    return build_model_with_cfg(
        ReIDResNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        **kwargs,
    )


@register_zoo_model(task="reid")
def reid_resnet50_lab(pretrained: bool = False, **kwargs) -> ReIDResNet:
    """ResNet-50 + our lightweight attention block after ``layer2.3`` and ``layer3.5`` (defaults, see module)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), attn_block="lab")
    return _create("reid_resnet50_lab", pretrained, **dict(model_args, **kwargs))
