"""Plain-PyTorch reference of HyperAttention (specs/hyper_attention.md §3) and of exact attention.

Everything here is written for obviousness, not speed: index arithmetic follows the spec's formulas literally,
each sub-problem is evaluated on its own (gathered rows, one softmax over the row's entry multiset), and the
pieces are merged with the log-sum-exp rule in schedule order (§3.7). Autograd through these functions gives the
exact gradient of the computed estimator (§3.9): perms and samples are integer constants.

Tensors are in the logical [B, H, N, D] layout (``layout="bnhd"`` transposes on entry and exit). Arithmetic runs in
float64 for float64 inputs and in float32 otherwise (fp16/bf16 are upcast, like the CPU kernels); ``out`` is
returned in the input dtype and ``lse`` in the compute dtype.

Plan tensors (same contract as the ``hyper_attention_plan`` op, §2.3):
  q_perm  int32 [B, Hq, Pq]   absolute query row indices, Approx pieces concatenated in schedule order
  k_perm  int32 [B, Hkv, Pk]  absolute key indices, likewise
  samples int32 [B, Hkv, S]   sample *ranks* c_t in [0, Nk') of each Approx piece (m per piece, schedule order);
                              the key index of slot t is k_perm[piece offset + c_t].

Quirk flags (``quirks=``, §7.5) reproduce the official implementations' behaviour for the accuracy evaluation;
the default ``()`` is fastnorm's estimator. Presets: "official", "official_nomask", "official_triton".
"""
from __future__ import annotations

import math
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "gray", "inverse_gray", "lsh_bins", "lsh_hash", "Piece", "schedule", "plan_sizes", "num_blocks",
    "block_begin", "block_of_rank", "sample_rank", "plan", "hyper_attention", "hyper_attention_planned",
    "hyper_attention_block_only", "exact_attention", "merge", "dense_weights", "dense_attention",
    "draw_randomness", "make_inputs", "quirk_num_samples", "QUIRKS", "QUIRK_PRESETS",
]

EXACT_FULL, EXACT_CAUSAL, APPROX = "exact_full", "exact_causal", "approx"

QUIRKS = frozenset({"gray_lut", "pad_unmasked", "official_recursion", "merge_eps", "no_sample_mask", "detached_lse",
                    "prefix_samples"})
QUIRK_PRESETS = {
    "official": frozenset({"gray_lut", "pad_unmasked", "official_recursion", "merge_eps", "detached_lse"}),
    "official_nomask": frozenset({"gray_lut", "pad_unmasked", "official_recursion", "merge_eps", "detached_lse",
                                  "no_sample_mask"}),
    "official_triton": frozenset({"gray_lut", "prefix_samples", "official_recursion"}),
}


def _quirk_set(quirks: Union[str, Iterable[str], None]) -> frozenset:
    if quirks is None:
        return frozenset()
    if isinstance(quirks, str):
        if quirks not in QUIRK_PRESETS:
            raise ValueError(f"reference.hyper_attention: unknown quirk preset {quirks!r}")
        return QUIRK_PRESETS[quirks]
    q = frozenset(quirks)
    bad = q - QUIRKS
    if bad:
        raise ValueError(f"reference.hyper_attention: unknown quirks {sorted(bad)}")
    return q


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ---- §3.1 LSH sort key ---------------------------------------------------------------------------------------
def gray(y):
    """Reflected binary Gray code gray(y) = y xor (y >> 1) (int or integer tensor)."""
    return y ^ (y >> 1)


def inverse_gray(y):
    """Inverse Gray code: prefix XOR from the top bit, y xor (y>>1) xor (y>>2) xor ... (int or integer tensor).
    Sorting by inverse_gray(bin) visits bins in the order gray(0), gray(1), ... (r = 3: 0,1,3,2,6,7,5,4)."""
    out = y
    shift = 1
    while shift < 32:  # log-step prefix XOR over 32 bits: covers every r <= 16
        out = out ^ (out >> shift)
        shift *= 2
    return out


def lsh_bins(x: Tensor, lsh_proj: Tensor) -> Tensor:
    """bin(x) = sum_t [<x, P[:, t]> > 0] 2^t as int64 [..., N]. Dot products in float64 (float64 inputs) or
    float32, rounded to float32 before the strict test, so 0 and NaN give bit 0."""
    r = lsh_proj.shape[1]
    if r == 0:
        return torch.zeros(x.shape[:-1], dtype=torch.int64, device=x.device)
    cd = _compute_dtype(x.dtype)
    proj = (x.to(cd) @ lsh_proj.to(torch.float32).to(cd)).to(torch.float32)  # [..., N, r]
    bits = (proj > 0).to(torch.int64)
    weights = (2 ** torch.arange(r, dtype=torch.int64, device=x.device))
    return (bits * weights).sum(-1)


def lsh_hash(x: Tensor, lsh_proj: Tensor, *, quirks=()) -> Tensor:
    """int32 sort keys [B, H, N] of §3.1 (the ``hyper_attention_lsh_hash`` op). Quirk ``gray_lut``: key = gray(bin)
    as in the official code (bucket order 0,1,3,2,7,6,4,5 for r = 3)."""
    b = lsh_bins(x, lsh_proj)
    key = gray(b) if "gray_lut" in _quirk_set(quirks) else inverse_gray(b)
    return key.to(torch.int32)


# ---- §3.3 / §3.4 block and sample arithmetic -----------------------------------------------------------------
def num_blocks(nk: int, block_size: int) -> int:
    return -(-nk // block_size)


def block_begin(j: int, length: int, nb: int) -> int:
    """First rank of block j of a sorted sequence of `length` rows split into nb balanced blocks."""
    return (j * length) // nb


def block_of_rank(r, length: int, nb: int):
    """Block of rank r (int or int64 tensor): floor(((r+1)·nb − 1)/length)."""
    return ((r + 1) * nb - 1) // length


def sample_rank(w, nk: int):
    """Sample rank floor(w·Nk'/2^31) of a word w in [0, 2^31) (int64 math; int or tensor)."""
    if isinstance(w, Tensor):
        return (w.to(torch.int64) * nk) >> 31
    return (int(w) * nk) >> 31


# ---- §3.6 schedule -----------------------------------------------------------------------------------------
class Piece(NamedTuple):
    kind: str   # EXACT_FULL, EXACT_CAUSAL or APPROX
    q0: int     # first query row
    nq: int     # Nq'
    k0: int     # first key
    nk: int     # Nk'


def schedule(nq: int, nk: int, causal: bool, block_size: int, sample_size: int, min_seq_len: int) -> List[Piece]:
    """Sub-problem table of §3.6 in emission (post-)order: a piece is exact iff its key length <= min_seq_len;
    an approximated piece with a single block (ceil(Nk'/b) == 1) is exact too (ExactFull)."""
    if nq == 0 or nk == 0:
        return []

    def rect(q0, n_q, k0, n_k, exact):
        if exact or num_blocks(n_k, block_size) <= 1:
            return Piece(EXACT_FULL, q0, n_q, k0, n_k)
        return Piece(APPROX, q0, n_q, k0, n_k)

    if not causal:
        return [rect(0, nq, 0, nk, nk <= min_seq_len)]
    if nq != nk:
        raise ValueError("reference.hyper_attention: causal=True requires Nq == Nk")
    out: List[Piece] = []

    def rec(a: int, n: int):
        if n <= min_seq_len:
            out.append(Piece(EXACT_CAUSAL, a, n, a, n))
            return
        h = -(-n // 2)
        rec(a, h)
        rec(a + h, n - h)
        out.append(rect(a + h, n - h, a, h, h <= min_seq_len))

    rec(0, nq)
    return out


def plan_sizes(nq: int, nk: int, causal: bool, block_size: int, sample_size: int, min_seq_len: int) -> Tuple[int, int, int]:
    """(Pq, Pk, S) implied by the schedule."""
    pcs = [p for p in schedule(nq, nk, causal, block_size, sample_size, min_seq_len) if p.kind == APPROX]
    return sum(p.nq for p in pcs), sum(p.nk for p in pcs), sample_size * len(pcs)


# ---- §3.2–3.4 plan ------------------------------------------------------------------------------------------
def plan(q: Tensor, k: Tensor, lsh_proj: Tensor, sample_words: Tensor, causal: bool, block_size: int,
         sample_size: int, min_seq_len: int, *, quirks=()) -> Tuple[Tensor, Tensor, Tensor]:
    """(q_perm, k_perm, samples) of the ``hyper_attention_plan`` op for [B, H, N, D] q and k.

    Each Approx piece sorts its row range by (key, original index) (a stable sort) and maps its m sample words to
    ranks. ``quirks`` only affects the hash (``gray_lut``)."""
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    pcs = [p for p in schedule(Nq, Nk, causal, block_size, sample_size, min_seq_len) if p.kind == APPROX]
    qkey = lsh_hash(q, lsh_proj, quirks=quirks).to(torch.int64)
    kkey = lsh_hash(k, lsh_proj, quirks=quirks).to(torch.int64)
    q_perm, k_perm, samples = [], [], []
    for i, p in enumerate(pcs):
        # stable=True: equal keys keep ascending original index, so the order is unique
        q_perm.append(torch.sort(qkey[:, :, p.q0:p.q0 + p.nq], dim=-1, stable=True).indices + p.q0)
        k_perm.append(torch.sort(kkey[:, :, p.k0:p.k0 + p.nk], dim=-1, stable=True).indices + p.k0)
        w = sample_words[:, :, i * sample_size:(i + 1) * sample_size]
        samples.append(sample_rank(w, p.nk))
    dev = q.device

    def cat(xs, H):
        if not xs:
            return torch.zeros(B, H, 0, dtype=torch.int32, device=dev)
        return torch.cat(xs, dim=-1).to(torch.int32)

    return cat(q_perm, Hq), cat(k_perm, Hkv), cat(samples, Hkv)


# ---- §3.7 merge --------------------------------------------------------------------------------------------
def merge(out1: Tensor, lse1: Tensor, out2: Tensor, lse2: Tensor) -> Tuple[Tensor, Tensor]:
    """LSE merge of two partial attentions (out [..., N, D], lse [..., N]); −inf pieces contribute nothing.
    Differentiable (autograd of this formula is the §3.7 gradient)."""
    mx = torch.maximum(lse1, lse2)
    mx_safe = torch.where(torch.isinf(mx) & (mx < 0), torch.zeros_like(mx), mx)
    e1, e2 = torch.exp(lse1 - mx_safe), torch.exp(lse2 - mx_safe)
    tot = e1 + e2
    lse = mx_safe + torch.log(tot)
    tot_safe = torch.where(tot > 0, tot, torch.ones_like(tot))
    c1, c2 = e1 / tot_safe, e2 / tot_safe
    return c1.unsqueeze(-1) * out1 + c2.unsqueeze(-1) * out2, lse


def _merge_eps(out1, lse1, out2, lse2):
    """Official merge (quirk ``merge_eps``): c = 1/(1 + e^{l2−l1}) cast to the output dtype,
    out = c·O1 + (1−c)·O2, lse = l1 − log(c + eps) with eps = finfo(lse dtype).eps."""
    c = (1.0 / (1.0 + torch.exp(lse2 - lse1))).to(out1.dtype)
    eps = torch.finfo(lse1.dtype).eps
    out = c.unsqueeze(-1) * out1 + (1 - c).unsqueeze(-1) * out2
    lse = lse1 - torch.log(c.to(lse1.dtype) + eps)
    return out, lse


# ---- softmax of one set of rows over a list of (logits, values) parts -----------------------------------------
def _softmax_parts(logits: Tensor, values: Tensor) -> Tuple[Tensor, Tensor]:
    """out, lse of rows given all their entries: logits [..., R, E] (−inf = excluded), values [..., E, D]."""
    lse = torch.logsumexp(logits, dim=-1)
    lse_safe = torch.where(torch.isinf(lse) & (lse < 0), torch.zeros_like(lse), lse)
    p = torch.exp(logits - lse_safe.unsqueeze(-1))
    return p @ values, lse


def _gather_rows(x: Tensor, idx: Tensor) -> Tensor:
    """x [B, H, N, D], idx [B, H, M] (any int) -> x[b, h, idx[b, h, m], :]."""
    return x.gather(2, idx.to(torch.int64).unsqueeze(-1).expand(*idx.shape, x.shape[-1]))


def _expand_heads(x: Tensor, G: int) -> Tensor:
    # query head h reads kv head h // G (§2.1): repeat_interleave, not repeat
    return x if G == 1 else x.repeat_interleave(G, dim=1)


_CHUNK = 1 << 24  # logits per exact chunk (keeps O(N²) pieces query-chunked)


def _exact_piece(q, k, v, p: Piece, scale, G, causal_tri: bool):
    """Exact attention of rows [q0, q0+nq) over keys [k0, k0+nk) (lower triangle j − k0 ≤ i − q0 if causal_tri)."""
    kk = _expand_heads(k[:, :, p.k0:p.k0 + p.nk], G)
    vv = _expand_heads(v[:, :, p.k0:p.k0 + p.nk], G)
    B, H = q.shape[0], q.shape[1]
    rows = max(1, _CHUNK // max(1, B * H * p.nk))
    outs, lses = [], []
    for r0 in range(0, p.nq, rows):
        r1 = min(p.nq, r0 + rows)
        lg = scale * (q[:, :, p.q0 + r0:p.q0 + r1] @ kk.transpose(-1, -2))
        if causal_tri:
            i = torch.arange(r0, r1, device=q.device).unsqueeze(-1)
            j = torch.arange(p.nk, device=q.device).unsqueeze(0)
            lg = lg.masked_fill(j > i, float("-inf"))
        o, l = _softmax_parts(lg, vv)
        outs.append(o)
        lses.append(l)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _approx_piece(q, k, v, qp, kp, samp, p: Piece, scale, G, block_size, sample_size, block_only: bool = False):
    """One approximated sub-problem (§3.3–3.5): out, lse of its rows in *sorted* order [B, Hq, Nq', ·].
    Every query block is one softmax over its key block plus the unmasked sample slots (bias log ω)."""
    qsort = _gather_rows(q, qp)                       # [B, Hq, Nq', D]
    ksort = _expand_heads(_gather_rows(k, kp), G)     # [B, Hq, Nk', D]
    vsort = _expand_heads(_gather_rows(v, kp), G)
    nq, nk, m = p.nq, p.nk, sample_size
    nb = num_blocks(nk, block_size)
    use_samples = (not block_only) and m > 0 and nb > 1
    if use_samples:
        ranks = samp.to(torch.int64)                               # [B, Hkv, m] ranks c_t
        kidx = kp.to(torch.int64).gather(2, ranks)                 # key index k_perm[c_t]
        sk = _expand_heads(_gather_rows(k, kidx), G)               # [B, Hq, m, D]
        sv = _expand_heads(_gather_rows(v, kidx), G)
        logw = math.log(nk / m)                                    # ω = Nk'/m
        sblock = _expand_heads(block_of_rank(ranks, nk, nb), G)    # [B, Hq, m]
    outs, lses = [], []
    for j in range(nb):
        qa, qe = block_begin(j, nq, nb), block_begin(j + 1, nq, nb)
        ka, ke = block_begin(j, nk, nb), block_begin(j + 1, nk, nb)
        if qe == qa:   # empty query block (Nq' < nb)
            continue
        lg = [scale * (qsort[:, :, qa:qe] @ ksort[:, :, ka:ke].transpose(-1, -2))]
        vals = [vsort[:, :, ka:ke]]
        if use_samples:
            ls = scale * (qsort[:, :, qa:qe] @ sk.transpose(-1, -2)) + logw
            # in-block slots are already counted by the block part (§3.4): excluded, not a finfo.min bias
            ls = ls.masked_fill((sblock == j).unsqueeze(2), float("-inf"))
            lg.append(ls)
            vals.append(sv)
        o, l = _softmax_parts(torch.cat(lg, dim=-1), torch.cat(vals, dim=-2))
        outs.append(o)
        lses.append(l)
    return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


# ---- §3.5–3.7 the estimator with a given plan -----------------------------------------------------------------
def hyper_attention_planned(q: Tensor, k: Tensor, v: Tensor, q_perm: Tensor, k_perm: Tensor, samples: Tensor,
                            causal: bool, scale: float, block_size: int, sample_size: int, min_seq_len: int, *,
                            block_only: bool = False) -> Tuple[Tensor, Tensor]:
    """(out, lse) of the ``hyper_attention`` op for [B, H, N, D] tensors and a given plan (§2.3): pieces in
    schedule order, each merged into the running (out, lse) of its rows with the §3.7 rule.

    ``block_only=True`` drops the sampled residual (the block-diagonal part alone)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv if Hkv else 1
    cd = _compute_dtype(q.dtype)
    qc, kc, vc = q.to(cd), k.to(cd), v.to(cd)
    acc_o = torch.zeros(B, Hq, Nq, v.shape[-1], dtype=cd, device=q.device)
    acc_l = torch.full((B, Hq, Nq), float("-inf"), dtype=cd, device=q.device)
    po = ko = so = 0
    for p in schedule(Nq, Nk, causal, block_size, sample_size, min_seq_len):
        if p.kind == APPROX:
            qp = q_perm[:, :, po:po + p.nq]
            kp = k_perm[:, :, ko:ko + p.nk]
            sp = samples[:, :, so:so + sample_size]
            po, ko, so = po + p.nq, ko + p.nk, so + sample_size
            o_s, l_s = _approx_piece(qc, kc, vc, qp, kp, sp, p, scale, G, block_size, sample_size, block_only)
            o, l = _unpermute(o_s, l_s, qp.to(torch.int64) - p.q0)
        else:
            o, l = _exact_piece(qc, kc, vc, p, scale, G, p.kind == EXACT_CAUSAL)
        a, e = p.q0, p.q0 + p.nq
        mo, ml = merge(acc_o[:, :, a:e], acc_l[:, :, a:e], o, l)
        # functional update (no in-place writes into tensors autograd saved)
        acc_o = torch.cat([acc_o[:, :, :a], mo, acc_o[:, :, e:]], dim=2)
        acc_l = torch.cat([acc_l[:, :, :a], ml, acc_l[:, :, e:]], dim=2)
    return acc_o.to(q.dtype), acc_l


def _unpermute(o_sorted: Tensor, l_sorted: Tensor, perm: Tensor) -> Tuple[Tensor, Tensor]:
    """Sorted position t holds row perm[t]: return rows in original order (gather by the inverse permutation)."""
    inv = torch.argsort(perm, dim=-1)
    o = o_sorted.gather(2, inv.unsqueeze(-1).expand(*inv.shape, o_sorted.shape[-1]))
    return o, l_sorted.gather(2, inv)


# ---- quirk path: the official implementations' behaviour (§7.5, §8) -----------------------------------------------
def _quirk_rect(q, k, v, scale, G, b, m, mn, proj, words, qs, exact: bool):
    """One rectangle (all rows of q × all keys of k, already sliced) evaluated with the quirks in `qs`.
    `words` is an iterator yielding the next [B, Hkv, m] sample words (consumed once per approximated rectangle)."""
    nq, nk = q.shape[2], k.shape[2]
    if exact or nk == 0 or nq == 0:
        return _exact_piece(q, k, v, Piece(EXACT_FULL, 0, nq, 0, nk), scale, G, False)
    qperm = torch.sort(lsh_hash(q, proj, quirks=qs).to(torch.int64), dim=-1, stable=True).indices
    kperm = torch.sort(lsh_hash(k, proj, quirks=qs).to(torch.int64), dim=-1, stable=True).indices
    qsort = _gather_rows(q, qperm)
    ksort_kv, vsort_kv = _gather_rows(k, kperm), _gather_rows(v, kperm)
    ksort, vsort = _expand_heads(ksort_kv, G), _expand_heads(vsort_kv, G)
    if "pad_unmasked" in qs:
        # official gather: zero rows appended to a multiple of b; padded keys (logit 0, value 0) join the last
        # block's softmax; query block size = padded Nq / nb, which must be integral (the official code fails too)
        nk_pad, nq_pad = num_blocks(nk, b) * b, num_blocks(nq, b) * b
        nb = nk_pad // b
        if nq_pad % nb:
            raise RuntimeError("reference.hyper_attention[pad_unmasked]: the padded query length is not divisible "
                               "by the block count (the official code fails here too)")
        qbs = nq_pad // nb
        pad = lambda x, n: torch.nn.functional.pad(x, (0, 0, 0, n - x.shape[2]))  # noqa: E731
        qsort_p, ksort, vsort = pad(qsort, nq_pad), pad(ksort, nk_pad), pad(vsort, nk_pad)
        qb = [(j * qbs, (j + 1) * qbs) for j in range(nb)]
        kb = [(j * b, (j + 1) * b) for j in range(nb)]
        qblock = torch.arange(nq, device=q.device) // qbs
        kblock_of = lambda c: c // b  # noqa: E731
        has_res = m > 0 and nq > qbs and nk > b
    else:
        nb = num_blocks(nk, b)
        qsort_p = qsort
        qb = [(block_begin(j, nq, nb), block_begin(j + 1, nq, nb)) for j in range(nb)]
        kb = [(block_begin(j, nk, nb), block_begin(j + 1, nk, nb)) for j in range(nb)]
        qblock = block_of_rank(torch.arange(nq, device=q.device), nq, nb)
        kblock_of = lambda c: block_of_rank(c, nk, nb)  # noqa: E731
        has_res = m > 0 and nb > 1
    ob, lb = [], []
    for (qa, qe), (ka, ke) in zip(qb, kb):
        if qe > qa:
            o, l = _softmax_parts(scale * (qsort_p[:, :, qa:qe] @ ksort[:, :, ka:ke].transpose(-1, -2)),
                                  vsort[:, :, ka:ke])
            ob.append(o)
            lb.append(l)
    o_blk, l_blk = torch.cat(ob, dim=2)[:, :, :nq], torch.cat(lb, dim=2)[:, :, :nq]
    merge_fn = _merge_eps if "merge_eps" in qs else merge
    if "detached_lse" in qs:  # official: lse of every piece is detached (flash-attn path), so merges are constants
        l_blk = l_blk.detach()
    if has_res:
        if "prefix_samples" in qs:
            # Triton repo: the first m keys of the rectangle in original order, weight 1, no mask
            sk, sv, logw, mask = _expand_heads(k[:, :, :m], G), _expand_heads(v[:, :, :m], G), 0.0, None
        else:
            ranks = sample_rank(next(words), nk)                    # uniform ranks over the sorted keys
            sk = _expand_heads(_gather_rows(ksort_kv, ranks), G)
            sv = _expand_heads(_gather_rows(vsort_kv, ranks), G)
            logw = math.log(nk / m)
            mask = None if "no_sample_mask" in qs else (qblock.view(1, 1, -1, 1) ==
                                                          _expand_heads(kblock_of(ranks), G).unsqueeze(2))
        ls = scale * (qsort @ sk.transpose(-1, -2))
        if mask is not None:
            if "merge_eps" in qs:   # official: additive finfo.min bias
                ls = ls + mask.to(ls.dtype) * torch.finfo(ls.dtype).min
            else:
                ls = ls.masked_fill(mask, float("-inf"))
        o_res, l_res = _softmax_parts(ls, sv)
        l_res = l_res + logw
        if "detached_lse" in qs:
            l_res = l_res.detach()
        o_blk, l_blk = merge_fn(o_blk, l_blk, o_res, l_res)
    return _unpermute(o_blk, l_blk, qperm)


def _quirk_forward(q, k, v, causal, scale, b, m, mn, proj, words, qs):
    G = q.shape[1] // k.shape[1]
    merge_fn = _merge_eps if "merge_eps" in qs else merge
    off = "official_recursion" in qs
    if not causal:
        nq, nk = q.shape[2], k.shape[2]
        return _quirk_rect(q, k, v, scale, G, b, m, mn, proj, words, qs, (nq < mn) if off else (nk <= mn))
    if q.shape[2] != k.shape[2]:
        raise ValueError("reference.hyper_attention: causal=True requires Nq == Nk")

    def rec(q, k, v):
        n = q.shape[2]
        if n <= mn:
            o, l = _exact_piece(q, k, v, Piece(EXACT_CAUSAL, 0, n, 0, n), scale, G, True)
            return o, (l.detach() if "detached_lse" in qs else l)
        odd = off and n % 2 == 1
        if odd:  # official: pad one zero row (q, k, v) before halving, drop it afterwards
            pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, 1))  # noqa: E731
            q, k, v = pad(q), pad(k), pad(v)
        h = -(-q.shape[2] // 2)
        o1, l1 = rec(q[:, :, :h], k[:, :, :h], v[:, :, :h])
        o2, l2 = rec(q[:, :, h:], k[:, :, h:], v[:, :, h:])
        exact = (q.shape[2] - h < mn) if off else (h <= mn)
        orr, lr = _quirk_rect(q[:, :, h:], k[:, :, :h], v[:, :, :h], scale, G, b, m, mn, proj, words, qs, exact)
        o2, l2 = merge_fn(o2, l2, orr, lr)
        o, l = torch.cat([o1, o2], dim=2), torch.cat([l1, l2], dim=2)
        return (o[:, :, :-1], l[:, :, :-1]) if odd else (o, l)

    return rec(q, k, v)


def quirk_num_samples(nq: int, nk: int, causal: bool, block_size: int, sample_size: int, min_seq_len: int,
                      quirks) -> int:
    """Sample words per (b, g) the quirk path consumes (an upper bound: one chunk of m per approximated rectangle)."""
    qs = _quirk_set(quirks)
    off = "official_recursion" in qs
    if nq == 0 or nk == 0 or sample_size == 0:
        return 0
    if not causal:
        return sample_size * int(not ((nq < min_seq_len) if off else (nk <= min_seq_len)))

    def rec(n):
        if n <= min_seq_len:
            return 0
        n2 = n + (n % 2 if off else 0)
        h = -(-n2 // 2)
        exact = (n2 - h < min_seq_len) if off else (h <= min_seq_len)
        return rec(h) + rec(n2 - h) + (0 if exact else 1)

    return sample_size * rec(nq)


# ---- randomness (§3.8) and the full functional ---------------------------------------------------------------
def draw_randomness(q: Tensor, k: Tensor, causal: bool, lsh_num_projs: int, block_size: int, sample_size: int,
                    min_seq_len: int, generator: Optional[torch.Generator] = None, lsh_proj: Optional[Tensor] = None,
                    num_words: Optional[int] = None) -> Tuple[Optional[Tensor], Tensor]:
    """The §3.8 draws in order: P = randn(D, r) if lsh_proj is None, then words = randint(0, 2^31, (B, Hkv, S)) if
    S > 0, only when the schedule has an Approx piece. Returns (lsh_proj, sample_words) on q's device.
    `num_words` overrides S (quirk paths with another schedule)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    pq, pk, S = plan_sizes(Nq, Nk, causal, block_size, sample_size, min_seq_len)
    approx = pk > 0 if num_words is None else num_words > 0 or pk > 0
    S = S if num_words is None else num_words
    words = torch.zeros(B, Hkv, 0, dtype=torch.int32, device=q.device)
    if B == 0 or Hq == 0 or not approx:
        return lsh_proj, words
    gdev = generator.device if generator is not None else q.device
    if lsh_proj is None:
        lsh_proj = torch.randn(D, lsh_num_projs, dtype=torch.float32, device=gdev, generator=generator)
    if S > 0:
        words = torch.randint(0, 2 ** 31, (B, Hkv, S), dtype=torch.int64, device=gdev,
                              generator=generator).to(torch.int32)
    return lsh_proj.to(q.device), words.to(q.device)


def hyper_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: Optional[float] = None,
                    lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256, min_seq_len: int = 4096,
                    generator: Optional[torch.Generator] = None, *, layout: str = "bhnd",
                    lsh_proj: Optional[Tensor] = None, sample_words: Optional[Tensor] = None, quirks=(),
                    block_only: bool = False) -> Tuple[Tensor, Tensor]:
    """Reference of ``fastnorm.hyper_attention``; always returns (out, lse) (lse in the compute dtype).

    ``lsh_proj`` / ``sample_words`` given: used as is; whatever is missing is drawn per §3.8 from `generator`.
    ``quirks`` (§7.5) reproduces the official implementations (presets "official", "official_nomask",
    "official_triton"); their schedule can have more approximated rectangles than fastnorm's, so they need
    `quirk_num_samples(...)` words (drawn automatically when sample_words is None).
    ``block_only`` drops the sampled residual (fastnorm estimator only)."""
    if layout == "bnhd":
        o, l = hyper_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal, scale,
                               lsh_num_projs, block_size, sample_size, min_seq_len, generator, layout="bhnd",
                               lsh_proj=lsh_proj, sample_words=sample_words, quirks=quirks, block_only=block_only)
        return o.transpose(1, 2), l
    if layout != "bhnd":
        raise ValueError(f"reference.hyper_attention: layout must be 'bhnd' or 'bnhd', got {layout!r}")
    qs = _quirk_set(quirks)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if causal and q.shape[2] != k.shape[2]:
        raise ValueError("reference.hyper_attention: causal=True requires Nq == Nk")
    nw = quirk_num_samples(q.shape[2], k.shape[2], causal, block_size, sample_size, min_seq_len, qs) if qs else None
    if sample_words is None or lsh_proj is None:
        lsh_proj, words = draw_randomness(q, k, causal, lsh_num_projs, block_size, sample_size, min_seq_len,
                                          generator, lsh_proj, nw)
        sample_words = words if sample_words is None else sample_words
    if lsh_proj is None:  # nothing approximated: the projection is never read
        lsh_proj = torch.zeros(q.shape[-1], 0)
    lsh_proj = lsh_proj.to(q.device)
    if qs:
        cd = _compute_dtype(q.dtype)
        def words():  # one [B, Hkv, m] chunk per approximated rectangle, in evaluation (post-)order
            for i in range(0, sample_words.shape[2], max(1, sample_size)):
                yield sample_words[:, :, i:i + sample_size]
            raise ValueError("reference.hyper_attention: sample_words too short for the quirk schedule "
                             "(see quirk_num_samples)")

        o, l = _quirk_forward(q.to(cd), k.to(cd), v.to(cd), causal, scale, block_size, sample_size, min_seq_len,
                              lsh_proj, words(), qs)
        return o.to(q.dtype), l
    qp, kp, sm = plan(q, k, lsh_proj, sample_words, causal, block_size, sample_size, min_seq_len)
    return hyper_attention_planned(q, k, v, qp, kp, sm, causal, scale, block_size, sample_size, min_seq_len,
                                   block_only=block_only)


def hyper_attention_block_only(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: Optional[float] = None,
                               block_size: int = 256, min_seq_len: int = 4096, *,
                               lsh_proj: Tensor) -> Tuple[Tensor, Tensor]:
    """The block-diagonal part alone (m = 0): the accuracy baseline of §7.5."""
    empty = torch.zeros(k.shape[0], k.shape[1], 0, dtype=torch.int32, device=q.device)
    return hyper_attention(q, k, v, causal, scale, lsh_proj.shape[1], block_size, 0, min_seq_len,
                           lsh_proj=lsh_proj, sample_words=empty)


# ---- exact attention -------------------------------------------------------------------------------------------
def exact_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False, scale: Optional[float] = None, *,
                    compute_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Exact softmax attention (SDPA math, GQA by h // G), query-chunked so memory stays O(chunk·Nk).
    Returns (out in the input dtype, lse in the compute dtype); causal requires Nq == Nk. compute_dtype
    defaults to float64 for float64 inputs and float32 otherwise (pass torch.float64 for O*)."""
    B, Hq, Nq, D = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    cd = compute_dtype or _compute_dtype(q.dtype)
    if Nk == 0:
        return (torch.zeros(B, Hq, Nq, v.shape[-1], dtype=q.dtype, device=q.device),
                torch.full((B, Hq, Nq), float("-inf"), dtype=cd, device=q.device))
    if Nq == 0:
        return (torch.zeros(B, Hq, 0, v.shape[-1], dtype=q.dtype, device=q.device),
                torch.zeros(B, Hq, 0, dtype=cd, device=q.device))
    p = Piece(EXACT_CAUSAL if causal else EXACT_FULL, 0, Nq, 0, Nk)
    o, l = _exact_piece(q.to(cd), k.to(cd), v.to(cd), p, scale, Hq // Hkv, causal)
    return o.to(q.dtype), l


# ---- dense form (§6 item 6) -------------------------------------------------------------------------------------
def dense_weights(q: Tensor, k: Tensor, q_perm: Tensor, k_perm: Tensor, samples: Tensor, causal: bool,
                  block_size: int, sample_size: int, min_seq_len: int) -> Tensor:
    """W [B, Hq, Nq, Nk] float64: W_ij = sum of the weights of the entries (i, j) in row i's final multiset.
    Built entry by entry from the spec's definitions (O(N²) memory: small N only)."""
    B, Hq, Nq, _ = q.shape
    Hkv, Nk = k.shape[1], k.shape[2]
    G = Hq // Hkv
    W = torch.zeros(B, Hq, Nq, Nk, dtype=torch.float64)
    po = ko = so = 0
    for p in schedule(Nq, Nk, causal, block_size, sample_size, min_seq_len):
        if p.kind == EXACT_FULL:
            W[:, :, p.q0:p.q0 + p.nq, p.k0:p.k0 + p.nk] += 1
            continue
        if p.kind == EXACT_CAUSAL:
            W[:, :, p.q0:p.q0 + p.nq, p.k0:p.k0 + p.nk] += torch.tril(torch.ones(p.nq, p.nk, dtype=torch.float64))
            continue
        qp = q_perm[:, :, po:po + p.nq].cpu().to(torch.int64)
        kp = k_perm[:, :, ko:ko + p.nk].cpu().to(torch.int64)
        sm = samples[:, :, so:so + sample_size].cpu().to(torch.int64)
        po, ko, so = po + p.nq, ko + p.nk, so + sample_size
        nb = num_blocks(p.nk, block_size)
        omega = p.nk / sample_size if sample_size else 0.0
        for b in range(B):
            for h in range(Hq):
                g = h // G
                for rq in range(p.nq):
                    i = int(qp[b, h, rq])
                    jb = block_of_rank(rq, p.nq, nb)
                    for rk in range(block_begin(jb, p.nk, nb), block_begin(jb + 1, p.nk, nb)):
                        W[b, h, i, int(kp[b, g, rk])] += 1
                    if nb > 1:
                        for t in range(sample_size):
                            c = int(sm[b, g, t])
                            if block_of_rank(c, p.nk, nb) != jb:
                                W[b, h, i, int(kp[b, g, c])] += omega
    return W


def dense_attention(q: Tensor, k: Tensor, v: Tensor, W: Tensor, scale: float) -> Tuple[Tensor, Tensor]:
    """O = (W∘e^ℓ)V / rowsum(W∘e^ℓ), LSE = log rowsum(W∘e^ℓ), in float64 (GQA by h // G)."""
    G = q.shape[1] // k.shape[1]
    kk, vv = _expand_heads(k.double(), G), _expand_heads(v.double(), G)
    lg = scale * (q.double() @ kk.transpose(-1, -2))
    lg = torch.where(W > 0, lg + torch.log(torch.where(W > 0, W, torch.ones_like(W))), torch.full_like(lg, -math.inf))
    return _softmax_parts(lg, vv)


# ---- §7.5 input families ------------------------------------------------------------------------------------------
def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _rope(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary embedding of [B, H, N, D] by position (pairs (2i, 2i+1)); an odd last column is left as is."""
    N, D = x.shape[-2], x.shape[-1]
    half = D // 2
    if half == 0:
        return x
    pos = torch.arange(N, dtype=torch.float64).unsqueeze(-1)
    inv = base ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    ang = (pos * inv).to(x.dtype)
    c, s = torch.cos(ang), torch.sin(ang)
    x1, x2 = x[..., 0:2 * half:2], x[..., 1:2 * half:2]
    out = x.clone()
    out[..., 0:2 * half:2] = x1 * c - x2 * s
    out[..., 1:2 * half:2] = x1 * s + x2 * c
    return out


def make_inputs(family: str, B: int, H: int, N: int, D: int, seed: int, dtype: torch.dtype = torch.float32,
                device: Union[str, torch.device] = "cpu") -> Tuple[Tensor, Tensor, Tensor]:
    """q, k, v [B, H, N, D] of one §7.5 input family ("gaussian", "clustered", "heavy", "local"), generated in
    float64 on the CPU from `seed` and cast to `dtype` on `device`."""
    g = torch.Generator().manual_seed(int(seed))
    f64 = torch.float64

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=f64)

    if family == "gaussian":
        q, k, v = randn(B, H, N, D), randn(B, H, N, D), randn(B, H, N, D)
    elif family == "clustered":
        C = 32
        mu = math.sqrt(D) * _unit(randn(B, H, C, D))
        u = _unit(randn(B, H, C, D))
        A = randn(D, D) / math.sqrt(D)
        cq = torch.randint(0, C, (B, H, N), generator=g)
        ck = torch.randint(0, C, (B, H, N), generator=g)
        take = lambda t, idx: t.gather(2, idx.unsqueeze(-1).expand(*idx.shape, D))  # noqa: E731
        q = take(mu, cq) + 0.5 * randn(B, H, N, D)
        k = take(mu, ck) + 0.5 * randn(B, H, N, D)
        v = take(u, ck) @ A.T + 0.1 * randn(B, H, N, D)
    elif family == "heavy":
        q = 0.5 * randn(B, H, N, D)
        k = 0.5 * randn(B, H, N, D)
        v = randn(B, H, N, D)
        na = min(64, N)
        ua = _unit(randn(B, H, na, D))
        pos = torch.stack([torch.stack([torch.randperm(N, generator=g)[:na] for _ in range(H)]) for _ in range(B)])
        k = k.scatter(2, pos.unsqueeze(-1).expand(B, H, na, D), 4 * math.sqrt(D) * ua)
        a = torch.randint(0, na, (B, H, N), generator=g)
        q = q + 3 * ua.gather(2, a.unsqueeze(-1).expand(B, H, N, D))
        ubar = _unit(randn(B, H, 1, D))
        ns = min(4, N)
        k[:, :, :ns] = 4 * math.sqrt(D) * ubar
        q = q + 2.5 * ubar
    elif family == "local":
        rho = 0.99
        eps = randn(B, H, N, D)
        x = torch.empty(B, H, N, D, dtype=f64)
        x[:, :, 0] = eps[:, :, 0]
        c = math.sqrt(1 - rho * rho)
        for t in range(1, N):  # AR(1) recursion; N ≤ a few 10^4 in the evaluation
            x[:, :, t] = rho * x[:, :, t - 1] + c * eps[:, :, t]
        W, _ = torch.linalg.qr(randn(D, D))
        Wv = randn(D, D) / math.sqrt(D)
        y = x @ W.T
        q, k = _rope(y), _rope(y)
        v = x @ Wv.T
    else:
        raise ValueError(f"reference.make_inputs: unknown family {family!r}")
    return q.to(dtype).to(device), k.to(dtype).to(device), v.to(dtype).to(device)
