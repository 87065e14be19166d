"""The ranking core: item scores per chunk, masks, exact deterministic top-K and ranks.

Pure torch (no Ray, no I/O). Scoring, evaluation and training's validation all rank
here, so they mask and order items alike: padding (index 0), blocked items and the
user's seen items never rank; ties go to the lower item index. Blocked items are one
bool per item for every user, or per user by group (``GroupBlocked``: per-user
eligibility, a few distinct masks shared by many users).

Exact on any machine. A float32 matrix product rounds a user's scores differently
with the batch it sits in (size, position: SIMD or scalar paths), the thread count,
the BLAS and the CPU, so near-ties flipped between two runs. Dot-product scores are
therefore ranked in two steps:

1. candidates: the fast product (float32, or bf16/fp16 with ``score.precision``) over
   every item; each user keeps the K + ``EXTRA`` best, which must reach below the K-th
   by twice the error bound of the product (from |u|·max|v| and the unit roundoff);
   rows where they do not (ties, a crowded cut) are scanned again for every item
   inside the bound;
2. rescoring: each candidate's score is recomputed exactly (``exact_dot``) and the
   order comes from the int64 keys of those scores.

So a user's list and scores depend only on their own vector and the items: never on
the batch, the position, the thread count, the BLAS or the CPU, and by construction
the same on GPU.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np
import torch
import torch.nn.functional as F

_LOW = 0xFFFFFFFF
EXTRA = 16                          # candidates beyond K kept per user for the rescoring
_UNIT = {torch.float32: 2.0 ** -24, torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11}


# ---------------------------------------------------------------------------------------
# keys: one int64 per (score, item), ordered like the score, ties to the lower index

def score_keys(scores: torch.Tensor, first_index: int | torch.Tensor) -> torch.Tensor:
    """Unique, order-preserving int64 keys for float scores of items first_index.. (or of
    the item indices given as a tensor shaped like ``scores``)."""
    bits = scores.float().contiguous().view(torch.int32).long()
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF)
    idx = first_index if isinstance(first_index, torch.Tensor) else torch.arange(
        first_index, first_index + scores.shape[1], device=scores.device)
    return (ordered << 32) | (_LOW - idx)


def decode_keys(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores float32, item indices) from keys."""
    idx = _LOW - (keys & _LOW)
    hi = (keys >> 32).to(torch.int32)
    bits = torch.where(hi >= 0, hi, hi ^ 0x7FFFFFFF)
    return bits.view(torch.float32), idx


def chunk_top_keys(s: torch.Tensor, start: int, k: int) -> torch.Tensor:
    """Keys of the k best items of one chunk of scores, (B, k) unsorted; exact.

    A float ``topk`` of k + 1 picks the set, and keys are built for those k only: about
    5x cheaper than keying the whole chunk. Where the k-th score equals the (k+1)-th
    (a tie at the cut, or fewer than k unmasked items) the float set is ambiguous, and
    those rows alone are keyed in full, so ties still go to the lower index whatever the
    kernel.
    """
    if k >= s.shape[1]:
        return score_keys(s, start)
    vals, idx = torch.topk(s, k + 1, dim=1, sorted=True)     # one more: is the k-th tied?
    keys = score_keys(vals[:, :k], idx[:, :k] + start)
    ambiguous = vals[:, k - 1] == vals[:, k]
    if bool(ambiguous.any()):
        rows = torch.nonzero(ambiguous)[:, 0]
        keys[rows] = torch.topk(score_keys(s[rows], start), k, dim=1, sorted=False).values
    return keys


def _merge(best: torch.Tensor | None, keys: torch.Tensor, k: int) -> torch.Tensor:
    if best is None:
        return keys
    both = torch.cat([best, keys], 1)
    return torch.topk(both, min(k, both.shape[1]), dim=1, sorted=False).values


# ---------------------------------------------------------------------------------------
# masks

@dataclass(frozen=True)
class GroupBlocked:
    """Blocked items per user, by group: ``masks`` (G, n_items) bool, one row per group
    (e.g. each distinct (region, age band) of a run), and ``group`` (B,) int64, each user's
    row. G rows rather than B: a batch of users from a few groups shares them, and a user's
    mask is their group's whatever batch they are in."""
    masks: torch.Tensor
    group: torch.Tensor

    def chunk(self, start: int, stop: int) -> torch.Tensor:
        """(B, stop - start) bool: the users' blocked items start..stop."""
        return self.masks[:, start:stop][self.group]

    def pairs(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return self.masks[self.group[rows], cols]

    def select(self, rows: torch.Tensor) -> GroupBlocked:
        return GroupBlocked(self.masks, self.group[rows])


Blocked = Union[torch.Tensor, GroupBlocked, None]     # (n_items,) bool for every user, or per user


def select_blocked(blocked: Blocked, rows: torch.Tensor) -> Blocked:
    """The blocked items of the users ``rows`` of a batch."""
    return blocked.select(rows) if isinstance(blocked, GroupBlocked) else blocked


def mask_chunk(scores: torch.Tensor, start: int, seen: torch.Tensor | None, blocked: Blocked) -> None:
    """Set padding, blocked and seen items of a chunk of items start.. to -inf, in place.

    ``seen``: (B, S) item indices per user (0 = none); ``blocked``: (n_items,) bool, or
    ``GroupBlocked`` (one mask per user)."""
    if isinstance(blocked, GroupBlocked):
        scores.masked_fill_(blocked.chunk(start, start + scores.shape[1]), float("-inf"))
    elif blocked is not None:
        scores.masked_fill_(blocked[start:start + scores.shape[1]], float("-inf"))
    if start == 0:
        scores[:, 0] = float("-inf")        # padding index is never an item
    if seen is None:
        return
    local = seen - start
    inside = (seen > 0) & (local >= 0) & (local < scores.shape[1])
    rows = torch.nonzero(inside)[:, 0]
    scores[rows, local[inside]] = float("-inf")


def masked_pairs(rows: torch.Tensor, cols: torch.Tensor, seen: torch.Tensor | None,
                 blocked: Blocked) -> torch.Tensor:
    """Bool per (user rows[i], item cols[i]) pair: is that item masked for that user?"""
    out = cols == 0
    if isinstance(blocked, GroupBlocked):
        out |= blocked.pairs(rows, cols)
    elif blocked is not None:
        out |= blocked[cols]
    if seen is not None and seen.shape[1]:
        out |= ((seen[rows] == cols.unsqueeze(1)) & (seen[rows] > 0)).any(1)
    return out


# ---------------------------------------------------------------------------------------
# scores

_BUFFER = threading.local()        # one score buffer per thread


def chunk_scores(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """``users @ items.T`` as float32. On CPU (float32) numpy's BLAS (OpenBLAS) writes into
    one reused buffer: measured 2x faster than torch's MKL sgemm on AMD EPYC, and a fresh
    200 MB output per batch costs a third of the product again in page faults. Valid
    until the next call (callers use each chunk before asking for the next)."""
    if users.device.type != "cpu" or users.dtype != torch.float32 or items.dtype != torch.float32:
        return (users @ items.T).float()
    size = users.shape[0] * items.shape[0]
    buf = getattr(_BUFFER, "scores", None)
    if buf is None or buf.size < size:
        # numpy, not torch: a torch buffer made under inference_mode could not be written
        # outside it (an in-process Scorer built after another one had scored)
        buf = _BUFFER.scores = np.empty(size, dtype=np.float32)
    out = buf[:size].reshape(users.shape[0], items.shape[0])
    np.matmul(users.numpy(), items.numpy().T, out=out)
    return torch.from_numpy(out)


def exact_dot(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """Row-wise dot products ``(users * items).sum(-1)`` as float32, the same bits on any
    machine: products of float32 numbers are exact in float64, and they are summed by
    elementwise float64 adds in a fixed pairwise order (elementwise IEEE operations are
    correctly rounded on every CPU and GPU; only reductions vary), then rounded once."""
    p = users.double() * items.double()
    width = 1 << max(p.shape[-1] - 1, 0).bit_length()
    if width != p.shape[-1]:
        p = F.pad(p, (0, width - p.shape[-1]))
    while p.shape[-1] > 1:
        half = p.shape[-1] // 2
        p = p[..., :half] + p[..., half:]
    return p[..., 0].float()


@dataclass(frozen=True)
class DotScores:
    """``users @ items.T``, ranked exactly (module doc). ``low``: the items in bf16/fp16
    for the candidate product (``score.precision``); None: float32."""
    users: torch.Tensor                 # (B, D) float32
    items: torch.Tensor                 # (n_items, D) float32
    low: torch.Tensor | None = None

    @property
    def n_items(self) -> int:
        return self.items.shape[0]

    def approx(self, start: int, stop: int) -> torch.Tensor:
        if self.low is None:
            return chunk_scores(self.users, self.items[start:stop])
        return chunk_scores(self.users.to(self.low.dtype), self.low[start:stop])

    def bound(self) -> torch.Tensor:
        """(B,) bound on |approx - exact| per user, twice the worst case: inputs rounded to
        the candidate dtype (2 eps), float32 accumulation over D terms, the output rounded
        (eps) and the exact score's own rounding, times |u|·max|v| (Cauchy-Schwarz), plus
        what underflow to subnormals can lose."""
        eps = _UNIT[self.items.dtype if self.low is None else self.low.dtype]
        u32, d = _UNIT[torch.float32], self.users.shape[1]
        vmax = float(self.items.double().norm(dim=1).max()) if self.n_items else 0.0
        unorm = self.users.double().norm(dim=1)
        rel = 3 * eps + (d + 4) * u32
        return (2 * (rel * unorm * vmax + d * u32 * (unorm + vmax + 1))).float()

    def exact(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return exact_dot(self.users[rows], self.items[cols])

    def select(self, rows: torch.Tensor) -> DotScores:
        return DotScores(self.users[rows], self.items, self.low)


@dataclass(frozen=True)
class ChunkScores:
    """Scores from ``fn(start, stop)`` -> a fresh (B, stop - start) tensor (it is masked in
    place), taken as exact (the baselines: popularity, own history, item-kNN)."""
    fn: Callable[[int, int], torch.Tensor]
    n_items: int
    chunk: int

    def approx(self, start: int, stop: int) -> torch.Tensor:
        return self.fn(start, stop).float()

    def bound(self) -> None:
        return None

    def exact(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        out = torch.empty(cols.shape, dtype=torch.float32, device=cols.device)
        for start in range(0, self.n_items, self.chunk):
            stop = min(start + self.chunk, self.n_items)
            inside = (cols >= start) & (cols < stop)
            if bool(inside.any()):
                out[inside] = self.approx(start, stop)[rows[inside], cols[inside] - start]
        return out


Scores = Union[DotScores, ChunkScores]


# ---------------------------------------------------------------------------------------
# top-K and ranks

@dataclass(frozen=True)
class Ranks:
    """A target's place under one ranker: ``rank`` (0-based over all items, -1 where the
    target is masked), ``sampled_rank`` (among the target and its negatives) and ``top``
    ((B, k) item indices, -1 where fewer items are unmasked)."""
    rank: torch.Tensor
    sampled_rank: torch.Tensor
    top: torch.Tensor


def _chunks(scores: Scores, chunk: int, seen, blocked):
    for start in range(0, scores.n_items, chunk):
        s = scores.approx(start, min(start + chunk, scores.n_items))
        mask_chunk(s, start, seen, blocked)
        yield start, s


def _scan(scores: Scores, k: int, chunk: int, seen, blocked, on_chunk=None):
    """One pass over the item chunks: exact top-k (scores (B, k'), indices (B, k'), sorted),
    calling ``on_chunk(start, masked candidate scores)`` on the way."""
    bound = scores.bound()
    keep = k if bound is None else k + EXTRA
    best = None
    for start, s in _chunks(scores, chunk, seen, blocked):
        best = _merge(best, chunk_top_keys(s, start, keep), keep)
        if on_chunk is not None:
            on_chunk(start, s)
    best = torch.sort(best, dim=1, descending=True).values
    if bound is None:
        return decode_keys(best[:, :k])
    approx, idx = decode_keys(best)
    k = min(k, idx.shape[1])
    rows = torch.arange(len(idx), device=idx.device).unsqueeze(1).expand_as(idx)
    exact = scores.exact(rows, idx).masked_fill_(approx == float("-inf"), float("-inf"))
    keys = torch.topk(score_keys(exact, idx), k, dim=1).values
    # every item of the exact top k has a candidate score >= the k-th candidate - 2 bounds
    floor = approx[:, max(k, 1) - 1] - 2 * bound
    last = approx[:, -1]
    complete = (last < floor) | (last == float("-inf")) | (idx.shape[1] >= scores.n_items)
    # rows whose kept candidates may not reach below the floor (ties, a crowded cut) are
    # scanned again, a few at a time (rescoring may take a whole chunk per row)
    group = max(1, (1 << 24) // max(1, min(chunk, scores.n_items) * scores.users.shape[1]))
    for rows in torch.split(torch.nonzero(~complete)[:, 0], group):
        keys[rows] = _rescan(scores.select(rows), k, chunk, None if seen is None else seen[rows],
                             select_blocked(blocked, rows), floor[rows])
    return decode_keys(torch.sort(keys, dim=1, descending=True).values)


def _rescan(scores: DotScores, k: int, chunk: int, seen, blocked, floor: torch.Tensor) -> torch.Tensor:
    """Exact top-k keys of rows whose candidates fell short: every item whose candidate
    score reaches ``floor`` (per row) is rescored."""
    best = None
    for start, s in _chunks(scores, chunk, seen, blocked):
        r, c = torch.nonzero(s >= floor.unsqueeze(1), as_tuple=True)
        exact = torch.full(s.shape, float("-inf"), device=s.device)
        exact[r, c] = scores.exact(r, c + start)
        best = _merge(best, chunk_top_keys(exact, start, k), k)
    return best


def topk(scores: Scores, k: int, chunk: int, seen: torch.Tensor | None = None,
         blocked: Blocked = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact running top-K over item chunks: (scores (B, k'), indices (B, k')), best first;
    masked items at -inf where fewer than k are unmasked."""
    return _scan(scores, k, chunk, seen, blocked)


def rank(scores: Scores, target: torch.Tensor, negatives: torch.Tensor, k: int, chunk: int,
         seen: torch.Tensor | None = None, blocked: Blocked = None) -> Ranks:
    """Full rank, sampled rank and top-k of each user's target, in the pass of ``topk``.

    The target's and negatives' exact scores come first; then every item whose candidate
    score is surely above the target counts, and those within the bound are rescored."""
    B = len(target)
    rows = torch.arange(B, device=target.device)
    r = torch.cat([rows, rows.repeat_interleave(negatives.shape[1])])   # targets, then negatives
    c = torch.cat([target, negatives.reshape(-1)])
    both = scores.exact(r, c).masked_fill_(masked_pairs(r, c, seen, blocked), float("-inf"))
    t, tkey = both[:B], score_keys(both[:B], target)
    nkey = score_keys(both[B:], c[B:]).view(negatives.shape)
    bound = scores.bound()
    count = torch.zeros(B, dtype=torch.long, device=target.device)

    def on_chunk(start: int, s: torch.Tensor) -> None:
        if bound is None:
            count.add_((score_keys(s, start) > tkey.unsqueeze(1)).sum(1))
            return
        lo, hi = s - bound.unsqueeze(1), s + bound.unsqueeze(1)
        count.add_((lo > t.unsqueeze(1)).sum(1))
        near, item = torch.nonzero((lo <= t.unsqueeze(1)) & (hi >= t.unsqueeze(1)) & torch.isfinite(s),
                                   as_tuple=True)
        if len(near):           # within the bound of the target: compare exact keys
            above = score_keys(scores.exact(near, item + start), item + start) > tkey[near]
            count.add_(torch.bincount(near[above], minlength=B))

    top_scores, top = _scan(scores, k, chunk, seen, blocked, on_chunk)
    masked = t == float("-inf")
    minus = torch.full_like(count, -1)
    return Ranks(rank=torch.where(masked, minus, count),
                 sampled_rank=torch.where(masked, minus, (nkey > tkey.unsqueeze(1)).sum(1)),
                 top=torch.where(torch.isfinite(top_scores), top, torch.full_like(top, -1)))
