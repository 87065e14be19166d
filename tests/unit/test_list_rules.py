"""List rules (``raymedia/rules.py``): every rule holds exactly on every list of randomised
worlds, the adversarial cases behave as documented, and a user's list does not depend on
the batch it is re-ranked in."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from raymedia import config, rules
from raymedia.config import ConfigError
from raymedia.rules import ItemFacts, ListRules

ITEMS, CATS, K = 400, 8, 10
ASOF_US = 1_768_867_200_000_000          # 2026-01-20 00:00 UTC
DAY_US = rules.US_PER_DAY


def _catalog(seed: int = 0) -> pa.Table:
    """Items in 8 categories (some without), subcategories and series inside a category,
    episodes, publish times over 30 days (some unknown), tags, titles with near-duplicates."""
    rng = np.random.default_rng(seed)
    cat = rng.integers(0, CATS, ITEMS)
    series = np.where(rng.random(ITEMS) < 0.4, cat * 10 + rng.integers(0, 4, ITEMS), -1)
    episode = np.zeros(ITEMS, np.int64)
    for s in np.unique(series[series >= 0]):
        members = np.flatnonzero(series == s)
        episode[members] = rng.permutation(len(members)) + 1
    titles = [f"story {i % 150}" if i % 7 else f"Story  {i % 150}!" for i in range(ITEMS)]
    return pa.table({
        "item_id": pa.array(np.arange(1000, 1000 + ITEMS)),
        "title": titles,
        "category": [None if i % 37 == 0 else f"c{c}" for i, c in enumerate(cat)],
        "published_at": pa.array([None if i % 29 == 0 else ASOF_US - int(rng.integers(0, 30 * DAY_US))
                                  for i in range(ITEMS)], pa.timestamp("us", tz="UTC")),
        "available": [True] * ITEMS,
        "tags": [["t%d" % (i % 5), "x"] if i % 4 else [] for i in range(ITEMS)],
        "subcategory": [f"c{c}/{i % 3}" if i % 5 else None for i, c in enumerate(cat)],
        "series_id": [f"s{s}" if s >= 0 else None for s in series],
        "episode": pa.array([e if e else None for e in episode.tolist()], pa.int32()),
    })


VOCAB_IDS = pa.array(np.random.default_rng(9).permutation(np.arange(1000, 1000 + ITEMS)))   # index i+1


def _rules(*overrides: str, top_k: int = K) -> ListRules:
    return ListRules.from_config(config.load(None, [f"score.top_k={top_k}", *overrides]))


def _facts(r: ListRules, seed: int = 0, asof_us: int = ASOF_US) -> ItemFacts:
    return ItemFacts.build(r, _catalog(seed), VOCAB_IDS, asof_us)


def _users(seed: int, n: int = 300, cands: int = 40) -> dict:
    """Candidates as ranking.topk gives them (score desc, index asc, -inf tails for short
    lists), histories, stable user keys and pin scores."""
    rng = np.random.default_rng(seed)
    idx = np.stack([rng.choice(np.arange(1, ITEMS + 1), cands, replace=False) for _ in range(n)])
    scores = rng.normal(size=(n, cands)).round(1).astype(np.float32)      # rounded: many ties
    order = np.lexsort((idx, -scores.astype(np.float64)), axis=1)
    idx, scores = np.take_along_axis(idx, order, 1), np.take_along_axis(scores, order, 1)
    short = rng.random(n) < 0.1
    scores[short, rng.integers(1, cands):] = -np.inf
    history = rng.integers(0, ITEMS + 1, (n, 12))
    return {"idx": idx, "scores": scores, "history": history,
            "keys": rng.integers(0, 2 ** 63, n).astype(np.uint64), "pins": rng.normal(size=(n, 3))}


def _run(r: ListRules, facts: ItemFacts, u: dict, rows=slice(None)) -> list[list[tuple]]:
    pins = u["pins"][rows, :len(facts.pins)].astype(np.float32)
    pins[np.abs(pins) > 1.5] = -np.inf                                    # pins some users may not see
    out = rules.rerank(r, facts, u["idx"][rows], u["scores"][rows], u["history"][rows], u["keys"][rows], pins)
    names = out.reason_names().to_pylist()
    ends = np.cumsum(out.lengths)
    flat = list(zip(out.idx.tolist(), out.scores.tolist(), out.model_scores.tolist(), names))
    return [flat[e - n:e] for e, n in zip(ends, out.lengths)]


def _candidates(facts: ItemFacts, u: dict, b: int) -> list[int]:
    ok = np.isfinite(u["scores"][b]) & facts.allowed[u["idx"][b]]
    return u["idx"][b][ok].tolist()


WORLD = ["rules.max_per_category=2", "rules.max_per_subcategory=1", "rules.collapse_series=best",
         "rules.dedup_key=title", "rules.min_categories=6", "rules.fresh_boost=0.5",
         "rules.fresh_half_life_days=3", "rules.max_age_days=25", "rules.exclude_tags=t1",
         "rules.exclude_items=1003,1004", f"rules.pins={VOCAB_IDS[5]}@1,{VOCAB_IDS[77]}@4",
         "rules.explore_share=0.2"]


@pytest.mark.parametrize("seed", range(3))
def test_every_rule_holds_on_every_list_of_random_worlds(seed):
    r = _rules(*WORLD)
    facts, u = _facts(r, seed), _users(seed)
    lists = _run(r, facts, u)
    pins = dict(zip(facts.pins.tolist(), facts.pin_positions.tolist()))
    short = 0
    for b, lst in enumerate(lists):
        items = [i for i, *_ in lst]
        reasons = [x[3] for x in lst]
        cands = set(_candidates(facts, u, b))
        assert len(items) == len(set(items)) <= K
        assert all(i in cands or reasons[p] == "pinned" for p, i in enumerate(items))
        assert all(facts.allowed[i] for i in items)                  # exclude lists, max age
        # pins: exactly those the user may see, at their positions
        shown = [p for j, p in enumerate(pins) if np.isfinite(u["pins"][b, j]) and abs(u["pins"][b, j]) <= 1.5
                 and facts.allowed[p]]
        assert sorted(i for i, x in zip(items, reasons) if x == "pinned") == sorted(shown)
        assert all(items[pins[p]] == p for p in shown if pins[p] < len(items))
        # collapses: one item per series and per near-duplicate title
        for codes in (facts.series, facts.dedup):
            c = codes[items]
            assert len(c[c > 0]) == len(set(c[c > 0].tolist()))
        # caps
        for codes, cap in ((facts.category, 2), (facts.subcategory, 1)):
            c = codes[items]
            assert max(np.bincount(c[c > 0], minlength=1), default=0) <= cap
        # model-placed items in boosted-score order, scores the boosted model scores
        placed = [x for x in lst if x[3] in ("model", "fresh")]
        assert [x[1] for x in placed] == sorted((x[1] for x in placed), reverse=True)
        raw = np.array([x[2] for x in placed], np.float32)
        boost = facts.fresh[[x[0] for x in placed]]
        np.testing.assert_array_equal(np.array([x[1] for x in placed], np.float32), rules.boosted(r, boost, raw))
        # exploration: outside the user's history categories, after the model's items
        usual = set(facts.category[u["history"][b]].tolist())
        explored = [i for i, x in zip(items, reasons) if x == "explore"]
        assert all(facts.category[i] not in usual and facts.category[i] > 0 for i in explored)
        assert len(explored) <= r.explore_slots
        tail = [x for x in reasons if x != "pinned"]
        assert tail == sorted(tail, key=lambda x: x == "explore")
        short += len(items) < K
    assert short < len(lists) / 2            # the rules still fill most lists from 40 candidates


def test_min_categories_holds_as_far_as_the_candidates_allow():
    r = _rules("rules.min_categories=7", "rules.collapse_series=best", "rules.max_per_category=4")
    facts, u = _facts(r), _users(5, cands=25)
    met = 0
    for b, lst in enumerate(_run(r, facts, u)):
        cats = set(facts.category[[i for i, *_ in lst]].tolist()) - {0}
        # the categories the candidates offer once the series are collapsed
        cands, seen_series = [], set()
        for i in sorted(_candidates(facts, u, b), key=lambda i: (-u["scores"][b][u["idx"][b] == i][0], i)):
            s = facts.series[i]
            if s == 0 or s not in seen_series:
                cands.append(i)
                seen_series.add(s)
        offered = set(facts.category[cands].tolist()) - {0}
        assert len(cats) >= min(7, len(offered))
        met += len(cats) >= 7
    assert met > len(u["idx"]) / 2


def test_freshness_reorders_by_boosted_score_and_marks_the_items_it_lifted():
    r = _rules("rules.fresh_boost=2", "rules.fresh_half_life_days=1", "rules.fresh_mode=add")
    facts, u = _facts(r), _users(1)
    lifted = 0
    for b, lst in enumerate(_run(r, facts, u)):
        cands = _candidates(facts, u, b)
        model = {i: float(s) for i, s in zip(u["idx"][b], u["scores"][b])}
        eff = {i: float(np.float32(model[i] + facts.fresh[i])) for i in cands}
        assert [i for i, *_ in lst] == sorted(cands, key=lambda i: (-eff[i], i))[:K]
        for i, score, raw, reason in lst:
            passed = any((model[j], -j) > (model[i], -i) and (eff[j], -j) < (eff[i], -i) for j in cands)
            assert (reason == "fresh") == passed and raw == np.float32(model[i])
            lifted += passed
    assert lifted > 100
    # a multiplicative boost raises negative scores too
    assert rules.boosted(_rules("rules.fresh_boost=1", "rules.fresh_half_life_days=1"), np.array([1.0, 1.0]),
                         np.array([-2.0, 2.0])).tolist() == [-1.0, 4.0]


def test_next_episode_takes_its_series_place():
    r = _rules("rules.collapse_series=next")
    facts = _facts(r)
    s = int(np.bincount(facts.series[facts.series > 0]).argmax())        # the longest series
    eps = sorted(np.flatnonzero(facts.series == s).tolist(), key=lambda i: facts.episode[i])
    assert len(eps) >= 4
    other = [i for i in range(1, ITEMS + 1) if facts.series[i] == 0][:5]
    idx = np.array([[eps[3], *other, eps[1], eps[2]]] * 3)
    scores = np.array([[9, 8, 7, 6, 5, 4, 3, 2]] * 3, np.float32)
    history = np.array([[eps[0], 0], [eps[2], eps[0]], [eps[3], 0]])
    out = rules.rerank(r, facts, idx, scores, history, np.arange(3, dtype=np.uint64))
    lists = np.split(out.idx, np.cumsum(out.lengths)[:-1])
    assert lists[0].tolist() == [eps[1], *other]       # watched episode 1: episode 2, in episode 4's place
    assert lists[1].tolist() == [eps[3], *other]       # watched 3: the next candidate is 4
    assert lists[2].tolist() == [eps[3], *other]       # none after the last watched: the best-scored
    assert out.scores[0] == 9 and out.model_scores[0] == 3       # the place's score, its own model score
    r = _rules("rules.collapse_series=best")
    out = rules.rerank(r, facts, idx[:1], scores[:1], history[:1], np.arange(1, dtype=np.uint64))
    assert out.idx.tolist() == [eps[3], *other]


def test_a_user_whose_candidates_are_all_one_series_gets_one_item():
    r = _rules("rules.collapse_series=best")
    facts = _facts(r)
    s = int(np.bincount(facts.series[facts.series > 0]).argmax())
    eps = np.flatnonzero(facts.series == s)
    out = rules.rerank(r, facts, eps[None, :], np.linspace(1, 0, len(eps))[None, :].astype(np.float32),
                       np.zeros((1, 1), np.int64), np.zeros(1, np.uint64))
    assert out.idx.tolist() == [eps[0]] and out.lengths.tolist() == [1]


def test_caps_the_candidates_cannot_meet_make_the_list_shorter():
    r = _rules("rules.max_per_category=3", "rules.min_categories=4")
    facts = _facts(r)
    one = np.flatnonzero(facts.category == 1)[:30]                     # every candidate in one category
    out = rules.rerank(r, facts, one[None, :], np.zeros((1, len(one)), np.float32),
                       np.zeros((1, 1), np.int64), np.zeros(1, np.uint64))
    assert out.idx.tolist() == sorted(one.tolist())[:3]                # ties to the lower index


def test_pins_fill_their_places_and_move_up_when_the_list_is_short():
    ids = [VOCAB_IDS[i - 1].as_py() for i in (5, 6, 7)]
    r = _rules(f"rules.pins={ids[0]}@1,{ids[1]}@3,{ids[2]}@9")
    facts = _facts(r)
    assert facts.pins.tolist() == [5, 6, 7] and facts.pin_positions.tolist() == [0, 2, 8]
    idx = np.array([[20, 21, 22, 23, 5], [20, 21, 0, 0, 0]])
    scores = np.array([[5, 4, 3, 2, 1], [5, 4, -np.inf, -np.inf, -np.inf]], np.float32)
    out = rules.rerank(r, facts, idx, scores, np.zeros((2, 1), np.int64), np.zeros(2, np.uint64),
                       np.array([[0.5, 0.25, 0.125], [0.5, -np.inf, 0.125]], np.float32))
    lists = np.split(out.idx, np.cumsum(out.lengths)[:-1])
    assert lists[0].tolist() == [5, 20, 6, 21, 22, 23, 7]    # a pin is not repeated; the last moves up
    assert lists[1].tolist() == [5, 20, 21, 7]               # a pin the user may not see is left out
    assert out.reason_names().to_pylist()[:3] == ["pinned", "model", "pinned"]
    assert out.model_scores[:3].tolist() == [0.5, 5, 0.25]
    # every place pinned: the list is the pins
    r = _rules(f"rules.pins={ids[0]}@1,{ids[1]}@2", top_k=2)
    out = rules.rerank(r, _facts(r), idx[:1], scores[:1], np.zeros((1, 1), np.int64), np.zeros(1, np.uint64),
                       np.array([[1, 1]], np.float32))
    assert out.idx.tolist() == [5, 6]


def test_more_pins_than_places_and_bad_rules_are_config_errors():
    with pytest.raises(ConfigError, match=r"position\(s\) \[3\] outside 1..score.top_k \(2\)"):
        _rules("rules.pins=a@1,b@2,c@3", top_k=2)
    with pytest.raises(ConfigError, match="each position and each item at most once"):
        _rules("rules.pins=a@1,b@1")
    with pytest.raises(ConfigError, match="must look like item_id@position"):
        _rules("rules.pins=a:1")
    with pytest.raises(ConfigError, match="set together"):
        _rules("rules.fresh_boost=1")
    with pytest.raises(ConfigError, match="can never hold"):
        _rules("rules.min_categories=11")
    with pytest.raises(ConfigError, match="rules.candidates \\(5\\) must be >= score.top_k"):
        _rules("rules.candidates=5")
    with pytest.raises(ConfigError, match="rules.collapse_series must be one of"):
        _rules("rules.collapse_series=first")


def test_include_lists_keep_only_matching_items_and_exclusions_win():
    r = _rules("rules.include_categories=c1,c2", "rules.include_tags=t3", "rules.exclude_items=1010")
    facts, cat = _facts(r), _catalog()
    at = {v: i + 1 for i, v in enumerate(VOCAB_IDS.to_pylist())}
    for row in cat.to_pylist():
        want = (row["category"] in ("c1", "c2") or "t3" in row["tags"]) and row["item_id"] != 1010
        assert facts.allowed[at[row["item_id"]]] == want
    assert facts.allowed.sum() > 50


def test_near_duplicate_titles_share_a_key():
    facts, cat = _facts(_rules("rules.dedup_key=title")), _catalog()
    at = {v: i + 1 for i, v in enumerate(VOCAB_IDS.to_pylist())}
    key = {r["item_id"]: facts.dedup[at[r["item_id"]]] for r in cat.to_pylist()}
    assert key[1001] == key[1151] == key[1301] and key[1001] != key[1002]     # "story 1" / "Story  1!"


def test_exploration_is_a_hash_of_user_and_day():
    r = _rules("rules.explore_share=0.3")
    u = _users(2)
    today, again = _run(r, _facts(r), u), _run(r, _facts(r), u)
    tomorrow = _run(r, _facts(r, asof_us=ASOF_US + DAY_US), u)
    assert today == again
    explored = [[i for i, *_, x in lst if x == "explore"] for lst in today]
    facts = _facts(r)
    for b, e in enumerate(explored):      # as many as the slots, if the candidates have them
        usual = set(facts.category[u["history"][b]].tolist()) | {0}
        assert len(e) == min(3, sum(facts.category[i] not in usual for i in _candidates(facts, u, b)))
    assert sum(len(e) == 3 for e in explored) > len(explored) / 2
    assert sum(a != [i for i, *_, x in b if x == "explore"] for a, b in zip(explored, tomorrow)) > len(today) / 2


def test_a_users_list_does_not_depend_on_the_batch():
    r = _rules(*WORLD)
    facts, u = _facts(r), _users(7)
    alone = _run(r, facts, u)
    rng = np.random.default_rng(0)
    n = len(alone)
    for _ in range(3):
        order, start = rng.permutation(n), 0
        while start < n:
            rows = order[start:start + int(rng.integers(1, 40))]
            assert _run(r, facts, u, rows) == [alone[i] for i in rows]
            start += len(rows)


def test_no_rule_is_inactive_and_any_rule_is_active():
    assert not _rules().active and not _rules("rules.candidates=50").active
    for rule in WORLD:
        fresh = ["rules.fresh_half_life_days=3", "rules.fresh_boost=1"] if "fresh" in rule else []
        assert _rules(rule, *fresh).active


def test_masks_alone_keep_the_model_order():
    r = _rules("rules.exclude_categories=c3", "rules.max_age_days=10")
    facts, u = _facts(r), _users(4)
    for b, lst in enumerate(_run(r, facts, u)):
        cands = _candidates(facts, u, b)
        assert [i for i, *_ in lst] == cands[:K]             # the top-K of what the masks leave
        assert all(s == m and x == "model" for _, s, m, x in lst)
    at = {v: i + 1 for i, v in enumerate(VOCAB_IDS.to_pylist())}
    for row in _catalog().to_pylist():                    # no date: kept
        old = row["published_at"] is not None and ASOF_US - row["published_at"].timestamp() * 1e6 > 10 * DAY_US
        assert facts.allowed[at[row["item_id"]]] == (row["category"] != "c3" and not old)
    assert (~facts.allowed[1:]).sum() > ITEMS / 2


def test_lists_in_config_read_from_yaml_lists_numbers_or_comma_separated_text(tmp_path):
    f = tmp_path / "rules.yaml"
    f.write_text("rules:\n  exclude_items: [1010, n7]\n  exclude_tags: kids\n  pins: 'a@1, b@3'\n")
    cfg = config.load(str(f), ["rules.include_items=42"])
    assert (cfg.rules.exclude_items, cfg.rules.exclude_tags, cfg.rules.include_items) == ("1010,n7", "kids", "42")
    r = ListRules.from_config(cfg)
    assert r.exclude_items == ("1010", "n7") and r.pins == (("a", 0), ("b", 2))
    assert "exclude_items: 1010,n7" in config.dump(cfg)


POPULARITY = np.where(np.random.default_rng(4).random(ITEMS + 1) < 0.2, 0.0, 5.0)   # a fifth never trained on


def test_new_item_exploration_picks_untrained_or_recent_items_by_the_same_hash():
    r = _rules("rules.explore_share=0.3", "rules.explore=new", "rules.explore_new_days=4")
    facts, cat = ItemFacts.build(r, _catalog(), VOCAB_IDS, ASOF_US, POPULARITY), _catalog()
    at = {v: i + 1 for i, v in enumerate(VOCAB_IDS.to_pylist())}
    for row in cat.to_pylist():         # new: no training interaction, or published in the last 4 days
        i = at[row["item_id"]]
        recent = row["published_at"] is not None and ASOF_US - row["published_at"].timestamp() * 1e6 <= 4 * DAY_US
        assert facts.new[i] == (POPULARITY[i] == 0 or recent)
    assert not facts.new[0] and 0.2 * ITEMS < facts.new.sum() < 0.5 * ITEMS
    u = _users(3)
    lists = _run(r, facts, u)
    assert lists == _run(r, ItemFacts.build(r, _catalog(), VOCAB_IDS, ASOF_US, POPULARITY), u)   # a hash, no state
    full = 0
    for b, lst in enumerate(lists):
        explored = [i for i, *_, x in lst if x == "explore"]
        assert all(facts.new[i] for i in explored)
        assert len(explored) == min(3, sum(facts.new[i] for i in _candidates(facts, u, b)))
        full += len(explored) == 3
    assert full > len(lists) / 2
    # only the popularity without explore_new_days; no popularity: only the date
    only_pop = ItemFacts.build(_rules("rules.explore=new"), _catalog(), VOCAB_IDS, ASOF_US, POPULARITY)
    np.testing.assert_array_equal(only_pop.new[1:], POPULARITY[1:] == 0)
    assert not ItemFacts.build(_rules("rules.explore=new"), _catalog(), VOCAB_IDS, ASOF_US).new.any()


def test_exploring_both_takes_either_kind_and_categories_stays_the_default():
    both = _rules("rules.explore_share=0.3", "rules.explore=both")
    facts, u = ItemFacts.build(both, _catalog(), VOCAB_IDS, ASOF_US, POPULARITY), _users(6)
    kinds = {"new": 0, "outside": 0}
    for b, lst in enumerate(_run(both, facts, u)):
        usual = set(facts.category[u["history"][b]].tolist()) | {0}
        eligible = [i for i in _candidates(facts, u, b) if facts.new[i] or facts.category[i] not in usual]
        explored = [i for i, *_, x in lst if x == "explore"]
        assert set(explored) <= set(eligible) and len(explored) == min(3, len(eligible))
        kinds["new"] += sum(bool(facts.new[i]) for i in explored)
        kinds["outside"] += sum(facts.category[i] not in usual for i in explored)
    assert kinds["new"] > 50 and kinds["outside"] > 50
    # the default explores categories: the same lists as before the setting existed
    default = _rules("rules.explore_share=0.3")
    assert default.explore == "categories"
    assert _run(default, ItemFacts.build(default, _catalog(), VOCAB_IDS, ASOF_US, POPULARITY), u) == \
        _run(default, _facts(default), u)
    assert not _rules("rules.explore=new").active and _rules("rules.explore=new", "rules.explore_share=0.1").active
    with pytest.raises(ConfigError, match="rules.explore_new_days .* has no effect with rules.explore=categories"):
        _rules("rules.explore_new_days=3")
    with pytest.raises(ConfigError, match="rules.explore must be one of"):
        _rules("rules.explore=fresh")
