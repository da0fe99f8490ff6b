"""CUDA kernels of hyper_attention vs the CPU kernels and the float64 reference (specs/hyper_attention.md §4, §6).

Every test carries @pytest.mark.cuda (skipped without a GPU and fastnorm._C_cuda). CPU and CUDA get the same plan
(built once on the CPU and copied), so any difference is kernel arithmetic, not a bucket flip (§8 item 17)."""
import math

import pytest
import torch

import fastnorm
from fastnorm.reference.hyper_attention import hyper_attention_planned, plan_sizes

from conftest import HAS_CUDA, poison_cuda_allocator

ops = torch.ops.fastnorm
pytestmark = pytest.mark.cuda

# §4 CUDA tolerances: max|err| <= tol * max(1, max|ref|) against the float64 reference on the same plan
TOL = {torch.float32: dict(out=5e-6, lse=5e-6, grad=5e-5),
       torch.float16: dict(out=2e-3, lse=1e-4, grad=1e-2),
       torch.bfloat16: dict(out=1.5e-2, lse=1e-4, grad=6e-2)}


def _inputs(B, Hq, Hkv, Nq, Nk, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, Hq, Nq, D, generator=g, dtype=torch.float64)
    k = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    v = torch.randn(B, Hkv, Nk, D, generator=g, dtype=torch.float64)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _plan(q, k, causal, b, m, mn, r=3, seed=1):
    """A plan built on the CPU from CPU inputs (the CUDA kernels then get the same plan)."""
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(q.shape[-1], r, generator=g)
    S = plan_sizes(q.shape[2], k.shape[2], causal, b, m, mn)[2]
    words = torch.randint(0, 2 ** 31, (q.shape[0], k.shape[1], S), generator=g).to(torch.int32)
    return proj, words, ops.hyper_attention_plan(q.cpu(), k.cpu(), proj, words, causal, b, m, mn)


def _err(x, ref):
    return ((x.double().cpu() - ref).abs().max() / max(1.0, ref.abs().max().item())).item()


CASES = [
    # B, Hq, Hkv, Nq, Nk, D, causal, b, m, min
    (1, 1, 1, 257, 257, 64, False, 32, 16, 64),
    (2, 4, 2, 300, 300, 24, True, 16, 8, 40),
    (1, 8, 2, 1000, 1000, 128, True, 64, 32, 128),
    (1, 2, 2, 3, 777, 80, False, 32, 16, 64),      # Nq < nb: empty query blocks
    (1, 2, 1, 1000, 100, 8, False, 7, 5, 20),      # Nq >> Nk
    (1, 1, 1, 63, 63, 256, True, 7, 5, 20),        # D = 256
    (1, 2, 2, 37, 37, 1, True, 4, 3, 8),           # D = 1
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_forward_backward_match_reference_and_cpu(case, dtype):
    B, Hq, Hkv, Nq, Nk, D, causal, b, m, mn = case
    q, k, v = _inputs(B, Hq, Hkv, Nq, Nk, D, dtype)
    _, _, (qp, kp, sm) = _plan(q, k, causal, b, m, mn)
    scale = 1.0 / math.sqrt(D)
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    o64, l64 = hyper_attention_planned(q64, k64, v64, qp, kp, sm, causal, scale, b, m, mn)
    g = torch.Generator().manual_seed(5)
    dout = torch.randn(o64.shape, generator=g, dtype=torch.float64)
    dlse = torch.randn(l64.shape, generator=g, dtype=torch.float64)
    dq64, dk64, dv64 = torch.autograd.grad((o64 * dout).sum() + (l64 * dlse).sum(), (q64, k64, v64))
    dev = [t.cuda() for t in (q, k, v, qp, kp, sm)]
    out, lse = ops.hyper_attention(*dev, causal, scale, b, m, mn)
    tol = TOL[dtype]
    assert out.dtype == dtype and lse.dtype == torch.float32 and out.is_cuda
    assert _err(out, o64.detach()) <= tol["out"]
    assert _err(lse, l64.detach()) <= tol["lse"]
    dq, dk, dv = ops.hyper_attention_backward(dout.to(dtype).cuda(), dlse.float().cuda(), dev[0], dev[1], dev[2], out,
                                              lse, dev[3], dev[4], dev[5], causal, scale, b, m, mn)
    for x, ref in ((dq, dq64), (dk, dk64), (dv, dv64)):
        assert x.dtype == dtype and _err(x, ref) <= tol["grad"]
    # the CPU kernels on the same plan agree within the same bound
    oc, lc = ops.hyper_attention(q, k, v, qp, kp, sm, causal, scale, b, m, mn)
    assert _err(out, oc.double()) <= 2 * tol["out"] + 1e-6


@pytest.mark.parametrize("causal", [False, True])
def test_flash_style_bound_bf16(causal):
    # FlashAttention's criterion: |cuda - ref64| <= 2 |ref_bf16 - ref64| + 1e-6 (ref_bf16 = CPU kernels in bf16)
    q, k, v = _inputs(1, 4, 2, 600, 600, 64, torch.bfloat16)
    _, _, (qp, kp, sm) = _plan(q, k, causal, 32, 16, 128)
    o64, _ = hyper_attention_planned(q.double(), k.double(), v.double(), qp, kp, sm, causal, 0.125, 32, 16, 128)
    oc, _ = ops.hyper_attention(q, k, v, qp, kp, sm, causal, 0.125, 32, 16, 128)
    og, _ = ops.hyper_attention(q.cuda(), k.cuda(), v.cuda(), qp.cuda(), kp.cuda(), sm.cuda(), causal, 0.125, 32, 16,
                                128)
    assert (og.double().cpu() - o64).abs().max() <= 2 * (oc.double() - o64).abs().max() + 1e-2


def test_hash_and_plan_match_cpu_on_margin_inputs():
    torch.manual_seed(0)
    D, r = 64, 7
    proj = torch.randn(D, r)
    x = torch.randn(2, 4, 3000, D)
    # re-draw rows whose projections are within 1e-2 of 0 (sign ties may differ across devices, §3.8)
    bad = (x @ proj).abs().min(-1).values < 1e-2
    while bad.any():
        x[bad] = torch.randn(int(bad.sum()), D)
        bad = (x @ proj).abs().min(-1).values < 1e-2
    for dtype in (torch.float32, torch.bfloat16):
        xc = x.to(dtype)
        assert torch.equal(ops.hyper_attention_lsh_hash(xc, proj),
                           ops.hyper_attention_lsh_hash(xc.cuda(), proj.cuda()).cpu())
    q, k = x[:, :4], x[:, :2]
    S = plan_sizes(3000, 3000, True, 64, 32, 500)[2]
    words = torch.randint(0, 2 ** 31, (2, 2, S)).to(torch.int32)
    cpu = ops.hyper_attention_plan(q, k, proj, words, True, 64, 32, 500)
    gpu = ops.hyper_attention_plan(q.cuda(), k.cuda(), proj.cuda(), words.cuda(), True, 64, 32, 500)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("r", [0, 1, 12, 16])
def test_plan_stability_many_ties(r):
    # few distinct keys (r small) or many bins (r > 10): the CUB radix sort must give the (key, index) order
    torch.manual_seed(1)
    q = torch.randn(1, 2, 5000, 16)
    k = torch.randn(1, 1, 5000, 16)
    proj = torch.randn(16, r)
    S = plan_sizes(5000, 5000, False, 128, 64, 1000)[2]
    words = torch.randint(0, 2 ** 31, (1, 1, S)).to(torch.int32)
    cpu = ops.hyper_attention_plan(q, k, proj, words, False, 128, 64, 1000)
    gpu = ops.hyper_attention_plan(q.cuda(), k.cuda(), proj.cuda(), words.cuda(), False, 128, 64, 1000)
    for a, b in zip(cpu, gpu):
        assert torch.equal(a, b.cpu())


@pytest.mark.parametrize("causal", [False, True])
def test_determinism_bitwise(causal):
    q, k, v = (t.cuda().requires_grad_() for t in _inputs(1, 8, 2, 3000, 3000, 64, torch.bfloat16))
    runs = []
    for _ in range(2):
        poison_cuda_allocator()
        out, lse = fastnorm.hyper_attention(q, k, v, causal, block_size=64, sample_size=64, min_seq_len=512,
                                            generator=torch.Generator(device="cuda").manual_seed(3), return_lse=True)
        grads = torch.autograd.grad(out.float().square().sum() + lse.sum(), (q, k, v))
        runs.append([out, lse, *grads])
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert all(torch.isfinite(t.float()).all() for t in runs[0])


def test_functional_bnhd_and_gqa_match_cpu():
    q, k, v = _inputs(2, 8, 2, 700, 700, 32, torch.float32)
    gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731  (CPU generator: same draws for both devices)
    kw = dict(block_size=32, sample_size=16, min_seq_len=100, return_lse=True, layout="bnhd")
    qt, kt, vt = (t.transpose(1, 2).contiguous() for t in (q, k, v))
    oc, lc = fastnorm.hyper_attention(qt, kt, vt, True, generator=gen(), **kw)
    og, lg = fastnorm.hyper_attention(qt.cuda(), kt.cuda(), vt.cuda(), True, generator=gen(), **kw)
    assert og.shape == qt.shape and og.is_contiguous()
    assert (og.cpu() - oc).abs().max() < 1e-4 and (lg.cpu() - lc).abs().max() < 1e-4


def test_edge_cases():
    q, k, v = (t.cuda() for t in _inputs(1, 2, 2, 5, 0, 8, torch.float16))
    out, lse = ops.hyper_attention(q, k, v, *(torch.zeros(1, 2, 0, dtype=torch.int32, device="cuda"),) * 3, False,
                                   0.3, 4, 2, 3)
    assert (out == 0).all() and (lse == -math.inf).all()
    q, k, v = (t.cuda() for t in _inputs(1, 2, 2, 0, 9, 8, torch.float16))
    z = torch.zeros(1, 2, 0, dtype=torch.int32, device="cuda")
    out, lse = ops.hyper_attention(q, k, v, z, z, z, False, 0.3, 4, 2, 3)
    assert out.shape == (1, 2, 0, 8) and lse.shape == (1, 2, 0)
    with pytest.raises(RuntimeError, match="float64"):
        ops.hyper_attention_lsh_hash(torch.randn(1, 1, 4, 4, dtype=torch.float64, device="cuda"),
                                     torch.randn(4, 2, device="cuda"))


def test_merge_matches_cpu():
    g = torch.Generator().manual_seed(0)
    o1, o2 = torch.randn(2, 3, 50, 16, generator=g), torch.randn(2, 3, 50, 16, generator=g)
    l1, l2 = torch.randn(2, 3, 50, generator=g), torch.randn(2, 3, 50, generator=g)
    l1[0, 0, :5] = -math.inf
    l2[0, 0, 3:8] = -math.inf
    oc, lc = ops.hyper_attention_merge(o1, l1, o2, l2)
    og, lg = ops.hyper_attention_merge(o1.cuda(), l1.cuda(), o2.cuda(), l2.cuda())
    assert torch.allclose(og.cpu(), oc, atol=1e-6) and torch.equal(lg.cpu().isinf(), lc.isinf())


def test_nan_key_is_local():
    q, k, v = (t.cuda() for t in _inputs(1, 1, 1, 600, 600, 16, torch.float32))
    _, _, plan = _plan(q, k, False, 32, 8, 64)
    sampled = set(plan[1][0, 0, plan[2][0, 0].long()].tolist())
    bad_key = next(j for j in range(600) if j not in sampled)  # a key no sample slot reads: its block only
    k[0, 0, bad_key] = float("nan")
    qp, kp, sm = (t.cuda() for t in plan)
    out, _ = ops.hyper_attention(q, k, v, qp, kp, sm, False, 0.25, 32, 8, 64)
    bad = out.isnan().any(-1)[0, 0]
    assert 0 < int(bad.sum()) <= 32  # only the rows of the key's query block (<= ceil(600 / nb) rows)


@pytest.mark.slow
def test_large_index_last_head_matches_cpu():
    # B*H*N*D > 2^31 elements (§5, int64 offsets): heads are independent, so the last head of the CUDA result must
    # equal the CPU kernels run on that head alone with the same plan slice
    if torch.cuda.get_device_properties(0).total_memory < 40 * 2 ** 30:
        pytest.skip("needs a GPU with >= 40 GiB")
    B, H, N, D = 1, 64, 131072, 256
    assert B * H * N * D > 2 ** 31
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(B, H, N, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    proj = torch.randn(D, 7, device="cuda", generator=g)
    S = plan_sizes(N, N, False, 256, 256, 4096)[2]
    words = torch.randint(0, 2 ** 31, (B, H, S), device="cuda", generator=g).to(torch.int32)
    qp, kp, sm = ops.hyper_attention_plan(q, k, proj, words, False, 256, 256, 4096)
    out, lse = ops.hyper_attention(q, k, v, qp, kp, sm, False, D ** -0.5, 256, 256, 4096)
    last = [t[:, -1:].cpu() for t in (q, k, v, qp, kp, sm)]
    oc, lc = ops.hyper_attention(*last, False, D ** -0.5, 256, 256, 4096)
    assert (out[:, -1:].float().cpu() - oc.float()).abs().max() <= 3e-2 * max(1.0, oc.float().abs().max().item())
    assert (lse[:, -1:].cpu() - lc).abs().max() <= 1e-3


def test_has_cuda_flag_consistent():
    assert HAS_CUDA
