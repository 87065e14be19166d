"""Deterministic top-K and ranks: exact, stable on ties, the same in any item chunking."""

import torch

from raymedia import ranking
from raymedia.evaluate import rank_all
from raymedia.ranking import DotScores, decode_keys, exact_dot, score_keys


def topk(users, items, k, chunk, seen, blocked=None):
    return ranking.topk(DotScores(users, items), k, chunk, seen, blocked)


def test_keys_order_like_scores_and_break_ties_toward_lower_index():
    s = torch.tensor([[0.5, -1.0, 0.5, float("-inf"), -0.0, 0.0, 2.0]])
    keys = score_keys(s, 0)
    order = torch.argsort(keys[0], descending=True).tolist()
    assert order == [6, 0, 2, 5, 4, 1, 3]
    scores, idx = decode_keys(keys)
    assert torch.equal(scores, s) and idx[0].tolist() == list(range(7))


def test_topk_masks_seen_and_padding_and_ties_are_stable():
    users = torch.ones(2, 1)
    items = torch.tensor([[9.0], [1.0], [1.0], [1.0], [0.5]])    # index 0 is padding
    seen = torch.tensor([[2, 0], [0, 0]])
    scores, idx = topk(users, items, 3, chunk=2, seen=seen)
    assert idx.tolist() == [[1, 3, 4], [1, 2, 3]]
    assert scores.tolist() == [[1.0, 1.0, 0.5], [1.0, 1.0, 1.0]]


def test_k_larger_than_catalog_leaves_masked_items_at_minus_inf():
    scores, idx = topk(torch.ones(1, 1), torch.tensor([[0.0], [1.0], [2.0]]), 10, 64,
                       torch.tensor([[1]]))
    assert idx[0, 0].item() == 2 and torch.isinf(scores[0, 1:]).all()


def test_chunking_does_not_change_results_and_ranks_agree_with_topk():
    g = torch.Generator().manual_seed(0)
    users, items = torch.randn(16, 8, generator=g), torch.randn(101, 8, generator=g)
    items[50] = items[51]                          # an exact tie
    seen = torch.randint(0, 101, (16, 5), generator=g)
    full = topk(users, items, 20, 1000, seen)
    for chunk in (7, 32, 100):
        got = topk(users, items, 20, chunk, seen)
        # scores are rescored exactly: the same bits whatever the chunk width
        assert torch.equal(got[1], full[1]) and torch.equal(got[0], full[0])
    target = full[1][:, 4]                         # the 5th best item of each user

    def ranks(target, seen):                       # the evaluation's ranking of a target
        return rank_all(DotScores(users, items), len(items), target,
                        torch.zeros(16, 0, dtype=torch.long), 20, 13, seen)
    r = ranks(target, seen)
    assert r["rank"].tolist() == [4] * 16
    assert torch.equal(r["top"], full[1])          # the evaluation's top-K is the scorer's
    masked = seen[:, 0].clone()
    masked[masked == 0] = 1
    assert (ranks(masked, torch.cat([seen, masked[:, None]], 1))["rank"] == -1).all()


def test_many_ties_at_the_cut_match_a_full_sort_of_the_keys():
    """The fast path selects by float top-K; rows whose K-th score is tied are re-keyed,
    so the result is exactly the full (score desc, index asc) order."""
    g = torch.Generator().manual_seed(1)
    users = torch.randint(-2, 3, (64, 4), generator=g).float()
    items = torch.randint(-2, 3, (300, 4), generator=g).float()      # few distinct scores
    seen = torch.randint(0, 300, (64, 30), generator=g)
    for k, chunk in ((10, 300), (10, 37), (299, 64), (500, 128)):
        scores, idx = topk(users, items, k, chunk, seen)
        s = exact_dot(users[:, None], items[None])
        s[:, 0] = float("-inf")
        s.scatter_(1, seen, float("-inf"))
        s[:, 0] = float("-inf")
        want = torch.sort(score_keys(s, 0), dim=1, descending=True).values[:, :min(k, 300)]
        want_scores, want_idx = decode_keys(want)
        assert torch.equal(idx, want_idx) and torch.equal(scores, want_scores), (k, chunk)


def test_topk_and_ranks_equal_a_full_sort_of_exact_scores_near_ties_and_blocked_items():
    """Near-ties within float32 error of the K-th score, and blocked items: the list, its
    scores and every target's rank are those of the exact scores of all items, sorted."""
    g = torch.Generator().manual_seed(2)
    users, items = torch.randn(32, 16, generator=g), torch.randn(400, 16, generator=g)
    items[1:200] = items[200:399] * (1 + 1e-7)        # pairs of near-tied items
    items[300] = items[301]                           # an exact tie
    seen = torch.randint(0, 400, (32, 10), generator=g)
    blocked = torch.zeros(400, dtype=torch.bool)
    blocked[torch.randint(1, 400, (40,), generator=g)] = True
    s = exact_dot(users[:, None], items[None])
    s[:, 0] = float("-inf")
    s.scatter_(1, seen, float("-inf"))
    s[:, blocked] = float("-inf")
    want = torch.sort(score_keys(s, 0), dim=1, descending=True).values
    want_scores, want_idx = decode_keys(want[:, :30])
    for chunk in (400, 33):
        scores, idx = topk(users, items, 30, chunk, seen, blocked)
        assert torch.equal(idx, want_idx) and torch.equal(scores, want_scores), chunk
    target = torch.randint(1, 400, (32,), generator=g)
    neg = torch.randint(1, 400, (32, 20), generator=g)
    r = ranking.rank(DotScores(users, items), target, neg, 30, 57, seen, blocked)
    tkey = score_keys(s, 0).gather(1, target[:, None])
    masked = s.gather(1, target[:, None])[:, 0] == float("-inf")
    assert torch.equal(r.rank, torch.where(masked, -1, (score_keys(s, 0) > tkey).sum(1)))
    nkey = score_keys(s.gather(1, neg), neg)
    assert torch.equal(r.sampled_rank, torch.where(masked, -1, (nkey > tkey).sum(1)))
    assert torch.equal(r.top, torch.where(torch.isfinite(want_scores), want_idx, -1))


def test_low_precision_candidates_give_the_exact_float32_list():
    """score.precision=bf16/fp16 picks candidates in low precision; the rescoring is exact,
    so the list and scores equal the float32 path's."""
    g = torch.Generator().manual_seed(3)
    users, items = torch.randn(64, 32, generator=g), torch.randn(3000, 32, generator=g)
    seen = torch.randint(0, 3000, (64, 20), generator=g)
    want = topk(users, items, 50, 1024, seen)
    for dtype in (torch.bfloat16, torch.float16):
        got = ranking.topk(DotScores(users, items, items.to(dtype)), 50, 1024, seen)
        assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), dtype


def test_per_user_blocked_items_by_group_rank_as_each_users_own_mask():
    """``GroupBlocked``: a user's top-K and ranks are those of their group's mask alone,
    whatever the batch, its order or the chunking."""
    g = torch.Generator().manual_seed(1)
    users, items = torch.randn(40, 8, generator=g), torch.randn(301, 8, generator=g)
    masks = torch.rand(5, 301, generator=g) < 0.6            # 5 groups, most items blocked
    masks[4] = True                                         # a group that may see nothing
    masks[4, 7] = False                                     # ... but one item
    group = torch.randint(0, 5, (40,), generator=g)
    seen = torch.randint(0, 301, (40, 6), generator=g)
    blocked = ranking.GroupBlocked(masks, group)
    got = topk(users, items, 25, 64, seen, blocked)
    for b in range(40):
        alone = topk(users[b:b + 1], items, 25, 1000, seen[b:b + 1], masks[group[b]])
        assert torch.equal(got[0][b], alone[0][0]) and torch.equal(got[1][b], alone[1][0])
        listed = got[1][b][torch.isfinite(got[0][b])]
        assert not masks[group[b], listed].any() and (listed > 0).all()
    assert (torch.isfinite(got[0][group == 4]).sum(1) <= 1).all()
    perm = torch.randperm(40, generator=g)[:17]             # another batch: a subset, shuffled
    part = topk(users[perm], items, 25, 7, seen[perm], blocked.select(perm))
    assert torch.equal(part[0], got[0][perm]) and torch.equal(part[1], got[1][perm])
    # ranks: a target the user's group blocks is masked (-1); others count only eligible items
    target = got[1][:, 3].clone()
    target[group == 4] = 7
    r = ranking.rank(DotScores(users, items), target, torch.zeros(40, 0, dtype=torch.long), 25, 64, seen, blocked)
    ok = torch.isfinite(got[0][:, 3]) & (group != 4)
    assert (r.rank[ok] == 3).all() and torch.equal(r.top[ok], got[1][ok])
    blocked_target = torch.tensor([int(torch.nonzero(masks[group[b]])[0, 0]) for b in range(40)])
    r = ranking.rank(DotScores(users, items), blocked_target, torch.zeros(40, 0, dtype=torch.long), 25, 64,
                     seen, blocked)
    assert (r.rank == -1).all()
    pairs = ranking.masked_pairs(torch.arange(40), blocked_target, None, blocked)
    assert pairs.all() and not ranking.masked_pairs(torch.arange(40), target.clamp(min=1), seen, blocked)[ok].any()
