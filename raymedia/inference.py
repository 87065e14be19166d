"""The models loaded for inference: what the scoring actors (``score.Scorer``) and the
evaluation actors (``evaluate.Evaluator``) share.

The driver hands each actor one ``ScoringContext`` (which models, as of which day, over
which vocabulary, with that vocabulary's content tokens, made once per run on the driver);
``LoadedModels`` loads them once per actor, on the actor's GPU when it has one, as a
float64 copy whose outputs are rounded to float32 (``score``'s module doc: results do not
depend on the batch), and precomputes the item matrices and the items' content vectors
(once per actor, not per batch of users). ``actor_pool`` is how both stages ask Ray Data
for such actors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import ray
import torch
from threadpoolctl import threadpool_limits

from raymedia import checkpoint, features, models, ranking, schema
from raymedia.cluster import cluster_gpus
from raymedia.config import Config
from raymedia.data import read
from raymedia.data.vocab import Vocab
from raymedia.models.content import ContentTokens, catalog_tokens

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class ScoringContext:
    """Which published models (kind -> URI) score, as of which day (``YYYY-MM-DD``), over
    which vocabulary: the run's (the models' own extended with items published since they
    were trained), or None for the models' own; ``content``: that vocabulary's tokens from
    the day's catalog, tokenized once on the driver for every actor; None when no model has
    a content path. ``build`` makes one that fits its models."""
    model_uris: Mapping[str, str]
    asof: str
    vocab: Vocab | None = None
    content: ContentTokens | None = None    # the vocabulary's content (models with a content path)

    @classmethod
    def build(cls, model_uris: Mapping[str, str], asof: str, vocab: Vocab | None, catalog_uri: str,
              content: ContentTokens | None = None) -> ScoringContext:
        """The context of ``model_uris`` with the content tokens their content path needs:
        ``content`` (the run's, from ``pipeline.prepare``) when it was hashed as the models
        were, else the vocabulary's tokens from the catalog, made here, once; None when no
        model has a content path (a run with content.enabled=off scoring with models that
        have one still gets them)."""
        wanted = {checkpoint.read_meta(u).kwargs.get("content", {}).get("buckets") for u in model_uris.values()}
        wanted.discard(None)
        if not wanted:
            return cls(model_uris, asof, vocab, None)
        if len(wanted) > 1:
            raise ValueError(f"models {sorted(model_uris)} hash content into different numbers of rows "
                             f"{sorted(wanted)}; one run gives all of them the same tokens")
        buckets = wanted.pop()
        vocab = vocab or checkpoint.load_vocab(next(iter(model_uris.values())))
        if content is None or content.buckets != buckets or content.n_items != vocab.size:
            content = catalog_tokens(read.read_catalog(catalog_uri), vocab.item_ids, buckets)
        return cls(model_uris, asof, vocab, content)

    def recommendable(self, catalog_uri: str) -> np.ndarray:
        """One bool per vocabulary index: available and published at ``asof`` in the catalog
        (what scoring may show, so evaluation masks the same)."""
        return self.vocab.recommendable(read.read_catalog(catalog_uri), features.day_start_us(self.asof))


def actor_pool(cfg: Config, section: str = "score") -> dict:
    """``map_batches`` options for a pool of actors holding the models, sized by a config
    section (``score`` or ``eval``: batch_size, concurrency, num_cpus); one GPU per actor
    on a GPU cluster."""
    s = getattr(cfg, section)
    return {"batch_size": s.batch_size, "batch_format": "pyarrow",
            "compute": ray.data.ActorPoolStrategy(size=s.concurrency),
            "num_cpus": s.num_cpus, "num_gpus": 1 if cluster_gpus() > 0 else 0}


class LoadedModels:
    """Both models loaded once per actor, on the GPU when the actor has one.

    ``context.vocab`` is the run's vocabulary: the models' own, or it extended with
    items published since they were trained; the models grow fallback rows for
    those (``models.grow_items``), so new content is scored the day it appears; a content
    model gives the items its training never touched the same fallback.
    ``section`` names the config section that sizes the actor (its ``num_cpus`` threads).
    """

    section = "score"

    def __init__(self, context: ScoringContext, cfg: Config):
        self.cfg = cfg
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        threads = max(1, int(getattr(cfg, self.section).num_cpus))
        torch.set_num_threads(threads)
        threadpool_limits(threads, "blas")            # numpy's BLAS computes the CPU scores
        self.models = {k: checkpoint.load(u, self.device) for k, u in context.model_uris.items()}
        digests = {m.meta.vocab_digest for m in self.models.values()}
        if len(digests) != 1:
            raise ValueError(f"models {sorted(context.model_uris)} were trained with different vocabularies")
        own = next(iter(self.models.values())).vocab
        self.vocab = context.vocab or own
        if self.vocab.digest(own.size) != own.digest():
            raise ValueError("the run's vocabulary does not extend the models' vocabulary")
        content = context.content
        if content is None and any(m.model.item_content is not None for m in self.models.values()):
            raise ValueError(f"models {sorted(context.model_uris)} score items by their content, but the "
                             "ScoringContext carries no content tokens (make it with ScoringContext.build)")
        for m in self.models.values():
            m.model.set_content(content)                # the day's content, new items included
            if self.vocab.size > own.size or m.model.item_content is not None:
                models.grow_items(m.model, torch.tensor(self.vocab.item_category),
                                  torch.tensor(self.vocab.popularity),
                                  torch.tensor(own.popularity > 0))   # the model's training counts
                m.model.to(self.device)
            m.model.double()            # this actor's own copy: float64, see the module doc
            m.model.cache_content()     # every item's content vector, once per actor, in float64
        if self.device == "cuda":       # the candidate bound assumes float32 accumulation
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
            torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
        dtype = _DTYPES[cfg.score.precision]
        with torch.inference_mode():
            self.items = {k: m.model.item_matrix().float() for k, m in self.models.items()}
        # the candidate product's copy of the items in bf16/fp16 (score.precision)
        self.low = {k: None if dtype == torch.float32 else v.to(dtype) for k, v in self.items.items()}
        self.asof_us = features.day_start_us(context.asof)
        self.horizon_us = cfg.data.return_horizon_days * schema.US_PER_DAY

    def inputs(self, batch: pa.Table, mode: str) -> tuple[pa.Table, dict[str, torch.Tensor]]:
        kept, arrays = features.batch_inputs(batch, mode, self.cfg.data.history_len,
                                             self.asof_us, self.horizon_us)
        return kept, {k: torch.as_tensor(v, device=self.device) for k, v in arrays.items()}

    def user_vectors(self, kind: str, x: dict) -> torch.Tensor:
        """float32 user vectors, rounded from the float64 model's."""
        return self.models[kind].model.user_vectors(x).float()

    def item_scores(self, kind: str, users: torch.Tensor) -> ranking.DotScores:
        """The scores of float32 ``users`` against every item of model ``kind``."""
        return ranking.DotScores(users, self.items[kind], self.low[kind])

    def mask(self, recommendable: np.ndarray | None) -> torch.Tensor | None:
        """The blocked items (not ``recommendable``) on this actor's device; None: none blocked."""
        return None if recommendable is None else torch.as_tensor(~recommendable, device=self.device)
