"""Plain-PyTorch reference of one Lion step (specs/lion.md §3) and a Python Philox4x32-10 (§3.6).

Two precisions:

* ``precision="float64"`` (the reference sweep, §4): every quantity is evaluated in float64 with the textbook
  formulas, ``c = β1·m + (1−β1)·g``, ``x2 = x·(1−δ) − lr·u``, ``m' = β2·m + (1−β2)·g``. Results are returned in
  float64 and *not* rounded to the param dtype (under stochastic rounding the returned param is x2 itself), so
  tests can apply the §4 bounds.
* ``precision="exact"``: reproduces the rounding order of §3.1 in the opmath type T (float32 for
  float32/bf16/fp16 params, float64 for float64 params): scalars finished in double and rounded once to T,
  products rounded to T, then one fused multiply-add, final RNE (or the Philox stochastic rounding) into the
  param / state dtype. Results come back in the param, state and float32 master dtypes and predict the fastnorm
  kernels bit for bit.

FMA emulation. torch has no fma op, so :func:`fma_rn` emulates it:

* float32: ``a*b`` of two float32 numbers is exact in float64, and ``a*b + c`` evaluated in float64 and rounded
  to float32 equals the float32 FMA except in rare *double-rounding* cases (the float64 sum lands exactly on a
  float32 rounding midpoint). Those are removed by rounding the float64 sum *to odd* first (the exact error of
  the float64 addition is recovered with TwoSum, and an inexact even result is moved one float64 ulp towards
  it); a round-to-odd result with at least two extra bits rounds to nearest correctly (Boldo & Melquiond,
  "Emulation of FMA and correctly rounded sums: proved algorithms using rounding to odd", IEEE TC 2008).
  So the float32 emulation is exact, subnormal float32 results included.
* float64: Dekker's TwoProduct gives ``a*b = uh + ul`` exactly, TwoSum gives ``c + uh = th + tl``, and the
  result is ``RN(th + RO(tl + ul))`` (same paper, §5.3). Exact barring overflow/underflow of the partial
  products (|a·b| beyond ~1e300 or below ~1e-290), which Lion's magnitudes never reach.
"""
from __future__ import annotations

import math
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

__all__ = [
    "philox4x32_10",
    "philox4x32_10_tensor",
    "sr_random_bits",
    "sr_random_bits_like",
    "bf16_round_stochastic",
    "fma_rn",
    "opmath_dtype",
    "decay_delta",
    "LionResult",
    "lion_step",
    "lion_step_",
]

_M32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
_DECAY = {"paper": 1, "decoupled": 1, "corrected": 2, "fixed": 0}


# ---- Philox4x32-10 (§3.6) --------------------------------------------------------------------------------
def philox4x32_10(counter: Sequence[int], key: Sequence[int]) -> Tuple[int, int, int, int]:
    """Philox4x32-10 of one 128-bit counter (4 uint32) under a 64-bit key (2 uint32), as Python ints.

    Known answers (spec §3.6): zero counter and key -> (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8);
    all-ones -> (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd).
    """
    c0, c1, c2, c3 = (int(x) & _M32 for x in counter)
    k0, k1 = (int(x) & _M32 for x in key)
    for r in range(10):
        if r > 0:
            k0 = (k0 + _PHILOX_W0) & _M32
            k1 = (k1 + _PHILOX_W1) & _M32
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        hi0, lo0 = p0 >> 32, p0 & _M32
        hi1, lo1 = p1 >> 32, p1 & _M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _mulhilo(a: int, c: Tensor) -> Tuple[Tensor, Tensor]:
    # a*c for a uint32 constant and int64 tensors holding uint32 values, without int64 overflow:
    # split c into 16-bit halves so every partial product stays below 2^49.
    t1 = a * (c & 0xFFFF)
    t2 = a * (c >> 16)
    lo = (((t2 & 0xFFFF) << 16) + t1) & _M32
    hi = (t2 + (t1 >> 16)) >> 16
    return hi, lo


def philox4x32_10_tensor(c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, k0: int, k1: int) -> Tuple[Tensor, ...]:
    """Vectorised Philox4x32-10: counters are int64 tensors (or ints) holding uint32 values; returns 4 int64
    tensors holding uint32 values."""
    ref = next(x for x in (c0, c1, c2, c3) if isinstance(x, Tensor))

    def as_t(x):
        return x.to(torch.int64) if isinstance(x, Tensor) else torch.full_like(ref, int(x) & _M32, dtype=torch.int64)

    c0, c1, c2, c3 = (as_t(x) for x in (c0, c1, c2, c3))
    k0, k1 = int(k0) & _M32, int(k1) & _M32
    for r in range(10):
        if r > 0:
            k0 = (k0 + _PHILOX_W0) & _M32
            k1 = (k1 + _PHILOX_W1) & _M32
        hi0, lo0 = _mulhilo(_PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(_PHILOX_M1, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def sr_random_bits(numel: int, slot: int, sr_step: Optional[int], seed: int, device=None) -> Tensor:
    """The 16 random bits (int64 in [0, 65536)) that element e of tensor ``slot`` gets under stochastic rounding:
    counter (j low, j high, slot, sr_step low 32) with j = e >> 3, key (seed low, seed high); element e takes
    word (e & 7) >> 1 of the output, the low half when e is even."""
    e = torch.arange(numel, dtype=torch.int64, device=device)
    j = e >> 3
    if sr_step is None:
        step = 0
    elif isinstance(sr_step, Tensor):  # 0-d int64 tensor: stays on the device (no host sync)
        step = (sr_step.to(device=e.device, dtype=torch.int64).reshape(()) & _M32).expand_as(e)
    else:
        step = int(sr_step) & _M32
    seed = int(seed)
    words = philox4x32_10_tensor(j & _M32, j >> 32, slot, step, seed & _M32, (seed >> 32) & _M32)
    w = torch.stack(words, dim=-1).gather(-1, ((e & 7) >> 1).unsqueeze(-1)).squeeze(-1)
    return torch.where((e & 1) == 1, w >> 16, w & 0xFFFF)


def sr_random_bits_like(t: Tensor, slot: int, sr_step, seed: int) -> Tensor:
    """:func:`sr_random_bits` shaped like ``t``, where the flat index e of an element is its position in
    memory order (the op sees each dense tensor as a flat view, so a channels_last tensor numbers its elements
    by memory offset, not by logical index)."""
    perm = sorted(range(t.dim()), key=lambda d: (-t.stride(d), d))
    bits = sr_random_bits(t.numel(), slot, sr_step, seed, device=t.device)
    bits = bits.reshape([t.shape[d] for d in perm])
    inv = [0] * t.dim()
    for i, d in enumerate(perm):
        inv[d] = i
    return bits.permute(inv) if t.dim() else bits.reshape(())


def bf16_round_stochastic(x: Tensor, r16: Tensor) -> Tensor:
    """bf16 value ``(bits(x) + r16) >> 16`` of float32 ``x`` (NaN/±Inf round to nearest), §3.6."""
    x = x.to(torch.float32)
    v = x.contiguous().view(torch.int32).to(torch.int64) & _M32
    h = ((v + r16.contiguous().reshape(x.shape).to(torch.int64)) >> 16) & 0xFFFF
    h = torch.where(h >= 0x8000, h - 0x10000, h).to(torch.int16).view(torch.bfloat16)
    return torch.where(torch.isfinite(x), h, x.to(torch.bfloat16))


# ---- exact roundings ------------------------------------------------------------------------------------
def _two_sum(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _round_to_odd(s: Tensor, e: Tensor) -> Tensor:
    """s = RN(x), e = x - s exactly: returns x rounded to odd (an inexact result gets an odd last bit)."""
    even = (s.view(torch.int64) & 1) == 0
    fix = (e != 0) & even & torch.isfinite(e)
    inf = torch.full_like(s, math.inf)
    return torch.where(fix, torch.nextafter(s, torch.where(e > 0, inf, -inf)), s)


def _two_prod(a: Tensor, b: Tensor) -> Tuple[Tensor, Tensor]:
    p = a * b
    t = a * 134217729.0
    ah = t - (t - a)
    al = a - ah
    t = b * 134217729.0
    bh = t - (t - b)
    bl = b - bh
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def fma_rn(a: Union[Tensor, float], b: Tensor, c: Tensor) -> Tensor:
    """Correctly rounded ``a*b + c`` in the dtype of ``c`` (float32 or float64), see the module docstring."""
    dt = c.dtype
    a = a if isinstance(a, Tensor) else torch.tensor(a, dtype=dt, device=c.device)
    a, b = a.to(dt), b.to(dt)
    if dt == torch.float32:
        p = a.double() * b.double()  # exact
        cd = c.double()
        s, e = _two_sum(p, cd)
        r = _round_to_odd(s, e).to(torch.float32)
        # Inf/NaN operands: plain IEEE arithmetic gives the FMA's answer
        return torch.where(torch.isfinite(p) & torch.isfinite(cd), r, (p + cd).to(torch.float32))
    if dt == torch.float64:
        uh, ul = _two_prod(a, b)
        th, tl = _two_sum(c, uh)
        s, e = _two_sum(tl, ul)
        r = th + _round_to_odd(s, e)
        plain = a * b + c
        return torch.where(torch.isfinite(uh) & torch.isfinite(c) & torch.isfinite(r), r, plain)
    raise TypeError(f"fma_rn: float32 or float64 expected, got {dt}")


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """T of §3.1: float64 for float64 params, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def decay_delta(lr: float, weight_decay: float, decay_mode: str, decay_ref_lr: Optional[float]) -> float:
    """δ of §3.3 in double, in the peers' evaluation orders."""
    if decay_mode not in _DECAY:
        raise ValueError(f"decay_mode must be one of {sorted(_DECAY)}, got {decay_mode!r}")
    k = _DECAY[decay_mode]
    ref = 1.0 if decay_mode in ("paper", "fixed") else float(decay_ref_lr)
    if k == 0:
        return float(weight_decay)
    if k == 1:
        return lr * (weight_decay / ref)
    return ((lr * lr) / ref) * weight_decay


class LionResult(NamedTuple):
    params: List[Tensor]
    exp_avgs: List[Tensor]
    master_params: Optional[List[Tensor]]


def _scalar(x) -> float:
    return float(x.item()) if isinstance(x, Tensor) else float(x)


def lion_step(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor], *, lr,
              betas=(0.9, 0.99), weight_decay: float = 0.0, decay_mode: str = "paper",
              decay_ref_lr: Optional[float] = None, master_params: Optional[Sequence[Tensor]] = None,
              grad_scale=None, found_inf=None, maximize: bool = False, cautious: bool = False,
              cautious_min_frac: float = 1e-3, stochastic_rounding: bool = False, sr_seed: int = 0,
              sr_step=None, nan_policy: str = "propagate", precision: str = "float64") -> LionResult:
    """One Lion step on lists of tensors, out of place (inputs are not modified). See the module docstring for
    ``precision``. ``slot`` for stochastic rounding is the position in the lists, as in the op."""
    if precision not in ("float64", "exact"):
        raise ValueError(f"precision must be 'float64' or 'exact', got {precision!r}")
    if nan_policy not in ("propagate", "torch"):
        raise ValueError(f"nan_policy must be 'propagate' or 'torch', got {nan_policy!r}")
    lr_f = _scalar(lr)
    beta1, beta2 = float(betas[0]), float(betas[1])
    delta = decay_delta(lr_f, float(weight_decay), decay_mode, decay_ref_lr)
    skip = found_inf is not None and _scalar(found_inf) != 0.0
    scale = None if grad_scale is None else _scalar(grad_scale)
    step_i = None if sr_step is None else int(_scalar(sr_step))
    out_p, out_m, out_w = [], [], ([] if master_params is not None else None)
    for i, (p, g, m) in enumerate(zip(params, grads, exp_avgs)):
        w = master_params[i] if master_params is not None else None
        if skip:
            out_p.append(p.clone() if precision == "exact" else p.double())
            out_m.append(m.clone() if precision == "exact" else m.double())
            if w is not None:
                out_w.append(w.clone() if precision == "exact" else w.double())
            continue
        T = torch.float64 if precision == "float64" else opmath_dtype(p.dtype)
        exact = precision == "exact"
        x = (w if w is not None else p).to(T)
        gg = g.to(T)
        if scale is not None:
            gg = gg / torch.tensor(scale, dtype=torch.float32).to(T)  # div_rn in T of T(scale)
        if maximize:
            gg = -gg
        mm = m.to(T)
        if exact:
            a1, b1, a2, b2 = (torch.tensor(v, dtype=T) for v in (beta1, 1.0 - beta1, beta2, 1.0 - beta2))
            c = fma_rn(b1, gg, mm * a1)
        else:
            c = beta1 * mm + (1.0 - beta1) * gg
        s = torch.sign(c)
        if nan_policy == "propagate":
            s = torch.where(torch.isnan(c), c, s)
        u = s
        if cautious:
            keep = (s * gg) > 0
            count = int(keep.sum().item())
            numel = keep.numel()
            frac = float(torch.tensor(count / numel if numel else 0.0, dtype=torch.float32))
            lo = float(torch.tensor(cautious_min_frac, dtype=torch.float32))
            # q is defined in float32 (§3.5) in both precisions: it is part of the update's definition
            q = torch.tensor(1.0, dtype=torch.float32) / torch.tensor(max(frac, lo), dtype=torch.float32)
            q = q.to(T)
            u = torch.where(keep, s * q, torch.where(torch.isnan(s), s, torch.zeros_like(s)))
        if exact:
            x1 = x * torch.tensor(1.0 - delta, dtype=T)
            x2 = fma_rn(-torch.tensor(lr_f, dtype=T), u, x1)
            m_new = fma_rn(b2, gg, mm * a2)
        else:
            x2 = x * (1.0 - delta) - lr_f * u
            m_new = beta2 * mm + (1.0 - beta2) * gg
        if not exact:
            out_p.append(x2)
            out_m.append(m_new)
            if w is not None:
                out_w.append(x2)
            continue
        out_m.append(m_new.to(m.dtype))
        if w is not None:
            out_w.append(x2.to(torch.float32))
            out_p.append(x2.to(p.dtype))
        elif stochastic_rounding and p.dtype == torch.bfloat16:
            r16 = sr_random_bits_like(p, i, step_i, sr_seed)
            out_p.append(bf16_round_stochastic(x2, r16))
        else:
            out_p.append(x2.to(p.dtype))
    return LionResult(out_p, out_m, out_w)


def lion_step_(params: Sequence[Tensor], grads: Sequence[Tensor], exp_avgs: Sequence[Tensor], *,
               master_params: Optional[Sequence[Tensor]] = None, **kwargs) -> None:
    """In-place form of :func:`lion_step` in ``precision="exact"``: writes the predicted values into the inputs."""
    kwargs.pop("precision", None)
    res = lion_step(params, grads, exp_avgs, master_params=master_params, precision="exact", **kwargs)
    with torch.no_grad():
        for dst, src in zip(params, res.params):
            dst.copy_(src)
        for dst, src in zip(exp_avgs, res.exp_avgs):
            dst.copy_(src)
        if master_params is not None:
            for dst, src in zip(master_params, res.master_params):
                dst.copy_(src)
