"""HyperAttention, functional API (specs/hyper_attention.md §2.1, §2.3, §3.8).

``fastnorm.hyper_attention`` checks its arguments (§5), transposes ``bnhd`` inputs to logical [B, H, N, D] views,
draws the call's randomness from ``generator`` in the §3.8 order (only when the schedule approximates something),
builds the plan (``torch.ops.fastnorm.hyper_attention_plan``) and runs ``torch.ops.fastnorm.hyper_attention``.
Fake kernels of all five ops and the autograd formulas (the exact gradient of the estimator, §3.9, through
``hyper_attention_backward``; the LSE-merge gradient of §3.7 in Python) are registered here.
"""
import math
from typing import List, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

from ._common import stats_dtype

ops = torch.ops.fastnorm
_LAYOUTS = ("bhnd", "bnhd")
_CPU_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_CUDA_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ---- Python mirror of the C++ schedule (§3.6): fake kernels and randomness need Pq, Pk, S from sizes only ----
class Piece(NamedTuple):
    kind: str  # "exact_full" | "exact_causal" | "approx"
    depth: int
    q_begin: int
    nq: int
    k_begin: int
    nk: int


def schedule(nq: int, nk: int, causal: bool, block_size: int, min_seq_len: int) -> List[Piece]:
    """The sub-problem table in emission (post-)order, as fastnorm::hyper_attention::schedule builds it."""
    out: List[Piece] = []
    if nq == 0 or nk == 0:
        return out

    def rect(qb, n_q, kb, n_k, depth):
        exact = n_k <= min_seq_len or -(-n_k // block_size) <= 1
        out.append(Piece("exact_full" if exact else "approx", depth, qb, n_q, kb, n_k))

    def rec(a, n, depth):
        if n <= min_seq_len:
            out.append(Piece("exact_causal", depth, a, n, a, n))
            return
        h = (n + 1) // 2
        rec(a, h, depth + 1)
        rec(a + h, n - h, depth + 1)
        rect(a + h, n - h, a, h, depth)

    if causal:
        rec(0, nq, 0)
    else:
        rect(0, nq, 0, nk, 0)
    return out


def plan_sizes(nq: int, nk: int, causal: bool, block_size: int, sample_size: int, min_seq_len: int
               ) -> Tuple[int, int, int]:
    """(Pq, Pk, S): lengths of the per-(b, h) plan tensors."""
    pcs = [p for p in schedule(nq, nk, causal, block_size, min_seq_len) if p.kind == "approx"]
    return sum(p.nq for p in pcs), sum(p.nk for p in pcs), sample_size * len(pcs)


# ---- fake kernels ------------------------------------------------------------------------------------------
@torch.library.register_fake("fastnorm::hyper_attention_lsh_hash")
def _(x, lsh_proj):
    return x.new_empty(x.shape[:3], dtype=torch.int32)


@torch.library.register_fake("fastnorm::hyper_attention_plan")
def _(q, k, lsh_proj, sample_words, causal, block_size, sample_size, min_seq_len):
    B, Hq, Nq = q.shape[:3]
    Hkv, Nk = k.shape[1], k.shape[2]
    pq, pk, s = plan_sizes(Nq, Nk, causal, block_size, sample_size, min_seq_len)
    return (q.new_empty((B, Hq, pq), dtype=torch.int32), q.new_empty((B, Hkv, pk), dtype=torch.int32),
            q.new_empty((B, Hkv, s), dtype=torch.int32))


@torch.library.register_fake("fastnorm::hyper_attention")
def _(q, k, v, q_perm, k_perm, samples, causal, scale, block_size, sample_size, min_seq_len):
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=stats_dtype(q.dtype))


@torch.library.register_fake("fastnorm::hyper_attention_backward")
def _(dout, dlse, q, k, v, out, lse, q_perm, k_perm, samples, causal, scale, block_size, sample_size, min_seq_len):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


@torch.library.register_fake("fastnorm::hyper_attention_merge")
def _(out1, lse1, out2, lse2):
    return torch.empty_like(out1), out1.new_empty(out1.shape[:3], dtype=stats_dtype(out1.dtype))


# ---- autograd ----------------------------------------------------------------------------------------------
def _ha_setup(ctx, inputs, output):
    q, k, v, q_perm, k_perm, samples, causal, scale, block_size, sample_size, min_seq_len = inputs
    out, lse = output
    ctx.args = (causal, scale, block_size, sample_size, min_seq_len)
    ctx.save_for_backward(q, k, v, out, lse, q_perm, k_perm, samples)


def _ha_backward(ctx, dout, dlse):
    q, k, v, out, lse, q_perm, k_perm, samples = ctx.saved_tensors
    if dout is None:
        dout = torch.zeros_like(out)
    if dlse is None:
        dlse = lse.new_empty((0,))
    dq, dk, dv = ops.hyper_attention_backward(dout, dlse, q, k, v, out, lse, q_perm, k_perm, samples, *ctx.args)
    need = ctx.needs_input_grad
    return (dq if need[0] else None, dk if need[1] else None, dv if need[2] else None,
            None, None, None, None, None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastnorm.hyper_attention: double backward is not supported (the backward op has no gradient)")


def _merge_setup(ctx, inputs, output):
    out1, lse1, out2, lse2 = inputs
    out, lse = output
    ctx.save_for_backward(out1, lse1, out2, lse2, out, lse)


def _merge_backward(ctx, dout, dlse):
    # §3.7: c_k = e^{l_k - L}; dO_k = c_k dO; dl_k = c_k (<dO, O_k - O> + dL), zero where c_k = 0.
    out1, lse1, out2, lse2, out, lse = ctx.saved_tensors
    cd = stats_dtype(out1.dtype)
    L = lse.to(cd)
    fin = torch.isfinite(L)
    grads = []
    for o_k, l_k in ((out1, lse1), (out2, lse2)):
        c = torch.where(fin & (l_k.to(cd) > -math.inf), torch.exp(l_k.to(cd) - torch.where(fin, L, 0.0)),
                        torch.zeros_like(L))
        do_k = None if dout is None else (c.unsqueeze(-1) * dout.to(cd)).to(o_k.dtype)
        dl = torch.zeros_like(L)
        if dout is not None:
            dl = dl + ((dout.to(cd) * (o_k.to(cd) - out.to(cd))).sum(-1))
        if dlse is not None:
            dl = dl + dlse.to(cd)
        dl = torch.where(c > 0, c * dl, torch.zeros_like(dl)).to(l_k.dtype)
        grads += [do_k, dl]
    return tuple(grads)


torch.library.register_autograd("fastnorm::hyper_attention", _ha_backward, setup_context=_ha_setup)
torch.library.register_autograd("fastnorm::hyper_attention_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("fastnorm::hyper_attention_merge", _merge_backward, setup_context=_merge_setup)


# ---- argument checks (§5, in the spec's order) ---------------------------------------------------------------
def _shape(t: Tensor) -> list:
    return list(t.shape)


def _check_inputs(op: str, q, k, v, layout: str, causal: bool, scale, block_size, sample_size, min_seq_len,
                  lsh_num_projs, lsh_proj):
    for name, t in (("query", q), ("key", k), ("value", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"fastnorm.{op}: '{name}' must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"fastnorm.{op}: '{name}' must be 4-D, got shape {_shape(t)}")
    if layout not in _LAYOUTS:
        raise ValueError(f"fastnorm.{op}: 'layout' must be 'bhnd' or 'bnhd', got {layout!r}")
    for name, t in (("key", k), ("value", v)):
        if t.device != q.device:
            raise ValueError(f"fastnorm.{op}: '{name}' is on {t.device} but 'query' is on {q.device}")
    for name, t in (("key", k), ("value", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"fastnorm.{op}: '{name}' has dtype {t.dtype} but 'query' has {q.dtype}")
    allowed = _CUDA_DTYPES if q.device.type == "cuda" else _CPU_DTYPES
    if q.dtype not in allowed:
        if q.dtype == torch.float64:
            raise TypeError(f"fastnorm.{op}: 'query' dtype float64 is supported on CPU only")
        raise TypeError(f"fastnorm.{op}: 'query' dtype must be one of {[str(d) for d in allowed]}, got {q.dtype}")
    # logical [B, H, N, D] views
    qv, kv, vv = (q, k, v) if layout == "bhnd" else (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    want = "[B, Hq, Nq, D]" if layout == "bhnd" else "[B, Nq, Hq, D]"
    kwant = "[B, Hkv, Nk, D]" if layout == "bhnd" else "[B, Nk, Hkv, D]"
    B, Hq, Nq, D = qv.shape
    if kv.shape[0] != B:
        raise ValueError(f"fastnorm.{op}: 'key' must have shape {kwant} for layout '{layout}' with B={B}; "
                         f"got {_shape(k)}")
    if vv.shape[:3] != kv.shape[:3]:
        raise ValueError(f"fastnorm.{op}: 'value' must have shape {kwant} for layout '{layout}' matching 'key' "
                         f"{_shape(k)} in B, H, N; got {_shape(v)}")
    Hkv = kv.shape[1]
    if (Hkv == 0 and Hq != 0) or (Hkv != 0 and Hq % Hkv != 0):
        raise ValueError(f"fastnorm.{op}: query heads Hq={Hq} must be a multiple of key/value heads Hkv={Hkv}")
    if not 1 <= D <= 256:
        raise ValueError(f"fastnorm.{op}: head dim D must be in [1, 256], got {D} ('query' {want} = {_shape(q)})")
    if kv.shape[3] != D:
        raise ValueError(f"fastnorm.{op}: 'key' must have shape {kwant} for layout '{layout}' with B={B}, D={D}; "
                         f"got {_shape(k)}")
    if vv.shape[3] != D:
        raise ValueError(f"fastnorm.{op}: 'value' head dim must equal the query's D={D}; got {_shape(v)}")
    if causal and Nq != kv.shape[2]:
        raise ValueError(f"fastnorm.{op}: causal=True requires Nq == Nk, got Nq={Nq}, Nk={kv.shape[2]}")
    if scale is not None and not math.isfinite(float(scale)):
        raise ValueError(f"fastnorm.{op}: 'scale' must be finite, got {scale}")
    if int(block_size) < 1:
        raise ValueError(f"fastnorm.{op}: 'block_size' must be >= 1, got {block_size}")
    if int(sample_size) < 0:
        raise ValueError(f"fastnorm.{op}: 'sample_size' must be >= 0, got {sample_size}")
    if int(min_seq_len) < 1:
        raise ValueError(f"fastnorm.{op}: 'min_seq_len' must be >= 1, got {min_seq_len}")
    if lsh_proj is None and not 0 <= int(lsh_num_projs) <= 16:
        raise ValueError(f"fastnorm.{op}: 'lsh_num_projs' must be in [0, 16], got {lsh_num_projs}")
    if lsh_proj is not None:
        if not isinstance(lsh_proj, Tensor) or not lsh_proj.is_floating_point():
            raise TypeError(f"fastnorm.{op}: 'lsh_proj' must be a float tensor")
        if lsh_proj.dim() != 2 or lsh_proj.shape[0] != D or lsh_proj.shape[1] > 16:
            raise ValueError(f"fastnorm.{op}: 'lsh_proj' must have shape [D, r] with D={D}, r <= 16; "
                             f"got {_shape(lsh_proj)}")
        if lsh_proj.device != q.device:
            raise ValueError(f"fastnorm.{op}: 'lsh_proj' is on {lsh_proj.device} but 'query' is on {q.device}")
    if max(Nq, kv.shape[2]) >= 2 ** 31:
        raise ValueError(f"fastnorm.{op}: sequence lengths must be < 2^31")
    return qv, kv, vv


def draw_randomness(q: Tensor, k: Tensor, causal: bool, lsh_num_projs: int, block_size: int, sample_size: int,
                    min_seq_len: int, generator: Optional[torch.Generator], lsh_proj: Optional[Tensor],
                    resample: bool = False) -> Tuple[Tensor, Tensor]:
    """§3.8: only if the schedule approximates something, (1) P = randn(D, r) when lsh_proj is None (or resample),
    (2) words = randint(0, 2^31, (B, Hkv, S)) when S > 0, from `generator` on its own device, then moved to q's
    device. Returns (float32 projection [D, r], int32 words [B, Hkv, S]) ([D, 0] / [B, Hkv, 0] when nothing is
    drawn)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    pq, pk, S = plan_sizes(Nq, Nk, causal, block_size, sample_size, min_seq_len)
    if B == 0 or Hq == 0 or pk == 0:  # nothing approximated (or nothing to compute): no draws
        proj = lsh_proj if lsh_proj is not None else q.new_empty((D, 0), dtype=torch.float32)
        return proj, q.new_zeros((B, Hkv, S), dtype=torch.int32)
    gdev = generator.device if generator is not None else q.device
    if lsh_proj is None or resample:
        lsh_proj = torch.randn(D, lsh_num_projs, dtype=torch.float32, device=gdev, generator=generator).to(q.device)
    if S > 0:
        words = torch.randint(0, 2 ** 31, (B, Hkv, S), dtype=torch.int64, device=gdev, generator=generator)
        words = words.to(device=q.device, dtype=torch.int32)
    else:
        words = q.new_empty((B, Hkv, 0), dtype=torch.int32)
    return lsh_proj, words


def hyper_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: Optional[float] = None,
                    lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256, min_seq_len: int = 4096,
                    generator: Optional[torch.Generator] = None, return_lse: bool = False, *, layout: str = "bhnd",
                    lsh_proj: Optional[Tensor] = None, _resample_lsh: bool = False
                    ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
    """Near-linear approximate attention (HyperAttention, §3): exact attention inside LSH-sorted key blocks plus
    a uniformly sampled, Nk'/m-reweighted residual; causal attention by recursive halving; every (sub-)problem
    with at most `min_seq_len` keys is exact (so short calls equal exact attention).

    q [B, Hq, Nq, D], k/v [B, Hkv, Nk, D] for layout "bhnd" ([B, N, H, D] for "bnhd"); Hq a multiple of Hkv
    (query head h reads kv head h // (Hq/Hkv)). Returns out (q's shape and layout), and with return_lse=True
    also lse [B, Hq, Nq] (float32; float64 for float64 inputs). `generator` is the only source of randomness:
    the same generator state gives bitwise-identical results. Differentiable in q, k, v (exact gradient of the
    estimator).

    Follows the authors' released code (block-diagonal + uniform residual), not the paper's Alg. 3 (row-norm
    sampling of V), with the defects of spec §8 fixed."""
    op = "hyper_attention"
    qv, kv, vv = _check_inputs(op, q, k, v, layout, causal, scale, block_size, sample_size, min_seq_len,
                               lsh_num_projs, lsh_proj)
    D = qv.shape[-1]
    s = 1.0 / math.sqrt(D) if scale is None else float(scale)
    block_size, sample_size, min_seq_len = int(block_size), int(sample_size), int(min_seq_len)
    proj, words = draw_randomness(qv, kv, bool(causal), int(lsh_num_projs), block_size, sample_size, min_seq_len,
                                  generator, lsh_proj, _resample_lsh)
    q_perm, k_perm, samples = ops.hyper_attention_plan(qv, kv, proj, words, bool(causal), block_size,
                                                       sample_size, min_seq_len)
    out, lse = ops.hyper_attention(qv, kv, vv, q_perm, k_perm, samples, bool(causal), s, block_size, sample_size,
                                   min_seq_len)
    if layout == "bnhd":
        out = out.transpose(1, 2)
    return (out, lse) if return_lse else out


def hyper_attention_merge(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor, *, layout: str = "bhnd"
                          ) -> Tuple[Tensor, Tensor]:
    """Log-sum-exp merge of two partial attentions over disjoint key sets (§3.7), differentiable:
    L = logaddexp(l1, l2), O = e^{l1-L} O1 + e^{l2-L} O2 (both -inf: L = -inf, O = 0). out [B, H, N, D]
    ("bhnd") or [B, N, H, D] ("bnhd"); lse [B, H, N]."""
    op = "hyper_attention_merge"
    if layout not in _LAYOUTS:
        raise ValueError(f"fastnorm.{op}: 'layout' must be 'bhnd' or 'bnhd', got {layout!r}")
    for name, t in (("out1", out1), ("out2", out2)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            raise ValueError(f"fastnorm.{op}: '{name}' must be a 4-D tensor")
    if layout == "bnhd":
        out1, out2 = out1.transpose(1, 2), out2.transpose(1, 2)
    out, lse = ops.hyper_attention_merge(out1, lse1, out2, lse2)
    return (out.transpose(1, 2) if layout == "bnhd" else out), lse
