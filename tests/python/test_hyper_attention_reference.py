"""Checks of the plain-PyTorch HyperAttention reference (fastnorm.reference.hyper_attention) on hand-computable
cases: the Gray order, the balanced block partition, the schedule, the mask semantics, the dense identity and
exactness below min_seq_len. The kernels are tested against this reference in test_hyper_attention.py."""
import math

import pytest
import torch
import torch.nn.functional as F

from fastnorm.reference.hyper_attention import (APPROX, EXACT_CAUSAL, EXACT_FULL, block_begin, block_of_rank,
                                                dense_attention, dense_weights, exact_attention, gray,
                                                hyper_attention, hyper_attention_block_only,
                                                hyper_attention_planned, inverse_gray, lsh_hash, merge,
                                                num_blocks, plan, plan_sizes, quirk_num_samples, sample_rank,
                                                schedule)
import importlib

import fastnorm.reference

R = importlib.import_module("fastnorm.reference.hyper_attention")


def _inputs(B, Hq, Hkv, Nq, Nk, D, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=dtype)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=dtype)
    v = torch.randn(B, Hkv, Nk, D, generator=g, dtype=dtype)
    return q, k, v


def _words(B, Hkv, S, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 ** 31, (B, Hkv, S), generator=g).to(torch.int32)


def test_package_exports():
    # fastnorm.reference.hyper_attention is the submodule (as for every family), not its main function
    assert fastnorm.reference.hyper_attention is R
    assert R.hyper_attention is hyper_attention and callable(R.make_inputs) and callable(R.dense_weights)


def test_gray_order_r3_and_official_lut():
    bins = torch.arange(8)
    assert torch.argsort(inverse_gray(bins)).tolist() == [0, 1, 3, 2, 6, 7, 5, 4]
    assert torch.argsort(gray(bins)).tolist() == [0, 1, 3, 2, 7, 6, 4, 5]


def test_inverse_gray_roundtrip_and_unit_hamming_walk():
    y = torch.arange(1 << 16)
    assert torch.equal(inverse_gray(gray(y)), y) and torch.equal(gray(inverse_gray(y)), y)
    for r in range(1, 11):
        order = torch.argsort(inverse_gray(torch.arange(1 << r)))
        steps = order[1:] ^ order[:-1]
        assert all(bin(int(s)).count("1") == 1 for s in steps), r


def test_hash_bits_strict_and_nan():
    P = torch.eye(3, dtype=torch.float32)
    x = torch.tensor([[[[1.0, 0.0, -1.0], [0.0, 0.0, 0.0], [float("nan"), 2.0, 3.0], [1.0, 1.0, 1.0]]]])
    # bins: 0b001 = 1, 0 (all dots exactly 0), 0 (a NaN makes every dot NaN), 0b111 = 7 -> inverse Gray 1,0,0,5
    assert lsh_hash(x, P).tolist() == [[[1, 0, 0, 5]]]
    assert lsh_hash(x, P, quirks=("gray_lut",)).tolist() == [[[1, 0, 0, 4]]]
    assert lsh_hash(x, torch.zeros(3, 0)).tolist() == [[[0, 0, 0, 0]]]


@pytest.mark.parametrize("L", [1, 2, 7, 64, 255, 256, 257, 300])
@pytest.mark.parametrize("b", [1, 3, 64, 256])
def test_block_partition_formula(L, b):
    nb = num_blocks(L, b)
    starts = [block_begin(j, L, nb) for j in range(nb + 1)]
    assert starts[0] == 0 and starts[-1] == L
    sizes = [starts[j + 1] - starts[j] for j in range(nb)]
    assert all(1 <= s <= b for s in sizes) and max(sizes) - min(sizes) <= 1
    for r in range(L):
        j = block_of_rank(r, L, nb)
        assert starts[j] <= r < starts[j + 1]
    if L % b == 0:
        assert starts == [j * b for j in range(nb + 1)]
    # queries (any length, e.g. fewer rows than blocks) use the same formula; empty blocks allowed
    for Lq in (1, 2, 5, nb, 3 * L):
        s = [block_begin(j, Lq, nb) for j in range(nb + 1)]
        assert s[0] == 0 and s[-1] == Lq and all(s[j] <= s[j + 1] for j in range(nb))
        assert all(s[block_of_rank(r, Lq, nb)] <= r < s[block_of_rank(r, Lq, nb) + 1] for r in range(Lq))


def test_sample_rank():
    assert sample_rank(0, 100) == 0 and sample_rank(2 ** 31 - 1, 100) == 99 and sample_rank(2 ** 30, 7) == 3
    w = torch.tensor([0, 2 ** 30, 2 ** 31 - 1], dtype=torch.int32)
    assert sample_rank(w, 1000).tolist() == [0, 500, 999]


@pytest.mark.parametrize("n", range(1, 301, 7))
def test_causal_schedule_tiles_lower_triangle_once(n):
    mn, b = 16, 4
    grid = torch.zeros(n, n, dtype=torch.int64)
    for p in schedule(n, n, True, b, 3, mn):
        if p.kind == EXACT_CAUSAL:
            assert p.nq <= mn and p.q0 == p.k0
            grid[p.q0:p.q0 + p.nq, p.k0:p.k0 + p.nk] += torch.tril(torch.ones(p.nq, p.nk, dtype=torch.int64))
        else:
            assert (p.kind == EXACT_FULL) == (p.nk <= mn or num_blocks(p.nk, b) == 1)
            grid[p.q0:p.q0 + p.nq, p.k0:p.k0 + p.nk] += 1
    assert torch.equal(grid, torch.tril(torch.ones(n, n, dtype=torch.int64)))


def test_schedule_threshold_rule():
    mn = 4096
    assert [p.kind for p in schedule(8192, 8192, True, 256, 256, mn)] == [EXACT_CAUSAL, EXACT_CAUSAL, EXACT_FULL]
    assert APPROX in [p.kind for p in schedule(8193, 8193, True, 256, 256, mn)]
    assert [p.kind for p in schedule(100, 4096, False, 256, 256, mn)] == [EXACT_FULL]
    assert [p.kind for p in schedule(100, 4097, False, 256, 256, mn)] == [APPROX]
    assert [p.kind for p in schedule(100, 4097, False, 5000, 256, mn)] == [EXACT_FULL]  # nb == 1
    assert schedule(0, 10, False, 4, 4, 2) == [] and schedule(10, 0, False, 4, 4, 2) == []
    # §7.3 example: causal 131072 -> 32 leaves, 16 exact 4096-rectangles, 15 approximated rectangles
    kinds = [p.kind for p in schedule(131072, 131072, True, 256, 256, mn)]
    assert kinds.count(EXACT_CAUSAL) == 32 and kinds.count(EXACT_FULL) == 16 and kinds.count(APPROX) == 15
    assert plan_sizes(131072, 131072, True, 256, 256, mn)[2] == 15 * 256


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("heads", [(1, 1), (4, 2)])
def test_exact_below_min_seq_len_matches_sdpa(causal, heads):
    q, k, v = _inputs(2, heads[0], heads[1], 50, 50, 16)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=heads[0] != heads[1])
    for mn in (50, 64):
        out, lse = hyper_attention(q, k, v, causal, min_seq_len=mn, block_size=4, sample_size=3,
                                   generator=torch.Generator().manual_seed(0))
        assert (out - ref).abs().max() < 1e-12
    o2, l2 = exact_attention(q, k, v, causal)
    assert (o2 - ref).abs().max() < 1e-12
    kk = k.repeat_interleave(heads[0] // heads[1], 1)
    lg = q @ kk.transpose(-1, -2) / 4.0
    if causal:
        lg = lg.masked_fill(torch.ones(50, 50, dtype=torch.bool).triu(1), -math.inf)
    assert (l2 - torch.logsumexp(lg, -1)).abs().max() < 1e-12


@pytest.mark.parametrize("causal,Nq,Nk", [(False, 37, 37), (False, 5, 61), (False, 61, 9), (True, 37, 37),
                                          (True, 64, 64)])
@pytest.mark.parametrize("r", [0, 3])
def test_planned_equals_dense_identity(causal, Nq, Nk, r):
    B, Hq, Hkv, D, b, m, mn = 2, 4, 2, 8, 4, 3, 8
    q, k, v = _inputs(B, Hq, Hkv, Nq, Nk, D)
    P = torch.randn(D, r, generator=torch.Generator().manual_seed(5))
    S = plan_sizes(Nq, Nk, causal, b, m, mn)[2]
    qp, kp, sm = plan(q, k, P, _words(B, Hkv, S), causal, b, m, mn)
    out, lse = hyper_attention_planned(q, k, v, qp, kp, sm, causal, 0.3, b, m, mn)
    W = dense_weights(q, k, qp, kp, sm, causal, b, m, mn)
    od, ld = dense_attention(q, k, v, W, 0.3)
    assert (out - od).abs().max() < 1e-12 and (lse - ld).abs().max() < 1e-12
    if causal:  # no weight above the diagonal
        assert W.triu(1).abs().max() == 0


def test_plan_perms_are_stable_permutations():
    B, H, N, D = 1, 2, 300, 4
    q, k, _ = _inputs(B, H, H, N, N, D)
    P = torch.randn(D, 2, generator=torch.Generator().manual_seed(3))  # 4 buckets: many ties
    S = plan_sizes(N, N, True, 8, 5, 40)[2]
    qp, kp, sm = plan(q, k, P, _words(B, H, S), True, 8, 5, 40)
    keys = lsh_hash(q, P)
    off = 0
    for p in schedule(N, N, True, 8, 5, 40):
        if p.kind != APPROX:
            continue
        seg = qp[:, :, off:off + p.nq].long()
        off += p.nq
        assert torch.equal(seg.sort(-1).values, torch.arange(p.q0, p.q0 + p.nq).expand_as(seg))
        kk = keys.gather(2, seg)
        # (key, index) ascending
        assert ((kk[..., 1:] > kk[..., :-1]) | ((kk[..., 1:] == kk[..., :-1]) & (seg[..., 1:] > seg[..., :-1]))).all()
    assert (sm >= 0).all()


def test_in_block_samples_are_masked():
    # every sample word maps to rank 0, which lies in key block 0: rows of query block 0 see the block only,
    # all other rows see the block plus the sample (weight Nk'/m each)
    B, H, N, D, b, m, mn = 1, 1, 40, 8, 8, 4, 8
    q, k, v = _inputs(B, H, H, N, N, D)
    P = torch.randn(D, 3, generator=torch.Generator().manual_seed(7))
    words = torch.zeros(B, H, m, dtype=torch.int32)
    qp, kp, sm = plan(q, k, P, words, False, b, m, mn)
    out, lse = hyper_attention_planned(q, k, v, qp, kp, sm, False, 0.25, b, m, mn)
    ob, lb = hyper_attention_planned(q, k, v, qp, kp, sm, False, 0.25, b, m, mn, block_only=True)
    nb = num_blocks(N, b)
    first = qp[0, 0, block_begin(0, N, nb):block_begin(1, N, nb)].long()
    rest = qp[0, 0, block_begin(1, N, nb):].long()
    assert torch.equal(out[0, 0, first], ob[0, 0, first]) and torch.equal(lse[0, 0, first], lb[0, 0, first])
    j0 = int(kp[0, 0, 0])
    expect = torch.logaddexp(lb[0, 0, rest], 0.25 * q[0, 0, rest] @ k[0, 0, j0] + math.log(m * N / m))
    assert (lse[0, 0, rest] - expect).abs().max() < 1e-12
    W = dense_weights(q, k, qp, kp, sm, False, b, m, mn)
    assert W[0, 0, first, j0].max() == 1 and torch.allclose(W[0, 0, rest, j0], torch.full_like(W[0, 0, rest, j0], N))


def test_block_only_baseline_and_unbiased_partition_function():
    B, H, N, D, b, m, mn = 1, 1, 48, 4, 8, 6, 8
    q, k, v = _inputs(B, H, H, N, N, D, seed=3)
    q, k = 0.5 * q, 0.5 * k
    P = torch.randn(D, 2, generator=torch.Generator().manual_seed(1))
    ob, lb = hyper_attention_block_only(q, k, v, block_size=b, min_seq_len=mn, lsh_proj=P)
    qp, kp, _ = plan(q, k, P, torch.zeros(B, H, m, dtype=torch.int32), False, b, m, mn)
    o2, l2 = hyper_attention_planned(q, k, v, qp, kp, torch.zeros(B, H, m, dtype=torch.int32), False, 0.5, b, m,
                                     mn, block_only=True)
    assert torch.equal(ob, o2) and torch.equal(lb, l2)
    exact_z = torch.logsumexp(0.5 * q @ k.transpose(-1, -2), -1).exp()
    zs = []
    for s in range(400):
        _, l = hyper_attention(q, k, v, block_size=b, sample_size=m, min_seq_len=mn, lsh_proj=P,
                               sample_words=_words(B, H, m, seed=100 + s))
        zs.append(l.exp())
    zs = torch.stack(zs)
    se = zs.std(0) / math.sqrt(zs.shape[0])
    assert ((zs.mean(0) - exact_z).abs() <= 5 * se + 1e-12).all()


def test_merge_inf_cases():
    o1, o2 = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    ninf = float("-inf")
    l1 = torch.tensor([0.5, ninf, ninf], dtype=torch.float64)
    l2 = torch.tensor([1.5, 2.0, ninf], dtype=torch.float64)
    o, l = merge(o1, l1, o2, l2)
    assert abs(l[0] - math.log(math.exp(0.5) + math.exp(1.5))) < 1e-14 and l[1] == 2.0 and l[2] == ninf
    assert torch.equal(o[1], o2[1]) and torch.equal(o[2], torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_quirk_presets_run_and_differ(causal):
    q, k, v = _inputs(1, 2, 2, 64, 64, 8)
    kw = dict(block_size=8, sample_size=4, min_seq_len=16, lsh_proj=torch.randn(8, 3))
    ref, _ = hyper_attention(q, k, v, causal, generator=torch.Generator().manual_seed(0), **kw)
    for preset in ("official", "official_nomask", "official_triton"):
        nw = quirk_num_samples(64, 64, causal, 8, 4, 16, preset)
        assert nw > 0
        out, lse = hyper_attention(q, k, v, causal, sample_words=_words(1, 2, nw), quirks=preset, **kw)
        assert out.shape == ref.shape and torch.isfinite(out).all() and (out - ref).abs().max() > 1e-6
    # quirk-free quirk path (every flag off but one that is a no-op on this input) equals the main path
    with pytest.raises(ValueError):
        hyper_attention(q, k, v, causal, quirks=("bogus",), **kw)


def test_make_inputs_families():
    for fam in ("gaussian", "clustered", "heavy", "local"):
        q, k, v = R.make_inputs(fam, 1, 2, 64, 16, seed=0)
        assert q.shape == (1, 2, 64, 16) and torch.isfinite(q).all() and torch.isfinite(v).all()
        q2, _, _ = R.make_inputs(fam, 1, 2, 64, 16, seed=0)
        assert torch.equal(q, q2)


def test_reference_autograd_is_the_estimator_gradient():
    # the kernels' backward is compared with autograd through the reference: check that autograd is sound here
    B, Hq, Hkv, N, D, b, m, mn = 1, 4, 2, 13, 3, 2, 2, 4
    q, k, v = _inputs(B, Hq, Hkv, N, N, D, seed=4)
    P = torch.randn(D, 2, generator=torch.Generator().manual_seed(2))
    S = plan_sizes(N, N, True, b, m, mn)[2]
    qp, kp, sm = plan(q, k, P, _words(B, Hkv, S), True, b, m, mn)

    def f(q, k, v):
        o, l = hyper_attention_planned(q, k, v, qp, kp, sm, True, 0.7, b, m, mn)
        return o, l

    assert torch.autograd.gradcheck(f, (q.requires_grad_(), k.requires_grad_(), v.requires_grad_()), eps=1e-6,
                                    atol=1e-7)
