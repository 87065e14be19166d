"""List rules: a deterministic re-ranking of each user's candidates into the list that ships.

A model's top-K can be ten episodes of one series, or yesterday's news above this
morning's. Scoring therefore ranks a larger exact top-N (``ranking.topk``, N =
``rules.candidates``) and this module turns it into the top-K, in this order:

1. masks (applied before the top-N, as blocked items, so no candidate is wasted):
   include / exclude lists by item, category or tag, and a maximum age;
2. freshness: each candidate's score is boosted by ``w * 2^(-age / half-life)`` and the
   candidates are re-ordered by the boosted score (ties to the lower vocabulary index,
   like ``ranking.topk``);
3. editorial pins take their positions (those the user may be shown), and sponsored items
   their slots (``raymedia.sponsored`` chose them), counting like pins;
4. collapses: one item per series (the best-scored, or the user's next unwatched
   episode in the series' place) and one per near-duplicate key; a pin counts;
5. exploration: a share of the places, at the end of the list, for candidates outside
   the categories of the user's history, or new items (``rules.explore``), picked by a
   hash of (user, day, item);
6. caps: at most m items per category / subcategory / series, at least c distinct
   categories; pins and explored items count.

Rules are hard constraints: when the candidates cannot fill K places within them the
list is shorter (never a broken rule). Pins are placed even when they alone exceed a
cap (an editor's choice), and then no model item of that category is added. Items
without a category, subcategory or series are not capped and add no category.
``min_categories`` is met whenever the candidates allow it, provided subcategories and
series lie within one category (a greedy pass that reserves the last places for new
categories once it must).

A user's list depends only on their candidates and scores, their history, the catalog
and the day: never on the batch it is in, its size or position, or the actor.

Eligibility (``Eligibility``) is a mask too, per user: the catalog's ``regions`` and
``age_rating`` against the user's region and age; the Scorer blocks each user's
ineligible items before the top-N (``ranking.GroupBlocked``), pins and cold-start lists
included.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, fields

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymedia import features, schema
from raymedia.config import Config, ConfigError, split_names

log = logging.getLogger(__name__)

REASONS = ("model", "fresh", "explore", "pinned", "sponsored")     # the ``reason`` of each listed item
MODEL, FRESH, EXPLORE, PINNED, SPONSORED = range(len(REASONS))
US_PER_DAY = 86_400_000_000


def _np(a) -> np.ndarray:
    return a.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class ListRules:
    """The rules of one run (``RulesConfig``, parsed and checked); pins as (item id, 0-based
    position), sorted by position."""
    top_k: int
    candidates: int = 0
    collapse_series: str = "off"
    dedup_key: str = "off"
    max_per_category: int = 0
    max_per_subcategory: int = 0
    max_per_series: int = 0
    min_categories: int = 0
    fresh_boost: float = 0.0
    fresh_half_life_days: float = 0.0
    fresh_mode: str = "multiply"
    max_age_days: float = 0.0
    include_items: tuple[str, ...] = ()
    include_categories: tuple[str, ...] = ()
    include_tags: tuple[str, ...] = ()
    exclude_items: tuple[str, ...] = ()
    exclude_categories: tuple[str, ...] = ()
    exclude_tags: tuple[str, ...] = ()
    pins: tuple[tuple[str, int], ...] = ()
    explore_share: float = 0.0
    explore: str = "categories"
    explore_new_days: float = 0.0

    def __post_init__(self) -> None:
        if self.candidates and self.candidates < self.top_k:
            raise ConfigError(f"rules.candidates ({self.candidates}) must be >= score.top_k ({self.top_k})")
        if (self.fresh_boost > 0) != (self.fresh_half_life_days > 0):
            raise ConfigError("rules.fresh_boost and rules.fresh_half_life_days are set together "
                              f"(got {self.fresh_boost} and {self.fresh_half_life_days})")
        if self.min_categories > self.top_k:
            raise ConfigError(f"rules.min_categories ({self.min_categories}) can never hold in a list of "
                              f"score.top_k={self.top_k} items")
        positions = [p for _, p in self.pins]
        bad = [p + 1 for p in positions if not 0 <= p < self.top_k]
        if bad:
            raise ConfigError(f"rules.pins: position(s) {bad} outside 1..score.top_k ({self.top_k})")
        if len(set(positions)) < len(positions) or len({i for i, _ in self.pins}) < len(self.pins):
            raise ConfigError(f"rules.pins: each position and each item at most once, got {self.pins}")
        if list(positions) != sorted(positions):
            raise ConfigError("rules.pins must be sorted by position (ListRules.from_config sorts them)")
        if self.explore not in ("categories", "new", "both"):
            raise ConfigError(f"rules.explore must be one of ['categories', 'new', 'both'], got {self.explore!r}")
        if self.explore_new_days and self.explore == "categories":
            raise ConfigError(f"rules.explore_new_days ({self.explore_new_days}) has no effect with "
                              "rules.explore=categories; set rules.explore to new or both")

    @classmethod
    def from_config(cls, cfg: Config) -> ListRules:
        """The rules of ``cfg.rules``; ConfigError naming the key when one is malformed."""
        r, lists = cfg.rules, {}
        for f in fields(cls):
            if f.name.startswith(("include_", "exclude_")):
                lists[f.name] = split_names(getattr(r, f.name))
        pins = []
        for spec in split_names(r.pins):
            item, at, pos = spec.rpartition("@")
            if not at or not item.strip() or not re.fullmatch(r"\d+", pos.strip()):
                raise ConfigError(f"rules.pins: {spec!r} must look like item_id@position (e.g. 42@1)")
            pins.append((item.strip(), int(pos) - 1))
        return cls(top_k=cfg.score.top_k, candidates=r.candidates, collapse_series=r.collapse_series,
                   dedup_key=r.dedup_key, max_per_category=r.max_per_category,
                   max_per_subcategory=r.max_per_subcategory, max_per_series=r.max_per_series,
                   min_categories=r.min_categories, fresh_boost=r.fresh_boost,
                   fresh_half_life_days=r.fresh_half_life_days, fresh_mode=r.fresh_mode,
                   max_age_days=r.max_age_days, pins=tuple(sorted(pins, key=lambda p: p[1])),
                   explore_share=r.explore_share, explore=r.explore, explore_new_days=r.explore_new_days,
                   **lists)

    @property
    def active(self) -> bool:
        """Any rule set: scoring re-ranks and writes ``reason`` and ``model_scores``."""
        return self != ListRules(self.top_k, self.candidates, fresh_mode=self.fresh_mode, explore=self.explore,
                                 explore_new_days=self.explore_new_days)

    @property
    def n_candidates(self) -> int:
        return self.candidates or 4 * self.top_k

    @property
    def explore_slots(self) -> int:
        return math.floor(self.explore_share * self.top_k + 0.5)

    @property
    def masks(self) -> bool:
        """Rules that remove items before the top-N."""
        return bool(self.max_age_days or any(getattr(self, f.name) for f in fields(self)
                                             if f.name.startswith(("include_", "exclude_"))))


# ---------------------------------------------------------------------------------------
# the catalog, per vocabulary index

@dataclass(frozen=True)
class ItemFacts:
    """What the rules read of each item, in vocabulary order (index 0 is padding), made once
    per actor from the day's catalog. Codes are 0 where the catalog has no value (and for
    items it does not list)."""
    category: np.ndarray        # int64 code of the catalog category
    subcategory: np.ndarray     # int64
    series: np.ndarray          # int64
    episode: np.ndarray         # int64 episode number, 0 none
    dedup: np.ndarray           # int64 code of the normalised dedup_key value
    fresh: np.ndarray           # float64 freshness boost (0: none, or no publish date)
    allowed: np.ndarray         # bool: not removed by include / exclude / max age
    new: np.ndarray             # bool: new for exploration (no training interaction, or recent)
    pins: np.ndarray            # int64 vocabulary indices of the pins found in the vocabulary
    pin_positions: np.ndarray   # int64 their 0-based positions
    day: int                    # days since 1970-01-01 of the run (the exploration hash)

    @classmethod
    def build(cls, rules: ListRules, catalog: pa.Table, item_ids: pa.Array, asof_us: int,
              popularity: np.ndarray | None = None) -> ItemFacts:
        """``item_ids``: the vocabulary's ids (``Vocab.item_ids``: index i + 1); ``popularity``:
        its training interactions per index (``Vocab.popularity``; 0: a new item for
        ``rules.explore``), None: only the publish date makes an item new."""
        size = len(item_ids) + 1
        catalog = catalog.combine_chunks()
        ids = pc.cast(item_ids, pa.string())
        at = pc.index_in(pc.cast(catalog["item_id"], pa.string()), value_set=ids).combine_chunks()
        rows = np.flatnonzero(_np(at.is_valid()))            # catalog rows of vocabulary items
        where = _np(at.filter(at.is_valid())).astype(np.int64) + 1

        def per_item(values: np.ndarray, fill) -> np.ndarray:
            out = np.full(size, fill, dtype=values.dtype)
            out[where] = values[rows]
            return out

        def codes(name: str, normalise: bool = False) -> np.ndarray:
            if name not in catalog.column_names:
                return np.zeros(size, np.int64)
            col = pc.cast(catalog[name], pa.string())
            if normalise:       # near-duplicates: case, spacing and punctuation ignored
                col = pc.utf8_trim_whitespace(pc.replace_substring_regex(pc.utf8_lower(col), r"[^\p{L}\p{N}]+", " "))
                col = pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)
            values = pc.drop_null(pc.unique(col)).sort()
            return per_item(_np(pc.fill_null(pc.add(pc.index_in(col, value_set=values), 1), 0)).astype(np.int64), 0)

        def matches(name: str, wanted: tuple[str, ...]) -> np.ndarray:
            """Bool per item: its id / category / one of its tags is in ``wanted``."""
            value_set = pa.array(wanted, pa.string())
            if name not in catalog.column_names:
                return np.zeros(size, bool)
            col = catalog[name]
            if name == "tags":
                hit = np.zeros(catalog.num_rows, bool)
                found = _np(pc.fill_null(pc.is_in(pc.list_flatten(col), value_set=value_set), False))
                np.logical_or.at(hit, _np(pc.list_parent_indices(col)), found)
            else:
                hit = _np(pc.fill_null(pc.is_in(pc.cast(col, pa.string()), value_set=value_set), False))
            return per_item(hit, False)

        allowed = np.ones(size, bool)
        includes = [("item_id", rules.include_items), ("category", rules.include_categories),
                    ("tags", rules.include_tags)]
        if any(w for _, w in includes):
            allowed &= np.logical_or.reduce([matches(n, w) for n, w in includes if w])
        for name, wanted in (("item_id", rules.exclude_items), ("category", rules.exclude_categories),
                             ("tags", rules.exclude_tags)):
            if wanted:
                allowed &= ~matches(name, wanted)
        published = _np(pc.cast(catalog["published_at"], pa.int64())).astype(np.float64)   # NaN: no date
        age = (asof_us - per_item(published, np.nan)) / US_PER_DAY
        if rules.max_age_days:
            allowed &= ~(age > rules.max_age_days)
        fresh = np.zeros(size)
        if rules.fresh_boost:
            known = ~np.isnan(age)
            fresh[known] = rules.fresh_boost * np.exp2(-np.maximum(age[known], 0) / rules.fresh_half_life_days)
        allowed[0] = False
        new = np.zeros(size, bool)
        if rules.explore != "categories":
            if popularity is not None:
                new |= np.asarray(popularity) == 0
            if rules.explore_new_days:
                new |= age <= rules.explore_new_days            # NaN (no date): not by date
            new[0] = False
        episode = (_np(pc.fill_null(catalog["episode"], 0)).astype(np.int64)
                   if "episode" in catalog.column_names else np.zeros(catalog.num_rows, np.int64))
        pin_ids = [i for i, _ in rules.pins]
        found = pc.index_in(pa.array(pin_ids, pa.string()), value_set=ids).to_pylist()
        missing = [i for i, f in zip(pin_ids, found) if f is None]
        if missing:
            log.warning("rules.pins: item(s) %s are not in the vocabulary; they are not pinned", missing)
        return cls(category=codes("category"), subcategory=codes("subcategory"), series=codes("series_id"),
                   episode=per_item(episode, 0),
                   dedup=codes(rules.dedup_key, True) if rules.dedup_key != "off" else np.zeros(size, np.int64),
                   fresh=fresh, allowed=allowed, new=new,
                   pins=np.array([f + 1 for f in found if f is not None], np.int64),
                   pin_positions=np.array([p for (_, p), f in zip(rules.pins, found) if f is not None], np.int64),
                   day=asof_us // US_PER_DAY)


# ---------------------------------------------------------------------------------------
# eligibility: which items each user may be shown

@dataclass(frozen=True)
class Eligibility:
    """Who may see what, where the data says: the catalog's ``regions`` (where an item may be
    shown; null or empty: everywhere) and ``age_rating`` (the minimum age; null: 0) against
    each user's ``region`` and ``age`` (``data.user_attributes_uri``); a user missing from that
    table, or with a null value, has ``rules.default_region`` / ``rules.default_age``.

    Users fall into groups by a key: their region's code (its place among the regions the
    catalog names; 0 for any other region or none: only items shown everywhere) and their
    age band (how many of the catalog's distinct ratings the age reaches). A group's
    blocked items (``blocked``) depend on its key alone, so a user's mask is the same in any
    batch, actor or run; a run has at most (regions + 1) x (ratings + 1) groups.

    Per actor it holds the table's ids (as Arrow: 8 bytes an integer id, the string and 4
    bytes a string id), a uint64 hash and an int64 key per user: about 24 bytes a user
    (240 MB for 10M users), plus one bool per (group met, item) in the Scorer.
    """
    regions: pa.Array           # string: the distinct regions the catalog names, sorted (code = place + 1)
    ratings: np.ndarray         # int64: the distinct positive age ratings, sorted (band = place + 1)
    restricted: np.ndarray      # bool per vocabulary index: shown only in its regions
    band: np.ndarray            # int64 per vocabulary index: its rating's band (0: all ages)
    shown_item: np.ndarray      # int64 vocabulary indices of restricted items ...
    shown_region: np.ndarray    # int64 ... and a region code each may be shown in (one pair per region)
    hashes: np.ndarray          # uint64 sorted: the table's users by ``features.user_hash``
    ids: pa.Array               # their ids in that order
    keys: np.ndarray            # int64 their group keys
    run: int                    # the longest run of equal hashes (1 unless two ids collide)
    default_key: int            # the group of a user missing from the table
    source: str                 # the table's URI (errors name it)

    @classmethod
    def build(cls, catalog: pa.Table, item_ids: pa.Array, users: pa.Table | None, default_region: str = "",
              default_age: int = 0, source: str = "user attributes") -> Eligibility | None:
        """From the day's catalog (``read.read_catalog``), the vocabulary's ids (index i + 1)
        and the user-attributes table (``read.read_user_attributes``; None: every user has
        the defaults). None when no vocabulary item is restricted (nothing to check)."""
        size = len(item_ids) + 1
        catalog = catalog.combine_chunks()
        at = _np(pc.fill_null(pc.add(pc.index_in(pc.cast(catalog["item_id"], pa.string()),
                                                  value_set=pc.cast(item_ids, pa.string())), 1), 0)).astype(np.int64)
        inside = at > 0                                     # catalog rows of vocabulary items
        restricted, band = np.zeros(size, bool), np.zeros(size, np.int64)
        regions, pairs = pa.array([], pa.string()), (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if "regions" in catalog.column_names:
            col = catalog["regions"]
            flat, parent = pc.list_flatten(col), _np(pc.list_parent_indices(col)).astype(np.int64)
            named = _np(pc.is_valid(flat)) & inside[parent]
            regions = pc.unique(flat.filter(pa.array(named))).sort()
            code = _np(pc.fill_null(pc.index_in(flat, value_set=regions), -1)).astype(np.int64) + 1
            restricted[at[parent[named]]] = True
            pairs = (at[parent[named]], code[named])
        ratings = np.zeros(0, np.int64)
        if "age_rating" in catalog.column_names:
            rating = _np(pc.fill_null(catalog["age_rating"], 0)).astype(np.int64)
            ratings = np.unique(rating[inside & (rating > 0)])
            band[at[inside]] = np.where(rating[inside] > 0, np.searchsorted(ratings, rating[inside]) + 1, 0)
        if not restricted.any() and not band.any():
            if users is not None:
                log.info("%s: the catalog restricts no item by region or age; every item may be shown to "
                         "every user", source)
            return None
        if users is None:
            users = pa.table({"user_id": pa.array([], pa.int64()), "region": pa.array([], pa.string()),
                              "age": pa.array([], pa.int32())})
        ids = users["user_id"].combine_chunks()
        hashes = features.user_hash(ids).astype(np.uint64) if len(ids) else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        take = pa.array(order, pa.int64())
        region = pc.cast(users["region"], pa.string()).combine_chunks().take(take)
        age = _np(pc.cast(users["age"], pa.int64()).combine_chunks().take(take))
        default = _group_keys(regions, ratings, pa.array([default_region or None], pa.string()),
                              np.array([default_age], np.float64), default_region, default_age)
        return cls(regions, ratings, restricted, band, *pairs, hashes[order], ids.take(take),
                   _group_keys(regions, ratings, region, age, default_region, default_age),
                   int(np.unique(hashes, return_counts=True)[1].max()) if len(hashes) else 1,
                   int(default[0]), source)

    def user_keys(self, user_ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Each user's group key (the table's, else the default's): a sorted-hash lookup,
        O(log n) a user; ContractError when the ids are not of the table's kind."""
        if isinstance(user_ids, pa.ChunkedArray):
            user_ids = user_ids.combine_chunks()
        if pa.types.is_integer(user_ids.type) != pa.types.is_integer(self.ids.type) and len(self.ids):
            raise schema.ContractError(
                f"{self.source}: column 'user_id' is {self.ids.type} but the users scored have {user_ids.type} "
                "ids; the user-attributes table must use the events' ids")
        out = np.full(len(user_ids), self.default_key, np.int64)
        if not len(self.hashes) or not len(user_ids):
            return out
        h = features.user_hash(user_ids).astype(np.uint64)
        pos = np.searchsorted(self.hashes, h)
        found = np.zeros(len(h), bool)
        for step in range(self.run):            # equal hashes: the id itself decides
            at = np.minimum(pos + step, len(self.hashes) - 1)
            same = ~found & (self.hashes[at] == h)
            if not same.any():
                break
            rows = np.flatnonzero(same)
            match = _np(pc.equal(self.ids.take(pa.array(at[rows])), user_ids.cast(self.ids.type).take(pa.array(rows))))
            out[rows[match]] = self.keys[at[rows[match]]]
            found[rows[match]] = True
        return out

    def blocked(self, key: int) -> np.ndarray:
        """Bool per vocabulary index: the items a group may not be shown."""
        region, band = divmod(int(key), len(self.ratings) + 1)
        out = self.band > band
        allowed_here = np.zeros(len(self.restricted), bool)
        if region:
            allowed_here[self.shown_item[self.shown_region == region]] = True
        return out | (self.restricted & ~allowed_here)


def _group_keys(regions: pa.Array, ratings: np.ndarray, region: pa.Array, age: np.ndarray,
                default_region: str, default_age: int) -> np.ndarray:
    """int64 group keys of users' (region, age), nulls (NaN ages) taking the defaults: region
    code x (ratings + 1) + age band (the number of ratings the age reaches)."""
    if default_region:
        region = pc.fill_null(region, default_region)
    code = _np(pc.fill_null(pc.index_in(region, value_set=regions), -1)).astype(np.int64) + 1
    age = np.where(np.isnan(age.astype(np.float64)), default_age, age).astype(np.int64)
    return code * (len(ratings) + 1) + np.searchsorted(ratings, age, "right")


# ---------------------------------------------------------------------------------------
# the re-ranking

@dataclass(frozen=True)
class Lists:
    """The users' final lists, one after another (``lengths`` items each): vocabulary
    indices, the score each was ranked by (a pin's: its model score) and, when rules made
    them, the raw model score and the reason (``REASONS`` code)."""
    idx: np.ndarray                         # int64
    scores: np.ndarray                      # float32
    lengths: np.ndarray                     # (B,) int64
    model_scores: np.ndarray | None = None  # float32
    reason: np.ndarray | None = None        # int8

    @classmethod
    def top(cls, idx: np.ndarray, scores: np.ndarray) -> Lists:
        """The (B, K) top-K as it is, without rules; -inf: fewer items, a shorter list."""
        valid = np.isfinite(scores)
        return cls(idx[valid], scores[valid], valid.sum(1))

    def reason_names(self) -> pa.Array:
        return pa.array(REASONS).take(pa.array(self.reason.astype(np.int64)))


def boosted(rules: ListRules, fresh: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Model scores with the freshness boost (``fresh``: per score), rounded to float32."""
    s = scores.astype(np.float64)
    if rules.fresh_mode == "add":
        out = s + fresh
    else:
        out = np.where(s >= 0, s * (1 + fresh), s / (1 + fresh))
    return out.astype(np.float32)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: well-spread uint64 bits from any uint64 (wrapping arithmetic)."""
    x = np.asarray(x, dtype=np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def explore_keys(user_key: int, day: int, items: np.ndarray) -> np.ndarray:
    """The exploration order of ``items`` for one user on one day: a hash, no RNG state."""
    seed = _mix(np.uint64(user_key) ^ _mix(np.uint64(day)))
    return _mix(seed ^ _mix(np.asarray(items, dtype=np.uint64)))


@dataclass(frozen=True)
class Sponsored:
    """Sponsored items to place (``raymedia.sponsored``): the s-th of a user at ``slots[s]``."""
    slots: np.ndarray           # (S,) int64 0-based positions (none a pin's)
    idx: np.ndarray             # (B, S) int64 vocabulary indices, 0: none
    scores: np.ndarray          # (B, S) float32 model scores


def rerank(rules: ListRules, facts: ItemFacts, idx: np.ndarray, scores: np.ndarray, history: np.ndarray,
           user_keys: np.ndarray, pin_scores: np.ndarray | None = None,
           sponsored: Sponsored | None = None) -> Lists:
    """Each user's list from their candidates.

    ``idx``, ``scores``: (B, N) candidate vocabulary indices and model scores (-inf or an
    index <= 0: no candidate); ``history``: (B, S) the indices the user interacted with
    (0 padding: series progress and usual categories); ``user_keys``: (B,) uint64 stable
    user hashes (``features.user_hash``); ``pin_scores``: (B, len(facts.pins)) the pins'
    model scores, -inf where a pin may not be shown to the user (seen, not recommendable).
    Items the masks remove (``facts.allowed``) are dropped here too. ``sponsored``: items
    placed at their slots like pins (the caller checked them against the masks).
    """
    B = len(idx)
    idx = np.where(idx > 0, idx, 0).astype(np.int64)
    valid = np.isfinite(scores) & facts.allowed[idx]      # (the Scorer masked these before the top-N)
    raw = np.where(valid, scores, -np.inf).astype(np.float32)
    eff = np.where(valid, boosted(rules, facts.fresh[idx], raw), -np.inf).astype(np.float32)
    # both orders: (score desc, index asc), candidates last
    by_model = np.lexsort((idx, -raw.astype(np.float64)), axis=1)
    by_eff = np.lexsort((idx, -eff.astype(np.float64)), axis=1)
    model_pos = np.empty_like(by_model)
    np.put_along_axis(model_pos, by_model, np.arange(idx.shape[1])[None, :].repeat(B, 0), 1)
    pos = np.take_along_axis(model_pos, by_eff, 1)
    # fresh: the boost lifted it above a candidate the model scored higher
    after = np.minimum.accumulate(pos[:, ::-1], axis=1)[:, ::-1]
    lifted = np.zeros_like(pos, dtype=bool)
    lifted[:, :-1] = after[:, 1:] < pos[:, :-1]
    cols = {"idx": np.take_along_axis(idx, by_eff, 1), "eff": np.take_along_axis(eff, by_eff, 1),
            "raw": np.take_along_axis(raw, by_eff, 1)}
    n_valid = valid.sum(1)
    if pin_scores is None:
        pin_scores = np.full((B, len(facts.pins)), -np.inf, np.float32)
    out = []
    for b in range(B):
        n = int(n_valid[b])
        placed = [] if sponsored is None else [
            (int(p), int(i), float(s), SPONSORED)
            for p, i, s in zip(sponsored.slots, sponsored.idx[b], sponsored.scores[b]) if i > 0]
        out.append(_one(rules, facts, cols["idx"][b, :n], cols["eff"][b, :n], cols["raw"][b, :n],
                        lifted[b, :n], history[b][history[b] > 0], int(user_keys[b]), pin_scores[b], placed))
    lengths = np.array([len(r) for r in out], np.int64)
    flat = [x for r in out for x in r]
    return Lists(idx=np.array([x[0] for x in flat], np.int64),
                 scores=np.array([x[1] for x in flat], np.float32), lengths=lengths,
                 model_scores=np.array([x[2] for x in flat], np.float32),
                 reason=np.array([x[3] for x in flat], np.int8))


class _Caps:
    """Counts of a list being built: which items the caps still admit, its categories. An
    item is given by its (category, subcategory, series) codes, as Python ints (a list is
    built item by item)."""

    def __init__(self, rules: ListRules):
        self.caps = (rules.max_per_category, rules.max_per_subcategory, rules.max_per_series)
        self.counts: tuple[dict[int, int], ...] = ({}, {}, {})
        self.categories: set[int] = set()

    def admits(self, codes: tuple[int, int, int]) -> bool:
        return not any(cap and c and counts.get(c, 0) >= cap
                       for c, cap, counts in zip(codes, self.caps, self.counts))

    def add(self, codes: tuple[int, int, int]) -> None:
        for c, counts in zip(codes, self.counts):
            counts[c] = counts.get(c, 0) + 1
        if codes[0]:
            self.categories.add(codes[0])


def _codes(facts: ItemFacts, items: np.ndarray) -> list[tuple[int, int, int]]:
    return list(zip(facts.category[items].tolist(), facts.subcategory[items].tolist(), facts.series[items].tolist()))


def _one(rules: ListRules, facts: ItemFacts, items: np.ndarray, eff: np.ndarray, raw: np.ndarray,
         lifted: np.ndarray, history: np.ndarray, user_key: int, pin_scores: np.ndarray,
         sponsored: list[tuple] = ()) -> list[tuple]:
    """One user's list from their candidates in boosted order: (index, score, model score,
    reason) per place. ``sponsored``: (position, index, model score, SPONSORED), placed like pins."""
    shown = np.isfinite(pin_scores) & facts.allowed[facts.pins]
    pins = sorted([(int(p), int(i), float(s), PINNED) for p, i, s in
                   zip(facts.pin_positions[shown], facts.pins[shown], pin_scores[shown])] + list(sponsored))
    fixed = np.array([i for _, i, _, _ in pins], np.int64)
    perm, keep = _collapse(rules, facts, items, fixed, history)
    # a next episode (perm) takes its series' place: the place's score and reason, its own model score
    items, raw = items[perm][keep], raw[perm][keep]
    score, reason = eff[keep], np.where(lifted, FRESH, MODEL)[keep]
    caps = _Caps(rules)
    for c in _codes(facts, fixed):
        caps.add(c)
    codes, taken = _codes(facts, items), [False] * len(items)
    slots = rules.top_k - len(pins)
    explored = _explore(rules, facts, items, codes, history, user_key, caps, taken, slots)
    chosen = _fill(rules, codes, caps, taken, slots - len(explored))
    queue = ([(int(items[j]), float(score[j]), float(raw[j]), int(reason[j])) for j in chosen] +
             [(int(items[j]), float(score[j]), float(raw[j]), EXPLORE) for j in explored])
    out: list[tuple] = []
    p = q = 0                   # pins at their places; the list has no holes
    while p < len(pins) or q < len(queue):
        if p < len(pins) and (pins[p][0] == len(out) or q == len(queue)):
            out.append((pins[p][1], pins[p][2], pins[p][2], pins[p][3]))
            p += 1
        else:
            out.append(queue[q])
            q += 1
    return out


def _collapse(rules: ListRules, facts: ItemFacts, items: np.ndarray, pinned: np.ndarray,
              history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(a permutation of the candidates, the positions that survive it): none of a pin's
    series or dedup key, one per series (the best-ranked place, holding the next episode
    with ``next``: the permutation) and one per dedup key."""
    perm, keep = np.arange(len(items)), ~np.isin(items, pinned)
    if rules.collapse_series != "off":
        series = facts.series[items]
        keep &= ~((series > 0) & np.isin(series, facts.series[pinned]))
        if rules.collapse_series == "next":
            perm = _next_episodes(facts, items, series, keep, history)     # swaps within a series
        keep &= (series == 0) | _firsts(series, keep)
    if rules.dedup_key != "off":
        dedup = facts.dedup[items[perm]]
        keep &= ~((dedup > 0) & np.isin(dedup, facts.dedup[pinned]))
        keep &= (dedup == 0) | _firsts(dedup, keep)
    return perm, np.flatnonzero(keep)


def _explore(rules: ListRules, facts: ItemFacts, items: np.ndarray, codes: list, history: np.ndarray,
             user_key: int, caps: _Caps, taken: list[bool], slots: int) -> list[int]:
    """Positions of the explored candidates (``rules.explore``): outside the categories of the
    user's history, new items, or either, in the order of a hash of (user, day, item), as far
    as the caps admit."""
    want = min(rules.explore_slots, slots)
    if want <= 0:
        return []
    pick = np.zeros(len(items), bool)
    if rules.explore in ("categories", "both"):
        cats = facts.category[items]
        pick |= (cats > 0) & ~np.isin(cats, facts.category[history])
    if rules.explore in ("new", "both"):
        pick |= facts.new[items]
    outside = np.flatnonzero(pick)
    out = []
    for j in outside[np.lexsort((items[outside], explore_keys(user_key, facts.day, items[outside])))].tolist():
        if len(out) == want:
            break
        if caps.admits(codes[j]):
            caps.add(codes[j])
            taken[j] = True
            out.append(j)
    return out


def _fill(rules: ListRules, codes: list, caps: _Caps, taken: list[bool], slots: int) -> list[int]:
    """Positions of the model's items: the best-ranked the caps admit, in order; once each
    place left must bring a new category for ``min_categories`` (and the candidates still
    can), only those."""
    out = []
    for j, c in enumerate(codes):
        if len(out) >= slots:
            break
        if taken[j] or not caps.admits(c):
            continue
        need, left = rules.min_categories - len(caps.categories), slots - len(out)
        if need >= left and not (c[0] and c[0] not in caps.categories) and \
                min(need, _new_categories(caps, codes, taken, j)) >= left:
            continue
        caps.add(c)
        taken[j] = True
        out.append(j)
    return out


def _firsts(codes: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """True at the first kept position of each code."""
    out = np.zeros(len(codes), bool)
    kept = np.flatnonzero(keep)
    _, first = np.unique(codes[kept], return_index=True)
    out[kept[first]] = True
    return out


def _new_categories(caps: _Caps, codes: list, taken: list[bool], start: int) -> int:
    """How many categories not yet in the list the candidates from ``start`` on can still add."""
    return len({c[0] for c, t in zip(codes[start:], taken[start:])
                if c[0] and c[0] not in caps.categories and not t and caps.admits(c)})


def _next_episodes(facts: ItemFacts, items: np.ndarray, series: np.ndarray, keep: np.ndarray,
                   history: np.ndarray) -> np.ndarray:
    """A permutation of the candidates that puts, in each series' best-ranked kept place,
    the user's next episode among its kept candidates: the lowest-numbered after the last
    one in their history (from the start for a series not in it); the best-ranked stays
    when none is after it."""
    perm = np.arange(len(items))
    seen_series, seen_episode = facts.series[history], facts.episode[history]
    for s in np.unique(series[keep & (series > 0)]).tolist():
        members = np.flatnonzero(keep & (series == s))
        watched = seen_episode[seen_series == s]
        last = int(watched.max()) if len(watched) else 0
        after = members[facts.episode[items[members]] > last]
        if len(after):
            nxt = after[np.lexsort((items[after], facts.episode[items[after]]))[0]]
            perm[members[0]], perm[nxt] = nxt, members[0]
    return perm
