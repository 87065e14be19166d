"""Item vocabulary: item ids <-> contiguous indices, saved with every model.

Index 0 is padding; items are indices 1..n. Scoring uses exactly the mapping a
model was trained with; ids the vocabulary does not know map to 0 and are
counted and skipped. Stored as Parquet (no pickle).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymedia import storage


@dataclass(frozen=True)
class Vocab:
    item_ids: pa.Array            # item_ids[i] has index i + 1
    item_category: np.ndarray     # (n + 1,) int64 category index per item index, 0 = unknown
    categories: list[str]         # category names; category index c is categories[c - 1]
    popularity: np.ndarray        # (n + 1,) float64 interaction counts in the training data

    @property
    def size(self) -> int:
        """Number of indices including padding."""
        return len(self.item_ids) + 1

    @property
    def num_categories(self) -> int:
        return len(self.categories) + 1

    def lookup(self, ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """Indices of ids; 0 where the vocabulary does not know the id."""
        idx = pc.index_in(ids, value_set=self.item_ids)
        return pc.fill_null(pc.add(idx, 1), 0).to_numpy().astype(np.int64)

    def ids(self, indices: np.ndarray) -> pa.Array:
        """Original item ids (type kept) of indices >= 1."""
        return self.item_ids.take(pa.array(np.asarray(indices, dtype=np.int64) - 1))

    def category_names(self, cat_indices: np.ndarray) -> pa.Array:
        names = pa.array(["unknown", *self.categories])
        return names.take(pa.array(np.asarray(cat_indices, dtype=np.int64)))

    def digest(self, size: int | None = None) -> str:
        """Identity of the mapping (of its first ``size - 1`` items when given);
        models trained together must share it, and an extension keeps its base's."""
        h = hashlib.sha256()
        ids = self.item_ids if size is None else self.item_ids.slice(0, size - 1)
        for s in ids.cast(pa.string()).to_pylist():
            h.update(s.encode() + b"\0")
        return h.hexdigest()[:16]

    def recommendable(self, catalog: pa.Table, asof_us: int) -> np.ndarray:
        """(size,) bool: items today's catalog lists as available and published before ``asof``.

        The catalog is the source of truth for what may be shown: items it does not
        list (known only from the logs) and the padding index are never recommended.
        """
        ok = pc.fill_null(catalog["available"], True)
        published = pc.cast(catalog["published_at"], pa.int64())
        ok = pc.and_(ok, pc.fill_null(pc.less(published, asof_us), True))
        idx = self.lookup(catalog["item_id"].filter(ok))
        out = np.zeros(self.size, dtype=bool)
        out[idx[idx > 0]] = True
        return out

    def to_table(self) -> pa.Table:
        cats = self.category_names(self.item_category[1:])
        return pa.table({"item_id": self.item_ids, "category": cats,
                         "popularity": pa.array(self.popularity[1:])})

    def save(self, uri: str) -> None:
        storage.write_parquet(self.to_table(), uri)

    @classmethod
    def from_table(cls, t: pa.Table) -> "Vocab":
        cats = sorted(set(c for c in t["category"].to_pylist() if c and c != "unknown"))
        cat_index = {c: i + 1 for i, c in enumerate(cats)}
        item_cat = np.zeros(t.num_rows + 1, dtype=np.int64)
        item_cat[1:] = [cat_index.get(c, 0) for c in t["category"].to_pylist()]
        pop = np.zeros(t.num_rows + 1)
        pop[1:] = t["popularity"].to_numpy()
        return cls(t["item_id"].combine_chunks(), item_cat, cats, pop)

    @classmethod
    def load(cls, uri: str) -> "Vocab":
        fs, path = storage.resolve(uri)
        return cls.from_table(pq.read_table(path, filesystem=fs))

    @classmethod
    def build(cls, catalog: pa.Table, log_item_ids: pa.Array, asof_us: int | None = None,
              base: "Vocab | None" = None, counts: pa.Table | None = None) -> "Vocab":
        """Vocabulary of a model trained as of ``asof``.

        Without ``base``: catalog items published before ``asof`` (sorted), then
        items seen only in the logs (sorted, category unknown). With ``base`` (a
        warm start, or scoring new content with an older model): ``base``'s items
        keep their indices and categories, and the new items are appended, each
        in its catalog category when ``base`` knows that category, else unknown.
        The popularity is ``counts`` (``item_id, count``: the training data's
        interactions; items it lacks 0) when given, else ``base``'s (new items 0).
        """
        vocab = cls._build(catalog, log_item_ids, asof_us, base)
        if counts is None:
            return vocab
        pop = np.zeros(vocab.size)
        idx = vocab.lookup(counts["item_id"].cast(vocab.item_ids.type))
        known = idx > 0
        pop[idx[known]] = counts["count"].to_numpy()[known]
        return cls(vocab.item_ids, vocab.item_category, vocab.categories, pop)

    @classmethod
    def _build(cls, catalog: pa.Table, log_item_ids: pa.Array, asof_us: int | None,
               base: "Vocab | None") -> "Vocab":
        cat_ids = catalog["item_id"]
        if asof_us is not None:
            published = pc.cast(catalog["published_at"], pa.int64())
            catalog = catalog.filter(pc.fill_null(pc.less(published, asof_us), True))
            cat_ids = catalog["item_id"]
        cat_ids = pc.unique(cat_ids).sort()
        cat_ids = cat_ids.combine_chunks() if isinstance(cat_ids, pa.ChunkedArray) else cat_ids
        try:
            log_ids = pc.drop_null(pc.unique(log_item_ids.cast(cat_ids.type)))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise ValueError(f"item ids in the logs ({log_item_ids.type}) do not match the "
                             f"catalog's ({cat_ids.type}): {exc}") from exc
        known = base.item_ids if base is not None else pa.array([], cat_ids.type)
        new_cat = pc.filter(cat_ids, pc.invert(pc.is_in(cat_ids, value_set=known)))
        taken = pa.concat_arrays([known, new_cat])
        new_log = pc.filter(log_ids, pc.invert(pc.is_in(log_ids, value_set=taken))).sort()
        names = pc.fill_null(catalog["category"], "unknown").combine_chunks()
        new_cat_names = names.take(pc.index_in(new_cat, value_set=catalog["item_id"].combine_chunks()))
        if base is None:
            t = pa.table({"item_id": pa.concat_arrays([new_cat, new_log]),
                          "category": pa.concat_arrays([new_cat_names, pa.array(["unknown"] * len(new_log), pa.string())]),
                          "popularity": np.zeros(len(new_cat) + len(new_log))})
            return cls.from_table(t)
        index = {c: i + 1 for i, c in enumerate(base.categories)}
        new_item_cat = [index.get(c, 0) for c in new_cat_names.to_pylist()] + [0] * len(new_log)
        return cls(pa.concat_arrays([known, new_cat, new_log.cast(known.type)]),
                   np.concatenate([base.item_category, np.array(new_item_cat, dtype=np.int64)]),
                   list(base.categories),
                   np.concatenate([base.popularity, np.zeros(len(new_item_cat))]))
