"""Synthetic media-service behaviour logs (video/news streaming).

The data is built to reward a good sequential recommender and expose a weak
one: popularity is heavy-tailed (a popularity baseline is strong but not
enough), users have narrow category tastes (per-user models help), series
episodes are usually watched in order (only order-aware models see it), and
activity decays or starts mid-window (so "returns within 7 days" is
predictable from recency and frequency). With ``fresh_item_fraction`` a share of
the items is news-like: published during the window and taken only in its first
``fresh_days``, by users who follow its topic (a category and one of its
``FRESH_SUBTOPICS``, whose words its title, description and tags carry), so an
id-only model cannot know tomorrow's news and a model that reads content can.

Layout written by :func:`generate`::

    out_uri/catalog/catalog.parquet
    out_uri/events/dt=YYYY-MM-DD/part-{chunk:05d}.parquet   (one per chunk and day)
    out_uri/generate.json                                   (config and summary)

Users are simulated in chunks of ``chunk_users``; chunk ``c`` draws from
``np.random.default_rng([seed, c])`` and the catalog from its own stream, so
the output is the same whether chunks run sequentially or as Ray tasks, and
memory is bounded by the chunk size. Everything is vectorised across the
users of a chunk: Python loops run over a user's consumption ordinal and
session ordinal (a few hundred steps), never over users or events.
"""

from __future__ import annotations

import datetime
import functools
import sys
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from raymedia import schema, storage
from raymedia.schema import EventType

DAY_S = 86_400
US = 1_000_000
CATALOG_STREAM = 2**32 - 1          # second seed word of the catalog stream; never a chunk index
TEXT_STREAM = 2**32 - 2             # the catalog's words: their own stream, so the world is as before
FRESH_STREAM = 2**32 - 3            # news-like items: their own stream, drawn only when there are any
FRESH_SUBTOPICS = 4                 # topics within a category that fresh items are about
SUBTOPIC_WORDS = 8                  # words of each (category, subtopic)
SYLLABLES = ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po", "ve", "da", "zu", "fe", "go", "ha", "ji", "wo")
CATEGORY_WORDS, COMMON_WORDS = 24, 300


# Day-of-week activity multiplier, Monday first: weekends are busier.
DOW_MULTIPLIER = np.array([0.90, 0.88, 0.90, 0.95, 1.05, 1.20, 1.15])
# Session start hour: a small morning and lunch bump, a large evening peak.
_HOURS = np.arange(24)
_HOUR_WEIGHT = (0.1 + 0.3 * np.exp(-0.5 * ((_HOURS - 8) / 1.5) ** 2)
                + 0.45 * np.exp(-0.5 * ((_HOURS - 12.5) / 1.5) ** 2)
                + 1.0 * np.exp(-0.5 * ((_HOURS - 20.5) / 2.0) ** 2))
HOUR_CDF = np.cumsum(_HOUR_WEIGHT) / _HOUR_WEIGHT.sum()

MAX_SESSIONS_PER_DAY = 8.0          # caps the lognormal tail (and the loop length)
TASTE_EXPLORE = 0.05                # share of choices that follow global category popularity
IN_TASTE_SHARE = 0.2                # a category with at least this taste weight is "in taste"
CONTINUE_AFTER_COMPLETE = 0.2       # next-episode probability is +/- this after a (non-)complete
COMPLETE_BASE, COMPLETE_CONTINUATION, COMPLETE_IN_TASTE = 0.20, 0.30, 0.12
CLICK_VS_PLAY = 25 / 65             # share of clicks among the non-complete consumptions
LIKE_PROB, SHARE_PROB = 0.15, 0.04  # extra rows after a complete
SESSION_BREAK_S = 1800.0            # minimum idle time between two sessions of a user
REDRAWS = 8                         # redraws of a blocked pick before the fallback item


@dataclass(frozen=True)
class GeneratorConfig:
    """Size, seed and behaviour knobs of the simulated service."""

    users: int = 3000
    items: int = 1000
    days: int = 14
    start: datetime.date = datetime.date(2026, 1, 5)   # first day of logs
    seed: int = 0
    categories: int = 16
    chunk_users: int = 20000          # users generated (and held in memory) at once
    zipf_exponent: float = 1.0        # item popularity ~ 1 / rank**exponent
    series_fraction: float = 0.3      # items that are episodes of a series
    new_item_fraction: float = 0.05   # items published during the log window
    unavailable_fraction: float = 0.03
    duration_median_s: float = 600.0
    taste_concentration: float = 1.0  # Dirichlet total; small = 1-3 favourite categories
    sessions_per_day: float = 0.5     # median base activity
    activity_sigma: float = 0.9       # lognormal spread of base activity
    decaying_fraction: float = 0.4    # users whose activity decays exponentially
    decay_days: float = 4.0           # median time constant of that decay
    late_join_fraction: float = 0.2   # users whose first visit is inside the window
    mean_session_len: float = 3.5     # consumptions per session (geometric, >= 1)
    continue_prob: float = 0.65       # P(next episode) after an episode with a successor
    fresh_item_fraction: float = 0.0  # news-like items (module doc); 0: none, the world as before
    fresh_days: float = 1.5           # how long a fresh item is taken after its publication
    fresh_share: float = 0.3          # share of picks that go to a live fresh item of the topic

    def __post_init__(self) -> None:
        ints = {"users": 1, "items": 2, "days": 1, "seed": 0, "categories": 1, "chunk_users": 1}
        for name, low in ints.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.categories > self.items:
            raise ValueError(f"categories must be <= items ({self.items}), got {self.categories}")
        if isinstance(self.start, datetime.datetime) or not isinstance(self.start, datetime.date):
            raise ValueError(f"start must be a datetime.date, got {self.start!r}")
        fractions = ("series_fraction", "new_item_fraction", "unavailable_fraction",
                     "decaying_fraction", "late_join_fraction", "fresh_item_fraction", "fresh_share")
        for name in fractions:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)!r}")
        if not CONTINUE_AFTER_COMPLETE <= self.continue_prob <= 1.0 - CONTINUE_AFTER_COMPLETE:
            raise ValueError(f"continue_prob must be in [{CONTINUE_AFTER_COMPLETE}, "
                             f"{1 - CONTINUE_AFTER_COMPLETE}], got {self.continue_prob!r}")
        positive = ("zipf_exponent", "duration_median_s", "taste_concentration",
                    "sessions_per_day", "activity_sigma", "decay_days", "fresh_days")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if not self.mean_session_len >= 1:
            raise ValueError(f"mean_session_len must be >= 1, got {self.mean_session_len!r}")

    @property
    def chunks(self) -> int:
        return -(-self.users // self.chunk_users)

    def day_names(self) -> list[str]:
        return [storage.day(self.start + datetime.timedelta(days=d)) for d in range(self.days)]


@dataclass(frozen=True)
class GenerateSummary:
    events_uri: str
    catalog_uri: str
    users: int
    items: int
    events: int
    days: list[str]
    files: int          # event files written: one per (chunk, day with events)


@dataclass(frozen=True)
class _World:
    """The catalog as arrays indexed by item index (item_id - 1), plus samplers."""

    category: np.ndarray       # int, category index
    weight: np.ndarray         # float, popularity (Zipf)
    series: np.ndarray         # int, series number or -1
    episode: np.ndarray        # int, episode number (1-based) or 0
    next_ep: np.ndarray        # int, item index of the next episode or -1
    pub_s: np.ndarray          # float, publish time in whole seconds relative to the log start
    available: np.ndarray      # bool
    duration_s: np.ndarray     # float
    category_prior: np.ndarray  # share of total popularity per category
    by_category: np.ndarray    # item indices sorted by category
    category_keys: np.ndarray  # category + within-category CDF, aligned with by_category
    category_last: np.ndarray  # position in by_category of each category's last item
    global_cdf: np.ndarray     # popularity CDF over all items
    fallback: np.ndarray       # the two most popular items published before the log start
    subtopic: np.ndarray       # int, a fresh item's subtopic, -1 for the other items
    fresh_order: np.ndarray    # fresh items sorted by (category, subtopic) group, then publish time
    fresh_key: np.ndarray      # group * span + publish time, aligned with fresh_order
    fresh_cum: np.ndarray      # cumulative popularity along fresh_order, with a leading 0
    fresh_span: float          # key distance between two groups: more than any time difference

    def sample_fresh(self, group: np.ndarray, t: np.ndarray, life_s: float, u: np.ndarray) -> np.ndarray:
        """A fresh item of each (category, subtopic) ``group`` live at ``t`` (published in
        (t - life_s, t]), drawn proportionally to popularity; -1 where none is live. The live
        items of a group are one run of ``fresh_order``, found by two searchsorted calls."""
        base = group * self.fresh_span
        lo = np.searchsorted(self.fresh_key, base + t - life_s, side="right")
        hi = np.searchsorted(self.fresh_key, base + t, side="right")
        x = self.fresh_cum[lo] + u * (self.fresh_cum[hi] - self.fresh_cum[lo])
        pos = np.clip(np.searchsorted(self.fresh_cum, x, side="right") - 1, lo, np.maximum(hi - 1, lo))
        return np.where(hi > lo, self.fresh_order[np.minimum(pos, len(self.fresh_order) - 1)], -1)

    def sample_in_category(self, cat: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Items drawn proportionally to popularity within the given categories.

        One searchsorted over the concatenated per-category CDFs: category c
        owns keys in (c, c+1], so the query c + u lands inside it.
        """
        pos = np.searchsorted(self.category_keys, cat + u, side="right")
        return self.by_category[np.minimum(pos, self.category_last[cat])]

    def sample_global(self, u: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.global_cdf, u, side="right")
        return np.minimum(pos, len(self.global_cdf) - 1)


@functools.lru_cache(maxsize=4)
def _world(cfg: GeneratorConfig) -> _World:
    """Build the item world once per config (cached: every chunk needs it)."""
    rng = np.random.default_rng([cfg.seed, CATALOG_STREAM])
    n, n_cat = cfg.items, cfg.categories

    rank = rng.permutation(n)
    weight = 1.0 / (rank + 1.0) ** cfg.zipf_exponent
    # Uneven category sizes; every category gets at least one item.
    size_p = 1.0 / np.sqrt(np.arange(1, n_cat + 1))
    category = rng.permutation(np.concatenate(
        [np.arange(n_cat), rng.choice(n_cat, n - n_cat, p=size_p / size_p.sum())]))

    # The two most popular items are never new: they are the fallback picks.
    new = (rng.random(n) < cfg.new_item_fraction) & (rank >= 2)
    pub_s = np.where(new,
                     rng.random(n) * cfg.days * DAY_S,
                     -rng.uniform(1, 730, n) * DAY_S).round()
    available = rng.random(n) >= cfg.unavailable_fraction
    duration_s = np.maximum(30.0, cfg.duration_median_s * rng.lognormal(0, 0.5, n_cat)[category]
                            * rng.lognormal(0, 0.6, n))

    # Series: runs of 3-10 random items of one category. Episode 1 is the most
    # popular and published first, so later episodes follow it in every sense.
    series = np.full(n, -1)
    episode = np.zeros(n, dtype=np.int64)
    next_ep = np.full(n, -1)
    number = 0
    for c in range(n_cat):
        members = rng.permutation(np.flatnonzero(category == c))
        budget = int(round(cfg.series_fraction * len(members)))
        at = 0
        while budget - at >= 3:
            length = min(int(rng.integers(3, 11)), budget - at)
            eps = members[at:at + length]
            at += length
            number += 1
            series[eps] = number
            episode[eps] = np.arange(1, length + 1)
            next_ep[eps[:-1]] = eps[1:]
            weight[eps] = np.sort(weight[eps])[::-1]
            pub_s[eps] = np.sort(pub_s[eps])

    subtopic, pub_s = _fresh(cfg, category, weight, series, rank, pub_s)
    fresh = subtopic >= 0
    # fresh items are picked only while they are live (sample_fresh), never by the usual draws
    weight_all, weight = weight, np.where(fresh, 0.0, weight)
    by_category = np.argsort(category, kind="stable")
    sorted_cat = category[by_category]
    cum = np.cumsum(weight[by_category])
    first = np.searchsorted(sorted_cat, np.arange(n_cat), side="left")
    last = np.searchsorted(sorted_cat, np.arange(n_cat), side="right") - 1
    before = cum[first] - weight[by_category][first]
    totals = cum[last] - before
    within = (cum - before[sorted_cat]) / totals[sorted_cat]
    within[last] = 1.0
    old = np.flatnonzero(pub_s < 0)
    span = cfg.days * DAY_S + cfg.fresh_days * DAY_S + 1.0
    group = category * FRESH_SUBTOPICS + subtopic
    order = np.flatnonzero(fresh)[np.lexsort((pub_s[fresh], group[fresh]))]
    return _World(
        category=category, weight=weight_all, series=series, episode=episode, next_ep=next_ep,
        pub_s=pub_s, available=available, duration_s=duration_s,
        category_prior=totals / totals.sum(), by_category=by_category,
        category_keys=sorted_cat + within, category_last=last,
        global_cdf=np.cumsum(weight) / weight.sum(),
        fallback=old[np.argsort(-weight[old], kind="stable")[:2]],
        subtopic=subtopic, fresh_order=order, fresh_key=group[order] * span + pub_s[order],
        fresh_cum=np.concatenate([[0.0], np.cumsum(weight_all[order])]), fresh_span=span,
    )


def _fresh(cfg: GeneratorConfig, category: np.ndarray, weight: np.ndarray, series: np.ndarray,
           rank: np.ndarray, pub_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(subtopic per item, -1 for the usual ones; publish times) with the news-like items
    chosen and published uniformly over the window. Never a series episode, one of the two
    fallback items or a category's most popular item (so every category keeps an item the
    usual draws can pick). Its own stream: with ``fresh_item_fraction`` 0 nothing is drawn."""
    subtopic = np.full(len(category), -1)
    if cfg.fresh_item_fraction <= 0:
        return subtopic, pub_s
    rng = np.random.default_rng([cfg.seed, FRESH_STREAM])
    top = np.zeros(len(category), dtype=bool)
    top[[np.flatnonzero(category == c)[np.argmax(weight[category == c])] for c in np.unique(category)]] = True
    fresh = (rng.random(len(category)) < cfg.fresh_item_fraction) & (series < 0) & (rank >= 2) & ~top
    subtopic[fresh] = rng.integers(0, FRESH_SUBTOPICS, int(fresh.sum()))
    pub_s = np.where(fresh, np.floor(rng.random(len(category)) * cfg.days * DAY_S), pub_s)
    return subtopic, pub_s


def _words(rng: np.random.Generator, n: int) -> list[str]:
    """``n`` distinct made-up words of two or three syllables."""
    out: dict[str, None] = {}
    while len(out) < n:
        out["".join(rng.choice(SYLLABLES, int(rng.integers(2, 4))))] = None
    return list(out)


def _texts(cfg: GeneratorConfig, w: _World) -> dict[str, list]:
    """Titles, descriptions and tags whose words carry what an item is: each category has
    its own words, a series has a name its episodes share, the rest is common filler; a
    fresh item is news about a subtopic of its category: half its words are the subtopic's,
    and it is tagged ``news``. Drawn from their own stream, so the events are the same with
    or without them."""
    rng = np.random.default_rng([cfg.seed, TEXT_STREAM])
    n_sub = CATEGORY_WORDS * cfg.categories + COMMON_WORDS
    fresh = bool((w.subtopic >= 0).any())
    vocab = _words(rng, n_sub + (SUBTOPIC_WORDS * FRESH_SUBTOPICS * cfg.categories if fresh else 0))
    topic = [vocab[c * CATEGORY_WORDS:(c + 1) * CATEGORY_WORDS] for c in range(cfg.categories)]
    common = vocab[CATEGORY_WORDS * cfg.categories:n_sub]
    names: dict[int, str] = {}
    titles, descriptions, tags = [], [], []
    for c, s, e, sub in zip(w.category.tolist(), w.series.tolist(), w.episode.tolist(), w.subtopic.tolist()):
        own = rng.choice(topic[c], 8, replace=False).tolist()
        if sub >= 0:
            at = n_sub + (c * FRESH_SUBTOPICS + sub) * SUBTOPIC_WORDS
            about = rng.choice(vocab[at:at + SUBTOPIC_WORDS], 4, replace=False).tolist()
            own = [about[0], own[0], *about[1:], *own[1:4]]
        if s > 0:
            name = names.setdefault(s, " ".join([*rng.choice(topic[c], 2, replace=False), rng.choice(common)]).title())
            titles.append(f"{name} {e}")
        else:
            name = None
            titles.append(" ".join([*own[:2], rng.choice(common)]).capitalize())
        descriptions.append(" ".join([*own[2:], *rng.choice(common, 4)]) + ".")
        tags.append(own[:2] + ([name.lower()] if name else []) + (["news"] if sub >= 0 else []))
    return {"title": titles, "description": descriptions, "tags": tags}


def make_catalog(cfg: GeneratorConfig) -> pa.Table:
    """The item catalog: ``schema.CATALOG`` plus content columns (description, tags,
    series_id, episode, duration_s; with fresh items also subcategory: their subtopic)."""
    w = _world(cfg)
    ids = np.arange(1, cfg.items + 1, dtype=np.int64)
    text = _texts(cfg, w)
    names = pa.array([f"cat_{c:02d}" for c in range(cfg.categories)])
    start_us = _epoch_us(cfg.start)
    is_ep = w.series > 0
    base = pa.Table.from_arrays([
        pa.array(ids),
        pa.array(text["title"], pa.string()),
        pa.DictionaryArray.from_arrays(pa.array(w.category, pa.int32()), names).cast(pa.string()),
        pa.array(start_us + w.pub_s.astype(np.int64) * US, schema.TS_TYPE),
        pa.array(w.available),
    ], schema=schema.CATALOG)
    if (w.subtopic >= 0).any():
        base = base.append_column("subcategory", pa.array(
            [f"cat_{c:02d}/{t}" if t >= 0 else None for c, t in zip(w.category.tolist(), w.subtopic.tolist())],
            pa.string()))
    return schema.conform_catalog(base.append_column("description", pa.array(text["description"]))
                                  .append_column("tags", pa.array(text["tags"], pa.list_(pa.string())))
                                  .append_column("series_id", pa.array([f"s{s}" if s > 0 else None
                                                                        for s in w.series.tolist()]))
                                  .append_column("episode", pa.array(np.where(is_ep, w.episode, 0), pa.int32(),
                                                                     mask=~is_ep))
                                  .append_column("duration_s", pa.array(w.duration_s, pa.float32())),
                                  "generator")


def _epoch_us(day: datetime.date) -> int:
    return (day - datetime.date(1970, 1, 1)).days * DAY_S * US


def _group(ordinal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(indices sorted by ordinal, bounds): step j is order[bounds[j]:bounds[j+1]]."""
    order = np.argsort(ordinal, kind="stable")
    bounds = np.concatenate([[0], np.cumsum(np.bincount(ordinal))])
    return order, bounds


def _ordinal(owner: np.ndarray, n_owners: int) -> np.ndarray:
    """Position of each row within its owner's contiguous block of rows."""
    counts = np.bincount(owner, minlength=n_owners)
    return np.arange(len(owner)) - (np.cumsum(counts) - counts)[owner]


def _simulate(cfg: GeneratorConfig, chunk: int) -> dict[str, np.ndarray]:
    """Event columns of one chunk of users, ordered by user then time."""
    if not 0 <= chunk < cfg.chunks:
        raise ValueError(f"chunk must be in [0, {cfg.chunks}), got {chunk}")
    w = _world(cfg)
    rng = np.random.default_rng([cfg.seed, chunk])
    first_user = chunk * cfg.chunk_users
    n = min(cfg.chunk_users, cfg.users - first_user)

    # Users: taste, base activity, decay and join day.
    taste = rng.dirichlet(cfg.taste_concentration * w.category_prior, size=n)
    taste = (1 - TASTE_EXPLORE) * taste + TASTE_EXPLORE * w.category_prior
    taste_cdf = np.cumsum(taste, axis=1)
    taste_cdf[:, -1] = 1.0
    base = np.minimum(rng.lognormal(np.log(cfg.sessions_per_day), cfg.activity_sigma, n),
                      MAX_SESSIONS_PER_DAY)
    decaying = rng.random(n) < cfg.decaying_fraction
    tau = cfg.decay_days * rng.lognormal(0, 0.5, n)
    late = (rng.random(n) < cfg.late_join_fraction) & (cfg.days > 1)
    join = np.where(late, rng.integers(1, max(cfg.days, 2), n), 0)
    # Fresh items: each user follows a few subtopics (their own stream: the rest is as without)
    news = len(w.fresh_order) > 0
    frng = np.random.default_rng([cfg.seed, chunk, FRESH_STREAM])
    sub_cdf = np.cumsum(frng.dirichlet(np.full(FRESH_SUBTOPICS, 0.5), n), axis=1) if news else None

    # Sessions per (user, day): Poisson around base x weekday x decay; a late
    # joiner's first visit is on the join day.
    age = np.arange(cfg.days)[None, :] - join[:, None]
    dow = DOW_MULTIPLIER[(cfg.start.weekday() + np.arange(cfg.days)) % 7]
    decay = np.where(decaying[:, None], np.exp(-np.maximum(age, 0) / tau[:, None]), 1.0)
    rate = base[:, None] * dow[None, :] * decay * (age >= 0)
    per_day = (rng.poisson(rate) + (late[:, None] & (age == 0))).ravel()
    s_user = np.repeat(np.arange(n).repeat(cfg.days), per_day)
    s_day = np.repeat(np.tile(np.arange(cfg.days), n), per_day)
    n_sess = len(s_user)
    hour = np.searchsorted(HOUR_CDF, rng.random(n_sess), side="right")
    s_start = s_day * float(DAY_S) + (hour + rng.random(n_sess)) * 3600.0
    order = np.lexsort((s_start, s_user))      # users stay contiguous, sessions in time order
    s_user, s_start = s_user[order], s_start[order]
    s_len = rng.geometric(1.0 / cfg.mean_session_len, n_sess)

    # Consumptions, chosen in order of each user's consumption ordinal so the
    # previous item carries across sessions. Publish checks use the planned
    # session start: sessions only ever move later, so they stay valid.
    c_sess = np.repeat(np.arange(n_sess), s_len)
    c_user = s_user[c_sess]
    c_start = s_start[c_sess]
    n_cons = len(c_sess)
    item = np.empty(n_cons, dtype=np.int64)
    code = np.empty(n_cons, dtype=np.int8)
    prev = np.full(n, -1)
    prev_complete = np.zeros(n, dtype=bool)
    steps, bounds = _group(_ordinal(c_user, n))
    for j in range(len(bounds) - 1):
        idx = steps[bounds[j]:bounds[j + 1]]
        u, t0 = c_user[idx], c_start[idx]
        p = prev[u]
        m = len(idx)

        nxt = np.where(p >= 0, w.next_ep[p], -1)
        p_cont = cfg.continue_prob + np.where(prev_complete[u], 1, -1) * CONTINUE_AFTER_COMPLETE
        cont = (nxt >= 0) & (w.pub_s[nxt] <= t0) & (rng.random(m) < p_cont)

        cat = (taste_cdf[u] < rng.random(m)[:, None]).sum(axis=1)
        pick = w.sample_in_category(cat, rng.random(m))
        blocked = np.flatnonzero((pick == p) | (w.pub_s[pick] > t0))
        for _ in range(REDRAWS):
            if not len(blocked):
                break
            pick[blocked] = w.sample_in_category(cat[blocked], rng.random(len(blocked)))
            still = (pick[blocked] == p[blocked]) | (w.pub_s[pick[blocked]] > t0[blocked])
            blocked = blocked[still]
        pick[blocked] = np.where(p[blocked] == w.fallback[0], w.fallback[1], w.fallback[0])
        if news:       # a share of picks: live news of the category, about a subtopic the user follows
            sub = (sub_cdf[u] < frng.random(m)[:, None]).sum(axis=1).clip(max=FRESH_SUBTOPICS - 1)
            fresh = w.sample_fresh(cat * FRESH_SUBTOPICS + sub, t0, cfg.fresh_days * DAY_S, frng.random(m))
            pick = np.where((frng.random(m) < cfg.fresh_share) & (fresh >= 0), fresh, pick)
        pick = np.where(cont, nxt, pick)

        # Engagement: series continuations and in-taste items complete more often.
        in_taste = taste[u, w.category[pick]] >= IN_TASTE_SHARE
        p_complete = COMPLETE_BASE + COMPLETE_CONTINUATION * cont + COMPLETE_IN_TASTE * in_taste
        r = rng.random(m)
        kind = np.where(r < p_complete, EventType.COMPLETE,
                        np.where(r < p_complete + (1 - p_complete) * CLICK_VS_PLAY,
                                 EventType.CLICK, EventType.PLAY))
        item[idx], code[idx] = pick, kind
        prev[u], prev_complete[u] = pick, kind == EventType.COMPLETE

    # Dwell, extra like/share rows, and the time each consumption takes.
    r = rng.random(n_cons)
    dur = w.duration_s[item]
    dwell = np.where(code == EventType.CLICK, 2 + 28 * r,
                     np.where(code == EventType.PLAY, dur * (0.1 + 0.7 * r), dur * (0.9 + 0.1 * r)))
    completed = code == EventType.COMPLETE
    like = completed & (rng.random(n_cons) < LIKE_PROB)
    share = completed & (rng.random(n_cons) < SHARE_PROB)
    like_off = 1 + 3 * rng.random(n_cons)
    share_off = like_off + 1 + 9 * rng.random(n_cons)
    n_imp = rng.integers(1, 4, n_cons)
    imp_item = w.sample_global(rng.random((n_cons, 3))).ravel()
    gap = 3 + rng.exponential(15.0, n_cons)                 # browsing before each consumption
    post = dwell + np.where(share, share_off, np.where(like, like_off, 0.0))

    # Timeline: consumption k of a session starts after the gaps up to k and
    # the dwell (+ like/share) of the ones before it. Sessions of a user are
    # then pushed apart so they never overlap (a loop over session ordinals).
    step = gap + post
    csum = np.cumsum(step)
    s_first = np.cumsum(s_len) - s_len
    s_base = csum[s_first] - step[s_first]
    offset = csum - post - s_base[c_sess]
    s_dur = csum[s_first + s_len - 1] - s_base
    s_end = s_start + s_dur
    rounds, rbounds = _group(_ordinal(s_user, n))
    for j in range(1, len(rbounds) - 1):
        idx = rounds[rbounds[j]:rbounds[j + 1]]
        s_start[idx] = np.maximum(s_start[idx], s_end[idx - 1] + SESSION_BREAK_S)
        s_end[idx] = s_start[idx] + s_dur[idx]
    t_cons = s_start[c_sess] + offset

    # Rows per consumption: impressions, the consumption, then like, share.
    per_cons = n_imp + 1 + like + share
    row_cons = np.repeat(np.arange(n_cons), per_cons)
    k = np.arange(len(row_cons)) - np.repeat(np.cumsum(per_cons) - per_cons, per_cons)
    m_imp = n_imp[row_cons]
    is_imp, is_main = k < m_imp, k == m_imp
    first_extra_like = like[row_cons] & (k == m_imp + 1)
    event = np.where(is_imp, EventType.IMPRESSION, np.where(is_main, code[row_cons], np.where(
        first_extra_like, EventType.LIKE, EventType.SHARE))).astype(np.int8)
    row_item = np.where(is_imp, imp_item[row_cons * 3 + np.minimum(k, 2)], item[row_cons])
    extra_off = np.where(first_extra_like, like_off[row_cons], share_off[row_cons])
    t = t_cons[row_cons] + np.where(
        is_imp, -gap[row_cons] * (m_imp - k) / (m_imp + 1),
        np.where(is_main, 0.0, dwell[row_cons] + extra_off))
    ts_rel = np.round(t * US).astype(np.int64)
    # Impressions show other, already published items; rows past the window are cut.
    keep = (ts_rel < cfg.days * DAY_S * US) & ~(is_imp & (
        (row_item == item[row_cons]) | (w.pub_s[row_item] > c_start[row_cons])))
    return {
        "user_id": first_user + 1 + c_user[row_cons[keep]].astype(np.int64),
        "item_id": row_item[keep] + 1,
        "event": event[keep],
        "ts": _epoch_us(cfg.start) + ts_rel[keep],
        "dwell_s": np.where(is_main, dwell[row_cons], np.nan)[keep].astype(np.float32),
        "day": ts_rel[keep] // (DAY_S * US),
    }


def _events_table(cols: dict[str, np.ndarray]) -> pa.Table:
    dwell = cols["dwell_s"]
    return pa.Table.from_arrays([
        pa.array(cols["user_id"]),
        pa.array(cols["item_id"]),
        EventType.decode(cols["event"]),
        pa.array(cols["ts"], schema.TS_TYPE),
        pa.array(dwell, pa.float32(), mask=np.isnan(dwell)),
    ], schema=schema.EVENTS)


def generate_chunk(cfg: GeneratorConfig, chunk: int) -> pa.Table:
    """Events of users [chunk*chunk_users, ...): ``schema.EVENTS`` plus a ``dt`` string column."""
    cols = _simulate(cfg, chunk)
    dt = pa.DictionaryArray.from_arrays(pa.array(cols["day"], pa.int32()),
                                        pa.array(cfg.day_names()))
    return _events_table(cols).append_column("dt", dt.cast(pa.string()))


def _write_chunk(cfg: GeneratorConfig, events_uri: str, chunk: int) -> tuple[int, int]:
    """Simulate one chunk and write one file per day; returns (rows, files) written."""
    table = generate_chunk(cfg, chunk)
    files = storage.write_partitioned(table, events_uri, f"part-{chunk:05d}.parquet")
    return table.num_rows, len(files)


def _run_chunks(cfg: GeneratorConfig, events_uri: str) -> tuple[int, int]:
    """Write every chunk; as Ray tasks when Ray is up, else in-process. Returns (rows, files)."""
    ray = sys.modules.get("ray")     # not imported means not initialised: skip the import cost
    if ray is None or not ray.is_initialized():
        results = [_write_chunk(cfg, events_uri, c) for c in range(cfg.chunks)]
    else:
        task = ray.remote(_write_chunk)
        limit = max(1, int(2 * ray.cluster_resources().get("CPU", 1)))
        pending, results = [], []
        for c in range(cfg.chunks):
            if len(pending) >= limit:
                done, pending = ray.wait(pending, num_returns=1)
                results += ray.get(done)
            pending.append(task.remote(cfg, events_uri, c))
        results += ray.get(pending)
    return sum(r for r, _ in results), sum(f for _, f in results)


def generate(cfg: GeneratorConfig, out_uri: str, overwrite: bool = False) -> GenerateSummary:
    """Write the catalog and the Hive-partitioned events under ``out_uri``.

    A previous generator output there (it has ``generate.json``) is replaced,
    so partitions of an earlier, larger run cannot mix with this one; events
    that this generator did not write are never deleted unless ``overwrite``.
    """
    catalog_uri = storage.join(out_uri, "catalog", "catalog.parquet")
    events_uri = storage.join(out_uri, "events")
    generated = storage.exists(storage.join(out_uri, "generate.json"))
    if storage.list_files(events_uri) and not (generated or overwrite):
        raise FileExistsError(f"{events_uri} already holds events not written by the generator; "
                              "choose another --out or pass --overwrite")
    storage.write_parquet(make_catalog(cfg), catalog_uri)
    storage.delete_dir(events_uri)
    rows, files = _run_chunks(cfg, events_uri)
    summary = GenerateSummary(
        events_uri=events_uri, catalog_uri=catalog_uri, users=cfg.users, items=cfg.items,
        events=rows, days=cfg.day_names(), files=files)
    storage.write_json(storage.join(out_uri, "generate.json"),
                       {"config": asdict(cfg), "summary": asdict(summary)})
    return summary
