"""One contract, both models (like implicit's shared model tests): each model class is
trained in-process on a tiny synthetic world with a known right answer and must find it.

World: 40 items in 4 clusters of 10; a user stays in one cluster and walks it in order
(item i, then i + 1, wrapping inside the cluster). The next item is therefore fully
determined by the last one (an order-aware model gets it at rank 0), and an order-free
model still knows which cluster the user is in: with the history masked, the three
unseen items of that cluster are the only right candidates.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from raymedia import features, models
from raymedia.config import Config
from raymedia.evaluate import rank_all
from raymedia.metrics import hit_rate
from raymedia.schema import US_PER_DAY as DAY_US

CLUSTERS, PER_CLUSTER, STEPS, USERS = 4, 10, 8, 160
VOCAB = CLUSTERS * PER_CLUSTER + 1


def world(seed: int) -> pa.Table:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(USERS):
        c, start = rng.integers(CLUSTERS), rng.integers(PER_CLUSTER)
        items.append([int(c * PER_CLUSTER + (start + s) % PER_CLUSTER + 1) for s in range(STEPS)])
    ts = [[10 * DAY_US + s * 60_000_000 for s in range(STEPS)] for _ in range(USERS)]
    return pa.table({"user_id": list(range(USERS)), "items": items,
                     "events": [[3] * STEPS for _ in range(USERS)], "ts": ts,
                     "dwell_s": [[30.0] * STEPS for _ in range(USERS)],
                     "n_events": [STEPS] * USERS})


def tensors(table: pa.Table, mode: str) -> dict[str, torch.Tensor]:
    _, x = features.batch_inputs(table, mode, STEPS, 20 * DAY_US, 7 * DAY_US)
    return {k: torch.as_tensor(v) for k, v in x.items()}


class ModelContract:
    """Subclasses set ``kind``; every test here runs for each model."""
    kind: str
    kwargs: dict = {}
    steps = 80

    @pytest.fixture(scope="class")
    def trained(self):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)         # tiny tensors: more threads only contend on a busy machine
        try:
            return self._train()
        finally:
            torch.set_num_threads(threads)

    def _train(self):
        torch.manual_seed(0)
        cfg = Config()
        category = torch.as_tensor(np.r_[0, np.repeat(np.arange(CLUSTERS) + 1, PER_CLUSTER)])
        popularity = torch.ones(VOCAB)
        kwargs = {**models.model_kwargs(self.kind, cfg), "dim": 32, **self.kwargs}
        model = models.build(self.kind, kwargs, VOCAB, CLUSTERS + 1, STEPS, category, popularity)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        batch = tensors(world(0), "train")
        losses = []
        for _ in range(self.steps):
            loss = model(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        return model.eval(), losses

    def ranks(self, model, exclude_seen: bool, k: int = 10) -> dict:
        x = tensors(world(1), "eval")        # fresh users of the same world
        with torch.no_grad():
            users, items = model.user_vectors(x), model.item_matrix()
            return rank_all(lambda a, b: users @ items[a:b].T, VOCAB, x["target"],
                            torch.ones(len(users), 1, dtype=torch.long), k, VOCAB,
                            x["items"] if exclude_seen else None)

    def test_training_lowers_the_loss(self, trained):
        _, losses = trained
        assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:5]), losses[::10]

    def test_finds_the_users_cluster(self, trained):
        r = self.ranks(trained[0], exclude_seen=True)
        # 3 unseen items are left in the user's cluster: the target must be among them
        assert hit_rate(r["rank"].numpy(), 3) > 0.9

    def test_item_matrix_covers_the_vocabulary(self, trained):
        assert trained[0].item_matrix().shape[0] == VOCAB

    def test_a_user_scores_the_same_alone_or_in_a_batch(self, trained):
        x = tensors(world(1), "eval")
        with torch.no_grad():
            together = trained[0].user_vectors(x)[:5]
            alone = torch.cat([trained[0].user_vectors({k: v[i:i + 1] for k, v in x.items()})
                               for i in range(5)])
        torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-5)


class TestTwoTower(ModelContract):
    kind = "two_tower"          # the config's default: the history mean plus the last item

    def test_knows_the_last_item(self, trained):
        r = self.ranks(trained[0], exclude_seen=False)
        assert hit_rate(r["rank"].numpy(), 1) > 0.9

    def test_training_positions_score_like_the_prefix_alone(self, trained):
        """Training pools every prefix at once (position t: events 0..t); each must be the
        user vector that scoring computes from those events alone."""
        model = trained[0]
        x = tensors(world(1), "eval")
        with torch.no_grad():
            every = model._pooled(x["items"], x["events"], cumulative=True)
            for t in (0, 3, STEPS - 2):
                prefix = {k: x[k].clone() for k in ("items", "events")}
                prefix["items"][:, t + 1:] = 0
                prefix["events"][:, t + 1:] = 0
                torch.testing.assert_close(every[:, t], model.user_vectors(prefix), rtol=1e-4, atol=1e-5)


class TestTwoTowerOrderFree(ModelContract):
    kind = "two_tower"
    kwargs = {"last_items": 0}      # the history mean alone

    def test_the_order_of_the_history_does_not_count(self, trained):
        x = tensors(world(1), "eval")
        n = STEPS - 1                                  # eval inputs: every event but the last
        flipped = {k: x[k].clone() for k in ("items", "events")}
        flipped["items"][:, :n] = x["items"][:, :n].flip(1)
        with torch.no_grad():
            torch.testing.assert_close(trained[0].user_vectors(flipped), trained[0].user_vectors(x),
                                       rtol=1e-4, atol=1e-5)


def test_checkpoints_without_last_items_build_the_order_free_two_tower():
    """Models published before ``two_tower.last_items`` existed have no such kwarg."""
    kwargs = models.model_kwargs("two_tower", Config())
    assert kwargs.pop("last_items") == 1
    model = models.build("two_tower", kwargs, VOCAB, CLUSTERS + 1, STEPS,
                         torch.zeros(VOCAB, dtype=torch.long))
    assert model.last_items == 0 and model.user_tower[0].in_features == 2 * kwargs["dim"]


class TestSequence(ModelContract):
    kind = "sequence"

    def test_knows_the_order(self, trained):
        r = self.ranks(trained[0], exclude_seen=False)
        assert hit_rate(r["rank"].numpy(), 1) > 0.9


class TestSequenceSampledSoftmax(TestSequence):
    kwargs = {"loss": "sampled", "num_negatives": 16}
    steps = 250          # 16 negatives a step: a noisier gradient than the full softmax


class TestSequenceGBCE(TestSequence):
    kwargs = {"loss": "gbce", "num_negatives": 16}
    steps = 400          # the calibrated positive term (beta < 1) learns more slowly
