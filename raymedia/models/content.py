"""Items as content: text and metadata to vectors, learned here, no downloaded weights.

A media catalog churns (a news item lives for hours), and whatever a model learns about an
item id says nothing about tomorrow's items. So an item is also what it is: its title,
description, tags, category, series, language, length, and optionally a vector computed
elsewhere (``embedding``: a large text or vision model in its own job).

Tokens need no vocabulary file and work for any language: every word (a run of Unicode word
characters, lower case) and the character n-grams of ``<word>`` (``NGRAMS``, fastText's
subwords) are hashed into ``buckets`` rows of one embedding bag. A language written without
spaces (Chinese, Japanese) is one long "word" per run, and its character bigrams and trigrams
carry the meaning. Each field prefixes its tokens (``t:`` title, ``g:`` a tag, ...), so the
same word in a title and in a tag are different rows. The hash is CRC-32: the same token gets
the same row in every process and on every machine (Python's ``hash`` is salted).

``ContentEncoder``: the sum of the item's token rows (starting at zero), plus a projection
of ``embedding``; one vector per item, computed once per run for the whole catalog, so scoring
a new item costs nothing per user. ``ItemContent``: the models' item vectors are id row + content vector,
with the id part dropped for a share of items while training (DropoutNet), so the content
path alone must carry the meaning, and an item with no trained id row is scored from its
content.
"""

from __future__ import annotations

import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from torch import nn

NGRAMS = (2, 3, 4)
MAX_TOKENS = 256                  # per item: a long description adds little after this
_WORD = re.compile(r"\w+", re.UNICODE)
# field -> token prefix; text fields are split into words and n-grams, the others are whole
TEXT_FIELDS = {"title": "t", "description": "d"}
WHOLE_FIELDS = {"category": "c", "subcategory": "s", "series_id": "r", "language": "l"}


def text_tokens(text: str, prefix: str) -> list[str]:
    """Words and the character n-grams of ``<word>``, each with the field's prefix."""
    out = []
    for word in _WORD.findall(text.lower()):
        out.append(f"{prefix}:{word}")
        marked = f"<{word}>"
        out += [f"{prefix}#{marked[i:i + n]}" for n in NGRAMS for i in range(len(marked) - n + 1)
                if n < len(marked)]
    return out


def item_tokens(row: dict) -> list[str]:
    """Every token of one catalog row (a dict of its columns; missing or null fields add none)."""
    out: list[str] = []
    for field, prefix in TEXT_FIELDS.items():
        if row.get(field):
            out += text_tokens(str(row[field]), prefix)
    for tag in row.get("tags") or []:
        if tag:
            out.append(f"g:{str(tag).lower()}")              # the tag as a whole ...
            out += text_tokens(str(tag), "g")                # ... and its words
    for field, prefix in WHOLE_FIELDS.items():
        value = row.get(field)
        if value not in (None, "", "unknown"):
            out.append(f"{prefix}:{str(value).lower()}")
    if row.get("duration_s") is not None and row["duration_s"] > 0:
        out.append(f"len:{int(math.log2(1 + float(row['duration_s'])))}")   # log2 length bucket
    return out[:MAX_TOKENS]


def bucket(token: str, buckets: int) -> int:
    """Row of a token: CRC-32, the same in every process; row 0 is never used (padding)."""
    return 1 + zlib.crc32(token.encode("utf-8")) % (buckets - 1)


@dataclass(frozen=True)
class ContentTokens:
    """Hashed tokens of items in vocabulary order, as one flat bag: item i's token rows are
    ``ids[offsets[i]:offsets[i + 1]]``. ``embedding``: (n, E) float32 or None;
    ``has_content``: items with any token or an embedding (the rest keep the id path only)."""
    ids: np.ndarray                   # (nnz,) int64
    offsets: np.ndarray               # (n + 1,) int64
    embedding: np.ndarray | None
    has_content: np.ndarray           # (n,) bool
    buckets: int = 0                  # the hash rows the ids index

    @property
    def n_items(self) -> int:
        return len(self.offsets) - 1


def tokenize(catalog: pa.Table, buckets: int) -> ContentTokens:
    """Tokens of every row of ``catalog`` (already in the order of the items to encode)."""
    rows = catalog.to_pylist()
    ids, offsets = [], [0]
    for row in rows:
        ids += [bucket(t, buckets) for t in item_tokens(row)]
        offsets.append(len(ids))
    emb = None
    has = np.diff(offsets) > 0
    if "embedding" in catalog.column_names:
        col = catalog["embedding"].combine_chunks()
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        if valid.any():
            size = len(col[int(np.flatnonzero(valid)[0])])
            emb = np.zeros((len(rows), size), np.float32)
            emb[valid] = np.asarray(col.filter(pa.array(valid)).flatten(), np.float32).reshape(-1, size)
            has |= valid
    return ContentTokens(np.asarray(ids, np.int64), np.asarray(offsets, np.int64), emb, has, buckets)


class ContentEncoder(nn.Module):
    """Content -> one vector per item: the sum of its token rows + projected ``embedding``.

    The token rows start at zero, not at random like the id rows: most of an item's tokens
    are its own (its title's rarer words and their n-grams) and say nothing until training
    has seen them, and random rows put their noise into every item's vector at once. From
    zero, a row grows only as far as the items that carry it agree, and a token never
    trained (a new item's own words) adds nothing. Summed, not averaged: each row then
    learns at the pace of an id row, where a mean over fifty tokens gave each a fiftieth
    of the gradient. Measured on one generated world (8 epochs, BENCHMARKS.md): random rows
    averaged took the sequence model's validation NDCG@10 to 0.20 against 0.27 id-only,
    normalised to the id rows' scale to 0.28, zero rows averaged to 0.22, zero rows summed
    to 0.30."""

    def __init__(self, dim: int, buckets: int = 1 << 18, embedding_dim: int = 0):
        super().__init__()
        self.buckets = buckets
        self.bag = nn.EmbeddingBag(buckets, dim, mode="sum", padding_idx=0)
        nn.init.zeros_(self.bag.weight)
        self.project = nn.Linear(embedding_dim, dim, bias=False) if embedding_dim else None

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor,
                embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(n, dim) for the n items of a flat bag (``offsets`` of n + 1 entries)."""
        out = self.bag(ids, offsets[:-1])             # an item without tokens: zeros
        if self.project is not None and embedding is not None:
            out = out + self.project(embedding.to(out.dtype))
        return out


def catalog_tokens(catalog: pa.Table, item_ids: pa.Array, buckets: int) -> ContentTokens:
    """Tokens of vocabulary indices 0..n (``item_ids[i]`` has index i + 1, as in ``Vocab``;
    index 0 is padding) from the catalog rows with those ids; items the catalog lacks get
    no content."""
    import pyarrow.compute as pc
    at = pc.index_in(item_ids, value_set=catalog["item_id"].cast(item_ids.type))
    return tokenize(catalog.take(pa.concat_arrays([pa.nulls(1, at.type), at])), buckets)


@dataclass(frozen=True)
class ContentSpec:
    """The content path of a model (saved with its constructor arguments): hash ``buckets``
    (0: no content path), the size of the catalog's ``embedding`` (0: none) and the share
    of items whose id part is dropped in each training step."""
    buckets: int = 1 << 18
    embedding_dim: int = 0
    id_dropout: float = 0.5


class ItemContent(nn.Module):
    """The content half of a model's item vectors: item vector = id row + content vector.

    The encoder's weights are the model's; the tokens are not (non-persistent buffers, set
    with ``set_tokens``): they come from the catalog of the day, so a model scores items
    published after it was trained, and an edited title changes its item's vector.

    While training, each item's id part is dropped with probability ``id_dropout`` (one
    draw per item per call, DropoutNet), and items without content always keep theirs, so
    the content path alone must carry the meaning of an item."""

    def __init__(self, dim: int, spec: ContentSpec):
        super().__init__()
        self.spec = spec
        self.encoder = ContentEncoder(dim, spec.buckets, spec.embedding_dim)
        self.set_tokens(ContentTokens(np.zeros(0, np.int64), np.zeros(1, np.int64), None, np.zeros(0, bool)))

    def set_tokens(self, tokens: ContentTokens) -> None:
        if tokens.buckets and tokens.buckets != self.spec.buckets:
            raise ValueError(f"content tokens hashed into {tokens.buckets} rows, the model has "
                             f"{self.spec.buckets} (content.buckets changed since it was trained)")
        if tokens.embedding is not None and tokens.embedding.shape[1] != self.spec.embedding_dim:
            raise ValueError(f"the catalog's embeddings have size {tokens.embedding.shape[1]}, the model "
                             f"was built for {self.spec.embedding_dim}")
        device = self.encoder.bag.weight.device     # torch.tensor copies: tokens arrive read-only from Ray
        self.register_buffer("ids", torch.tensor(tokens.ids, device=device), persistent=False)
        self.register_buffer("offsets", torch.tensor(tokens.offsets, device=device), persistent=False)
        emb = None
        if self.spec.embedding_dim:
            emb = torch.zeros(tokens.n_items, self.spec.embedding_dim) if tokens.embedding is None \
                else torch.tensor(tokens.embedding)
            emb = emb.to(device)
        self.register_buffer("embedding", emb, persistent=False)
        self.register_buffer("has_content", torch.tensor(tokens.has_content, device=device),
                             persistent=False)
        self.register_buffer("cached", None, persistent=False)

    def cache(self) -> None:
        """Inference: every item's content vector computed once, here, in the module's
        current dtype, so a batch of users gathers its items' rows instead of encoding
        their tokens again. Used while the module is in eval mode; new tokens drop it."""
        with torch.no_grad():
            self.cached = self.vectors(torch.arange(len(self.has_content), device=self.has_content.device))

    def vectors(self, idx: torch.Tensor) -> torch.Tensor:
        """Content vectors of item indices ``idx`` (any shape); zero for items without content
        or beyond the tokens."""
        flat = idx.reshape(-1)
        n = len(self.has_content)
        inside = flat < n
        safe = torch.where(inside, flat, torch.zeros_like(flat))
        if self.cached is not None and not self.training:   # an item's vector is its own: the same bits
            return (self.cached[safe] * inside.unsqueeze(1).to(self.cached.dtype)).reshape(*idx.shape, -1)
        starts, ends = self.offsets[safe], self.offsets[safe + 1]
        lengths = torch.where(inside, ends - starts, torch.zeros_like(starts))
        # the chosen items' token rows, one bag after another
        first = torch.repeat_interleave(starts - torch.cumsum(lengths, 0) + lengths, lengths)
        rows = self.ids[first + torch.arange(int(lengths.sum()), device=idx.device)]
        bag_offsets = torch.cumsum(lengths, 0) - lengths
        emb = None if self.embedding is None else self.embedding[safe]
        out = self.encoder(rows, torch.cat([bag_offsets, lengths.sum().reshape(1)]), emb)
        keep = (inside & self.has_content[safe]).unsqueeze(1).to(out.dtype)
        return (out * keep).reshape(*idx.shape, -1)

    def combine(self, id_rows: torch.Tensor, idx: torch.Tensor,
                fallback: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        """Id rows of ``idx`` plus their content vectors. While training, the id parts of
        the dropped items become ``fallback()``'s rows (every item's, as for an item whose
        id no training touched: ``category_fallback``); zero without one."""
        if self.training and self.spec.id_dropout > 0:
            n = max(len(self.has_content), int(idx.max()) + 1 if idx.numel() else 1)
            has = F.pad(self.has_content, (0, n - len(self.has_content)))
            drop = ((torch.rand(n, device=idx.device) < self.spec.id_dropout) & has)[idx].unsqueeze(-1)
            instead = torch.zeros_like(id_rows) if fallback is None else fallback()[idx].to(id_rows.dtype)
            id_rows = torch.where(drop, instead, id_rows)
        return id_rows + self.vectors(idx).to(id_rows.dtype)


def category_fallback(table: torch.Tensor, category: torch.Tensor, weight: torch.Tensor,
                      wanted: torch.Tensor) -> torch.Tensor:
    """The id row an item gets when its own says nothing (new, never trained, or dropped
    in training): the ``weight``-weighted mean of the rows of ``table`` in its category,
    for each category of ``wanted``; of all rows for category 0 (unknown) and for a
    category no row has. ``category`` and ``weight`` are per row of ``table``."""
    k = int(max(int(wanted.max()) if len(wanted) else 0, int(category.max()) if len(category) else 0)) + 1
    sums = torch.zeros(k, table.shape[1], dtype=table.dtype, device=table.device)
    sums = sums.index_add(0, category, weight[:, None] * table)
    mass = torch.zeros(k, dtype=table.dtype, device=table.device).index_add(0, category, weight)
    overall = (weight[:, None] * table).sum(0) / weight.sum().clamp(min=1e-12)
    centroid = torch.where(mass[:, None] > 0, sums / mass.clamp(min=1e-12)[:, None], overall)
    return torch.where((wanted > 0)[:, None], centroid[wanted], overall)


def spec_for(tokens: ContentTokens | None, id_dropout: float) -> dict | None:
    """The ``content`` constructor argument of a model trained on ``tokens`` (None: no
    content path): JSON-able, saved with the model's other arguments."""
    if tokens is None:
        return None
    size = 0 if tokens.embedding is None else int(tokens.embedding.shape[1])
    return {"buckets": tokens.buckets, "embedding_dim": size, "id_dropout": id_dropout}


def in_use(catalog: pa.Table, enabled: str) -> bool:
    """Whether a run uses content (``content.enabled``: auto = the catalog has a content column)."""
    from raymedia.schema import CATALOG_CONTENT
    has_columns = any(c in catalog.column_names for c in CATALOG_CONTENT.names)
    return enabled == "on" or (enabled == "auto" and has_columns)


def run_tokens(catalog: pa.Table, item_ids: pa.Array, enabled: str, buckets: int) -> ContentTokens | None:
    """A run's content: the tokens of its vocabulary's items from the day's catalog, or None
    when the run uses none (``in_use``)."""
    return catalog_tokens(catalog, item_ids, buckets) if in_use(catalog, enabled) else None


class WithContent:
    """For a model with an ``item_emb`` table: item rows are id rows, plus content when the
    model was built with a content path (``content``: ``ContentSpec`` fields)."""

    item_emb: nn.Embedding
    item_content: ItemContent | None

    def init_content(self, dim: int, content: dict | None) -> None:
        self.item_content = ItemContent(dim, ContentSpec(**content)) if content else None

    def set_content(self, tokens: ContentTokens | None) -> None:
        """The day's content of every item (a model without a content path ignores it; one
        with it needs it)."""
        if self.item_content is not None:
            if tokens is None:
                raise ValueError("this model scores items by their content, but the run has none "
                                 "(a catalog without content columns, or content.enabled=off)")
            self.item_content.set_tokens(tokens)

    def cache_content(self) -> None:
        """Inference: the content vector of every item computed once (``ItemContent.cache``),
        not per batch of users; call it after the last change of dtype or tokens."""
        if self.item_content is not None:
            self.item_content.cache()

    def item_rows(self, idx: torch.Tensor) -> torch.Tensor:
        rows = self.item_emb(idx)
        return rows if self.item_content is None else self.item_content.combine(rows, idx, self._fallback)

    def _fallback(self) -> torch.Tensor:
        """Every item's category fallback from the current id rows (no gradient through it),
        weighted as ``grow_items`` weighs them (``sample_prob``: popularity + 1)."""
        with torch.no_grad():
            table = self.item_emb.weight
            return category_fallback(table, self.item_category, self.sample_prob.to(table.dtype),
                                     self.item_category)

    def all_item_rows(self) -> torch.Tensor:
        """Every item's row (the id table itself when there is no content path)."""
        if self.item_content is None:
            return self.item_emb.weight
        return self.item_rows(torch.arange(self.item_emb.num_embeddings, device=self.item_emb.weight.device))


@dataclass(frozen=True)
class CategoryFill:
    """Categories predicted from content for catalog rows that have none (text
    classification, fastText-style), with the accuracy measured on a held-out share of the
    rows that have one (None when too few have one to hold any out)."""
    category: pa.Array                # the catalog's categories, nulls/"unknown" filled where content allows
    predicted: int                    # rows given a predicted category
    accuracy: float | None
    held_out: int

    def apply(self, catalog: pa.Table) -> pa.Table:
        """``catalog`` with these categories (the vocabulary and the models take them from it)."""
        return catalog.set_column(catalog.schema.get_field_index("category"), "category", self.category)

    def summary(self) -> dict:
        """What a run reports (``details["content"]`` of its commit)."""
        return {"categories_filled": self.predicted, "category_accuracy": self.accuracy,
                "category_held_out": self.held_out}


def fill_categories(catalog: pa.Table, buckets: int = 1 << 16, dim: int = 16, epochs: int = 30,
                    seed: int = 0) -> CategoryFill:
    """Predict a category for rows whose category is missing or 'unknown' from their other
    content (title, description, tags, ...; never the category itself). One in five
    labelled rows, chosen by a hash of the item id, is held out to report the accuracy;
    the model used for the predictions is then trained on all labelled rows."""
    import pyarrow.compute as pc
    names = pc.fill_null(catalog["category"], "unknown").combine_chunks()
    labelled = pc.not_equal(names, "unknown").to_numpy(zero_copy_only=False)
    if labelled.all():                       # the usual night: nothing to fill, nothing to tokenize
        return CategoryFill(names, 0, None, 0)
    tokens = tokenize(catalog.drop_columns(["category"]), buckets)
    wanted = ~labelled & tokens.has_content
    classes = sorted(set(names.filter(pa.array(labelled)).to_pylist()))
    if not wanted.any() or len(classes) < 2:
        return CategoryFill(names, 0, None, 0)
    y = np.array([classes.index(c) if ok else -1 for c, ok in zip(names.to_pylist(), labelled)])
    ids = catalog["item_id"].cast(pa.string()).to_pylist()
    held = labelled & np.array([zlib.crc32(i.encode()) % 5 == 0 for i in ids])
    accuracy = None
    if held.sum() >= 5 and (labelled & ~held).any():
        model = _fit_classifier(tokens, y, labelled & ~held, len(classes), buckets, dim, epochs, seed)
        accuracy = float((_classify(model, tokens, held) == y[held]).mean())
    model = _fit_classifier(tokens, y, labelled, len(classes), buckets, dim, epochs, seed)
    out = np.array(names.to_pylist(), dtype=object)
    out[wanted] = [classes[c] for c in _classify(model, tokens, wanted)]
    return CategoryFill(pa.array(out.tolist(), pa.string()), int(wanted.sum()), accuracy, int(held.sum()))


def _bags(tokens: ContentTokens, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The flat bag of the chosen rows (bool mask)."""
    pick = np.flatnonzero(rows)
    lengths = tokens.offsets[pick + 1] - tokens.offsets[pick]
    ids = np.concatenate([tokens.ids[a:b] for a, b in zip(tokens.offsets[pick], tokens.offsets[pick + 1])]
                         + [np.zeros(0, np.int64)])
    return torch.as_tensor(ids), torch.as_tensor(np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64))


def _fit_classifier(tokens: ContentTokens, y: np.ndarray, rows: np.ndarray, n_classes: int,
                    buckets: int, dim: int, epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    bag = nn.EmbeddingBag(buckets, dim, mode="mean", padding_idx=0)
    head = nn.Linear(dim, n_classes)
    with torch.no_grad():
        bag.weight.normal_(0, dim ** -0.5, generator=gen)
        head.weight.normal_(0, dim ** -0.5, generator=gen)
        head.bias.zero_()
    model = nn.Sequential()
    model.bag, model.head = bag, head
    ids, offsets = _bags(tokens, rows)
    target = torch.as_tensor(y[rows])
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(epochs):                  # full batch: catalogs are small next to logs
        loss = F.cross_entropy(head(bag(ids, offsets)), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _classify(model: nn.Module, tokens: ContentTokens, rows: np.ndarray) -> np.ndarray:
    ids, offsets = _bags(tokens, rows)
    with torch.no_grad():
        return model.head(model.bag(ids, offsets)).argmax(1).numpy()
