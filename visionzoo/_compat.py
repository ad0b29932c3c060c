"""Small, documented fixes for incompatibilities between pinned third-party versions.

Pillow >= 12 rejects ``ImageOps.posterize(img, 0)``, which timm 1.0.x's RandAugment asks for at
the top magnitude of ``PosterizeIncreasing`` (the ImageNet recipes' ``rand-m9-mstd0.5-inc1``
reaches it). Older Pillow returned an all-black image there; we restore that result instead of
crashing a training run mid-epoch.
"""

from __future__ import annotations

from PIL import Image, ImageOps


def _posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:  # keep no bits: every channel becomes 0, as Pillow < 12 did
        return img.point(lambda _v: 0)
    return ImageOps.posterize(img, bits_to_keep)


def patch_timm_auto_augment() -> None:
    from timm.data import auto_augment

    for name, fn in list(auto_augment.NAME_TO_OP.items()):
        if fn is auto_augment.posterize:
            auto_augment.NAME_TO_OP[name] = _posterize


patch_timm_auto_augment()
