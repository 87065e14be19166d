"""Causal transformer over a user's recent events (SASRec-style, pre-LayerNorm).

Inputs per position: item (id, plus content: ``models/content.py``), event type, dwell time and the time gap to the
previous event. Heads: next item (item embeddings tied with the input table),
next item's category, and P(return within the horizon) read at the state of
the last event before the cutoff, together with how long ago it was.

Next-item loss (``loss``):
- ``softmax``: full softmax cross-entropy over every item (SASRec+); exact, costs
  positions x items per step, computed in row chunks (``chunked_cross_entropy``) so
  the positions x items logits never exist at once.
- ``sampled``: sampled softmax over the positive and ``num_negatives`` items shared
  by the batch, drawn by popularity, logQ-corrected (scores minus log q), accidental
  hits removed; for large catalogs.
- ``gbce``: generalised binary cross-entropy (Petrov & Macdonald, RecSys 2023) with
  ``num_negatives`` uniform negatives: the positive's log-sigmoid is raised to
  beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha = negatives / (items - 1), which
  undoes the overconfidence negative sampling induces (``gbce_t`` = t).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raymedia.features import NUM_DWELL_BUCKETS, NUM_TIME_BUCKETS
from raymedia.models.content import WithContent
from raymedia.models.sampling import popularity_sampler
from raymedia.schema import NUM_EVENT_CODES


LOGITS_PER_CHUNK = 1 << 22     # logits (float32: 16 MiB) the chunked cross-entropy holds at once


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of ``h @ w.T`` against ``target``, a chunk of rows at a
    time: forward keeps only each row's log-sum-exp, backward recomputes the chunk's
    logits. Memory is chunk x items instead of rows x items, for the same gradient."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, target: torch.Tensor, chunk: int) -> torch.Tensor:
        lse = torch.empty(len(h), dtype=torch.float32, device=h.device)
        total = torch.zeros((), dtype=torch.float64, device=h.device)
        for i in range(0, len(h), chunk):
            logits = (h[i:i + chunk] @ w.T).float()
            lse[i:i + chunk] = torch.logsumexp(logits, 1)
            picked = logits.gather(1, target[i:i + chunk, None]).squeeze(1)
            total += (lse[i:i + chunk] - picked).double().sum()
        ctx.save_for_backward(h, w, target, lse)
        ctx.chunk = chunk
        return (total / max(len(h), 1)).to(h.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        h, w, target, lse = ctx.saved_tensors
        scale = grad / max(len(h), 1)
        gh, gw = torch.empty_like(h), torch.zeros_like(w)
        for i in range(0, len(h), ctx.chunk):
            p = torch.exp((h[i:i + ctx.chunk] @ w.T).float() - lse[i:i + ctx.chunk, None])
            p.scatter_add_(1, target[i:i + ctx.chunk, None], torch.full_like(p[:, :1], -1.0))
            p = (p * scale).to(h.dtype)
            gh[i:i + ctx.chunk] = p @ w
            gw += p.T @ h[i:i + ctx.chunk]
        return gh, gw, None, None


def chunked_cross_entropy(h: torch.Tensor, w: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``F.cross_entropy(h @ w.T, target)`` without the full logits matrix in memory."""
    return _ChunkedCrossEntropy.apply(h, w, target, max(1, LOGITS_PER_CHUNK // max(len(w), 1)))


class Block(nn.Module):
    """Pre-LN causal self-attention block (GPT-2 / nanoGPT layout). Attention runs in
    ``scaled_dot_product_attention`` (no attention-map dropout: on CPU drawing a mask per
    attention weight cost more than the rest of the step); dropout sits on the residuals."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"sequence.dim ({dim}) must be a multiple of sequence.heads ({heads})")
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, L, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, d)))
        return x + self.drop(self.mlp(self.ln2(x)))


class SequenceModel(WithContent, nn.Module):
    def __init__(self, vocab_size: int, num_categories: int, max_len: int, dim: int = 64,
                 layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 return_weight: float = 0.5, category_weight: float = 0.2,
                 loss: str = "softmax", num_negatives: int = 256, gbce_t: float = 0.75,
                 item_category: torch.Tensor | None = None, popularity: torch.Tensor | None = None,
                 content: dict | None = None):
        super().__init__()
        if loss not in ("softmax", "sampled", "gbce"):
            raise ValueError(f"sequence loss must be softmax, sampled or gbce, got {loss!r}")
        self.dim, self.max_len = dim, max_len
        self.loss, self.num_negatives, self.gbce_t = loss, num_negatives, gbce_t
        self.return_weight, self.category_weight = return_weight, category_weight
        self.item_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.init_content(dim, content)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.event_emb = nn.Embedding(NUM_EVENT_CODES, dim, padding_idx=0)
        self.gap_emb = nn.Embedding(NUM_TIME_BUCKETS, dim, padding_idx=0)
        self.dwell_emb = nn.Embedding(NUM_DWELL_BUCKETS, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.category_head = nn.Linear(dim, num_categories)
        self.recency_emb = nn.Embedding(NUM_TIME_BUCKETS, dim)
        self.return_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.register_buffer("item_category",
                             item_category if item_category is not None
                             else torch.zeros(vocab_size, dtype=torch.long))
        pop = popularity if popularity is not None else torch.ones(vocab_size)
        self.register_buffer("sample_prob", popularity_sampler(pop))   # sampled-loss negatives
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)

    def encode(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor,
               dwell: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, d) causal states; position t sees events 0..t only."""
        L = items.shape[1]
        pos = torch.arange(L, device=items.device)
        if dwell is None:
            dwell = (items > 0).long()          # 'no dwell known'
        x = (self.item_rows(items) * math.sqrt(self.dim) + self.pos_emb(pos)
             + self.event_emb(events) + self.gap_emb(gaps) + self.dwell_emb(dwell))
        x = self.dropout(x * (items > 0).unsqueeze(-1))
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    @staticmethod
    def _at(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return h[torch.arange(h.shape[0], device=h.device), pos]

    def item_matrix(self) -> torch.Tensor:
        return self.all_item_rows()

    def return_logit(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        state = self._at(h, batch["ret_pos"])
        x = torch.cat([state, self.recency_emb(batch["ret_recency"])], -1)
        # float64 logits: a user's prediction must not depend on where it sits in its batch
        # (CPU kernels take SIMD or scalar paths by position, which differ in the last bit
        # of float32; in float64 that vanishes when the probability is rounded to float32),
        # so a rebuild and an incremental run give identical predictions
        first, _, last = self.return_head
        y = F.gelu(F.linear(x.double(), first.weight.double(), first.bias.double()))
        return F.linear(y, last.weight.double(), last.bias.double()).squeeze(-1)

    def user_states(self, batch: dict) -> torch.Tensor:
        return self.encode(batch["items"], batch["events"], batch["gaps"], batch.get("dwell"))

    def user_vectors(self, batch: dict, h: torch.Tensor | None = None) -> torch.Tensor:
        h = self.user_states(batch) if h is None else h
        return self._at(h, batch["length"] - 1)

    def item_loss(self, hv: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Next-item loss of states ``hv`` (N, d) whose next items are ``pos`` (N,)."""
        if self.loss == "softmax":
            return chunked_cross_entropy(hv, self.all_item_rows()[1:], pos - 1)
        n_items = self.item_emb.num_embeddings - 1
        rows = self.item_rows
        if self.loss == "sampled":
            neg = torch.multinomial(self.sample_prob, self.num_negatives, replacement=True)
            logq = torch.log(self.sample_prob)
            pos_logit = (hv * rows(pos)).sum(-1) - logq[pos]
            neg_logit = hv @ rows(neg).T - logq[neg]
            neg_logit = neg_logit.masked_fill(pos.unsqueeze(1) == neg.unsqueeze(0), float("-inf"))
            logits = torch.cat([pos_logit.unsqueeze(1), neg_logit], 1)
            return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))
        # gBCE: uniform negatives per position, never the positive
        k = min(self.num_negatives, max(n_items - 1, 1))
        neg = torch.randint(1, max(n_items, 2), (len(pos), k), device=pos.device)
        neg = neg + (neg >= pos.unsqueeze(1)).long()
        neg = neg.clamp(max=n_items)
        alpha = k / max(n_items - 1, 1)
        beta = alpha * (self.gbce_t * (1 - 1 / alpha) + 1 / alpha)
        pos_logit = (hv * rows(pos)).sum(-1)
        neg_logit = torch.einsum("nd,nkd->nk", hv, rows(neg))
        loss = -(beta * F.logsigmoid(pos_logit) + F.logsigmoid(-neg_logit).sum(1))
        return loss.mean()

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Joint training loss: next item + next category + return. The batch's padding
        columns past its longest sequence are cut first (right padding: nothing before
        them attends to them), so short sequences do not pay for the longest possible."""
        n = max(int(batch["length"].max()), 1) if len(batch["length"]) else 1
        batch = {k: v[:, :n] if v.dim() == 2 else v for k, v in batch.items()}
        h = self.user_states(batch)
        targets = batch["targets"]
        valid = targets > 0
        hv = h[valid]
        item_loss = self.item_loss(hv, targets[valid])
        cat_loss = F.cross_entropy(self.category_head(hv), self.item_category[targets[valid]])
        mask = batch["ret_mask"]
        ret = F.binary_cross_entropy_with_logits(self.return_logit(h, batch).float(), batch["ret_label"],
                                                 weight=mask, reduction="sum") / mask.sum().clamp(min=1)
        loss = item_loss + self.category_weight * cat_loss + self.return_weight * ret
        return {"loss": loss, "item_loss": item_loss.detach(), "category_loss": cat_loss.detach(),
                "return_loss": ret.detach()}
