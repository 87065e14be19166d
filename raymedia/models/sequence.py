"""Causal transformer over a user's recent events (SASRec-style, pre-LayerNorm).

Inputs per position: item, event type and the time gap to the previous event.
Heads: next item (full softmax, item embeddings tied with the input table),
next item's category, and P(return within the horizon) read at the state of
the last event before the cutoff, together with how long ago it was.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raymedia.features import NUM_TIME_BUCKETS
from raymedia.schema import NUM_EVENT_CODES


class SequenceModel(nn.Module):
    def __init__(self, vocab_size: int, num_categories: int, max_len: int, dim: int = 64,
                 layers: int = 2, heads: int = 2, dropout: float = 0.2,
                 return_weight: float = 0.5, category_weight: float = 0.2,
                 item_category: torch.Tensor | None = None):
        super().__init__()
        self.dim, self.max_len = dim, max_len
        self.return_weight, self.category_weight = return_weight, category_weight
        self.item_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos_emb = nn.Embedding(max_len, dim)
        self.event_emb = nn.Embedding(NUM_EVENT_CODES, dim, padding_idx=0)
        self.gap_emb = nn.Embedding(NUM_TIME_BUCKETS, dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.category_head = nn.Linear(dim, num_categories)
        self.recency_emb = nn.Embedding(NUM_TIME_BUCKETS, dim)
        self.return_head = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, 1))
        self.register_buffer("item_category",
                             item_category if item_category is not None
                             else torch.zeros(vocab_size, dtype=torch.long))
        self.register_buffer("causal", torch.triu(torch.full((max_len, max_len), float("-inf")), 1),
                             persistent=False)
        nn.init.normal_(self.item_emb.weight, std=dim ** -0.5)

    def encode(self, items: torch.Tensor, events: torch.Tensor, gaps: torch.Tensor) -> torch.Tensor:
        """(B, L, d) causal states; position t sees events 0..t only."""
        L = items.shape[1]
        pos = torch.arange(L, device=items.device)
        x = (self.item_emb(items) * math.sqrt(self.dim) + self.pos_emb(pos)
             + self.event_emb(events) + self.gap_emb(gaps))
        x = x * (items > 0).unsqueeze(-1)
        h = self.encoder(self.dropout(x), mask=self.causal[:L, :L], is_causal=True)
        return self.norm(h)

    @staticmethod
    def _at(h: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return h[torch.arange(h.shape[0], device=h.device), pos]

    def item_matrix(self) -> torch.Tensor:
        return self.item_emb.weight

    def return_logit(self, h: torch.Tensor, batch: dict) -> torch.Tensor:
        state = self._at(h, batch["ret_pos"])
        return self.return_head(torch.cat([state, self.recency_emb(batch["ret_recency"])], -1)).squeeze(-1)

    def user_states(self, batch: dict) -> torch.Tensor:
        return self.encode(batch["items"], batch["events"], batch["gaps"])

    def user_vectors(self, batch: dict, h: torch.Tensor | None = None) -> torch.Tensor:
        h = self.user_states(batch) if h is None else h
        return self._at(h, batch["length"] - 1)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Joint training loss: next item + next category + return."""
        h = self.user_states(batch)
        targets = batch["targets"]
        valid = targets > 0
        hv = h[valid]
        item_loss = F.cross_entropy(hv @ self.item_emb.weight[1:].T, targets[valid] - 1)
        cat_loss = F.cross_entropy(self.category_head(hv), self.item_category[targets[valid]])
        mask = batch["ret_mask"]
        ret = F.binary_cross_entropy_with_logits(self.return_logit(h, batch), batch["ret_label"],
                                                 weight=mask, reduction="sum") / mask.sum().clamp(min=1)
        loss = item_loss + self.category_weight * cat_loss + self.return_weight * ret
        return {"loss": loss, "item_loss": item_loss.detach(), "category_loss": cat_loss.detach(),
                "return_loss": ret.detach()}
