"""fastnorm.hyper_attention (specs/hyper_attention.md §6): ops vs the float64 reference with a shared plan, exactness
below min_seq_len, causality, gradients, determinism, module, opcheck/compile, errors and edge cases."""
import importlib
import math
import warnings

import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.ops import hyper_attention as HA

R = importlib.import_module("fastnorm.reference.hyper_attention")
ops = torch.ops.fastnorm

# §4: max|err| <= tol * max(1, max|ref|) against the float64 reference run with the same plan (CPU column).
TOL = {  # dtype: (out, lse, grads)
    torch.float64: (1e-12, 1e-12, 1e-10),
    torch.float32: (2e-6, 1e-6, 2e-5),
    torch.float16: (1e-3, 1e-5, 5e-3),
    torch.bfloat16: (8e-3, 1e-5, 4e-2),
}


def rnd(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype)


def qkv(B, Hq, Hkv, Nq, Nk, D, dtype=torch.float64, seed=0):
    return rnd((B, Hq, Nq, D), dtype, seed), rnd((B, Hkv, Nk, D), dtype, seed + 1), rnd((B, Hkv, Nk, D), dtype, seed + 2)


def words_for(B, Hkv, Nq, Nk, causal, b, m, mn, seed=5):
    S = R.plan_sizes(Nq, Nk, causal, b, m, mn)[2]
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2 ** 31, (B, Hkv, S), generator=g, dtype=torch.int64).to(torch.int32)


def run(q, k, v, causal, b, m, mn, r=7, scale=None, seed=3):
    """Plan (op) + forward (op), and the float64 reference with the same plan. Returns out, lse, ref_out, ref_lse,
    plan."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    proj = rnd((D, r), torch.float32, seed)
    words = words_for(B, Hkv, Nq, Nk, causal, b, m, mn, seed + 1)
    plan = ops.hyper_attention_plan(q, k, proj, words, causal, b, m, mn)
    s = 1.0 / math.sqrt(D) if scale is None else scale
    out, lse = ops.hyper_attention(q, k, v, *plan, causal, s, b, m, mn)
    ro, rl = R.hyper_attention_planned(q.double(), k.double(), v.double(), *plan, causal, s, b, m, mn)
    return out, lse, ro, rl, plan


def assert_close(x, ref, t, what=""):
    err = (x.double() - ref.double()).abs().max().item() if x.numel() else 0.0
    bound = t * max(1.0, ref.double().abs().max().item() if ref.numel() else 0.0)
    assert err <= bound, f"{what}: max err {err:.3e} > {bound:.3e}"


# ---- 1. Gray key ------------------------------------------------------------------------------------------------
def _keys_of_bins(r):
    """Rows whose bin is each of 0..2^r-1 (x = ±1 pattern, P = identity), hashed by the op."""
    bins = torch.arange(2 ** r)
    bits = ((bins.unsqueeze(-1) >> torch.arange(r)) & 1).to(torch.float32) * 2 - 1
    x = bits.view(1, 1, 2 ** r, r)
    return ops.hyper_attention_lsh_hash(x, torch.eye(r)).view(-1).long()


def test_gray_roundtrip_and_order():
    y = torch.arange(2 ** 16, dtype=torch.int64)
    assert torch.equal(R.gray(R.inverse_gray(y)), y) and torch.equal(R.inverse_gray(R.gray(y)), y)
    for r in range(1, 11):
        keys = _keys_of_bins(r)
        assert torch.equal(keys, R.inverse_gray(torch.arange(2 ** r)))
        order = torch.argsort(keys)  # bins in sorted-key order
        ham = [bin(int(a) ^ int(b)).count("1") for a, b in zip(order[:-1], order[1:])]
        assert all(h == 1 for h in ham), r
    assert torch.argsort(_keys_of_bins(3)).tolist() == [0, 1, 3, 2, 6, 7, 5, 4]
    assert torch.argsort(R.gray(torch.arange(8))).tolist() == [0, 1, 3, 2, 7, 6, 4, 5]  # the official quirk


# ---- 2. Hash op -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("r", [0, 1, 3, 7, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_hash_matches_reference(r, dtype):
    x = rnd((2, 3, 50, 24), dtype, r)
    proj = rnd((24, r), torch.float32, 100 + r)
    assert torch.equal(ops.hyper_attention_lsh_hash(x, proj), R.lsh_hash(x, proj))
    xt = rnd((2, 50, 3, 24), dtype, r).transpose(1, 2)  # bnhd memory, non-contiguous view
    assert torch.equal(ops.hyper_attention_lsh_hash(xt, proj), R.lsh_hash(xt, proj))
    xs = rnd((2, 3, 50, 48), dtype, r)[..., ::2]  # last-dim stride 2
    assert torch.equal(ops.hyper_attention_lsh_hash(xs, proj), R.lsh_hash(xs, proj))


def test_hash_zero_and_nan_rows_give_bit_zero():
    proj = torch.tensor([[1.0, -1.0, 0.0]]).repeat(4, 1)
    x = torch.zeros(1, 1, 3, 4)
    x[0, 0, 1] = float("nan")
    x[0, 0, 2] = 1.0  # <x,P0> = 4 > 0, <x,P1> < 0, <x,P2> = 0 exactly
    keys = ops.hyper_attention_lsh_hash(x, proj)
    assert keys.view(-1).tolist() == [0, 0, 1]


# ---- 3. Schedule ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_schedule_mirrors(causal):
    b, m, mn = 32, 8, 100
    for n in [1, b, mn - 1, mn, mn + 1, 2 * mn, 2 * mn + 1, 3 * mn + 7, 131072]:
        mine = HA.schedule(n, n, causal, b, mn)
        ref = R.schedule(n, n, causal, b, m, mn)
        assert [(p.kind, p.q_begin, p.nq, p.k_begin, p.nk) for p in mine] == [tuple(p) for p in ref]
        if n <= 2000:  # C++ schedule through the plan op's shapes
            q, k = torch.zeros(1, 1, n, 2), torch.zeros(1, 1, n, 2)
            w = torch.zeros(1, 1, R.plan_sizes(n, n, causal, b, m, mn)[2], dtype=torch.int32)
            qp, kp, sm = ops.hyper_attention_plan(q, k, torch.zeros(2, 1), w, causal, b, m, mn)
            assert (qp.shape[-1], kp.shape[-1], sm.shape[-1]) == HA.plan_sizes(n, n, causal, b, m, mn)
        for p in mine:  # the <= rule at every depth
            if p.kind == "approx":
                assert p.nk > mn and p.nk > b
            elif p.kind == "exact_full" and causal:
                assert p.nk <= mn or p.nk <= b
    for nq, nk in [(100, 1000), (1000, 100), (3, 777)]:
        assert HA.plan_sizes(nq, nk, False, 64, 8, 50) == R.plan_sizes(nq, nk, False, 64, 8, 50)


def test_causal_schedule_tiles_lower_triangle_once():
    for n in list(range(1, 80)) + [127, 200, 300]:
        grid = torch.zeros(n, n, dtype=torch.int64)
        for p in HA.schedule(n, n, True, 4, 16):
            blk = torch.ones(p.nq, p.nk, dtype=torch.int64)
            if p.kind == "exact_causal":
                blk = torch.tril(blk)
            grid[p.q_begin:p.q_begin + p.nq, p.k_begin:p.k_begin + p.nk] += blk
        assert torch.equal(grid, torch.tril(torch.ones(n, n, dtype=torch.int64))), n


# ---- 4. Plan ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_plan_properties(causal):
    B, Hq, Hkv, N, D, b, m, mn = 2, 4, 2, 301, 16, 16, 12, 40
    q, k, _ = qkv(B, Hq, Hkv, N, N, D, torch.float32)
    q[:, :, 10:20] = q[:, :, 10:11]  # ties: equal keys must keep ascending index
    proj = rnd((D, 4), torch.float32, 9)
    words = words_for(B, Hkv, N, N, causal, b, m, mn)
    qp, kp, sm = ops.hyper_attention_plan(q, k, proj, words, causal, b, m, mn)
    ref = R.plan(q, k, proj, words, causal, b, m, mn)
    assert all(torch.equal(a, c) for a, c in zip((qp, kp, sm), ref))
    qkey, kkey = R.lsh_hash(q, proj).long(), R.lsh_hash(k, proj).long()
    po = ko = so = 0
    for p in [p for p in HA.schedule(N, N, causal, b, mn) if p.kind == "approx"]:
        sq = qp[:, :, po:po + p.nq].long()
        assert torch.equal(sq.sort(-1).values, torch.arange(p.q_begin, p.q_begin + p.nq).expand_as(sq))
        keys = qkey.gather(2, sq)
        assert bool((keys[..., 1:] >= keys[..., :-1]).all())
        tie = keys[..., 1:] == keys[..., :-1]
        assert bool((sq[..., 1:] > sq[..., :-1])[tie].all())  # stability
        sk = kp[:, :, ko:ko + p.nk].long()
        assert torch.equal(sk.sort(-1).values, torch.arange(p.k_begin, p.k_begin + p.nk).expand_as(sk))
        assert bool((kkey.gather(2, sk).diff(dim=-1) >= 0).all())
        ranks = sm[:, :, so:so + m].long()
        w = words[:, :, so:so + m].long()
        assert torch.equal(ranks, (w * p.nk) >> 31) and int(ranks.max()) < p.nk
        po, ko, so = po + p.nq, ko + p.nk, so + m
    again = ops.hyper_attention_plan(q, k, proj, words, causal, b, m, mn)
    assert all(torch.equal(a, c) for a, c in zip((qp, kp, sm), again))


# ---- 5. Forward vs the float64 reference ------------------------------------------------------------------------
FWD_CASES = [
    # B, Hq, Hkv, Nq, Nk, D, b, m, mn, r
    (1, 1, 1, 1, 1, 8, 32, 16, 64, 7),
    (2, 4, 4, 7, 7, 1, 7, 5, 20, 7),
    (1, 8, 2, 63, 63, 24, 7, 5, 20, 0),
    (2, 1, 1, 255, 255, 64, 32, 16, 64, 7),
    (1, 4, 4, 256, 256, 80, 32, 16, 64, 7),
    (1, 8, 2, 257, 257, 128, 32, 16, 64, 0),
    (1, 1, 1, 1000, 1000, 8, 32, 16, 64, 7),
    (1, 1, 1, 1537, 1537, 24, 32, 16, 64, 7),
    (1, 2, 1, 100, 100, 256, 7, 5, 20, 7),
]
NONCAUSAL_ONLY = [(1, 1, 1, 100, 1000, 24, 32, 16, 64, 7), (1, 4, 2, 1000, 100, 8, 7, 5, 20, 7),
                  (2, 1, 1, 3, 777, 64, 32, 16, 64, 7)]


@pytest.mark.parametrize("case", FWD_CASES + NONCAUSAL_ONLY)
@pytest.mark.parametrize("causal", [False, True])
def test_forward_vs_reference_float64(case, causal):
    B, Hq, Hkv, Nq, Nk, D, b, m, mn, r = case
    if causal and Nq != Nk:
        pytest.skip("causal needs Nq == Nk")
    q, k, v = qkv(B, Hq, Hkv, Nq, Nk, D, torch.float64, sum(case))
    out, lse, ro, rl, _ = run(q, k, v, causal, b, m, mn, r)
    assert out.dtype == torch.float64 and lse.dtype == torch.float64 and out.is_contiguous()
    assert_close(out, ro, TOL[torch.float64][0], "out")
    assert_close(lse, rl, TOL[torch.float64][1], "lse")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("case", [FWD_CASES[2], FWD_CASES[3], FWD_CASES[4], FWD_CASES[5], NONCAUSAL_ONLY[1]])
def test_forward_vs_reference_low_precision(case, causal, dtype):
    B, Hq, Hkv, Nq, Nk, D, b, m, mn, r = case
    if causal and Nq != Nk:
        pytest.skip("causal needs Nq == Nk")
    q, k, v = qkv(B, Hq, Hkv, Nq, Nk, D, dtype, sum(case))
    out, lse, ro, rl, _ = run(q, k, v, causal, b, m, mn, r)
    assert out.dtype == dtype and lse.dtype == torch.float32
    t_out, t_lse, _ = TOL[dtype]
    # out is rounded once to the dtype: allow one rounding of the reference on top of the table's bound
    assert_close(out, ro, t_out + torch.finfo(dtype).eps, "out")
    assert_close(lse, rl, max(t_lse, 2e-6), "lse")


def test_forward_bnhd_layout_and_strides():
    B, Hq, Hkv, N, D, b, m, mn = 2, 4, 2, 300, 24, 16, 8, 40
    q, k, v = (x.transpose(1, 2).contiguous() for x in qkv(B, Hq, Hkv, N, N, D, torch.float32, 7))
    g = torch.Generator().manual_seed(1)
    out = fastnorm.hyper_attention(q, k, v, block_size=b, sample_size=m, min_seq_len=mn, generator=g, layout="bnhd")
    assert out.shape == q.shape and out.is_contiguous()
    g = torch.Generator().manual_seed(1)
    ref = fastnorm.hyper_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_size=b,
                                   sample_size=m, min_seq_len=mn, generator=g)
    assert torch.equal(out, ref.transpose(1, 2))


# ---- 6. Dense identity ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
def test_dense_identity(causal):
    B, Hq, Hkv, N, D, b, m, mn = 1, 2, 1, 150, 8, 8, 6, 20
    q, k, v = qkv(B, Hq, Hkv, N, N, D, torch.float64, 11)
    out, lse, _, _, plan = run(q, k, v, causal, b, m, mn, 4)
    W = R.dense_weights(q, k, *plan, causal, b, m, mn)
    do, dl = R.dense_attention(q, k, v, W, 1 / math.sqrt(D))
    assert_close(out, do, 1e-12, "out")
    assert_close(lse, dl, 1e-12, "lse")


# ---- 7. Masking and padding -------------------------------------------------------------------------------------
def test_samples_all_in_block_give_block_only_rows():
    B, H, N, D, b, m, mn = 1, 1, 200, 8, 40, 8, 50  # nb = 5, blocks of 40 keys
    q, k, v = qkv(B, H, H, N, N, D, torch.float64, 13)
    proj = rnd((D, 3), torch.float32, 1)
    # all words map to rank 0..39 (block 0): rows of query block 0 see only masked samples
    words = torch.full((B, H, m), 2 ** 31 // 10, dtype=torch.int32)
    plan = ops.hyper_attention_plan(q, k, proj, words, False, b, m, mn)
    out, lse = ops.hyper_attention(q, k, v, *plan, False, 0.3, b, m, mn)
    empty = torch.zeros(B, H, 0, dtype=torch.int32)
    plan0 = ops.hyper_attention_plan(q, k, proj, empty, False, b, 0, mn)
    out0, lse0 = ops.hyper_attention(q, k, v, *plan0, False, 0.3, b, 0, mn)
    rows0 = plan[0][0, 0, :40].long()  # query block 0
    assert torch.equal(out[0, 0, rows0], out0[0, 0, rows0]) and torch.equal(lse[0, 0, rows0], lse0[0, 0, rows0])
    rows1 = plan[0][0, 0, 40:].long()  # other rows do use the samples
    assert not torch.equal(lse[0, 0, rows1], lse0[0, 0, rows1])


def test_ragged_blocks_differ_from_unmasked_padding():
    B, H, N, D, b, m, mn = 1, 1, 203, 8, 16, 8, 50  # N not a multiple of b
    q, k, v = qkv(B, H, H, N, N, D, torch.float64, 17)
    proj = rnd((D, 3), torch.float32, 2)
    words = words_for(B, H, N, N, False, b, m, mn)
    out, _, ro, _, _ = run(q, k, v, False, b, m, mn, 3)
    padded, _ = R.hyper_attention(q, k, v, False, None, 3, b, m, mn, lsh_proj=proj, sample_words=words,
                                  quirks=("pad_unmasked",))
    assert_close(out, ro, 1e-12)
    assert (out - padded).abs().max().item() > 1e-6


# ---- 8. Unbiasedness --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_partition_function_unbiased():
    N, D, b, m, mn, seeds = 512, 8, 64, 16, 64, 4000
    q, k, v = qkv(1, 1, 1, N, N, D, torch.float64, 19)
    s = 1 / math.sqrt(D)
    exact_Z = torch.exp(s * q[0, 0] @ k[0, 0].T).sum(-1)
    proj = rnd((D, 3), torch.float32, 3)
    S = R.plan_sizes(N, N, False, b, m, mn)[2]
    acc = torch.zeros(N, dtype=torch.float64)
    acc2 = torch.zeros(N, dtype=torch.float64)
    for seed in range(seeds):
        g = torch.Generator().manual_seed(seed)
        words = torch.randint(0, 2 ** 31, (1, 1, S), generator=g).to(torch.int32)
        plan = ops.hyper_attention_plan(q, k, proj, words, False, b, m, mn)
        _, lse = ops.hyper_attention(q, k, v, *plan, False, s, b, m, mn)
        Z = torch.exp(lse[0, 0])
        acc += Z
        acc2 += Z * Z
    mean = acc / seeds
    se = ((acc2 / seeds - mean ** 2).clamp_min(0) / seeds).sqrt()
    assert bool(((mean - exact_Z).abs() <= 4 * se + 1e-9 * exact_Z).all())


# ---- 9. Exactness -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_exact_below_threshold_equals_sdpa(causal, dtype):
    B, Hq, Hkv, N, D = 2, 8, 2, 333, 40
    q, k, v = qkv(B, Hq, Hkv, N, N, D, dtype, 23)
    out, lse = fastnorm.hyper_attention(q, k, v, causal, return_lse=True)  # defaults: min_seq_len 4096
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=causal, enable_gqa=True)
    assert_close(out, ref, TOL[dtype][0], "out")
    _, rl = R.exact_attention(q.double(), k.double(), v.double(), causal)
    assert_close(lse, rl, TOL[dtype][1], "lse")


def test_module_fallbacks_agree():
    q, k, v = qkv(1, 4, 4, 200, 200, 32, torch.float32, 29)
    a = fastnorm.nn.HyperAttention(32, exact_fallback="sdpa", seed=0)
    b = fastnorm.nn.HyperAttention(32, exact_fallback="fastnorm", seed=0)
    for causal in (False, True):
        torch.testing.assert_close(a(q, k, v, is_causal=causal), b(q, k, v, is_causal=causal), atol=2e-6, rtol=0)


def test_causal_no_future_information():
    N, D, b, m, mn = 600, 16, 16, 8, 40
    q, k, v = qkv(1, 2, 1, N, N, D, torch.float32, 31)
    out = fastnorm.hyper_attention(q, k, v, True, None, 5, b, m, mn, torch.Generator().manual_seed(0))
    for t in (0, 100, 299, 300, 451):
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t + 1:] = torch.randn_like(k2[:, :, t + 1:]) * 3
        v2[:, :, t + 1:] = torch.randn_like(v2[:, :, t + 1:]) * 3
        out2 = fastnorm.hyper_attention(q, k2, v2, True, None, 5, b, m, mn, torch.Generator().manual_seed(0))
        assert torch.equal(out[:, :, :t + 1], out2[:, :, :t + 1]), t


# ---- 10. Backward -----------------------------------------------------------------------------------------------
GRAD_CASES = [  # B, Hq, Hkv, N, D, b, m, mn
    (1, 1, 1, 37, 3, 4, 3, 8),
    (1, 8, 2, 24, 2, 4, 3, 8),
    (2, 2, 1, 30, 4, 5, 2, 9),
]


@pytest.mark.parametrize("case", GRAD_CASES)
@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_op_fixed_plan(case, causal):
    B, Hq, Hkv, N, D, b, m, mn = case
    q, k, v = (x.requires_grad_() for x in qkv(B, Hq, Hkv, N, N, D, torch.float64, 37))
    proj = rnd((D, 3), torch.float32, 4)
    words = words_for(B, Hkv, N, N, causal, b, m, mn)
    plan = ops.hyper_attention_plan(q.detach(), k.detach(), proj, words, causal, b, m, mn)
    assert plan[1].shape[-1] > 0  # something is approximated
    wl = rnd((B, Hq, N), torch.float64, 5)

    def f(q, k, v):
        out, lse = ops.hyper_attention(q, k, v, *plan, causal, 0.7, b, m, mn)
        return out, (lse * wl).sum()

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


def _margin_inputs(shape, proj, seed):
    """Rows re-drawn until every |<x, P_t>| > 1e-2 (finite differences cannot flip a hash bit)."""
    x = rnd(shape, torch.float64, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    for _ in range(100):
        bad = ((x @ proj.double()).abs() <= 1e-2).any(-1)
        if not bool(bad.any()):
            break
        x[bad] = torch.randn(int(bad.sum()), shape[-1], generator=g, dtype=torch.float64)
    return x


@pytest.mark.parametrize("causal", [False, True])
def test_gradcheck_public_functional(causal):
    B, Hq, Hkv, N, D, b, m, mn = 1, 2, 1, 29, 3, 4, 3, 8
    proj = torch.randn(D, 3, generator=torch.Generator().manual_seed(0))  # == the functional's first draw
    q = _margin_inputs((B, Hq, N, D), proj, 1).requires_grad_()
    k = _margin_inputs((B, Hkv, N, D), proj, 2).requires_grad_()
    v = rnd((B, Hkv, N, D), torch.float64, 3).requires_grad_()

    def f(q, k, v):
        out, lse = fastnorm.hyper_attention(q, k, v, causal, None, 3, b, m, mn, torch.Generator().manual_seed(0),
                                            True)
        return out, lse.sum()

    assert torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("causal", [False, True])
def test_backward_vs_reference(dtype, causal):
    B, Hq, Hkv, N, D, b, m, mn = 2, 4, 2, 150, 24, 8, 6, 20
    q, k, v = qkv(B, Hq, Hkv, N, N, D, dtype, 41)
    proj = rnd((D, 4), torch.float32, 6)
    words = words_for(B, Hkv, N, N, causal, b, m, mn)
    plan = ops.hyper_attention_plan(q, k, proj, words, causal, b, m, mn)
    go, gl = rnd((B, Hq, N, D), dtype, 7), rnd((B, Hq, N), torch.float32, 8)
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out, lse = ops.hyper_attention(*xs, *plan, causal, 0.2, b, m, mn)
    grads = torch.autograd.grad((out.double() * go.double()).sum() + (lse.double() * gl.double()).sum(), xs)
    rs = [x.double().requires_grad_() for x in (q, k, v)]
    ro, rl = R.hyper_attention_planned(*rs, *plan, causal, 0.2, b, m, mn)
    rgrads = torch.autograd.grad((ro * go.double()).sum() + (rl * gl.double()).sum(), rs)
    for g, rg, name in zip(grads, rgrads, "qkv"):
        assert g.dtype == dtype
        assert_close(g, rg, TOL[dtype][2] + 4 * torch.finfo(dtype).eps, "d" + name)


def test_backward_differs_from_detached_lse_quirk():
    B, H, N, D, b, m, mn = 1, 1, 200, 8, 16, 8, 30
    q, k, v = qkv(B, H, H, N, N, D, torch.float64, 43)
    proj = rnd((D, 3), torch.float32, 9)
    words = words_for(B, H, N, N, True, b, m, mn)
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    plan = ops.hyper_attention_plan(q, k, proj, words, True, b, m, mn)
    out, _ = ops.hyper_attention(*xs, *plan, True, 0.35, b, m, mn)
    g = torch.autograd.grad(out.sum(), xs)
    # the detached-LSE backward: each piece's local softmax with constant merge weights
    rs = [x.clone().requires_grad_() for x in (q, k, v)]
    acc_o = torch.zeros(B, H, N, D, dtype=torch.float64)
    acc_l = torch.full((B, H, N), -math.inf, dtype=torch.float64)
    po = ko = so = 0
    for p in R.schedule(N, N, True, b, m, mn):
        if p.kind == R.APPROX:
            qp, kp, sp = plan[0][:, :, po:po + p.nq], plan[1][:, :, ko:ko + p.nk], plan[2][:, :, so:so + m]
            po, ko, so = po + p.nq, ko + p.nk, so + m
            o, l = R._unpermute(*R._approx_piece(*rs, qp, kp, sp, p, 0.35, 1, b, m), qp.long() - p.q0)
        else:
            o, l = R._exact_piece(*rs, p, 0.35, 1, p.kind == R.EXACT_CAUSAL)
        a, e = p.q0, p.q0 + p.nq
        mo, ml = R.merge(acc_o[:, :, a:e], acc_l[:, :, a:e], o, l.detach())
        acc_o = torch.cat([acc_o[:, :, :a], mo, acc_o[:, :, e:]], 2)
        acc_l = torch.cat([acc_l[:, :, :a], ml, acc_l[:, :, e:]], 2)
    gd = torch.autograd.grad(acc_o.sum(), rs)
    assert max((a - c).abs().max().item() for a, c in zip(g, gd)) > 10 * TOL[torch.float64][2]


def test_double_backward_raises():
    q, k, v = (x.requires_grad_() for x in qkv(1, 1, 1, 20, 20, 4, torch.float64, 47))
    out = fastnorm.hyper_attention(q, k, v, False, None, 3, 4, 3, 8, torch.Generator().manual_seed(0))
    (gq,) = torch.autograd.grad(out.sum(), q, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gq.sum().backward()


# ---- 11. Merge op -----------------------------------------------------------------------------------------------
def test_merge_values_and_inf():
    o1, o2 = rnd((2, 3, 5, 4), torch.float64, 1), rnd((2, 3, 5, 4), torch.float64, 2)
    l1, l2 = rnd((2, 3, 5), torch.float64, 3), rnd((2, 3, 5), torch.float64, 4)
    l1[0, 0, 0] = l2[0, 0, 0] = -math.inf
    l1[0, 0, 1] = -math.inf
    l2[0, 0, 2] = -math.inf
    o2[0, 0, 2] = float("nan")  # a -inf piece's values never enter
    o, l = fastnorm.hyper_attention_merge(o1, l1, o2, l2)
    L = torch.logaddexp(l1, l2)
    ref = torch.exp(l1 - L).unsqueeze(-1) * o1 + torch.exp(l2 - L).unsqueeze(-1) * o2
    mask = torch.ones_like(L, dtype=torch.bool)
    mask[0, 0, :3] = False
    torch.testing.assert_close(o[mask], ref[mask], atol=1e-12, rtol=0)
    torch.testing.assert_close(l[mask], L[mask], atol=1e-12, rtol=0)
    assert l[0, 0, 0] == -math.inf and bool((o[0, 0, 0] == 0).all())
    assert torch.equal(o[0, 0, 1], o2[0, 0, 1]) and l[0, 0, 1] == l2[0, 0, 1]
    assert torch.equal(o[0, 0, 2], o1[0, 0, 2]) and l[0, 0, 2] == l1[0, 0, 2]
    ob, lb = fastnorm.hyper_attention_merge(o1.transpose(1, 2), l1, o2.transpose(1, 2), l2, layout="bnhd")
    assert torch.equal(ob.transpose(1, 2), o) and torch.equal(lb, l)


def test_merge_gradcheck():
    xs = [rnd(s, torch.float64, i).requires_grad_() for i, s in enumerate([(1, 2, 6, 3), (1, 2, 6), (1, 2, 6, 3),
                                                                             (1, 2, 6)])]
    assert torch.autograd.gradcheck(lambda a, b, c, d: fastnorm.hyper_attention_merge(a, b, c, d), xs)


# ---- 12. Determinism --------------------------------------------------------------------------------------------
def _fwd_bwd(q, k, v, seed, causal=True):
    xs = [x.clone().requires_grad_() for x in (q, k, v)]
    out, lse = fastnorm.hyper_attention(*xs, causal, None, 5, 16, 8, 40, torch.Generator().manual_seed(seed), True)
    grads = torch.autograd.grad((out * out).sum() + lse.sum(), xs)
    return (out, lse) + grads


@pytest.mark.parametrize("causal", [False, True])
def test_deterministic_and_thread_independent(causal):
    q, k, v = qkv(2, 4, 2, 500, 500, 32, torch.float32, 53)
    a = _fwd_bwd(q, k, v, 0, causal)
    b = _fwd_bwd(q, k, v, 0, causal)
    nt = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        c = _fwd_bwd(q, k, v, 0, causal)
    finally:
        torch.set_num_threads(nt)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x, y) and torch.equal(x, z)
    d = _fwd_bwd(q, k, v, 1, causal)
    assert not torch.equal(a[0], d[0])


def test_generator_draws_exactly_section_3_8():
    B, Hq, Hkv, N, D, b, m, mn = 2, 2, 1, 300, 8, 16, 8, 40
    q, k, v = qkv(B, Hq, Hkv, N, N, D, torch.float32, 59)
    g = torch.Generator().manual_seed(7)
    out = fastnorm.hyper_attention(q, k, v, True, None, 5, b, m, mn, g)
    g2 = torch.Generator().manual_seed(7)
    proj = torch.randn(D, 5, generator=g2)
    S = R.plan_sizes(N, N, True, b, m, mn)[2]
    words = torch.randint(0, 2 ** 31, (B, Hkv, S), generator=g2, dtype=torch.int64).to(torch.int32)
    assert torch.equal(g.get_state(), g2.get_state())
    plan = ops.hyper_attention_plan(q, k, proj, words, True, b, m, mn)
    o2, _ = ops.hyper_attention(q, k, v, *plan, True, 1 / math.sqrt(D), b, m, mn)
    assert torch.equal(out, o2)
    # an all-exact call draws nothing
    g3 = torch.Generator().manual_seed(7)
    fastnorm.hyper_attention(q, k, v, True, generator=g3)
    assert torch.equal(g3.get_state(), torch.Generator().manual_seed(7).get_state())


# ---- 13. Module -------------------------------------------------------------------------------------------------
def test_module_state_dict_and_dtype():
    m1 = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, seed=1)
    assert "lsh_proj" in m1.state_dict() and m1.lsh_proj.dtype == torch.float32
    m2 = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, seed=2)
    assert not torch.equal(m1.lsh_proj, m2.lsh_proj)
    m2.load_state_dict(m1.state_dict())
    q, k, v = qkv(1, 2, 2, 100, 100, 16, torch.float32, 61)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    assert torch.equal(m1(q, k, v, generator=g()), m2(q, k, v, generator=g()))
    old = m1.lsh_proj.clone()
    m1.reset_lsh(torch.Generator().manual_seed(5))
    assert not torch.equal(old, m1.lsh_proj)
    keep = m1.lsh_proj.clone()
    m1.half()
    assert m1.lsh_proj.dtype == torch.float32 and torch.equal(m1.lsh_proj, keep)
    m1.to(torch.bfloat16)
    assert m1.lsh_proj.dtype == torch.float32 and torch.equal(m1.lsh_proj, keep)


def test_module_seeded_generator_and_resample():
    q, k, v = qkv(1, 2, 2, 100, 100, 16, torch.float32, 67)
    a = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, seed=3)
    b = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, seed=3)
    assert torch.equal(a(q, k, v), b(q, k, v))  # same seed, same per-module generator stream
    r = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, resample_lsh=True)
    assert not torch.equal(r(q, k, v), r(q, k, v))


def test_module_sdpa_signature_gqa_and_unsupported():
    mod = fastnorm.nn.HyperAttention(16, block_size=8, sample_size=4, min_seq_len=20, seed=0)
    q, k, v = qkv(1, 4, 2, 60, 60, 16, torch.float32, 71)
    with pytest.raises(RuntimeError, match="enable_gqa"):
        mod(q, k, v)
    o1 = mod(q, k, v, None, 0.0, True, None, True, generator=torch.Generator().manual_seed(0))
    o2 = mod(q, k, v, is_causal=True, enable_gqa=True, generator=torch.Generator().manual_seed(0))
    assert torch.equal(o1, o2)
    mask = torch.ones(60, 60, dtype=torch.bool)
    with pytest.raises(NotImplementedError, match="attn_mask"):
        mod(q, k, v, mask, enable_gqa=True)
    with pytest.raises(NotImplementedError, match="dropout_p"):
        mod(q, k, v, dropout_p=0.1, enable_gqa=True)
    ex = fastnorm.nn.HyperAttention(16, unsupported="exact")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = ex(q, k, v, mask, enable_gqa=True)
        ex(q, k, v, mask, enable_gqa=True)
    assert sum("delegating" in str(x.message) for x in w) == 1
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, mask, enable_gqa=True))


class _TinyAttention(torch.nn.Module):
    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.qkv = torch.nn.Linear(d, 3 * d)
        self.o = torch.nn.Linear(d, d)

    def forward(self, x, attn=None):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.h, C // self.h).permute(2, 0, 3, 1, 4)
        fn = attn if attn is not None else F.scaled_dot_product_attention
        y = fn(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, N, C))


def test_module_drop_in_two_layer_model_and_patch():
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([_TinyAttention(32, 4), _TinyAttention(32, 4)])
    x = torch.randn(2, 50, 32)
    hyper = [fastnorm.nn.HyperAttention(8, exact_fallback="fastnorm") for _ in layers]
    y_ref, y_hyp = x, x
    for layer, ha in zip(layers, hyper):
        y_ref, y_hyp = layer(y_ref), layer(y_hyp, ha)
    torch.testing.assert_close(y_hyp, y_ref, atol=1e-5, rtol=1e-5)
    model = torch.nn.Sequential(*layers)
    base = model(x)
    handle = fastnorm.nn.patch_attention(model, 8, exact_fallback="fastnorm")
    assert all(hasattr(layer, "hyper_attention") for layer in layers)
    assert any(k.endswith("hyper_attention.lsh_proj") for k in model.state_dict())
    torch.testing.assert_close(model(x), base, atol=1e-5, rtol=1e-5)
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention
    handle.remove()
    assert not any(hasattr(layer, "hyper_attention") for layer in layers)
    assert not any("hyper_attention" in k for k in model.state_dict())


def test_patch_attention_default_sdpa_fallback_does_not_recurse():
    # Regression: with the default exact_fallback="sdpa", a call below min_seq_len went to
    # F.scaled_dot_product_attention, which patch_attention had rebound to the module itself (RecursionError).
    torch.manual_seed(0)
    model = torch.nn.Sequential(_TinyAttention(32, 4))
    x = torch.randn(2, 20, 32)
    base = model(x)
    handle = fastnorm.nn.patch_attention(model, 8)
    assert model[0].hyper_attention.exact_fallback == "sdpa"
    torch.testing.assert_close(model(x), base, atol=1e-6, rtol=1e-6)
    handle.remove()
    assert F.scaled_dot_product_attention is torch._C._nn.scaled_dot_product_attention


# ---- 14. opcheck and compile ------------------------------------------------------------------------------------
def _opcheck_args():
    B, Hq, Hkv, N, D, b, m, mn = 1, 2, 1, 40, 8, 4, 3, 8
    q, k, v = qkv(B, Hq, Hkv, N, N, D, torch.float64, 73)
    proj = rnd((D, 3), torch.float32, 10)
    words = words_for(B, Hkv, N, N, True, b, m, mn)
    plan = ops.hyper_attention_plan(q, k, proj, words, True, b, m, mn)
    out, lse = ops.hyper_attention(q, k, v, *plan, True, 0.3, b, m, mn)
    rq, rk, rv = (x.clone().requires_grad_() for x in (q, k, v))
    return {
        "lsh_hash": (ops.hyper_attention_lsh_hash.default, (q, proj)),
        "plan": (ops.hyper_attention_plan.default, (q, k, proj, words, True, b, m, mn)),
        "forward": (ops.hyper_attention.default, (rq, rk, rv, *plan, True, 0.3, b, m, mn)),
        "backward": (ops.hyper_attention_backward.default,
                     (torch.randn_like(out), torch.randn_like(lse), q, k, v, out, lse, *plan, True, 0.3, b, m, mn)),
        "merge": (ops.hyper_attention_merge.default,
                  (out.clone().requires_grad_(), lse.clone().requires_grad_(), torch.randn_like(out).requires_grad_(),
                   torch.randn_like(lse).requires_grad_())),
    }


@pytest.mark.parametrize("name", ["lsh_hash", "plan", "forward", "backward", "merge"])
def test_opcheck(name):
    op, args = _opcheck_args()[name]
    torch.library.opcheck(op, args)


def test_compile_fullgraph_matches_eager():
    torch._dynamo.reset()
    q, k, v = qkv(1, 2, 2, 120, 120, 16, torch.float32, 79)

    def f(q, k, v):
        return fastnorm.hyper_attention(q, k, v, True, None, 4, 8, 4, 30)

    torch.manual_seed(0)
    eager = f(q, k, v)
    torch.manual_seed(0)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k, v)
    torch.testing.assert_close(compiled, eager, atol=0, rtol=0)


# ---- 15. Errors -------------------------------------------------------------------------------------------------
def _err_cases():
    q, k, v = qkv(2, 4, 2, 10, 10, 8, torch.float32, 83)
    f = fastnorm.hyper_attention
    return [
        (lambda: f(q[0], k, v), "'query'"),
        (lambda: f(q, k, v, layout="bhdn"), "'layout'"),
        (lambda: f(q, k.double(), v), "'key'"),
        (lambda: f(q.to(torch.int32), k.to(torch.int32), v.to(torch.int32)), "'query'"),
        (lambda: f(q, k[:1], v[:1]), "'key'"),
        (lambda: f(q, k, v[:, :, :5]), "'value'"),
        (lambda: f(q, k[:, :1].expand(2, 3, 10, 8), v[:, :1].expand(2, 3, 10, 8)), "heads"),
        (lambda: f(*(torch.zeros(1, 1, 4, 300),) * 3), "head dim"),
        (lambda: f(q, k, torch.zeros(2, 2, 10, 4)), "'value'"),
        (lambda: f(q[:, :, :5], k, v, causal=True), "causal"),
        (lambda: f(q, k, v, scale=float("inf")), "'scale'"),
        (lambda: f(q, k, v, block_size=0), "'block_size'"),
        (lambda: f(q, k, v, sample_size=-1), "'sample_size'"),
        (lambda: f(q, k, v, min_seq_len=0), "'min_seq_len'"),
        (lambda: f(q, k, v, lsh_num_projs=17), "'lsh_num_projs'"),
        (lambda: f(q, k, v, lsh_proj=torch.zeros(8, 17)), "'lsh_proj'"),
        (lambda: f(q, k, v, lsh_proj=torch.zeros(7, 3)), "'lsh_proj'"),
    ]


@pytest.mark.parametrize("i", range(17))
def test_errors_name_op_and_argument(i):
    fn, arg = _err_cases()[i]
    with pytest.raises((ValueError, TypeError, RuntimeError)) as e:
        fn()
    assert "fastnorm.hyper_attention" in str(e.value) and arg in str(e.value), str(e.value)


def test_op_level_errors():
    q, k, v = qkv(1, 2, 1, 40, 40, 8, torch.float32, 89)
    plan = ops.hyper_attention_plan(q, k, torch.randn(8, 3), words_for(1, 1, 40, 40, False, 4, 3, 8), False, 4, 3, 8)
    with pytest.raises(RuntimeError, match="fastnorm.hyper_attention: 'q_perm' must have shape"):
        ops.hyper_attention(q, k, v, plan[0][:, :, 1:], plan[1], plan[2], False, 0.3, 4, 3, 8)
    bad = plan[1].clone()
    bad[0, 0, 0] = 1000
    with pytest.raises(RuntimeError, match="fastnorm.hyper_attention: 'k_perm' holds"):
        ops.hyper_attention(q, k, v, plan[0], bad, plan[2], False, 0.3, 4, 3, 8)
    with pytest.raises(RuntimeError, match="fastnorm.hyper_attention: block_size"):
        ops.hyper_attention(q, k, v, *plan, False, 0.3, 0, 3, 8)
    with pytest.raises(RuntimeError, match="fastnorm.hyper_attention_plan: 'sample_words' must be int32"):
        ops.hyper_attention_plan(q, k, torch.randn(8, 3), torch.zeros(1, 1, 3), False, 4, 3, 8)
    with pytest.raises(RuntimeError, match="fastnorm.hyper_attention_merge: 'out2'"):
        ops.hyper_attention_merge(q, q[..., 0], q[:, :1], q[..., 0])


# ---- 16. Edge cases ---------------------------------------------------------------------------------------------
def test_empty_dims_and_no_keys():
    g = torch.Generator().manual_seed(0)
    for shape_q, shape_k in [((0, 2, 5, 4), (0, 1, 5, 4)), ((1, 0, 5, 4), (1, 0, 5, 4)), ((1, 2, 0, 4), (1, 1, 5, 4))]:
        q = torch.randn(*shape_q)
        k = torch.randn(*shape_k)
        out, lse = fastnorm.hyper_attention(q, k, k, generator=g, return_lse=True, min_seq_len=1, block_size=1)
        assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert torch.equal(g.get_state(), torch.Generator().manual_seed(0).get_state())
    q = torch.randn(1, 2, 5, 4, requires_grad=True)
    k = torch.randn(1, 1, 0, 4, requires_grad=True)
    v = torch.randn(1, 1, 0, 4, requires_grad=True)
    out, lse = fastnorm.hyper_attention(q, k, v, return_lse=True)
    assert bool((out == 0).all()) and bool((lse == -math.inf).all())
    out.sum().backward()
    assert bool((q.grad == 0).all())


def test_n1_d1_noncontiguous_expanded():
    q, k, v = qkv(1, 1, 1, 1, 1, 1, torch.float64, 97)
    out = fastnorm.hyper_attention(q, k, v)
    assert torch.equal(out, v)
    base = rnd((2, 3, 120, 16), torch.float64, 101)
    qn = base[:, :, ::2]  # non-contiguous rows
    ke = rnd((1, 1, 60, 16), torch.float64, 103).expand(2, 3, 60, 16)  # stride-0 dims
    out, lse, ro, rl, _ = run(qn, ke, ke, True, 8, 4, 16)
    assert_close(out, ro, 1e-12)
    out2, _, _, _, _ = run(qn.contiguous(), ke.contiguous(), ke.contiguous(), True, 8, 4, 16)
    assert torch.equal(out, out2)


def test_nan_locality_and_inf():
    B, H, N, D, b, m, mn = 1, 1, 200, 8, 16, 0, 30  # block-only: each key reaches its own block's rows
    q, k, v = qkv(B, H, H, N, N, D, torch.float64, 107)
    proj = rnd((D, 3), torch.float32, 11)
    empty = torch.zeros(B, H, 0, dtype=torch.int32)
    k[0, 0, 17] = float("nan")
    plan = ops.hyper_attention_plan(q, k, proj, empty, False, b, m, mn)
    out, lse = ops.hyper_attention(q, k, v, *plan, False, 0.3, b, m, mn)
    W = R.dense_weights(q, k, *plan, False, b, m, mn)
    touched = W[0, 0, :, 17] > 0
    bad = torch.isnan(out[0, 0]).any(-1)
    assert torch.equal(bad, touched) and 0 < int(bad.sum()) < N
    v2 = v.clone()
    v2[0, 0, 3] = float("inf")
    k2 = k.clone()
    k2[0, 0, 17] = 0.0
    out2, _ = ops.hyper_attention(q, k2, v2, *plan, False, 0.3, b, m, mn)
    assert not bool(torch.isnan(out2[0, 0, ~(W[0, 0, :, 3] > 0)]).any())


@pytest.mark.cuda
def test_cuda_matches_cpu_with_shared_plan():
    B, Hq, Hkv, N, D, b, m, mn = 1, 4, 2, 700, 64, 32, 16, 64
    q, k, v = qkv(B, Hq, Hkv, N, N, D, torch.float32, 109)
    for causal in (False, True):
        out, lse, _, _, plan = run(q, k, v, causal, b, m, mn)
        oc, lc = ops.hyper_attention(q.cuda(), k.cuda(), v.cuda(), *(p.cuda() for p in plan), causal,
                                     1 / math.sqrt(D), b, m, mn)
        torch.testing.assert_close(oc.cpu(), out, atol=5e-6, rtol=0)
        torch.testing.assert_close(lc.cpu(), lse, atol=5e-6, rtol=0)


