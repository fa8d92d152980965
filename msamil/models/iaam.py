"""IAAM (paper §5.3): fuse a bag of multi-scale patch embeddings into one slide embedding.

Instances are sorted by (x, y, scale) first, so the result never depends on the order they arrive in; then
T' = T + FC([x/W, y/H, scale]) + sinusoidal PE (Eq. 2), MHE low-rank attention blocks (Eqs. 3-5) and DMQ query
pooling with sigmoid gates (Eqs. 6-8). `GatedAttentionPool` (Ilse et al. 2018) is the pooling ablation.
Every pooling returns a per-instance attention (N,) in the caller's instance order, for heatmaps.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def instance_order(coords: torch.Tensor, scale_idx: torch.Tensor) -> torch.Tensor:
    """Permutation sorting instances by x, then y, then scale (stable sorts, least significant key first)."""
    order = torch.argsort(scale_idx, stable=True)
    order = order[torch.argsort(coords[order, 1], stable=True)]
    return order[torch.argsort(coords[order, 0], stable=True)]


def sinusoidal(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """The Transformer's fixed sine/cosine encoding of positions 0..n-1 (the E of Eq. 2), shape (n, dim)."""
    pos = torch.arange(n, dtype=torch.float32, device=device).unsqueeze(1)
    half = (dim + 1) // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float32, device=device) * (-math.log(10000.0) / half))
    pe = torch.zeros(n, 2 * half, device=device)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq)
    return pe[:, :dim]


class LowRankAttention(nn.Module):
    """Multi-head self-attention whose queries and keys live in a rank-`rank` space per head (Eqs. 3-4) while
    values keep the full width, so the N x N score cost shrinks without narrowing what is mixed."""

    def __init__(self, dim: int, heads: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim {dim} must be divisible by model.mhe_heads {heads}")
        self.heads, self.rank, self.dropout = heads, rank, dropout
        self.q = nn.Linear(dim, heads * rank)
        self.k = nn.Linear(dim, heads * rank)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        q = self.q(x).view(n, self.heads, self.rank).transpose(0, 1)
        k = self.k(x).view(n, self.heads, self.rank).transpose(0, 1)
        v = self.v(x).view(n, self.heads, dim // self.heads).transpose(0, 1)
        # SDPA scales by 1/sqrt(rank) (the query width) as Eq. 4 asks, and never materialises N x N on CPU.
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(0, 1).reshape(n, dim))


class MHEBlock(nn.Module):
    """Pre-LN residual block: x + LRA(LN(x)), then + MLP(LN(.)). Eq. 5 shows no residual; we add one (as every
    Transformer does) so several blocks stay trainable."""

    def __init__(self, dim: int, heads: int, rank: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = LowRankAttention(dim, heads, rank, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x)))
        return x + self.drop(self.mlp(self.norm2(x)))


class DMQPool(nn.Module):
    """Dynamic multi-instance query (Eqs. 6-8): `n_queries` learned queries cross-attend over the instances
    (multi-head), each refined query Z'_i gets a sigmoid gate g_i, and F_bag = sum_i g_i Z'_i.

    The queries get a residual and LayerNorm (Z' = LN(Z + attn)), an INFERRED detail that keeps Z' well scaled.
    Attention exported per instance = mean over queries and heads of the cross-attention weights.
    """

    def __init__(self, dim: int, heads: int, n_queries: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim {dim} must be divisible by model.mhe_heads {heads}")
        self.heads = heads
        self.queries = nn.Parameter(0.02 * torch.randn(n_queries, dim))
        self.norm_kv = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.gate = nn.Linear(dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, dim = x.shape
        nq, dh = self.queries.shape[0], dim // self.heads
        kv = self.norm_kv(x)
        q = self.q(self.queries).view(nq, self.heads, dh).transpose(0, 1)
        k = self.k(kv).view(n, self.heads, dh).transpose(0, 1)
        v = self.v(kv).view(n, self.heads, dh).transpose(0, 1)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(dh), dim=-1)  # (heads, nq, n): small, explicit
        z = (self.drop(attn) @ v).transpose(0, 1).reshape(nq, dim)
        z = self.norm(self.queries + self.out(z))
        g = torch.sigmoid(self.gate(z))  # (nq, 1), Eq. 7
        return (g * z).sum(dim=0), attn.mean(dim=(0, 1))


class GatedAttentionPool(nn.Module):
    """Ilse et al. gated attention: a_i = softmax_i(w^T (tanh(V h_i) * sigmoid(U h_i))), F_bag = sum a_i h_i."""

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.v = nn.Linear(dim, hidden)
        self.u = nn.Linear(dim, hidden)
        self.w = nn.Linear(hidden, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.w(self.drop(torch.tanh(self.v(x)) * torch.sigmoid(self.u(x)))).squeeze(-1)
        a = torch.softmax(scores, dim=0)
        return (a.unsqueeze(-1) * x).sum(dim=0), a


class IAAM(nn.Module):
    """Bag of embeddings (N, d) + coordinates -> (bag embedding (d,), attention (N,) in input order)."""

    def __init__(self, dim: int, mhe_layers: int, mhe_heads: int, mhe_rank: int, n_queries: int,
                 dropout: float = 0.0, mhe: bool = True, pooling: str = "dmq") -> None:
        super().__init__()
        self.coord_fc = nn.Linear(3, dim)
        self.blocks = nn.ModuleList(
            [MHEBlock(dim, mhe_heads, mhe_rank, dropout) for _ in range(mhe_layers if mhe else 0)])
        self.norm = nn.LayerNorm(dim)
        if pooling == "dmq":
            self.pool: nn.Module = DMQPool(dim, mhe_heads, n_queries, dropout)
        elif pooling == "gated":
            self.pool = GatedAttentionPool(dim, dim // 2 or 1, dropout)
        else:
            raise ValueError(f"pooling must be 'dmq' or 'gated', got {pooling!r}")

    def forward(self, emb: torch.Tensor, coords: torch.Tensor, scale_idx: torch.Tensor,
                extent: tuple[float, float]) -> tuple[torch.Tensor, torch.Tensor]:
        order = instance_order(coords, scale_idx)
        width, height = float(extent[0]), float(extent[1])
        c = coords[order].to(torch.float32)  # fp32 even under autocast: x/W needs the precision
        feats = torch.stack([c[:, 0] / width, c[:, 1] / height, scale_idx[order].to(torch.float32)], dim=1)
        x = emb[order] + self.coord_fc(feats) + sinusoidal(len(order), emb.shape[1], emb.device)
        for block in self.blocks:
            x = block(x)
        bag, attn_sorted = self.pool(self.norm(x))
        attn = torch.empty_like(attn_sorted)
        attn[order] = attn_sorted
        return bag, attn
