"""What a run's committed lists are made of: the ``lists`` section of its metrics.json.

The evaluation scores the models alone on held-out items; this describes the lists the
run actually wrote (after the list rules), every user's: their length, category and
embedding diversity, novelty, freshness, share of new items, catalog coverage and the
rule-hit counts. Each metric is defined once, in ``raymedia.metrics``.

Streaming and bounded: the scoring actors (``score.Scorer``) attach each user's
per-list values to the row (``STATS``, never written); ``writer.write_batch`` sums them
per file into ``ListSums`` (fixed-point integers, and how often each vocabulary index
was listed); the driver adds the files' sums into one vector of vocabulary size
(``total``) and derives the rest from it (``summary``). The per-list values are summed
as integers of ``SCALE``, so the result is the same for any batching, file split or
order, to the last digit.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from raymedia import metrics

STATS = "list_stats"        # the Scorer's per-user struct column that write_batch sums
SCALE = 10**9               # per-list values kept as integers of 1e-9: exact sums
DIGITS = 6                  # decimals reported
US_PER_DAY = 86_400_000_000


def padded(idx: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """(lists, longest) int64 vocabulary indices of lists stored one after another, 0-padded."""
    lengths = np.asarray(lengths, dtype=np.int64)
    out = np.zeros((len(lengths), max(int(lengths.max()) if len(lengths) else 0, 1)), dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, np.arange(len(rows)) - starts] = idx
    return out


def _fixed(values: np.ndarray) -> pa.Array:
    """float64 per-list values as int64 of 1/SCALE; null where undefined (NaN)."""
    ok = ~np.isnan(values)
    return pa.array(np.rint(np.where(ok, values, 0.0) * SCALE).astype(np.int64), mask=~ok)


def user_stats(idx: np.ndarray, lengths: np.ndarray, category: np.ndarray,
               vectors: np.ndarray | None) -> pa.StructArray:
    """The ``STATS`` column of a batch of lists (``rules.Lists``' ``idx`` and ``lengths``):
    per user the listed vocabulary indices and the per-list metrics that need the
    vocabulary's categories or the recommender's item vectors (which only the actor holds)."""
    top = padded(idx, lengths)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    emb = (metrics.list_embedding_diversity(top, vectors) if vectors is not None
           else np.full(len(top), np.nan))
    return pa.StructArray.from_arrays(
        [pa.ListArray.from_arrays(offsets, pa.array(np.asarray(idx, dtype=np.int64))),
         _fixed(metrics.list_category_diversity(top, category)),
         _fixed(emb),
         pa.array(metrics.list_distinct_categories(top, category).astype(np.int64))],
        names=["idx", "category_diversity", "embedding_diversity", "categories"])


@dataclass
class ListSums:
    """Sums over some users' lists: additive, so files and batches combine in any order.
    ``items`` / ``counts``: each listed vocabulary index and how often it was listed
    (sparse per file; ``total`` makes it one dense vector)."""
    users: int = 0
    categories: int = 0                 # distinct known categories, summed over lists
    category_diversity: int = 0         # of SCALE, over the lists where it is defined
    category_lists: int = 0
    embedding_diversity: int = 0        # of SCALE
    embedding_lists: int = 0
    items: list[int] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, stats: pa.ChunkedArray | pa.Array) -> ListSums:
        """The sums of a ``STATS`` column (one output file's users)."""
        s = stats.combine_chunks() if isinstance(stats, pa.ChunkedArray) else stats
        flat = pc.list_flatten(s.field("idx")).to_numpy(zero_copy_only=False).astype(np.int64)
        dense = np.bincount(flat)
        items = np.flatnonzero(dense)
        counts = dense[items]
        def total(name: str) -> int:
            return int(pc.sum(s.field(name)).as_py() or 0)

        def defined(name: str) -> int:
            return len(s) - s.field(name).null_count

        return cls(users=len(s), categories=total("categories"),
                   category_diversity=total("category_diversity"), category_lists=defined("category_diversity"),
                   embedding_diversity=total("embedding_diversity"),
                   embedding_lists=defined("embedding_diversity"), items=items.tolist(), counts=counts.tolist())

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


@dataclass
class RunLists:
    """A whole run's ``ListSums``, the item counts dense (one int64 per vocabulary index)."""
    sums: ListSums
    listed: np.ndarray


def total(written: Iterable[dict], vocab_size: int) -> RunLists | None:
    """The sums of a run's recommendations files (``write_batch`` rows with a ``lists``
    column); None when scoring made none (list statistics off)."""
    out, listed, seen = ListSums(), np.zeros(vocab_size, dtype=np.int64), False
    for w in written:
        if w["table"] != "recommendations" or not w.get("lists"):
            continue
        seen = True
        s = ListSums(**json.loads(w["lists"]))
        for f in ("users", "categories", "category_diversity", "category_lists", "embedding_diversity",
                  "embedding_lists"):
            setattr(out, f, getattr(out, f) + getattr(s, f))
        np.add.at(listed, np.asarray(s.items, dtype=np.int64), np.asarray(s.counts, dtype=np.int64))
    return RunLists(out, listed) if seen else None


def item_ages(catalog: pa.Table, item_ids: pa.Array, asof_us: int) -> np.ndarray:
    """Per vocabulary index (``item_ids``: index i + 1): days from the item's publish date to
    ``asof``; NaN where the catalog has no date (or does not list the item) and for padding."""
    catalog = catalog.combine_chunks()
    at = pc.index_in(pc.cast(catalog["item_id"], pa.string()),
                     value_set=pc.cast(item_ids, pa.string())).combine_chunks()
    rows = np.flatnonzero(at.is_valid().to_numpy(zero_copy_only=False))
    where = at.filter(at.is_valid()).to_numpy(zero_copy_only=False).astype(np.int64) + 1
    published = pc.cast(catalog["published_at"], pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
    out = np.full(len(item_ids) + 1, np.nan)
    out[where] = (asof_us - published[rows]) / US_PER_DAY
    return out


def _round(x: float) -> float | None:
    return None if x is None or np.isnan(x) else round(float(x), DIGITS)


def summary(run: RunLists, popularity: np.ndarray, age_days: np.ndarray, recommendable: np.ndarray,
            rule_hits: dict[str, int], recommender: str) -> dict:
    """metrics.json's ``lists``: means over the run's lists (users) or over its listed items,
    from the summed ``run`` and per vocabulary index the training ``popularity`` (novelty;
    0 = a new item), ``age_days`` (freshness) and ``recommendable`` (coverage's catalog)."""
    s, listed = run.sums, run.listed
    n = int(listed.sum())
    dated = metrics.freshness_of_counts(listed, age_days)
    info = metrics.self_information(popularity)
    catalog = int(np.asarray(recommendable, dtype=bool)[1:].sum())
    distinct = int((listed[1:] > 0).sum())
    return {
        "users": s.users,
        "listed_items": n,
        "mean_length": _round(n / s.users) if s.users else None,
        "category_diversity": (_round(s.category_diversity / SCALE / s.category_lists)
                               if s.category_lists else None),
        "category_diversity_lists": s.category_lists,
        "distinct_categories": _round(s.categories / s.users) if s.users else None,
        "embedding_diversity": (_round(s.embedding_diversity / SCALE / s.embedding_lists)
                                if s.embedding_lists else None),
        "embedding_model": recommender,
        "novelty_bits": _round((listed[1:] * info[1:]).sum() / n) if n else None,
        "mean_age_days": _round(dated["mean_age_days"]),
        "median_age_days": _round(dated["median_age_days"]),
        "dated_items": dated["dated_items"],
        "new_item_share": _round(listed[1:][np.asarray(popularity)[1:] <= 0].sum() / n) if n else None,
        "distinct_items": distinct,
        "catalog_items": catalog,
        "coverage": _round(distinct / catalog) if catalog else None,
        "rule_hits": dict(rule_hits),
    }


def of_run(written: Iterable[dict], vocab, catalog_uri: str, asof: str, rule_hits: dict[str, int],
           recommender: str) -> dict | None:
    """metrics.json's ``lists`` of a run: its recommendations files' sums (``write_batch``
    rows), its vocabulary (``Vocab``: popularity, ids) and the day's catalog (publish dates,
    what was recommendable on ``asof``, YYYY-MM-DD); None when scoring kept no statistics."""
    from raymedia import features
    from raymedia.data import read
    run = total(written, vocab.size)
    if run is None:
        return None
    catalog = read.read_catalog(catalog_uri)
    asof_us = features.day_start_us(asof)
    return summary(run, vocab.popularity, item_ages(catalog, vocab.item_ids, asof_us),
                   vocab.recommendable(catalog, asof_us), rule_hits, recommender)
