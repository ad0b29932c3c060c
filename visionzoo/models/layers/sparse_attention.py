"""Sparsifiner's attention: a low-rank connectivity predictor and two execution paths of the sparse attention.

``ConnectivityPredictor`` estimates each query's attention row cheaply (channel-reduced q and k, keys reduced to
``N // reduce_n`` learned basis tokens, up-projected back to ``N`` columns) and ``SparsifinerAttention`` keeps the
top ``ceil(keep_rate * N)`` connections per query. The cls-token row stays dense. The kept connections run either as

* ``dense_mask``: the official simulation, the full ``q @ k^T`` with ``-inf`` outside the kept connections (reference);
* ``sparse``: only the kept connections are computed. Without autograd (inference) with torch's CSR kernels: the
  kept scores by a sampled dense-dense product (``torch.sparse.sampled_addmm``), a softmax over each row's kept
  values, and a sparse-dense product with ``v`` (:func:`sparse_csr_attention`); nothing of size
  ``(B, H, N-1, k, d)`` is built. With autograd (or a dtype the CSR kernels lack) the kept keys/values are gathered
  per query and attended with small batched products (:func:`sparse_gather_attention`), which is differentiable
  but copies ``2 k d`` floats per query.

Both give the same result (to float rounding). :func:`attention_flops` counts what each path computes.
"""

import math
import warnings

import torch
from timm.layers import register_notrace_function, trunc_normal_
from torch import nn

__all__ = [
    "ATTN_IMPLS",
    "ConnectivityPredictor",
    "SparsifinerAttention",
    "attention_flops",
    "dense_mask_attention",
    "keep_count",
    "sparse_attention",
    "sparse_csr_attention",
    "sparse_gather_attention",
]

#: ``dense``: plain softmax attention (no predictor, the teacher / reconstruction phase); ``dense_mask`` and
#: ``sparse``: the predicted connectivity, simulated by masking or computed only where kept (CSR kernels / gather).
ATTN_IMPLS = ("dense", "dense_mask", "sparse")


def keep_count(num_tokens: int, keep_rate: float) -> int:
    """Keys kept per (non-cls) query: ``ceil(keep_rate * N)`` (official: 50 of 197 at 0.25), at least 1."""
    return max(1, min(num_tokens, math.ceil(keep_rate * num_tokens)))


class ConnectivityPredictor(nn.Module):
    """Low-rank attention estimate shared by the heads of one layer (official ``attn.mask_predictor``).

    ``q``, ``k``: ``(B, H, N, d)``. Returns the approximate attention of the non-cls queries, ``(B, H, N-1, N)``.
    ``sparse=False`` (reconstruction phase): full basis coefficients and the signed up-projection. ``sparse=True``
    (fine-tuning / inference): the top-``coef_topk`` coefficients and ``|W_up|`` with entries ``<= threshold`` zeroed.
    The logits are scaled by ``num_heads ** -0.5`` as in the official code.
    """

    def __init__(
        self,
        head_dim: int,
        num_heads: int,
        num_tokens: int,
        reduce_c: int = 2,
        reduce_n: int = 6,
        coef_topk: int = 8,
        basis_threshold: float = 0.02,
    ) -> None:
        super().__init__()
        reduced_c = max(1, head_dim // reduce_c)
        self.num_tokens = num_tokens
        self.num_basis = max(1, num_tokens // reduce_n)
        self.coef_topk = min(coef_topk, self.num_basis)
        self.basis_threshold = basis_threshold
        self.scale = num_heads**-0.5
        self.proj_c_q = nn.Linear(head_dim, reduced_c)
        self.proj_c_k = nn.Linear(head_dim, reduced_c)
        self.proj_n = nn.Parameter(torch.empty(num_tokens, self.num_basis))
        self.proj_back_n = nn.Parameter(torch.empty(num_tokens, self.num_basis))
        for w in (self.proj_c_q.weight, self.proj_c_k.weight, self.proj_n, self.proj_back_n):
            trunc_normal_(w, std=0.02)
        nn.init.zeros_(self.proj_c_q.bias)
        nn.init.zeros_(self.proj_c_k.bias)

    def coefficients(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Softmax basis coefficients of the non-cls queries, ``(B, H, N-1, N // reduce_n)``."""
        q_red = self.proj_c_q(q[:, :, 1:])
        k_basis = self.proj_c_k(k).transpose(-2, -1) @ self.proj_n  # (B, H, c, n_basis)
        return ((q_red @ k_basis) * self.scale).softmax(dim=-1)

    def forward(self, q: torch.Tensor, k: torch.Tensor, sparse: bool = True) -> torch.Tensor:
        # torch._assert: a run-time check in eager, TorchScript and FX graphs alike (no trace-time branch)
        torch._assert(
            q.shape[2] == self.num_tokens,
            "Sparsifiner's predictor is tied to the token count it was built for (proj_n / proj_back_n); "
            "build the model at this img_size.",
        )
        coef = self.coefficients(q, k)
        w_up = self.proj_back_n
        if sparse:
            top_v, top_i = coef.topk(self.coef_topk, dim=-1)
            coef = torch.zeros_like(coef).scatter(-1, top_i, top_v)
            w_up = w_up.abs()
            w_up = w_up.masked_fill(w_up <= self.basis_threshold, 0.0)  # = F.threshold (ONNX has no such op)
        return coef @ w_up.t()


def dense_mask_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, scale: float
) -> torch.Tensor:
    """Official simulation: full attention, ``-inf`` outside the kept keys ``idx`` ``(B, H, N-1, k)``; cls row dense."""
    attn = (q * scale) @ k.transpose(-2, -1)
    # built out of place (no item assignment: FX-traceable); 0 on the cls row and the kept keys, -inf elsewhere
    rows = torch.full_like(attn[:, :, 1:], float("-inf")).scatter(-1, idx, 0.0)
    mask = torch.cat([torch.zeros_like(attn[:, :, :1]), rows], dim=2)
    attn = (attn + mask).softmax(dim=-1)
    attn = torch.nan_to_num(attn, nan=0.0)
    return attn @ v


def sparse_gather_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, scale: float
) -> torch.Tensor:
    """Only the kept connections: gather ``(B, H, N-1, k, d)`` keys/values per query, then small products.

    The cls query attends to all ``N`` keys (its row is dense).
    """
    B, H, N, d = q.shape
    kk = idx.shape[-1]
    q = q * scale
    cls_out = ((q[:, :, :1] @ k.transpose(-2, -1)).softmax(dim=-1)) @ v  # (B, H, 1, d)
    offsets = (torch.arange(B * H, device=idx.device) * N).view(B * H, 1, 1)
    flat = (idx.reshape(B * H, N - 1, kk) + offsets).reshape(-1)
    k_g = k.reshape(B * H * N, d).index_select(0, flat).view(B * H, N - 1, kk, d)
    v_g = v.reshape(B * H * N, d).index_select(0, flat).view(B * H, N - 1, kk, d)
    q_r = q[:, :, 1:].reshape(B * H * (N - 1), 1, d)
    scores = torch.bmm(q_r, k_g.view(-1, kk, d).transpose(1, 2)).softmax(dim=-1)  # (BH(N-1), 1, kk)
    out = torch.bmm(scores, v_g.view(-1, kk, d)).view(B, H, N - 1, d)
    return torch.cat([cls_out, out], dim=2)


def sparse_csr_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, scale: float
) -> torch.Tensor:
    """Only the kept connections, with torch's CSR kernels (no autograd): one ``(B*H*(N-1)) x (B*H*N)`` pattern
    holding each query's kept keys (block-diagonal over batch and heads), scores by SDDMM, row softmax on the
    stored values, then SpMM with ``v``. Same result as :func:`sparse_gather_attention` (tested).
    """
    B, H, N, d = q.shape
    kk = idx.shape[-1]
    q = q * scale
    cls_out = ((q[:, :, :1] @ k.transpose(-2, -1)).softmax(dim=-1)) @ v  # (B, H, 1, d): the dense cls row
    rows, keys = B * H * (N - 1), B * H * N
    offsets = (torch.arange(B * H, device=idx.device) * N).view(B * H, 1, 1)
    cols = (idx.reshape(B * H, N - 1, kk) + offsets).reshape(rows, kk).sort(dim=-1).values.reshape(-1)
    crow = torch.arange(0, rows * kk + 1, kk, device=idx.device)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols, q.new_zeros(rows * kk), size=(rows, keys))
        scores = torch.sparse.sampled_addmm(pattern, q[:, :, 1:].reshape(rows, d), k.reshape(keys, d).t())
        probs = scores.values().view(rows, kk).softmax(dim=-1).reshape(-1)
        attn = torch.sparse_csr_tensor(crow, cols, probs, size=(rows, keys))
        out = torch.sparse.mm(attn, v.reshape(keys, d)).view(B, H, N - 1, d)
    return torch.cat([cls_out, out], dim=2)


@torch.fx.wrap
@register_notrace_function
def sparse_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx: torch.Tensor, scale: float
) -> torch.Tensor:
    """The ``sparse`` path: CSR kernels when no gradient is needed and the dtype allows, else the gather form.

    The choice depends on run-time state (grad mode, dtype, device), so FX keeps this function as one call (a
    timm notrace function). TorchScript, tracing (ONNX) and ``torch.compile`` / ``torch.export``, which lack the
    sparse CSR tensors, always take the gather form.
    """
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or torch.compiler.is_compiling():
            return sparse_gather_attention(q, k, v, idx, scale)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        csr_dtype = q.dtype == torch.float32 or q.dtype == torch.float64
        if not needs_grad and csr_dtype and q.device.type == "cpu":
            return sparse_csr_attention(q, k, v, idx, scale)
    return sparse_gather_attention(q, k, v, idx, scale)


@torch.fx.wrap
@register_notrace_function
def refuse_attn_mask(x: torch.Tensor, attn_mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """``x`` unchanged, or ``ValueError`` when a mask or ``is_causal`` is given (checked at run time, also in FX
    graphs, where timm's ``Block`` passes both as graph inputs; the output is used, so dead-code elimination keeps
    the check)."""
    if attn_mask is not None or is_causal:
        raise ValueError(
            "SparsifinerAttention takes no attn_mask / is_causal: the connectivity predictor picks the kept keys "
            "without one"
        )
    return x


class SparsifinerAttention(nn.Module):
    """timm ``Attention`` (same ``qkv`` / ``proj`` keys) plus ``mask_predictor``, with the sparse connectivity.

    ``attn_impl``: one of :data:`ATTN_IMPLS`, or ``None``: ``dense_mask`` in train mode, ``sparse`` in eval mode.
    ``recon=True`` (reconstruction phase): plain dense attention, and the predictor's unsparsified estimate is kept
    in ``self.approx_attn`` for the reconstruction loss.

    ``forward(x, attn_mask=None, is_causal=False)`` has timm ``Attention``'s signature (timm's ``Block`` always
    passes both); masks are refused at run time (:func:`refuse_attn_mask`), as the paper's predictor has none.
    """

    approx_attn: torch.Tensor | None

    def __init__(
        self,
        dim: int,
        num_heads: int,
        num_tokens: int,
        qkv_bias: bool = True,
        keep_rate: float = 0.25,
        reduce_c: int = 2,
        reduce_n: int = 6,
        coef_topk: int = 8,
        basis_threshold: float = 0.02,
        attn_impl: str | None = None,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if attn_impl is not None and attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS} or None, got {attn_impl!r}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.num_tokens = num_tokens
        self.keep_rate = keep_rate
        self.attn_impl: str | None = attn_impl
        self.recon = False
        self.approx_attn: torch.Tensor | None = None
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.Identity()
        self.k_norm = nn.Identity()
        self.attn_drop = nn.Dropout(attn_drop)
        self.norm = nn.Identity()
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.mask_predictor = ConnectivityPredictor(
            self.head_dim, num_heads, num_tokens, reduce_c, reduce_n, coef_topk, basis_threshold
        )

    def resolved_impl(self) -> str:
        if self.recon:
            return "dense"
        if self.attn_impl is not None:
            return self.attn_impl
        return "dense_mask" if self.training else "sparse"

    def connectivity(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Kept key indices per non-cls query, ``(B, H, N-1, ceil(keep_rate * N))``, no gradient."""
        with torch.no_grad():
            approx = self.mask_predictor(q, k, sparse=True)
            # the set matters, not its order (every path is order-free): unsorted top-k is ~30% cheaper on CPU.
            # The predictor asserts N == self.num_tokens, so the count is a constant (traceable, scriptable).
            return approx.topk(keep_count(self.num_tokens, self.keep_rate), dim=-1, sorted=False).indices

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        x = refuse_attn_mask(x, attn_mask, is_causal)
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        impl = self.resolved_impl()
        if self.recon:
            self.approx_attn = self.mask_predictor(q, k, sparse=False)
        if impl == "dense":
            attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
            out = self.attn_drop(attn) @ v
        else:
            idx = self.connectivity(q, k)
            if impl == "sparse":
                out = sparse_attention(q, k, v, idx, self.scale)
            else:
                out = dense_mask_attention(q, k, v, idx, self.scale)
        out = out.transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


def attention_flops(
    num_tokens: int,
    dim: int,
    num_heads: int,
    keep_rate: float = 0.25,
    reduce_c: int = 2,
    reduce_n: int = 6,
    coef_topk: int = 8,
) -> dict[str, int]:
    """FLOPs (1 multiply-add = 2 FLOPs) of one attention layer, batch 1, dense vs what the ``sparse`` path computes.

    * ``attn_dense``: ``q @ k^T`` and ``attn @ v`` over all ``N x N`` pairs, ``4 N^2 C``.
    * ``attn_sparse``: the cls row over ``N`` keys plus ``N-1`` rows over ``k = ceil(keep_rate N)`` kept keys.
    * ``predictor``: channel reductions of q and k, key-token reduction, low-rank logits and the up-projection with the
      ``coef_topk`` nonzero coefficients per row (the sparse predictor; top-k selections and the softmaxes not counted).
    * ``linear``: the qkv and output projections (``8 N C^2``), identical in both.
    * ``mhsa_dense`` / ``mhsa_sparse``: whole attention layer, ``linear + attn (+ predictor)``.
    """
    N, C, H = num_tokens, dim, num_heads
    d = C // H
    c = max(1, d // reduce_c)
    nb = max(1, N // reduce_n)
    kk = keep_count(N, keep_rate)
    attn_dense = 4 * N * N * C
    attn_sparse = 4 * N * C + 4 * (N - 1) * kk * C
    predictor = H * (
        2 * (2 * N * d * c)  # proj_c_q (N-1 rows, counted as N) and proj_c_k
        + 2 * c * N * nb  # k^T @ proj_n
        + 2 * (N - 1) * c * nb  # low-rank logits
        + 2 * (N - 1) * min(coef_topk, nb) * N  # sparse coefficients @ W_up^T
    )
    linear = 8 * N * C * C
    return {
        "keep": kk,
        "attn_dense": attn_dense,
        "attn_sparse": attn_sparse,
        "predictor": predictor,
        "linear": linear,
        "mhsa_dense": linear + attn_dense,
        "mhsa_sparse": linear + attn_sparse + predictor,
    }
