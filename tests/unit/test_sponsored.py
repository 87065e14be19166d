"""Sponsored slots (``raymedia/sponsored.py``): caps hold across a run whatever its batching
and order, targeting and masks decide who may be offered a campaign, the items land at
their slots, and bad campaigns or slots are config errors naming what is wrong."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from raymedia import config, ranking, rules, sponsored
from raymedia.config import ConfigError
from raymedia.data.vocab import Vocab
from raymedia.rules import ItemFacts, ListRules
from raymedia.sponsored import Campaigns, Sponsorship, Thresholds

ITEMS, CATS, D = 200, 6, 8


def _vocab() -> Vocab:
    cats = np.random.default_rng(0).integers(1, CATS + 1, ITEMS)
    return Vocab(pa.array(np.arange(1000, 1000 + ITEMS)), np.concatenate([[0], cats]),
                 [f"c{i}" for i in range(1, CATS + 1)], np.ones(ITEMS + 1))


def _table(rows: list[dict]) -> pa.Table:
    return pa.table({"campaign_id": [r["id"] for r in rows], "item_id": [r["item"] for r in rows],
                     "bid": [float(r.get("bid", 1.0)) for r in rows], "cap": [r.get("cap", 10) for r in rows],
                     "categories": pa.array([r.get("cats") for r in rows], pa.list_(pa.string()))})


def _campaigns(n: int = 8, seed: int = 0) -> Campaigns:
    rng = np.random.default_rng(seed)
    rows = [{"id": f"k{c}", "item": 1000 + int(rng.integers(0, ITEMS)), "bid": float(rng.uniform(0.5, 3)),
             "cap": int(rng.integers(0, 40)), "cats": None if c % 3 == 0 else [f"c{1 + c % CATS}"]}
            for c in range(n)]
    return Campaigns.build(_table(rows), _vocab())


def _world(seed: int = 0, users: int = 300):
    """Random user vectors, histories (some seen items), a few blocked items."""
    rng = np.random.default_rng(seed)
    u = torch.as_tensor(rng.normal(size=(users, D)), dtype=torch.float32)
    items = torch.as_tensor(rng.normal(size=(ITEMS + 1, D)), dtype=torch.float32)
    history = torch.as_tensor(rng.integers(0, ITEMS + 1, (users, 6)))
    blocked = torch.zeros(ITEMS + 1, dtype=torch.bool)
    blocked[rng.integers(1, ITEMS + 1, 10)] = True
    return u, items, history, blocked


def _values(camp: Campaigns, u, items, history, blocked, rows=slice(None)) -> sponsored.Values:
    return sponsored.expected_values(camp, torch.as_tensor(_vocab().item_category), ranking.DotScores(u[rows], items),
                                     history[rows], history[rows], blocked, 64)


def _keys(n: int) -> np.ndarray:
    return np.random.default_rng(5).integers(0, 2 ** 63, n).astype(np.uint64)


def _allocate(camp: Campaigns, values: sponsored.Values, keys: np.ndarray, slots: int, order, sizes) -> tuple:
    """Pass 1 and 2 over users in ``order``, batches of ``sizes``: (thresholds, chosen per user)."""
    sp = Sponsorship(np.arange(slots, dtype=np.int64), camp)
    best, batches, start = Thresholds(camp.caps), [], 0
    for size in sizes:
        rows = order[start:start + size]
        batches.append(rows)
        v = sponsored.Values(values.ev[rows], values.p[rows], values.score[rows])
        best.add(sponsored.candidates(v, keys[rows], camp.caps))
        start += size
    ev, key = best.result()
    sp = Sponsorship(sp.slots, camp, ev, key)
    chosen = np.full((len(keys), slots), -1)
    for rows in batches:
        v = sponsored.Values(values.ev[rows], values.p[rows], values.score[rows])
        chosen[rows] = sponsored.choose(sp, v, keys[rows]).campaign
    return (ev, key), chosen


def _sizes(rng, n: int) -> list[int]:
    out = []
    while sum(out) < n:
        out.append(int(rng.integers(1, 60)))
    return out


@pytest.mark.parametrize("slots", [1, 2, 8])
def test_caps_hold_and_the_allocation_does_not_depend_on_batching_or_order(slots):
    camp = _campaigns()
    u, items, history, blocked = _world()
    values, keys = _values(camp, u, items, history, blocked), _keys(len(u))
    n, rng = len(u), np.random.default_rng(1)
    first, chosen = _allocate(camp, values, keys, slots, np.arange(n), [n])
    for _ in range(4):                     # shuffled users, other batch sizes: the same allocation
        again, chosen2 = _allocate(camp, values, keys, slots, rng.permutation(n), _sizes(rng, n))
        assert all(np.array_equal(a, b) for a, b in zip(first, again))
        assert np.array_equal(chosen, chosen2)
    counts = np.bincount(chosen[chosen >= 0], minlength=len(camp))
    targeted = np.isfinite(values.ev).sum(0)
    assert (counts <= camp.caps).all()
    if slots >= len(camp):                 # nobody runs out of slots: each campaign fills up to its cap
        assert np.array_equal(counts, np.minimum(camp.caps, targeted))
    assert (counts[camp.caps == 0] == 0).all()
    for b in range(n):                     # best EV first, one campaign per item
        got = chosen[b][chosen[b] >= 0]
        assert list(got) == sorted(got, key=lambda c: (-values.ev[b, c], c))
        assert len(set(camp.items[got])) == len(got)


def test_a_cap_that_runs_out_goes_to_the_best_users_of_the_run_not_the_first_seen():
    camp = _campaigns()
    u, items, history, blocked = _world()
    values, keys = _values(camp, u, items, history, blocked), _keys(len(u))
    _, chosen = _allocate(camp, values, keys, len(camp), np.arange(len(u)), [7] * 43)
    for c in np.flatnonzero(np.isfinite(values.ev).sum(0) > camp.caps):
        got = set(np.flatnonzero((chosen == c).any(1)).tolist())
        targeted = np.flatnonzero(np.isfinite(values.ev[:, c]))
        best = sorted(targeted.tolist(), key=lambda b: (-values.ev[b, c], keys[b]))[:camp.caps[c]]
        assert got == set(best)


def test_targeting_masks_and_p_click_are_the_softmax_over_the_items_a_user_may_see():
    camp = _campaigns()
    u, items, history, blocked = _world()
    v = _values(camp, u, items, history, blocked)
    cat = _vocab().item_category
    scores = (u.double() @ items.double().T).numpy()
    for b in range(len(u)):
        h = history[b].numpy()
        mine = set(cat[h[h > 0]].tolist())
        allowed = ~blocked.numpy()
        allowed[0] = False
        allowed[h[h > 0]] = False
        lse = np.log(np.exp(scores[b][allowed]).sum())
        for c in range(len(camp)):
            item = camp.items[c]
            targets = camp.everyone[c] or bool(mine & set(np.flatnonzero(camp.targets[c]).tolist()))
            if targets and allowed[item]:
                assert v.ev[b, c] == camp.bids[c] * float(v.p[b, c])
                assert v.p[b, c] == pytest.approx(np.exp(scores[b, item] - lse), rel=1e-5)
            else:                          # seen, blocked or not targeted: never offered
                assert v.ev[b, c] == -np.inf and v.p[b, c] == 0
    assert np.isfinite(v.ev).any() and (~np.isfinite(v.ev)).any()


def test_a_users_values_are_the_same_bits_in_any_batch():
    camp = _campaigns()
    u, items, history, blocked = _world()
    whole = _values(camp, u, items, history, blocked)
    for rows in (slice(0, 1), slice(5, 6), slice(17, 80), slice(100, 300)):
        part = _values(camp, u, items, history, blocked, rows)
        assert np.array_equal(part.ev, whole.ev[rows]) and np.array_equal(part.p, whole.p[rows])


def test_per_user_eligibility_masks_campaigns_and_the_softmax_by_each_users_group():
    """With eligibility (``ranking.GroupBlocked``) a campaign is never offered to a user whose
    group may not see its item, and p_click is the softmax over that user's own items."""
    camp = _campaigns()
    u, items, history, blocked = _world()
    rng = np.random.default_rng(3)
    masks = torch.as_tensor(rng.random((3, ITEMS + 1)) < 0.3) | blocked
    masks[1, torch.as_tensor(camp.items)] = True                      # group 1 sees no campaign
    group = torch.as_tensor(rng.integers(0, 3, len(u)))
    v = _values(camp, u, items, history, ranking.GroupBlocked(masks, group))
    for g in range(3):                                                # each group: its own mask for all
        rows = torch.nonzero(group == g)[:, 0]
        alone = _values(camp, u[rows], items, history[rows], masks[g])
        assert np.array_equal(v.ev[rows.numpy()], alone.ev) and np.array_equal(v.p[rows.numpy()], alone.p)
    assert not np.isfinite(v.ev[(group == 1).numpy()]).any() and np.isfinite(v.ev).any()
    half = slice(0, len(u) // 2)                                      # and in any batch
    part = _values(camp, u, items, history, ranking.GroupBlocked(masks, group[half]), half)
    assert np.array_equal(part.ev, v.ev[half])


# ---------------------------------------------------------------------------------------
# placement in the list

def _catalog() -> pa.Table:
    return pa.table({"item_id": pa.array(np.arange(1000, 1000 + ITEMS)),
                     "category": [f"c{1 + i % CATS}" for i in range(ITEMS)],
                     "published_at": pa.array([None] * ITEMS, pa.timestamp("us", tz="UTC")),
                     "available": [True] * ITEMS})


def _lists(r: ListRules, placed: rules.Sponsored, n: int = 4, cands: int = 30):
    facts = ItemFacts.build(r, _catalog(), _vocab().item_ids, 0)
    idx = np.tile(np.arange(1, cands + 1), (n, 1))
    scores = np.tile(np.linspace(1, 0, cands, dtype=np.float32), (n, 1))
    pins = np.zeros((n, len(facts.pins)), np.float32)
    out = rules.rerank(r, facts, idx, scores, np.zeros((n, 1), np.int64), np.arange(n, dtype=np.uint64), pins, placed)
    names, ends = out.reason_names().to_pylist(), np.cumsum(out.lengths)
    flat = list(zip(out.idx.tolist(), out.scores.tolist(), names))
    return [flat[e - k:e] for e, k in zip(ends, out.lengths)]


def test_sponsored_items_take_their_slots_once_and_the_model_fills_unused_slots():
    r = ListRules.from_config(config.load(None, ["score.top_k=10", "rules.pins=1005@1"]))
    placed = rules.Sponsored(np.array([2, 6]), np.array([[150, 160], [3, 0], [0, 0], [160, 150]]),
                             np.array([[0.5, 0.25], [0.75, 0], [0, 0], [0.25, 0.5]], np.float32))
    a, b, c, d = _lists(r, placed)
    assert [x[2] for x in a] == ["pinned", "model", "sponsored", "model", "model", "model", "sponsored",
                                 "model", "model", "model"]
    assert (a[2][0], a[2][1], a[6][0], a[6][1]) == (150, 0.5, 160, 0.25)   # the model score
    assert b[2] == (3, 0.75, "sponsored") and [x[0] for x in b].count(3) == 1     # not also organic
    assert [x[2] for x in c].count("sponsored") == 0 and len(c) == 10          # no hole
    assert [x[0] for x in d if x[2] == "model"] == [x[0] for x in a if x[2] == "model"]
    assert all(len(x) == 10 for x in (a, b, c, d))


# ---------------------------------------------------------------------------------------
# bad campaigns and slots

@pytest.mark.parametrize("rows,message", [
    ([{"id": "a", "item": 1000, "bid": 0}], "campaign 'a' has bid 0.0"),
    ([{"id": "a", "item": 1000, "bid": float("nan")}], "column 'bid' must be > 0"),
    ([{"id": "a", "item": 1000, "cap": -1}], "campaign 'a' has cap -1"),
    ([{"id": "a", "item": 1000}, {"id": "a", "item": 1001}], "column 'campaign_id' repeats ['a']"),
])
def test_bad_campaigns_are_config_errors_naming_file_column_and_value(tmp_path, rows, message):
    path = str(tmp_path / "campaigns.parquet")
    pq.write_table(_table(rows), path)
    with pytest.raises(ConfigError, match=f"{tmp_path}.*") as e:
        sponsored.read_campaigns(path)
    assert message in str(e.value)


def test_missing_columns_nulls_types_and_files_are_config_errors(tmp_path):
    path = str(tmp_path / "c.parquet")
    for table, message in (
            (_table([{"id": "a", "item": 1}]).drop_columns(["cap"]), "need the column(s) ['cap']"),
            (_table([{"id": "a", "item": 1}]).set_column(3, "cap", pa.array([None], pa.int64())),
             "column 'cap' has 1 null"),
            (_table([{"id": "a", "item": 1}]).set_column(3, "cap", pa.array([1.5])), "column 'cap' must be integers"),
            (_table([{"id": "a", "item": 1}]).set_column(4, "categories", pa.array(["c1"])),
             "column 'categories' must be a list of strings")):
        pq.write_table(table, path)
        with pytest.raises(ConfigError, match="c.parquet") as e:
            sponsored.read_campaigns(path)
        assert message in str(e.value)
    with pytest.raises(ConfigError, match="does not exist"):
        sponsored.read_campaigns(str(tmp_path / "none.parquet"))


def test_unknown_items_are_skipped_with_a_warning_and_pinned_items_refused(tmp_path, caplog):
    path = str(tmp_path / "c.parquet")
    pq.write_table(_table([{"id": "a", "item": 1003}, {"id": "b", "item": 9999}, {"id": "c", "item": 1004}]), path)
    table = sponsored.read_campaigns(path)
    with caplog.at_level(logging.WARNING):
        camp = Campaigns.build(table, _vocab())
    assert camp.ids == ("a", "c") and list(camp.items) == [4, 5] and "['b']" in caplog.text
    with pytest.raises(ConfigError, match=r"\['1004'\] are also rules.pins"):
        Campaigns.build(table, _vocab(), pins=("1004",))


@pytest.mark.parametrize("sets,message", [
    (["sponsored.slots=3"], "set together"),
    (["sponsored.campaigns_uri=/x.parquet"], "set together"),
    (["sponsored.campaigns_uri=/x.parquet", "sponsored.slots=11"], "'11' is not a position in 1..score.top_k (10)"),
    (["sponsored.campaigns_uri=/x.parquet", "sponsored.slots=2,2"], "each position at most once"),
    (["sponsored.campaigns_uri=/x.parquet", "sponsored.slots=2,5", "rules.pins=7@5"], "position(s) [5] are also"),
])
def test_bad_slots_are_config_errors(sets, message):
    with pytest.raises(ConfigError) as e:
        config.load(None, ["score.top_k=10", *sets])
    assert message in str(e.value)


def test_the_report_counts_fill_spend_and_expected_clicks():
    camp = Campaigns.build(_table([{"id": "a", "item": 1000, "bid": 2.0, "cap": 4},
                                   {"id": "b", "item": 1001, "bid": 0.5, "cap": 0}]), _vocab())
    rep = sponsored.report(Sponsorship(np.array([2]), camp), {0: [3, 750_000_000]})
    assert rep["per_campaign"]["a"] == {"lists": 3, "cap": 4, "fill_rate": 0.75, "spend": 6.0,
                                        "expected_clicks": 0.75}
    assert rep["per_campaign"]["b"]["fill_rate"] is None and rep["per_campaign"]["b"]["lists"] == 0
    assert (rep["lists"], rep["fill_rate"], rep["spend"], rep["slots"]) == (3, 0.75, 6.0, [3])
