"""Sponsored slots: campaigns (an item, a bid, targeting categories, a cap per run) fill up to
S fixed positions of each list by expected value, every cap held across all users of a run,
by an allocation that does not depend on batches, their order or the actor count.

Expected value = bid x p_click. p_click is the recommender's softmax probability of the item
over every item the user may be shown: ``exp(s_item - logsumexp(s))``, the item's exact score
(``ranking``) against scores computed in float64 and rounded to float32 (the scheme the models'
own outputs use, ``score``'s module doc), summed in float64 and rounded to float32. The
ranker's click probability replaces it when the ranking stage lands.

Two passes over the histories (``allocate``, then scoring):

1. ``Bidder`` (an actor pool like scoring's, the same models, masks and user vectors): each
   user's EV for every campaign that targets them; each batch keeps its ``cap`` best users per
   campaign by (EV desc, user hash asc), and the driver merges them as they stream
   (O(campaigns x cap) memory, never O(users)). A campaign's threshold is its cap-th best
   (EV, hash) pair; with fewer targeted users than its cap, every one of them qualifies.
2. ``score.Scorer``: a user is offered campaign c when their (EV, hash) is at or above c's
   threshold; they get the best EVs first, one campaign per item, at most S, the s-th in the
   s-th slot (``rules.rerank`` places them like pins).

Only a campaign's ``cap`` best users reach its threshold, so no cap is ever exceeded; a user
offered more campaigns than there are slots leaves some of them unfilled (reported as fill
rate, never made up elsewhere, which would depend on the order users are seen in).
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from raymedia import ranking, storage
from raymedia.config import Config, ConfigError, split_names

log = logging.getLogger(__name__)

LSE_CHUNK = 8192            # items per float64 log-sum-exp step (a constant: never the batch's)
P_UNITS = 10 ** 9           # p_click summed as integers of 1e-9: exact, in any order
PRICING = "first price per impression: each list a campaign fills costs its bid"
COLUMNS = ("campaign_id", "item_id", "bid", "cap")      # required; ``categories`` optional


@dataclass(frozen=True)
class SlotPlan:
    """``cfg.sponsored`` parsed and checked: the campaigns file and the slots (0-based, sorted)."""
    campaigns_uri: str
    slots: tuple[int, ...]

    @property
    def on(self) -> bool:
        return bool(self.campaigns_uri)

    @classmethod
    def from_config(cls, cfg: Config) -> SlotPlan:
        """ConfigError naming the ``sponsored.*`` key when one is malformed."""
        s, positions = cfg.sponsored, []
        for v in split_names(s.slots):
            if not v.isdigit() or not 1 <= int(v) <= cfg.score.top_k:
                raise ConfigError(f"sponsored.slots: {v!r} is not a position in 1..score.top_k ({cfg.score.top_k})")
            positions.append(int(v) - 1)
        if len(set(positions)) < len(positions):
            raise ConfigError(f"sponsored.slots: each position at most once, got {s.slots!r}")
        if bool(s.campaigns_uri) != bool(positions):
            raise ConfigError("sponsored.campaigns_uri and sponsored.slots are set together "
                              f"(got {s.campaigns_uri!r} and {s.slots!r})")
        from raymedia.rules import ListRules
        pinned = {p for _, p in ListRules.from_config(cfg).pins} & set(positions)
        if pinned:
            raise ConfigError(f"sponsored.slots: position(s) {sorted(p + 1 for p in pinned)} are also "
                              "rules.pins positions; a place is a pin's or a slot")
        return cls(s.campaigns_uri, tuple(sorted(positions)))


# ---------------------------------------------------------------------------------------
# the campaigns

def read_campaigns(uri: str) -> pa.Table:
    """The campaigns file (Parquet: one row per campaign), checked: ConfigError naming the
    file, the column and the value. Read on the driver before any work."""
    fs, path = storage.resolve(uri)
    try:
        t = pq.read_table(path, filesystem=fs)
    except FileNotFoundError:
        raise ConfigError(f"sponsored.campaigns_uri: {uri} does not exist") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"sponsored.campaigns_uri: {uri} is not a readable Parquet file: {exc}") from None
    missing = [c for c in COLUMNS if c not in t.column_names]
    if missing:
        raise ConfigError(f"{uri}: campaigns need the column(s) {missing} (has {t.column_names})")
    for name in COLUMNS:
        nulls = t[name].null_count
        if nulls:
            raise ConfigError(f"{uri}: column {name!r} has {nulls} null value(s)")
    if not pa.types.is_integer(t["cap"].type):
        raise ConfigError(f"{uri}: column 'cap' must be integers, got {t['cap'].type}")
    if not (pa.types.is_integer(t["bid"].type) or pa.types.is_floating(t["bid"].type)):
        raise ConfigError(f"{uri}: column 'bid' must be numbers, got {t['bid'].type}")
    ids = pc.cast(t["campaign_id"], pa.string()).to_pylist()
    bids = pc.cast(t["bid"], pa.float64()).to_pylist()
    caps = pc.cast(t["cap"], pa.int64()).to_pylist()
    for cid, bid, cap in zip(ids, bids, caps):
        if not (math.isfinite(bid) and bid > 0):
            raise ConfigError(f"{uri}: campaign {cid!r} has bid {bid}; column 'bid' must be > 0")
        if cap < 0:
            raise ConfigError(f"{uri}: campaign {cid!r} has cap {cap}; column 'cap' must be >= 0")
    dupes = sorted({c for c in ids if ids.count(c) > 1})
    if dupes:
        raise ConfigError(f"{uri}: column 'campaign_id' repeats {dupes[:10]}")
    if "categories" in t.column_names:
        cats = t["categories"]
        if not (pa.types.is_list(cats.type) or pa.types.is_large_list(cats.type)) or \
                not (pa.types.is_string(cats.type.value_type) or pa.types.is_large_string(cats.type.value_type)):
            raise ConfigError(f"{uri}: column 'categories' must be a list of strings, got {cats.type}")
        categories = [tuple(c or ()) for c in cats.to_pylist()]
    else:
        categories = [()] * t.num_rows
    if not t.num_rows:
        log.warning("%s holds no campaigns: no list gets a sponsored item", uri)
    return pa.table({"campaign_id": pa.array(ids, pa.string()),
                     "item_id": pc.cast(t["item_id"], pa.string()),
                     "bid": pa.array(bids, pa.float64()), "cap": pa.array(caps, pa.int64()),
                     "categories": pa.array(categories, pa.list_(pa.string()))})


@dataclass(frozen=True)
class Campaigns:
    """The run's campaigns over its vocabulary (a campaign whose item the vocabulary does not
    know is skipped, with a warning). ``targets[c, k]``: campaign c targets category index k;
    ``everyone[c]``: it has no targeting."""
    ids: tuple[str, ...]
    items: np.ndarray           # (C,) int64 vocabulary index
    bids: np.ndarray            # (C,) float64
    caps: np.ndarray            # (C,) int64
    targets: np.ndarray         # (C, vocab.num_categories) bool
    everyone: np.ndarray        # (C,) bool

    @classmethod
    def build(cls, table: pa.Table, vocab, pins: tuple[str, ...] = (), uri: str = "campaigns") -> Campaigns:
        """``table`` from ``read_campaigns``; ``vocab``: the run's ``Vocab``; ``pins``: the
        rules' pinned item ids (a pinned item cannot be sponsored: ConfigError)."""
        table = table.set_column(1, "item_id", pc.cast(table["item_id"], pa.string()))
        pinned = sorted(set(table["item_id"].to_pylist()) & set(pins))
        if pinned:
            raise ConfigError(f"{uri}: item(s) {pinned} are also rules.pins; an item is pinned or sponsored")
        at = pc.index_in(table["item_id"], value_set=pc.cast(vocab.item_ids, pa.string())).to_pylist()
        known = [a is not None for a in at]
        if not all(known):
            log.warning("%s: campaign(s) %s name items the vocabulary does not know; they are skipped", uri,
                        [c for c, k in zip(table["campaign_id"].to_pylist(), known) if not k][:20])
        t = table.filter(pa.array(known))
        names = {n: i + 1 for i, n in enumerate(vocab.categories)}
        cats = [c or [] for c in t["categories"].to_pylist()]
        unknown = sorted({c for cs in cats for c in cs if c not in names})
        if unknown:
            log.warning("%s: categories %s are not in the vocabulary; nobody is targeted by them", uri, unknown[:20])
        targets = np.zeros((t.num_rows, vocab.num_categories), bool)
        for c, cs in enumerate(cats):
            targets[c, [names[x] for x in cs if x in names]] = True
        return cls(ids=tuple(t["campaign_id"].to_pylist()),
                   items=np.array([a + 1 for a in at if a is not None], np.int64),
                   bids=t["bid"].to_numpy().astype(np.float64), caps=t["cap"].to_numpy().astype(np.int64),
                   targets=targets, everyone=np.array([not cs for cs in cats], bool))

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Sponsorship:
    """What the scoring actors need: the slots, the campaigns and, after pass 1, each
    campaign's threshold (EV, user hash): a user qualifies at or above it. None: pass 1."""
    slots: np.ndarray                       # (S,) int64 0-based positions
    campaigns: Campaigns
    threshold_ev: np.ndarray | None = None  # (C,) float64: -inf every targeted user, +inf nobody
    threshold_key: np.ndarray | None = None  # (C,) uint64


# ---------------------------------------------------------------------------------------
# expected values

@dataclass(frozen=True)
class Values:
    """Per user (B) and campaign (C): EV (-inf where the campaign does not target the user or
    may not show them its item), p_click and the item's model score."""
    ev: np.ndarray              # float64
    p: np.ndarray               # float32
    score: np.ndarray           # float32


def _pairwise_sum(x: torch.Tensor) -> torch.Tensor:
    """Row sums by elementwise adds in a fixed pairwise order (no reduction kernel)."""
    width = 1 << max(x.shape[-1] - 1, 0).bit_length()
    if width != x.shape[-1]:
        x = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def log_sum_exp(scores: ranking.DotScores, chunk: int, seen: torch.Tensor | None,
                blocked: ranking.Blocked) -> torch.Tensor:
    """(B,) float64 log-sum-exp of each user's scores over the items they may be shown;
    scores from float64 products rounded to float32, a running maximum over fixed chunks."""
    users = scores.users.double()
    m = torch.full((len(users),), float("-inf"), dtype=torch.float64, device=users.device)
    total = torch.zeros_like(m)
    for start in range(0, scores.n_items, chunk):
        s = (users @ scores.items[start:start + chunk].double().T).float()
        ranking.mask_chunk(s, start, seen, blocked)
        s = s.double()
        new = torch.maximum(m, s.max(1).values)
        base = torch.where(torch.isfinite(new), new, torch.zeros_like(new))
        total = total * torch.exp(m - base) + _pairwise_sum(torch.exp(s - base.unsqueeze(1)))
        m = new
    return m + torch.log(total)


def expected_values(camp: Campaigns, item_category: torch.Tensor, scores: ranking.DotScores, history: torch.Tensor,
                    seen: torch.Tensor | None, blocked: ranking.Blocked, chunk: int) -> Values:
    """Each user's EV per campaign. ``item_category``: (n_items,) category index per vocabulary
    index; ``history``: (B, S) the user's item indices (targeting); ``seen``/``blocked``: the
    scoring masks (a seen, unrecommendable or excluded item is never offered)."""
    B, C, dev = len(history), len(camp), history.device
    if not C or not B:
        z = np.zeros((B, C))
        return Values(np.full((B, C), -np.inf), z.astype(np.float32), z.astype(np.float32))
    cats = torch.where(history > 0, item_category[history], torch.zeros_like(history))
    has = torch.zeros((B, camp.targets.shape[1]), dtype=torch.float64, device=dev)
    has.scatter_(1, cats, 1.0)
    has[:, 0] = 0                                           # no category: targets nobody
    targeted = (has @ torch.tensor(camp.targets.T, dtype=torch.float64, device=dev)) > 0
    targeted |= torch.tensor(camp.everyone, device=dev).unsqueeze(0)
    rows = torch.arange(B, device=dev).repeat_interleave(C)
    cols = torch.tensor(camp.items, device=dev).repeat(B)
    ok = targeted & ~ranking.masked_pairs(rows, cols, seen, blocked).view(B, C)
    score = scores.exact(rows, cols).view(B, C)
    lse = torch.full((B,), float("inf"), dtype=torch.float64, device=dev)
    need = torch.nonzero(ok.any(1))[:, 0]
    if len(need):
        lse[need] = log_sum_exp(scores.select(need), chunk, None if seen is None else seen[need],
                                ranking.select_blocked(blocked, need))
    p = torch.exp(score.double() - lse.unsqueeze(1)).float().masked_fill_(~ok, 0.0)
    bids = torch.tensor(camp.bids, dtype=torch.float64, device=dev)
    ev = torch.where(ok, bids.unsqueeze(0) * p.double(), torch.full_like(p, float("-inf"), dtype=torch.float64))
    return Values(ev.cpu().numpy(), p.cpu().numpy(), score.cpu().numpy())


# ---------------------------------------------------------------------------------------
# the allocation

def best_per_campaign(campaign: np.ndarray, ev: np.ndarray, key: np.ndarray, caps: np.ndarray) -> np.ndarray:
    """Positions of the rows that are among their campaign's ``cap`` best by (EV desc, key asc)."""
    order = np.lexsort((key, -ev, campaign))
    c = campaign[order]
    rank = np.arange(len(c)) - np.searchsorted(c, c, side="left")
    return order[rank < caps[c]]


def candidates(values: Values, keys: np.ndarray, caps: np.ndarray) -> pa.Table:
    """One batch's contribution to pass 1: its ``cap`` best (EV, user hash) per campaign."""
    b, c = np.nonzero(np.isfinite(values.ev))
    ev, key = values.ev[b, c], np.asarray(keys, np.uint64)[b]
    keep = best_per_campaign(c, ev, key, caps)
    return pa.table({"campaign": pa.array(c[keep], pa.int64()), "ev": pa.array(ev[keep], pa.float64()),
                     "key": pa.array(key[keep], pa.uint64())})


class Thresholds:
    """The driver's side of pass 1: merges batches' candidates as they come, keeping
    O(campaigns x cap) rows, and gives each campaign's threshold."""

    def __init__(self, caps: np.ndarray):
        self.caps = caps
        self.rows = {"campaign": np.zeros(0, np.int64), "ev": np.zeros(0), "key": np.zeros(0, np.uint64)}

    def add(self, batch: pa.Table | dict) -> None:
        """One batch of ``candidates`` rows (a table, or Ray Data's numpy batch)."""
        if isinstance(batch, pa.Table):
            batch = {k: batch[k].to_numpy() for k in self.rows}
        both = {k: np.concatenate([v, np.asarray(batch[k]).astype(v.dtype)]) for k, v in self.rows.items()}
        keep = best_per_campaign(both["campaign"], both["ev"], both["key"], self.caps)
        self.rows = {k: v[keep] for k, v in both.items()}

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        C = len(self.caps)
        ev = np.where(self.caps == 0, np.inf, -np.inf)
        key = np.full(C, np.iinfo(np.uint64).max, np.uint64)
        c = self.rows["campaign"]
        full = np.bincount(c, minlength=C) >= np.maximum(self.caps, 1)
        order = np.lexsort((self.rows["key"], -self.rows["ev"], c))
        last = order[np.searchsorted(c[order], np.arange(C), side="right") - 1]     # each campaign's worst kept
        ev[full] = self.rows["ev"][last[full]]
        key[full] = self.rows["key"][last[full]]
        return ev, key


@dataclass(frozen=True)
class Chosen:
    """The sponsored items of a batch of users, slot by slot: campaign index (-1: none),
    vocabulary index (0: none), model score, p_click."""
    campaign: np.ndarray        # (B, S) int64
    idx: np.ndarray             # (B, S) int64
    score: np.ndarray           # (B, S) float32
    p: np.ndarray               # (B, S) float32


def choose(sp: Sponsorship, values: Values, keys: np.ndarray) -> Chosen:
    """Pass 2: each user's campaigns at or above their thresholds, best EV first (ties to the
    lower campaign index), one per item, at most one per slot."""
    B, S = len(values.ev), len(sp.slots)
    keys = np.asarray(keys, np.uint64)[:, None]
    ev = values.ev
    qual = np.isfinite(ev) & ((ev > sp.threshold_ev) | ((ev == sp.threshold_ev) & (keys <= sp.threshold_key)))
    out = Chosen(np.full((B, S), -1, np.int64), np.zeros((B, S), np.int64),
                 np.zeros((B, S), np.float32), np.zeros((B, S), np.float32))
    for b in np.flatnonzero(qual.any(1)).tolist():
        cs = np.flatnonzero(qual[b])
        s, items = 0, set()
        for c in cs[np.lexsort((cs, -ev[b, cs]))].tolist():
            item = int(sp.campaigns.items[c])
            if item in items:
                continue
            items.add(item)
            out.campaign[b, s], out.idx[b, s] = c, item
            out.score[b, s], out.p[b, s] = values.score[b, c], values.p[b, c]
            s += 1
            if s == S:
                break
    return out


def none_chosen(n: int, slots: int) -> Chosen:
    return Chosen(np.full((n, slots), -1, np.int64), np.zeros((n, slots), np.int64),
                  np.zeros((n, slots), np.float32), np.zeros((n, slots), np.float32))


def columns(chosen: Chosen) -> dict[str, pa.Array]:
    """The scored rows' per-user report columns (read by ``writer.write_batch``, not written)."""
    have = chosen.campaign >= 0
    offsets = pa.array(np.concatenate([[0], np.cumsum(have.sum(1))]).astype(np.int32))
    return {"sponsored_campaign": pa.ListArray.from_arrays(offsets, pa.array(chosen.campaign[have], pa.int64())),
            "sponsored_p": pa.ListArray.from_arrays(offsets, pa.array(chosen.p[have], pa.float32()))}


def batch_counts(batch: pa.Table) -> str:
    """JSON {campaign index: [lists, p_click in P_UNITS]} of a batch of scored rows."""
    c = pc.list_flatten(batch["sponsored_campaign"]).to_numpy(zero_copy_only=False).astype(np.int64)
    p = pc.list_flatten(batch["sponsored_p"]).to_numpy(zero_copy_only=False).astype(np.float64)
    units = np.rint(p * P_UNITS).astype(np.int64)
    out: dict[str, list[int]] = {}
    for ci, u in zip(c.tolist(), units.tolist()):
        n = out.setdefault(str(ci), [0, 0])
        n[0] += 1
        n[1] += u
    return json.dumps(out, sort_keys=True)


def report(sp: Sponsorship, counts: dict[int, list[int]]) -> dict:
    """Per campaign: lists filled, cap, fill rate, spend (``PRICING``), expected clicks; and totals."""
    camp, per = sp.campaigns, {}
    for c, cid in enumerate(camp.ids):
        n, units = counts.get(c, [0, 0])
        cap = int(camp.caps[c])
        per[cid] = {"lists": n, "cap": cap, "fill_rate": round(n / cap, 6) if cap else None,
                    "spend": round(n * float(camp.bids[c]), 6), "expected_clicks": round(units / P_UNITS, 6)}
    lists, cap = sum(v["lists"] for v in per.values()), int(camp.caps.sum())
    return {"slots": [int(s) + 1 for s in sp.slots], "pricing": PRICING, "campaigns": len(per),
            "lists": lists, "fill_rate": round(lists / cap, 6) if cap else None,
            "spend": round(sum(v["spend"] for v in per.values()), 6),
            "expected_clicks": round(sum(counts.get(c, [0, 0])[1] for c in range(len(camp))) / P_UNITS, 6),
            "per_campaign": per}


def small(rep: dict, most: int = 50) -> dict:
    """The report for the commit's details: per campaign only when there are few."""
    return rep if rep["campaigns"] <= most else {k: v for k, v in rep.items() if k != "per_campaign"}
