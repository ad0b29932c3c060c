"""Pictures of what a model does.

:func:`draw_routing` shows BiFormer's bi-level routing: for one query region, which regions each routing stage
sends its attention to. The routing indices are captured with forward hooks on the ``attn.router`` modules
(:class:`visionzoo.models.layers.TopkRouting`), so any model built from
:class:`~visionzoo.models.layers.BiLevelRoutingAttention` works.

With random weights the routes are arbitrary (the region descriptors are random projections of the image);
only trained weights (e.g. the official ImageNet checkpoints loaded through ``pretrained_cfg_overlay``) give
semantically meaningful routes -- regions of the same object attending to each other.

``python -m visionzoo.viz`` regenerates ``docs/figures/biformer_routing.png`` (random weights, sklearn's china.jpg).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["capture_routing", "draw_routing"]


def _to_uint8_hwc(image: Any) -> np.ndarray:
    """PIL image, HxWx3 array (uint8 or float in [0, 1]) or 3xHxW tensor in [0, 1] -> HxWx3 uint8."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 4:
            image = image[0]
        image = image.permute(1, 2, 0).numpy()
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    if array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return array[..., :3]


def _prepare(image: np.ndarray, size: tuple[int, int], mean, std) -> tuple[torch.Tensor, np.ndarray]:
    """Center-crop to the aspect of ``size`` = (H, W), resize (bicubic); returns the normalised 1x3xHxW input and
    the uint8 image the model sees."""
    from PIL import Image

    h, w = image.shape[:2]
    scale = min(h / size[0], w / size[1])
    ch, cw = round(size[0] * scale), round(size[1] * scale)
    top, left = (h - ch) // 2, (w - cw) // 2
    image = np.ascontiguousarray(image[top : top + ch, left : left + cw])
    resized = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BICUBIC))
    x = torch.from_numpy(resized).float().div(255.0).permute(2, 0, 1)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0), resized


@torch.no_grad()
def capture_routing(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``model(x)`` in eval mode and return ``{block name: (B, S^2, topk) routing indices}``."""
    from .models.layers import TopkRouting

    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, TopkRouting):
            block = name.rsplit(".attn.router", 1)[0]

            def hook(_m, _inp, out, block=block):
                captured[block] = out.detach().cpu()

            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise ValueError("the model has no bi-level routing attention (no TopkRouting module) to draw.")
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return captured


def draw_routing(
    model: nn.Module,
    image: Any,
    query_region: tuple[int, int] = (3, 3),
    path: str | Path = "routing.png",
    size: tuple[int, int] | None = None,
    title: str | None = None,
) -> dict[int, np.ndarray]:
    """Draw, per routing stage, the image with the query region outlined and its routed regions highlighted.

    Args:
        model: a BiFormer (any model whose routing attention has ``attn.router`` modules).
        image: PIL image, HxWx3 array or 3xHxW tensor in [0, 1]; resized to ``size`` and normalised with the
            model's ``pretrained_cfg`` mean/std.
        query_region: ``(row, col)`` of the query region in the ``n_win x n_win`` grid.
        path: where to save the PNG.
        size: model input (H, W); default the ``pretrained_cfg`` input size (224 x 224).
        title: figure title.

    Returns ``{stage index: (n_win, n_win) array}``: per region, the fraction of the stage's blocks that routed
    the query region to it (what the highlight shows). With random weights the routes are arbitrary; trained
    weights give meaningful ones.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(size or cfg.get("input_size", (3, 224, 224))[-2:])
    mean = cfg.get("mean", (0.485, 0.456, 0.406))
    std = cfg.get("std", (0.229, 0.224, 0.225))
    x, shown = _prepare(_to_uint8_hwc(image), size, mean, std)
    routes = capture_routing(model, x)

    # group the blocks by stage; read n_win and topk from the modules
    n_win = {}
    per_stage: dict[int, list[torch.Tensor]] = defaultdict(list)
    for name, module in model.named_modules():
        if name in routes:
            stage = int(re.search(r"stages\.(\d+)\.", name + ".").group(1)) if "stages." in name else 0
            per_stage[stage].append(routes[name][0])
            n_win[stage] = module.attn.n_win
    r, c = query_region
    heat: dict[int, np.ndarray] = {}
    for stage, idx_list in sorted(per_stage.items()):
        s = n_win[stage]
        if not (0 <= r < s and 0 <= c < s):
            raise ValueError(
                f"query_region {query_region} is outside the {s}x{s} region grid of stage {stage + 1}."
            )
        counts = np.zeros(s * s)
        for idx in idx_list:
            counts[idx[r * s + c].numpy()] += 1
        heat[stage] = (counts / len(idx_list)).reshape(s, s)

    H, W = shown.shape[:2]
    fig, axes = plt.subplots(1, len(heat) + 1, figsize=(3.2 * (len(heat) + 1), 3.6))
    axes[0].imshow(shown)
    axes[0].set_title("input")
    for ax, (stage, grid) in zip(axes[1:], heat.items()):
        s = grid.shape[0]
        rh, rw = H / s, W / s
        ax.imshow(shown)
        overlay = np.zeros((s, s, 4))
        overlay[..., 1] = 1.0  # green
        overlay[..., 3] = 0.6 * grid
        ax.imshow(overlay, extent=(0, W, H, 0), interpolation="nearest")
        for k in range(1, s):
            ax.axhline(k * rh, color="white", lw=0.4, alpha=0.6)
            ax.axvline(k * rw, color="white", lw=0.4, alpha=0.6)
        ax.add_patch(patches.Rectangle((c * rw, r * rh), rw, rh, fill=False, edgecolor="red", lw=2))
        topk = int(round(grid.sum()))
        ax.set_title(
            f"stage {stage + 1}: top-{topk} of {s * s} regions\n({len(per_stage[stage])} block(s))",
            fontsize=9,
        )
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        title or f"BiFormer routing of query region {tuple(query_region)} (red); routed regions green",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return heat


def _main() -> None:
    """``python -m visionzoo.viz [PATH]``: the docs figure (random-weight biformer_tiny on sklearn's china.jpg)."""
    import sys

    import timm
    from sklearn.datasets import load_sample_image

    import visionzoo  # noqa: F401  (registers biformer_*)

    path = sys.argv[1] if len(sys.argv) > 1 else "docs/figures/biformer_routing.png"
    torch.manual_seed(0)
    model = timm.create_model("biformer_tiny")
    image = load_sample_image("china.jpg")
    draw_routing(
        model,
        image,
        query_region=(2, 3),
        path=path,
        title="biformer_tiny with RANDOM weights: query region (2, 3) in red, routed regions in green\n"
        "(shade = fraction of the stage's blocks routing there; trained weights give meaningful routes)",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    _main()
