"""Batch scoring with Ray Data: an actor pool holding the models, and the writer of its rows.

``histories.map_batches(Scorer, **inference.actor_pool(cfg))``: each actor
loads both models once (``inference.LoadedModels``), and per batch computes
user vectors and predictions and ranks the items (``raymedia.ranking``: chunked
scores, seen and blocked items masked, exact deterministic top-K); users without a
usable history get the most popular items. ``write_batch`` writes the rows as
recommendations and predictions files of the run.

A user's recommendations, scores and predictions are bit-identical whatever batch
they are scored in (size, position, actor count, thread count, run): inputs have one
shape (sequences padded to ``history_len``), the models run in float64 and their
outputs are rounded to float32, so reduction-order differences (~1e-16) do not
show; the item scores are exact by construction (``ranking``).
"""

from __future__ import annotations

import ctypes
import logging
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from raymedia import features, ranking, rules, sponsored
from raymedia.config import Config
from raymedia.data import read
from raymedia.inference import LoadedModels, ScoringContext
from raymedia.lists import STATS, user_stats

log = logging.getLogger(__name__)


class HeapTrimmer:
    """Hands glibc's free heap pages back to the OS once this process's private memory has
    grown ``slack`` bytes since the last trim.

    The sequence model allocates and frees ~200 MB of 6-20 MB activation buffers per batch
    of 512 users. glibc serves sizes like these from its heaps, where they fragment, and a
    scoring actor's resident memory grew with the users it had scored (1.8 GB after 100k
    users, 5.1 GB after 1M) while its live memory stayed under 300 MB (memray).
    ``malloc_trim`` after every batch cost 20% (the pages fault in again); trimming only on
    growth keeps memory flat for a few percent. A no-op where there is no glibc or /proc.
    """

    def __init__(self, slack: int = 256 << 20):
        self.slack = slack
        try:
            self._trim = ctypes.CDLL(None).malloc_trim
            self.floor = self.private_bytes()
        except (AttributeError, OSError):
            self._trim = None

    @staticmethod
    def private_bytes() -> int:
        """Resident memory not shared with other processes (the object store's pages are)."""
        with open("/proc/self/statm") as f:
            _, resident, shared = (int(v) for v in f.read().split()[:3])
        return (resident - shared) * os.sysconf("SC_PAGE_SIZE")

    def __call__(self) -> bool:
        """Trim if the process grew past the slack; True if it did."""
        if self._trim is None or self.private_bytes() < self.floor + self.slack:
            return False
        self._trim(0)
        self.floor = self.private_bytes()
        return True


class Scorer(LoadedModels):
    """Callable class for ``map_batches``: history rows -> recommendations + predictions.

    ``recommendable`` (one bool per vocabulary index, from today's catalog) blocks
    items that are unavailable or not yet published. Users with no usable
    history (only impressions, or only items nobody can score) are cold-start
    users: they get the most popular recommendable items, no predictions, and
    are counted (``cold_start``).

    With list rules (``cfg.rules``, ``raymedia.rules``) each user's larger top-N is
    re-ranked into the list, and the rows carry ``reason`` and ``model_scores``; the
    catalog facts the rules read are made once per actor.

    With evaluation on (``cfg.eval.enabled``) each row also carries ``STATS``: the final
    list's per-list statistics (``raymedia.lists``), summed by ``write_batch``, not written.

    Where the catalog restricts items by region or age (``rules.Eligibility``) each user's
    ineligible items are blocked too, before the top-N, for model, pinned and cold-start
    items alike: a user indexes their group's mask (``ranking.GroupBlocked``), one per
    group met, made when first met (one bool per item each). The user-attributes table is
    read by each actor (its memory: ``rules.Eligibility``).

    With ``sponsorship`` (``raymedia.sponsored``, after its pass 1) each user with a history
    gets the campaigns whose thresholds they reach at the slots (reason ``sponsored``), and
    the rows carry ``sponsored_campaign`` / ``sponsored_p`` for the run's report.
    """

    def __init__(self, context: ScoringContext, cfg: Config, recommendable: np.ndarray | None = None,
                 sponsorship: sponsored.Sponsorship | None = None):
        super().__init__(context, cfg)
        self.rules = rules.ListRules.from_config(cfg)
        catalog = read.read_catalog(cfg.data.catalog_uri)
        self.facts = (rules.ItemFacts.build(self.rules, catalog, self.vocab.item_ids, self.asof_us,
                                            self.vocab.popularity)
                      if self.rules.active or sponsorship is not None else None)
        uri = cfg.data.user_attributes_uri
        self.eligibility = rules.Eligibility.build(catalog, self.vocab.item_ids,
                                                   read.read_user_attributes(uri) if uri else None,
                                                   cfg.rules.default_region, cfg.rules.default_age,
                                                   uri or "data.user_attributes_uri")
        self.groups: dict[int, int] = {}            # eligibility group key -> row of group_masks
        self.group_masks: torch.Tensor | None = None
        self.sponsorship = sponsorship
        if self.rules.masks:            # include / exclude / max age: never candidates
            recommendable = self.facts.allowed & (True if recommendable is None else recommendable)
        self.blocked = self.mask(recommendable)
        # sponsored items leave the organic part: without rules, as many candidates more as slots
        self.k = (cfg.score.top_k if self.facts is None else self.rules.n_candidates if self.rules.active
                  else cfg.score.top_k + len(sponsorship.slots))
        self.item_category = torch.tensor(self.vocab.item_category, device=self.device)
        self.pins = None if self.facts is None else torch.as_tensor(self.facts.pins, device=self.device)
        self.popularity = torch.as_tensor(np.log1p(self.vocab.popularity), dtype=torch.float32,
                                          device=self.device)
        self.popular = {}               # eligibility group key (0: none) -> cold-start candidates
        # the run's list statistics: categories of the vocabulary, the recommender's item vectors
        self.item_vectors = (self.items[cfg.score.recommender].cpu().numpy()
                             if cfg.eval.enabled else None)
        self.trim_heap = HeapTrimmer()

    def user_blocked(self, user_ids: pa.Array | pa.ChunkedArray) -> ranking.Blocked:
        """The items these users may not be shown: the run's (``self.blocked``), and with
        eligibility each user's group's too (``ranking.GroupBlocked``)."""
        if self.eligibility is None:
            return self.blocked
        return self._group_blocked(self.eligibility.user_keys(user_ids).tolist())

    def _group_blocked(self, keys: list[int]) -> ranking.GroupBlocked:
        """Users of these eligibility groups: their group's mask (made when first met) joined
        with the run's."""
        new = sorted(set(keys) - set(self.groups))
        if new:
            masks = torch.as_tensor(np.stack([self.eligibility.blocked(k) for k in new]), device=self.device)
            if self.blocked is not None:
                masks |= self.blocked
            self.group_masks = masks if self.group_masks is None else torch.cat([self.group_masks, masks])
            self.groups.update({k: len(self.groups) + i for i, k in enumerate(new)})
        return ranking.GroupBlocked(self.group_masks, torch.as_tensor([self.groups[k] for k in keys],
                                                                      dtype=torch.long, device=self.device))

    def _popular(self, users: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Cold-start users' candidates: the most popular items each may be shown ((n, N)
        indices and scores, -inf past a short list) and the pins' popularity scores (-inf:
        not shown; None without rules); made once per eligibility group (0: no eligibility)."""
        keys = (self.eligibility.user_keys(users["user_id"]).tolist() if self.eligibility is not None
                else [0] * users.num_rows)
        pop, chunk = self.popularity, self.cfg.score.item_chunk
        for key in sorted(set(keys) - set(self.popular)):
            blocked = self.blocked if self.eligibility is None else self._group_blocked([key])
            scores, idx = ranking.topk(ranking.ChunkScores(lambda a, b: pop[a:b].unsqueeze(0).clone(), len(pop), chunk),
                                       self.k, chunk, None, blocked)
            pins = None if self.facts is None else pop[self.pins].masked_fill(
                ranking.masked_pairs(torch.zeros_like(self.pins), self.pins, None, blocked), float("-inf"))
            self.popular[key] = (idx[0].cpu().numpy(), scores[0].cpu().numpy(),
                                 None if pins is None else pins.cpu().numpy())
        idx, scores, pins = (np.stack([self.popular[k][i] for k in keys]) if self.popular[keys[0]][i] is not None
                             else None for i in range(3))
        return idx, scores, pins

    def compute(self, x: dict[str, torch.Tensor], blocked: ranking.Blocked = None) -> dict[str, torch.Tensor]:
        """The model work on prepared inputs: top-K of the recommender + the sequence heads;
        ``blocked``: the users' blocked items (``user_blocked``; None: the run's)."""
        blocked = self.blocked if blocked is None else blocked
        rec = self.cfg.score.recommender
        # a user's full seen-item list when the histories carry one, else the history
        seen = x.get("seen", x["items"]) if self.cfg.data.exclude_seen else None
        with torch.inference_mode():
            seq = self.models["sequence"].model
            h = seq.user_states(x)              # one transformer pass serves the top-K and both heads
            last = seq.user_vectors(x, h)
            users = last.float() if rec == "sequence" else self.user_vectors(rec, x)
            item_scores = self.item_scores(rec, users)
            scores, idx = ranking.topk(item_scores, self.k, self.cfg.score.item_chunk, seen, blocked)
            out = {"scores": scores, "idx": idx}
            if self.pins is not None and len(self.pins):    # the pins' model scores; -inf: not shown
                rows = torch.arange(len(users), device=users.device).repeat_interleave(len(self.pins))
                cols = self.pins.repeat(len(users))
                out["pin_scores"] = item_scores.exact(rows, cols).masked_fill_(
                    ranking.masked_pairs(rows, cols, seen, blocked), float("-inf")).view(len(users), -1)
            if self.sponsorship is not None:
                out["sponsored"] = self.sponsored_values(x, item_scores, seen, blocked)
            p_return = torch.sigmoid(seq.return_logit(h, x)).float()
            logits = seq.category_head(last).float()     # ties (after rounding) to the lower index
            # index 0 is 'unknown': predict a named category when the catalog has any
            next_cat = (logits[:, 1:].argmax(1) + 1 if logits.shape[1] > 1
                        else torch.zeros(len(logits), dtype=torch.long, device=logits.device))
        return {**out, "p_return": p_return, "next_category": next_cat}

    def recommender_users(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """The recommender's float32 user vectors (what ``compute`` ranks with)."""
        return self.user_vectors(self.cfg.score.recommender, x)

    def sponsored_values(self, x: dict[str, torch.Tensor], item_scores: ranking.DotScores,
                         seen: torch.Tensor | None, blocked: ranking.Blocked) -> sponsored.Values:
        """Each user's expected value per campaign: the same in pass 1 (``Bidder``) and here."""
        return sponsored.expected_values(self.sponsorship.campaigns, self.item_category, item_scores, x["seen"],
                                         seen, blocked, min(self.cfg.score.item_chunk, sponsored.LSE_CHUNK))

    def __call__(self, batch: pa.Table) -> pa.Table:
        has_history = pc.list_value_length(batch["items"]).to_numpy(zero_copy_only=False) > 0
        parts = []
        if has_history.any():
            kept, x = self.inputs(batch.filter(pa.array(has_history)), "score")
            blocked = self.user_blocked(kept["user_id"])
            out = self.compute(x, blocked)
            values = out.pop("sponsored", None)
            out = {k: v.cpu().numpy() for k, v in out.items()}
            chosen = (None if values is None else
                      sponsored.choose(self.sponsorship, values, features.user_hash(kept["user_id"])))
            lists = self._lists(kept, out["idx"], out["scores"], x["seen"].cpu().numpy(), out.get("pin_scores"),
                                chosen)
            parts.append(self._rows(kept, lists, pa.array(out["p_return"], pa.float32()),
                                    self.vocab.category_names(out["next_category"]), False, chosen))
        if not has_history.all():
            cold = batch.filter(pa.array(~has_history))
            n, (idx, scores, pins) = cold.num_rows, self._popular(cold)
            lists = self._lists(cold, idx, scores, np.zeros((n, 1), np.int64), pins)
            parts.append(self._rows(cold, lists, pa.nulls(n, pa.float32()), pa.nulls(n, pa.string()), True,
                                    None if self.sponsorship is None else
                                    sponsored.none_chosen(n, len(self.sponsorship.slots))))
        self.trim_heap()
        return pa.concat_tables(parts)

    def _lists(self, users: pa.Table, idx: np.ndarray, scores: np.ndarray, history: np.ndarray,
               pin_scores: np.ndarray | None, chosen: sponsored.Chosen | None = None) -> rules.Lists:
        """The users' lists from their top-N: re-ranked by the rules (and with the sponsored
        items at their slots), else the top-K itself."""
        if self.facts is None:
            return rules.Lists.top(idx, scores)
        placed = None if chosen is None else rules.Sponsored(self.sponsorship.slots, chosen.idx, chosen.score)
        return rules.rerank(self.rules, self.facts, idx, scores, history,
                            features.user_hash(users["user_id"]), pin_scores, placed)

    def _rows(self, users: pa.Table, lists: rules.Lists, p_return: pa.Array, next_category: pa.Array,
              cold: bool, chosen: sponsored.Chosen | None = None) -> pa.Table:
        offsets = pa.array(np.concatenate([[0], np.cumsum(lists.lengths)]).astype(np.int32))
        audit = {} if lists.reason is None else {
            "reason": pa.ListArray.from_arrays(offsets, lists.reason_names()),
            "model_scores": pa.ListArray.from_arrays(offsets, pa.array(lists.model_scores, pa.float32()))}
        return pa.table({
            "user_id": users["user_id"],
            "items": pa.ListArray.from_arrays(offsets, self.vocab.ids(lists.idx)),
            "scores": pa.ListArray.from_arrays(offsets, pa.array(lists.scores, pa.float32())),
            **audit,
            "p_return_7d": p_return,
            "next_category": next_category,
            "n_events": users["n_events"],
            "cold_start": pa.array(np.full(users.num_rows, cold)),
            **({} if self.item_vectors is None else
               {STATS: user_stats(lists.idx, lists.lengths, self.vocab.item_category, self.item_vectors)}),
            **({} if chosen is None else sponsored.columns(chosen)),
        })


class Bidder(Scorer):
    """Pass 1 of the sponsored allocation (``raymedia.sponsored``), for ``map_batches``: the
    Scorer's models, masks and user vectors, so each user's expected values are the bits
    scoring computes again; per batch, each campaign's ``cap`` best (EV, user hash) rows.
    Cold-start users (no history) get no sponsored items, so they bid nothing."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        camp = self.sponsorship.campaigns
        has_history = pc.list_value_length(batch["items"]).to_numpy(zero_copy_only=False) > 0
        if not has_history.any():
            return sponsored.candidates(sponsored.Values(np.zeros((0, len(camp))), np.zeros((0, len(camp)), np.float32),
                                                         np.zeros((0, len(camp)), np.float32)),
                                        np.zeros(0, np.uint64), camp.caps)
        kept, x = self.inputs(batch.filter(pa.array(has_history)), "score")
        seen = x.get("seen", x["items"]) if self.cfg.data.exclude_seen else None
        with torch.inference_mode():
            users = self.recommender_users(x)
            values = self.sponsored_values(x, self.item_scores(self.cfg.score.recommender, users), seen,
                                           self.user_blocked(kept["user_id"]))
        self.trim_heap()
        return sponsored.candidates(values, features.user_hash(kept["user_id"]), camp.caps)

