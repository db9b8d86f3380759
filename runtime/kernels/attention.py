"""Self-attention for inference with its projections on CSR: `CsrAttention`.

A `nn.MultiheadAttention` reads its projection weights itself, so its Linear layers cannot be
swapped one by one. `CsrAttention` takes its place whole: the packed input projection
(`[3E, E]`) and the output projection are `CsrLayer`s, and between them the attention is
computed as the module's own inference path does (scores, softmax, weighted values), on
views of the projections' feature-major results. It computes the calls that
self-attention blocks make (`TransformerEncoderLayer`, torchvision's ViT): query, key and
value the same batched tensor, no attention weights returned, no attention mask (a key
padding mask is fine), on the kernel its `Dispatch` names for that many tokens. Any other call,
and a call whose dispatch says `dense`, goes to a dense `MultiheadAttention` rebuilt from the
CSR tensors on first use (and again when they changed), so every call computes what the
original module computes. In training mode it fine-tunes its projections' values (self-attention
calls, with the module's attention dropout).
"""

from __future__ import annotations

from math import prod

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from acdc_recipe.runtime.kernels.csr_layer import CsrLayer, Dispatch, fine_tuning
from acdc_recipe.runtime.kernels.layer import sparse_capable


def attention_eligible(module: nn.Module) -> bool:
    """A plain `MultiheadAttention` with one packed input projection and nothing added to the
    keys and values."""
    return (
        type(module) is nn.MultiheadAttention
        and module._qkv_same_embed_dim
        and module.bias_k is None
        and not module.add_zero_attn
    )


def head_minor_rows(embed_dim: int, num_heads: int) -> Tensor:
    """The order `CsrAttention` keeps the packed input projection's rows in: row `(part, d, h)`
    (part q, k or v; d a head's dimension, h the head) is the module's row `(part, h, d)`.
    Then the heads and the samples of each of q, k, v merge into one batch dimension of views,
    and the attention's two batched products read them without a copy."""
    size = embed_dim // num_heads
    return torch.arange(3 * embed_dim).view(3, num_heads, size).transpose(1, 2).reshape(-1)


def _projection(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    """A Linear holding `weight` and `bias` (built on the meta device: no initialisation of
    weights it replaces at once)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight.detach(), requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach(), requires_grad=False)
    return linear


class CsrAttention(nn.Module):
    """A `MultiheadAttention` for inference whose projections are CSR layers (see the module
    docstring); it keeps the attributes that transformer blocks read from their attention."""

    def __init__(
        self, embed_dim: int, num_heads: int, batch_first: bool, in_proj: CsrLayer,
        out_proj: CsrLayer, dispatch: Dispatch | None = None, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.embed_dim, self.num_heads, self.batch_first = embed_dim, num_heads, batch_first
        self._qkv_same_embed_dim = True
        self.in_proj = in_proj
        self.out_proj = out_proj
        self.dispatch = dispatch or Dispatch.always("bag")
        self.dropout = dropout
        self._dense: list[tuple[tuple[int, ...], nn.MultiheadAttention]] = []  # (key, module)

    @classmethod
    def of(
        cls, attention: nn.MultiheadAttention, nnz: tuple[int, int] | None = None,
        dispatch: Dispatch | None = None,
    ) -> CsrAttention:  # fmt: skip
        """The CSR twin of an eligible attention: its projections' nonzeros, or, with `nnz`
        (input, output projection), zero-filled buffers to load a state dict into."""
        if not attention_eligible(attention):
            raise ValueError(f"{type(attention).__name__} has no CSR form")
        rows = head_minor_rows(attention.embed_dim, attention.num_heads)
        bias = attention.in_proj_bias
        projections = (
            _projection(attention.in_proj_weight[rows], None if bias is None else bias[rows]),
            _projection(attention.out_proj.weight, attention.out_proj.bias),
        )
        counts = nnz if nnz is not None else (None, None)
        in_proj, out_proj = (
            CsrLayer.of(linear, count) for linear, count in zip(projections, counts)
        )
        return cls(
            attention.embed_dim, attention.num_heads, attention.batch_first, in_proj, out_proj,
            dispatch, attention.dropout,
        )  # fmt: skip

    @property
    def in_proj_bias(self) -> Tensor | None:
        """The input projection's bias, rows in `head_minor_rows` order (transformer blocks
        only check that it is set)."""
        return self.in_proj.bias

    @property
    def contiguous(self) -> bool:
        """Whether the output is copied to the layout `MultiheadAttention`'s has."""
        return self.out_proj.contiguous

    @contiguous.setter
    def contiguous(self, value: bool) -> None:
        self.out_proj.contiguous = value

    def dense_attention(self) -> nn.MultiheadAttention:
        """The dense `MultiheadAttention` these tensors compute (cached, not in the state; made
        again when the values changed)."""
        key = tuple(
            (p.weight_values.data_ptr(), p.weight_values._version)
            for p in (self.in_proj, self.out_proj)
        )
        if not self._dense or self._dense[0][0] != key:
            dense = nn.MultiheadAttention(
                self.embed_dim, self.num_heads, dropout=self.dropout,
                bias=self.in_proj.bias is not None, batch_first=self.batch_first,
                dtype=self.in_proj.weight_values.dtype,
            )  # fmt: skip
            rows = head_minor_rows(self.embed_dim, self.num_heads)
            with torch.no_grad():
                dense.in_proj_weight.index_copy_(0, rows, self.in_proj.dense_weight())
                dense.out_proj.weight.copy_(self.out_proj.dense_weight())
                if self.in_proj.bias is not None:
                    dense.in_proj_bias.index_copy_(0, rows, self.in_proj.bias)
                    dense.out_proj.bias.copy_(self.out_proj.bias)
            dense = dense.to(self.in_proj.weight_values.device).eval().requires_grad_(False)
            self._dense[:] = [(key, dense)]
        return self._dense[0][1]

    def dense_copy_bytes(self) -> int:
        """What the dense attention costs, when the dispatch keeps one."""
        if not self.dispatch.needs_dense:
            return 0
        return sum(
            prod(p.weight_shape) * p.weight_values.element_size()
            for p in (self.in_proj, self.out_proj)
        )

    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
        need_weights: bool = True, attn_mask: Tensor | None = None,
        average_attn_weights: bool = True, is_causal: bool = False,
    ) -> tuple[Tensor, Tensor | None]:  # fmt: skip
        sparse = (
            query is key
            and key is value
            and query.dim() == 3
            and not query.is_nested
            and not need_weights
            and attn_mask is None
            and not is_causal
            and sparse_capable(query, self.in_proj.weight_values)
        )
        if fine_tuning(self) and not sparse:
            raise RuntimeError(
                "a CSR self-attention fine-tunes self-attention calls only (query, key and value "
                "the same 3-D CPU tensor, need_weights=False, no attn_mask)"
            )
        tokens = query.shape[0] * query.shape[1] if query.dim() == 3 else 1
        product = "bag" if fine_tuning(self) else self.dispatch.kernel(tokens)
        if not sparse or product == "dense":
            return self.dense_attention()(
                query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                is_causal=is_causal,
            )  # fmt: skip
        return self._self_attention(query, key_padding_mask, product), None

    def _self_attention(self, x: Tensor, key_padding_mask: Tensor | None, product: str) -> Tensor:
        """Feature-major: the input projection's result `[3E, N*L]` (rows `head_minor_rows`)
        holds q, k and v as batches of `[L, head_dim]` views; the weighted values are copied
        once, into the output projection's input."""
        if not self.batch_first:
            x = x.transpose(0, 1)
        batch, length, width = x.shape
        heads, size = self.num_heads, width // self.num_heads
        qkv = self.in_proj.multiply(x.reshape(-1, width).t(), product)  # [3E, N*L]
        q, k, v = (
            qkv.view(3, size, heads, batch, length)
            .permute(0, 2, 3, 4, 1)
            .reshape(3, heads * batch, length, size)
            .unbind(0)
        )
        scores = torch.bmm(q, k.transpose(1, 2)).mul_(size**-0.5)  # [H*N, L, L]
        mask = _padding_mask(key_padding_mask, x.dtype)
        if mask is not None:
            scores = (scores.view(heads, batch, length, -1) + mask).view_as(scores)
        weights = F.dropout(scores.softmax(-1), self.dropout, fine_tuning(self))
        out = torch.bmm(weights, v).view(heads, batch, length, size)
        out = self.out_proj.multiply(
            out.permute(0, 3, 1, 2).reshape(width, batch * length), product
        )
        if self.batch_first:
            rows = out.t().contiguous() if self.contiguous else out.t()  # a 2-D transpose: fast
            return rows.reshape(batch, length, width)
        y = out.t().reshape(batch, length, width).transpose(0, 1)
        return y.contiguous() if self.contiguous else y

    def extra_repr(self) -> str:
        table = ", ".join(f"{c}:{k}" for c, k in zip(self.dispatch.columns, self.dispatch.kernels))
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dispatch=[{table}]"


def _padding_mask(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A key padding mask `[N, S]` (True or -inf: not attended) as an additive mask that
    broadcasts over heads and queries, as `MultiheadAttention` merges it."""
    if mask is None:
        return None
    mask = F._canonical_mask(
        mask=mask, mask_name="key_padding_mask", other_type=None, other_name="attn_mask",
        target_type=dtype,
    )  # fmt: skip
    return mask[None, :, None, :]  # [1, N, 1, S]: over heads and queries
