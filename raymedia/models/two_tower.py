"""Two-tower retrieval model (YouTube-DNN style).

User tower: an order-free, engagement-weighted mean of the history's item and
category embeddings through an MLP; there is no per-user id table, so unseen
users score. Item tower: item id + category through an MLP. Both L2-normalised;
trained with sampled softmax (in-batch + popularity-sampled negatives) and
logQ correction so popular items are not over-penalised as negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raymedia.schema import EVENT_TYPES, EVENT_WEIGHT, NUM_EVENT_CODES


def _mlp(inp: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class TwoTowerModel(nn.Module):
    def __init__(self, vocab_size: int, num_categories: int, max_len: int, dim: int = 64,
                 hidden: int = 128, temperature: float = 0.07, num_negatives: int = 512,
                 positions_per_batch: int = 2048, item_category: torch.Tensor | None = None,
                 popularity: torch.Tensor | None = None):
        super().__init__()
        self.temperature, self.num_negatives = temperature, num_negatives
        self.positions_per_batch = positions_per_batch
        self.item_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.cat_emb = nn.Embedding(num_categories, dim)
        weights = torch.tensor([0.0] + [EVENT_WEIGHT[e] for e in EVENT_TYPES])
        assert len(weights) == NUM_EVENT_CODES
        self.event_weight = nn.Parameter(weights)
        self.user_tower = _mlp(2 * dim, hidden, dim)
        self.item_tower = _mlp(2 * dim, hidden, dim)
        self.register_buffer("item_category",
                             item_category if item_category is not None
                             else torch.zeros(vocab_size, dtype=torch.long))
        pop = popularity if popularity is not None else torch.ones(vocab_size)
        self.register_buffer("sample_prob", self.popularity_sampler(pop))

    @staticmethod
    def popularity_sampler(popularity: torch.Tensor) -> torch.Tensor:
        """Negative-sampling distribution: smoothed popularity, never the padding index."""
        q = popularity.double() + 1.0
        q[0] = 0.0
        return (q / q.sum()).float()

    def item_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.item_emb(idx), self.cat_emb(self.item_category[idx])], -1)
        return F.normalize(self.item_tower(x), dim=-1)

    def item_matrix(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.item_emb.num_embeddings,
                                              device=self.item_emb.weight.device))

    def _pooled(self, items: torch.Tensor, events: torch.Tensor, cumulative: bool) -> torch.Tensor:
        w = F.softplus(self.event_weight)[events] * (items > 0)
        x = torch.cat([self.item_emb(items), self.cat_emb(self.item_category[items])], -1)
        num, den = (w.unsqueeze(-1) * x), w
        if cumulative:
            num, den = num.cumsum(1), den.cumsum(1)
        else:
            num, den = num.sum(1), den.sum(1)
        return F.normalize(self.user_tower(num / den.clamp(min=1e-6).unsqueeze(-1)), dim=-1)

    def user_vectors(self, batch: dict) -> torch.Tensor:
        return self._pooled(batch["items"], batch["events"], cumulative=False)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Sampled softmax over in-batch targets + popularity negatives, logQ-corrected."""
        targets = batch["targets"]
        users = self._pooled(batch["items"], batch["events"], cumulative=True)
        valid = torch.nonzero(targets > 0)
        if len(valid) > self.positions_per_batch:
            pick = torch.randperm(len(valid), device=valid.device)[: self.positions_per_batch]
            valid = valid[pick]
        u = users[valid[:, 0], valid[:, 1]]
        pos = targets[valid[:, 0], valid[:, 1]]
        neg = torch.multinomial(self.sample_prob, self.num_negatives, replacement=True)
        cand = torch.cat([pos, neg])
        logits = u @ self.item_vectors(cand).T / self.temperature - torch.log(self.sample_prob[cand])
        # Another row's copy of my target is not a negative (accidental hit).
        hit = pos.unsqueeze(1) == cand.unsqueeze(0)
        hit[torch.arange(len(pos)), torch.arange(len(pos))] = False
        logits = logits.masked_fill(hit, float("-inf"))
        loss = F.cross_entropy(logits, torch.arange(len(pos), device=logits.device))
        return {"loss": loss, "item_loss": loss.detach()}
