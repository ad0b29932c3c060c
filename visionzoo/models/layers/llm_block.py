"""One frozen decoder layer of a Hugging Face causal LM, used as a bidirectional visual-token block.

Pang et al., "Frozen Transformers in Language Models Are Effective Visual Encoder Layers" (ICLR 2024,
arXiv:2310.12973) put one frozen LLaMA layer after a ViT. This module builds that layer with ``transformers``:

* :func:`load_llm_layer` reads **only** the tensors of layer ``i`` from a checkpoint folder written by
  ``save_pretrained``: for a sharded safetensors checkpoint it reads ``model.safetensors.index.json``'s
  ``weight_map``, opens only the shard(s) that hold ``...layers.{i}.*`` keys with ``safetensors.safe_open`` and
  reads only those keys, cast to the dtype asked for. The layer's module is built on the meta device from the
  checkpoint's ``config.json`` (no memory for the other layers) and the tensors are assigned into it.
* :func:`random_llm_layer` builds the layer from a config with random weights (tests, FLOP counting).
* :class:`FrozenLLMBlock` wraps the layer: its weights become non-persistent **buffers** (frozen tensors, as timm
  keeps fixed tensors: never trainable, not in ``state_dict`` -- they come from ``llm_path``), the layer stays in eval mode
  (no dropout) even when the model trains, **no causal mask** (the attention modules' ``is_causal`` is set to
  False and no mask is passed: full bidirectional attention), **no rotary embedding** (LLaMA-style layers
  get ``position_embeddings=(cos=1, sin=0)``, which makes the rotation the identity), and an optional
  parameter-free RMS normalisation of the output (the official wrapper's final RMSNorm, whose weight was never
  loaded and stays all ones).

LLaMA-family layers (``forward(hidden_states, attention_mask, position_embeddings=...)``: LLaMA, Mistral,
Qwen2, ...) and OPT-style layers (no rotary; learned positions live outside the layer) both work.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from timm.layers import register_notrace_module
from torch import nn

from ...errors import CheckpointError

__all__ = [
    "FrozenLLMBlock",
    "freeze_to_buffers",
    "LLAMA_7B_CONFIG",
    "layer_keys",
    "llm_layer_prefix",
    "load_llm_layer",
    "random_llm_layer",
    "read_layer_state_dict",
    "resolve_dtype",
]

#: LLaMA-7B's shape (the paper's LLM): the default config of a random layer.
LLAMA_7B_CONFIG: dict[str, Any] = dict(
    model_type="llama",
    hidden_size=4096,
    intermediate_size=11008,
    num_attention_heads=32,
    num_key_value_heads=32,
    num_hidden_layers=32,
    rms_norm_eps=1e-6,
    vocab_size=32000,
    max_position_embeddings=2048,
)

_INDEX = "model.safetensors.index.json"
_SINGLE = "model.safetensors"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """``'bfloat16'`` / ``'bf16'`` / ``torch.bfloat16`` / ``None`` -> ``torch.dtype`` or ``None``."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    aliases = {
        "fp32": "float32",
        "fp16": "float16",
        "half": "float16",
        "bf16": "bfloat16",
        "float": "float32",
    }
    name = aliases.get(str(dtype).lower(), str(dtype).lower()).removeprefix("torch.")
    value = getattr(torch, name, None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"llm_dtype {dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
    return value


def llm_layer_prefix(keys: Any, index: int) -> str | None:
    """The checkpoint key prefix of decoder layer ``index`` (``'model.layers.31.'``, ``'model.decoder.layers.3.'``)."""
    pattern = re.compile(rf"^((?:model\.)?(?:language_model\.|decoder\.)?layers\.{index}\.)")
    prefixes = sorted({m.group(1) for k in keys if (m := pattern.match(k))}, key=len)
    return prefixes[0] if prefixes else None


def layer_keys(keys: Any, index: int) -> tuple[str, list[str]]:
    """``(prefix, keys of layer index)`` or raise :class:`CheckpointError`."""
    keys = list(keys)
    prefix = llm_layer_prefix(keys, index)
    if prefix is None:
        raise CheckpointError(
            f"the LLM checkpoint has no keys for decoder layer {index} (looked for 'model.layers.{index}.*' "
            f"and 'model.decoder.layers.{index}.*'); is llm_layer within the model's num_hidden_layers?"
        )
    return prefix, [k for k in keys if k.startswith(prefix)]


def read_layer_state_dict(
    path: str | Path, index: int, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of decoder layer ``index`` from the checkpoint folder ``path``, keys relative to the layer.

    Sharded safetensors: only the shards named for that layer's keys in ``model.safetensors.index.json`` are
    opened, and only those keys are read. A single ``model.safetensors`` is opened lazily the same way.
    ``pytorch_model.bin`` files are memory-mapped (``torch.load(mmap=True)``) as a fallback.
    """
    path = Path(path)
    out: dict[str, torch.Tensor] = {}
    if (path / _INDEX).is_file():
        weight_map: Mapping[str, str] = json.loads((path / _INDEX).read_text())["weight_map"]
        prefix, keys = layer_keys(weight_map, index)
        by_file: dict[str, list[str]] = {}
        for k in keys:
            by_file.setdefault(weight_map[k], []).append(k)
        for filename, file_keys in by_file.items():
            with safe_open(str(path / filename), framework="pt", device="cpu") as f:
                for k in file_keys:
                    out[k[len(prefix) :]] = f.get_tensor(k)
    elif (path / _SINGLE).is_file():
        with safe_open(str(path / _SINGLE), framework="pt", device="cpu") as f:
            prefix, keys = layer_keys(f.keys(), index)
            for k in keys:
                out[k[len(prefix) :]] = f.get_tensor(k)
    else:
        bins = sorted(path.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(
                f"no model.safetensors(.index.json) or pytorch_model*.bin in {path}; give llm_path a folder "
                "written by save_pretrained."
            )
        for file in bins:
            state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
            prefix = llm_layer_prefix(state, index)
            if prefix is not None:
                out.update({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        if not out:
            layer_keys([], index)  # raises
    if dtype is not None:
        out = {k: v.to(dtype) if v.is_floating_point() else v for k, v in out.items()}
    return out


def _layer_list(model: nn.Module, num_layers: int) -> nn.ModuleList:
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers and name.endswith("layers"):
            return module
    raise CheckpointError(f"cannot find the decoder layer list of {type(model).__name__}.")


def _skeleton_layer(config: Any, index: int) -> nn.Module:
    """Decoder layer ``index`` of the causal LM that ``config`` describes, built on the meta device."""
    from transformers import AutoModelForCausalLM

    num_layers = int(config.num_hidden_layers)
    if not -num_layers <= index < num_layers:
        raise ValueError(f"llm_layer {index} is out of range for a {num_layers}-layer LLM.")
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    return _layer_list(model, num_layers)[index]


def _norm_index(index: int | None, num_layers: int) -> int:
    index = num_layers - 1 if index is None else int(index)
    return index + num_layers if index < 0 else index


def load_llm_layer(
    path: str | Path, index: int | None = None, dtype: str | torch.dtype | None = None, device: Any = None
) -> tuple[nn.Module, Any]:
    """``(layer, config)``: decoder layer ``index`` (default: the last) of the causal LM saved at ``path``."""
    from transformers import AutoConfig

    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"llm_path {str(path)!r} does not exist or is not a folder; give the folder a causal LM's "
            "save_pretrained wrote (config.json + safetensors)."
        )
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as e:
        raise CheckpointError(
            f"llm_path {str(path)!r} has no readable config.json of a causal LM ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})."
        ) from e
    index = _norm_index(index, int(config.num_hidden_layers))
    torch_dtype = resolve_dtype(dtype) or torch.float32
    layer = _skeleton_layer(config, index)
    try:
        state = read_layer_state_dict(path, index, torch_dtype)
    except (OSError, SafetensorError, RuntimeError, json.JSONDecodeError, KeyError) as e:
        raise CheckpointError(
            f"the weights in llm_path {str(path)!r} could not be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else 'unreadable'})."
        ) from e
    expected = set(layer.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"layer {index} of {path} does not fit {type(layer).__name__}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}."
        )
    if device is not None and torch.device(device).type != "meta":
        state = {k: v.to(device) for k, v in state.items()}
    if device is not None and torch.device(device).type == "meta":
        layer = layer.to(dtype=torch_dtype)
    else:
        layer.load_state_dict(state, strict=True, assign=True)
    return layer, config


def random_llm_layer(
    config: Mapping[str, Any] | None = None,
    index: int | None = None,
    dtype: str | torch.dtype | None = None,
    device: Any = None,
) -> tuple[nn.Module, Any]:
    """``(layer, config)``: a decoder layer with random weights (transformers' init) from a config dict.

    ``config`` updates :data:`LLAMA_7B_CONFIG`; ``model_type`` picks the family (``'llama'``, ``'opt'``, ...).
    """
    from transformers import AutoConfig

    kwargs = {**LLAMA_7B_CONFIG, **dict(config or {})}
    model_type = kwargs.pop("model_type")
    if model_type != "llama":  # other families name their sizes differently; do not inject LLaMA's
        kwargs = {k: v for k, v in dict(config or {}).items() if k != "model_type"}
    cfg = AutoConfig.for_model(model_type, **kwargs)
    index = _norm_index(index, int(cfg.num_hidden_layers))
    layer = _skeleton_layer(cfg, index)
    torch_dtype = resolve_dtype(dtype) or torch.float32
    device = torch.device("cpu") if device is None else torch.device(device)
    layer = layer.to_empty(device=device).to(dtype=torch_dtype)
    if device.type != "meta":
        std = float(getattr(cfg, "initializer_range", 0.02))
        with torch.no_grad():
            for module in layer.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=std)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                else:
                    weight = getattr(module, "weight", None)
                    if isinstance(weight, nn.Parameter) and weight.ndim == 1:  # RMSNorm / LayerNorm
                        nn.init.ones_(weight)
                        bias = getattr(module, "bias", None)
                        if isinstance(bias, nn.Parameter):
                            nn.init.zeros_(bias)
    return layer, cfg


def freeze_to_buffers(module: nn.Module) -> nn.Module:
    """Turn every parameter of ``module`` (and its submodules) into a non-persistent buffer holding the same tensor.

    The module computes exactly as before (``self.weight`` is the same tensor), moves with ``.to()``, and its weights
    are neither trainable nor in ``state_dict``. Existing buffers become non-persistent too.
    """
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is None:
                continue
            del m._parameters[name]
            m.register_buffer(name, p.detach(), persistent=False)
        m._non_persistent_buffers_set.update(m._buffers)
    return module


@register_notrace_module  # FX: one leaf (the transformers layer returns tuples and unpacks shapes)
class FrozenLLMBlock(nn.Module):
    """A frozen LLM decoder layer applied to visual tokens: bidirectional, no rotary, optional output RMS norm.

    Args:
        layer: a ``transformers`` decoder layer (``LlamaDecoderLayer``, ``OPTDecoderLayer``, ...).
        head_dim: per-head width (the size of the identity rotary embedding); ``None``: no
            ``position_embeddings`` argument is passed (layers without rotary, e.g. OPT).
        out_norm: apply ``x / rms(x)`` (eps ``norm_eps``, in float32, no weight) to the layer output, like the
            official wrapper's final RMSNorm whose weight stays all ones.
        norm_eps: epsilon of that normalisation.

    The input is cast to the layer's dtype and the output back to the input's dtype.

    Frozen weights are non-persistent buffers (:func:`freeze_to_buffers`), not parameters that silently get no
    gradient: timm's and the optimizer's view of "parameters" is the trainable set, checkpoints stay small (the
    layer comes from ``llm_path``), and nothing (``requires_grad_(True)``, ``reset_classifier``) can unfreeze them.
    A ``state_dict`` of the earlier format, with ``layer.*`` entries, still loads: they are copied into the buffers.
    """

    #: its buffers never change, so data-parallel training need not broadcast them (``visionzoo.tasks.ddp``)
    static_buffers = True

    def __init__(self, layer: nn.Module, head_dim: int | None, out_norm: bool = True, norm_eps: float = 1e-6):
        super().__init__()
        self.layer = layer
        self.head_dim = head_dim
        self.out_norm = out_norm
        self.norm_eps = norm_eps
        params = inspect.signature(layer.forward).parameters
        self._rotary = head_dim is not None and "position_embeddings" in params
        for module in layer.modules():
            if hasattr(module, "is_causal"):
                module.is_causal = False  # SDPA would otherwise apply a causal mask when no mask is given
        freeze_to_buffers(self.layer)
        self.layer.eval()
        self.register_load_state_dict_pre_hook(_load_frozen_entries)

    def train(self, mode: bool = True) -> FrozenLLMBlock:
        """The wrapper follows ``mode`` but the frozen layer always stays in eval mode (no dropout)."""
        super().train(mode)
        self.layer.eval()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.layer.buffers()).dtype

    def frozen_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen layer's weights under the transformers layer's own ``state_dict`` keys."""
        return dict(self.layer.named_buffers())

    def identity_rotary(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cos, sin) = (1, 0)`` of shape ``(1, N, head_dim)``: the rotary embedding that rotates nothing."""
        n = x.shape[1]
        cos = torch.ones(1, n, int(self.head_dim), dtype=x.dtype, device=x.device)
        return cos, torch.zeros_like(cos)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_dtype = x.dtype
        h = x.to(self.dtype)
        kwargs: dict[str, Any] = {"attention_mask": None}
        if self._rotary:
            kwargs["position_embeddings"] = self.identity_rotary(h)
        out = self.layer(h, **kwargs)
        if isinstance(out, (tuple, list)):
            out = out[0]
        if self.out_norm:
            o = out.float()
            out = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + self.norm_eps)
        return out.to(in_dtype)

    def extra_repr(self) -> str:
        return f"frozen, bidirectional, rotary={'identity' if self._rotary else 'none'}, out_norm={self.out_norm}"


def _load_frozen_entries(
    module, state_dict, prefix, local_metadata, strict, missing, unexpected, errors
) -> None:
    """Pre-hook of :class:`FrozenLLMBlock`: ``{prefix}layer.*`` entries (checkpoints written while the frozen weights
    were parameters) are copied into the buffers and removed, so such files load as before."""
    buffers = module.frozen_state_dict()
    head = prefix + "layer."
    for key in [k for k in state_dict if k.startswith(head)]:
        name = key[len(head) :]
        if name not in buffers:
            continue  # left in place: reported as unexpected
        value = state_dict.pop(key)
        if value.shape != buffers[name].shape:
            errors.append(f"size mismatch for {key}: {tuple(value.shape)} vs {tuple(buffers[name].shape)}")
            continue
        with torch.no_grad():
            buffers[name].copy_(value)
