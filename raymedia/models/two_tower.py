"""Two-tower retrieval model (YouTube-DNN style).

User tower: an engagement-weighted mean of the history's item and category
embeddings, concatenated with the embeddings of the ``last_items`` most recent
items (YouTube-DNN's "last watch", Pinterest's recent actions: the mean says what
the user likes, the last items what they are doing now), through an MLP; there is
no per-user id table, so unseen users score. ``last_items=0`` is the order-free
mean alone. Item tower: item id (plus content, ``models/content.py``) + category through an MLP. Both L2-normalised;
trained with sampled softmax (in-batch + popularity-sampled negatives) and logQ
correction so popular items are not over-penalised as negatives.

Embedding tables start at N(0, 1/dim) (unit-norm rows), not torch's N(0, 1): Adam
moves each weight by about the learning rate per step, so rows of norm sqrt(dim)
took hundreds of steps to leave their random start, and on small data sets (few
steps per epoch) training stopped before the model had moved far from it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from raymedia.models.content import WithContent
from raymedia.models.sampling import popularity_sampler
from raymedia.schema import EVENT_WEIGHT, NUM_EVENT_CODES


def _mlp(inp: int, hidden: int, out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class TwoTowerModel(WithContent, nn.Module):
    def __init__(self, vocab_size: int, num_categories: int, max_len: int, dim: int = 64,
                 hidden: int = 128, temperature: float = 0.07, num_negatives: int = 512,
                 positions_per_batch: int = 2048, last_items: int = 0,
                 item_category: torch.Tensor | None = None, popularity: torch.Tensor | None = None,
                 content: dict | None = None):
        # last_items defaults to 0 here (checkpoints written before it existed have no such
        # kwarg and an order-free user tower); the config's default is 1
        super().__init__()
        if last_items < 0:
            raise ValueError(f"two_tower last_items must be >= 0, got {last_items}")
        self.temperature, self.num_negatives = temperature, num_negatives
        self.positions_per_batch, self.last_items = positions_per_batch, last_items
        self.item_emb = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.init_content(dim, content)
        self.cat_emb = nn.Embedding(num_categories, dim)
        with torch.no_grad():
            for table in (self.item_emb, self.cat_emb):
                nn.init.normal_(table.weight, std=dim ** -0.5)
            self.item_emb.weight[0] = 0.0                       # padding
        weights = torch.tensor([EVENT_WEIGHT.get(code, 0.0) for code in range(NUM_EVENT_CODES)])
        self.event_weight = nn.Parameter(weights)
        self.user_tower = _mlp(2 * dim * (1 + last_items), hidden, dim)
        self.item_tower = _mlp(2 * dim, hidden, dim)
        self.register_buffer("item_category",
                             item_category if item_category is not None
                             else torch.zeros(vocab_size, dtype=torch.long))
        pop = popularity if popularity is not None else torch.ones(vocab_size)
        self.register_buffer("sample_prob", popularity_sampler(pop))

    def _features(self, idx: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.item_rows(idx), self.cat_emb(self.item_category[idx])], -1)

    def item_vectors(self, idx: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.item_tower(self._features(idx)), dim=-1)

    def item_matrix(self) -> torch.Tensor:
        return self.item_vectors(torch.arange(self.item_emb.num_embeddings,
                                              device=self.item_emb.weight.device))

    def _pooled(self, items: torch.Tensor, events: torch.Tensor, cumulative: bool) -> torch.Tensor:
        """User vectors of right-padded histories: one per history, or with ``cumulative``
        one per position t, from the prefix 0..t (what training predicts t + 1 from)."""
        w = F.softplus(self.event_weight)[events] * (items > 0)
        x = self._features(items)
        num, den = (w.unsqueeze(-1) * x), w
        if cumulative:
            num, den = num.cumsum(1), den.cumsum(1)
        else:
            num, den = num.sum(1), den.sum(1)
        parts = [num / den.clamp(min=1e-6).unsqueeze(-1)]
        # the k-th most recent item (k = 0 the last one); zeros where the history is shorter
        x = x * (items > 0).unsqueeze(-1)
        if cumulative:          # at position t: the item at t - k
            parts += [F.pad(x, (0, 0, k, 0))[:, : x.shape[1]] for k in range(self.last_items)]
        else:                   # right-padded: the last item sits at length - 1
            last = (items > 0).sum(1) - 1
            rows = torch.arange(len(items), device=items.device)
            parts += [x[rows, (last - k).clamp(min=0)] * (last >= k).unsqueeze(-1)
                      for k in range(self.last_items)]
        return F.normalize(self.user_tower(torch.cat(parts, -1)), dim=-1)

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
