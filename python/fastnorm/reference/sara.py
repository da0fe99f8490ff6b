"""Plain-PyTorch reference of every SaRA op (specs/sara.md §2.4, §3.1-§3.5), float64-capable.

Written for clarity, not speed: selection through ``nonzero`` on integer magnitude keys, the masked weight
gradient as the dense dW followed by ``index_select``, scatter through dense indexing, the sparse matrix as a
dense S. Every function mirrors the argument order of the ``torch.ops.fastnorm`` op of the same name, so tests
call both with the same arguments. Nothing here calls a fastnorm kernel.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "abs_key", "key_of", "value_of_key", "opmath_dtype", "index_dtype",
    "sara_abs_histogram_", "sara_select", "select_threshold", "select_k", "select_threshold_keys", "radix_select_key",
    "sara_row_ptr", "sara_scatter_", "sara_merge",
    "sara_sddmm", "sara_conv2d_sddmm", "sara_adamw_step_", "sara_spmm",
    "sara_linear", "sara_conv2d",
]

# Integer view of each float dtype, its key mask (sign cleared) and the key of +inf (NaN keys exceed it).
_KEY = {
    torch.float16: (torch.int16, 0x7FFF, 0x7C00, 16),
    torch.bfloat16: (torch.int16, 0x7FFF, 0x7F80, 16),
    torch.float32: (torch.int32, 0x7FFFFFFF, 0x7F800000, 32),
    torch.float64: (torch.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000, 64),
}


def opmath_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation type: float32, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def index_dtype(numel: int) -> torch.dtype:
    """int32 flat indices while they fit (numel < 2^31), else int64 (spec §2.3)."""
    return torch.int32 if numel < 2 ** 31 else torch.int64


def abs_key(w: Tensor) -> Tensor:
    """Magnitude key of every element (int64): the bit pattern of |x| in x's own format, sign cleared."""
    int_t, mask, _, _ = _KEY[w.dtype]
    return w.contiguous().view(int_t).to(torch.int64) & mask


def key_inf(dtype: torch.dtype) -> int:
    return _KEY[dtype][2]


def key_bits(dtype: torch.dtype) -> int:
    return _KEY[dtype][3]


def key_of(value: float, dtype: torch.dtype) -> int:
    """Key of a Python float after rounding it to ``dtype`` (how ``w.abs() < θ`` compares)."""
    return int(abs_key(torch.tensor([value], dtype=torch.float64).to(dtype))[0])


def value_of_key(key: int, dtype: torch.dtype) -> float:
    """The non-negative value whose key is ``key``."""
    int_t = _KEY[dtype][0]
    bits = key - (1 << key_bits(dtype)) if key >= 1 << (key_bits(dtype) - 1) else key
    return float(torch.tensor([bits], dtype=torch.int64).to(int_t).view(dtype)[0].double())


def _valid(keys: Tensor, dtype: torch.dtype) -> Tensor:
    return keys <= key_inf(dtype)  # NaN entries are never counted or selected


# ---- selection (§3.1) -----------------------------------------------------------------------------------
def sara_abs_histogram_(weight: Tensor, hist: Tensor, shift: int, prefix_mask: int, prefix: int) -> None:
    """hist[d] += #{i : key_i & prefix_mask == prefix, (key_i >> shift) & 255 == d}, NaN skipped."""
    keys = abs_key(weight.reshape(-1))
    m64 = (1 << 63) - 1  # keys never have the sign bit: compare the low 63 bits of the patterns
    sel = _valid(keys, weight.dtype) & ((keys & (int(prefix_mask) & m64)) == (int(prefix) & m64))
    digits = (keys[sel] >> shift) & 255
    hist += torch.bincount(digits, minlength=256).to(hist.dtype)


def sara_select(weight: Tensor, key_lt: int, key_eq: int, eq_quota: int) -> Tuple[Tensor, Tensor]:
    """Entries with key < key_lt plus the first ``eq_quota`` (flat order) with key == key_eq: sorted flat
    indices (int32 below 2^31 elements) and base = weight.flatten()[indices]."""
    flat = weight.reshape(-1)
    keys = abs_key(flat)
    valid = _valid(keys, weight.dtype)
    take = valid & (keys < key_lt)
    if eq_quota > 0:
        eq = valid & (keys == key_eq)
        take = take | (eq & (torch.cumsum(eq.to(torch.int64), 0) <= eq_quota))
    idx = torch.nonzero(take).reshape(-1)
    return idx.to(index_dtype(flat.numel())), flat[idx]


def select_threshold_keys(weight: Tensor, threshold: float) -> int:
    """key_lt of threshold mode: θ rounded to the weight dtype first."""
    return key_of(threshold, weight.dtype)


def select_threshold(weight: Tensor, threshold: float) -> Tensor:
    """``nonzero(w.abs() < θ)`` with θ cast to the weight's dtype (official behaviour), as flat indices."""
    th = torch.tensor(threshold, dtype=torch.float64).to(weight.dtype)
    idx = torch.nonzero((weight.reshape(-1).abs() < th)).reshape(-1)
    return idx.to(index_dtype(weight.numel()))


def radix_select_key(weights: Sequence[Tensor], k: int) -> Tuple[int, int]:
    """(key*, count of keys < key*) of the k-th smallest key over all weights (they share one dtype), by
    sorting (the op-level MSB-first radix select must agree)."""
    keys = torch.cat([abs_key(w.reshape(-1)) for w in weights])
    keys = keys[_valid(keys, weights[0].dtype)]
    if k <= 0 or k > keys.numel():
        raise ValueError(f"k must be in [1, {keys.numel()}], got {k}")
    kstar = int(torch.sort(keys).values[k - 1])
    return kstar, int((keys < kstar).sum())


def select_k(weight: Tensor, k: int) -> Tensor:
    """The k smallest |w| of one tensor, ties to the lowest flat index (a stable sort of the keys)."""
    keys = abs_key(weight.reshape(-1))
    keys = torch.where(_valid(keys, weight.dtype), keys, torch.full_like(keys, 2 ** 62))
    order = torch.sort(keys, stable=True).indices[:k]
    return torch.sort(order).values.to(index_dtype(weight.numel()))


# ---- layout helpers (§3.2) -------------------------------------------------------------------------------
def sara_row_ptr(indices: Tensor, rows: int, cols: int) -> Tensor:
    """CSR offsets [rows + 1] of sorted flat indices (int32 while k < 2^31)."""
    r = indices.to(torch.int64) // max(cols, 1)
    counts = torch.bincount(r, minlength=rows)[:rows] if indices.numel() else torch.zeros(rows, dtype=torch.int64)
    out = torch.zeros(rows + 1, dtype=torch.int64)
    out[1:] = torch.cumsum(counts, 0)
    return out.to(torch.int32 if indices.numel() < 2 ** 31 else torch.int64)


def _merged_values(weight: Tensor, indices: Tensor, base: Optional[Tensor], delta: Tensor, alpha: float) -> Tensor:
    op = opmath_dtype(weight.dtype)
    src = weight.reshape(-1)[indices.long()] if base is None else base
    if alpha == 0:  # exact restore: src itself (keeps -0, ignores NaN deltas)
        return src.clone()
    return (src.to(op) + alpha * delta.to(op)).to(weight.dtype)


def sara_scatter_(weight: Tensor, indices: Tensor, base: Optional[Tensor], delta: Tensor, alpha: float) -> None:
    """weight[idx] = RN_w(base + α·δ) (set) or RN_w(weight[idx] + α·δ) (add, base None); one rounding of an
    fp32 (fp64) sum, i.e. ``(base.float() + α·δ).to(w.dtype)``."""
    vals = _merged_values(weight, indices, base, delta, alpha)
    with torch.no_grad():
        weight[torch.unravel_index(indices.long(), weight.shape)] = vals


def sara_merge(weight: Tensor, indices: Tensor, base: Tensor, delta: Tensor, alpha: float) -> Tensor:
    """A copy of ``weight`` with the scatter applied; d_delta = α·grad[idx] (through autograd here)."""
    op = opmath_dtype(weight.dtype)
    vals = (base.to(op) + alpha * delta.to(op)).to(weight.dtype)
    return weight.detach().reshape(-1).index_put((indices.long(),), vals).view(weight.shape)


# ---- masked weight gradient (§3.3) -----------------------------------------------------------------------
def sara_sddmm(grad_out: Tensor, input: Tensor, indices: Tensor, row_ptr: Optional[Tensor], cols: int,
               deterministic: bool = False) -> Tensor:
    """dδ_j = Σ_n dY[n, r_j]·X[n, c_j]: the dense dW = dYᵀX in float64, then index_select, returned in the
    op's accumulation dtype (float32, float64 for float64)."""
    rows = grad_out.shape[1]
    dw = grad_out.double().t() @ input.double()  # [rows, cols]
    out = dw.reshape(-1).index_select(0, indices.long()) if rows * cols else torch.zeros(0, dtype=torch.float64)
    return out.to(opmath_dtype(grad_out.dtype))


def sara_conv2d_sddmm(grad_out: Tensor, input: Tensor, indices: Tensor, row_ptr: Optional[Tensor],
                      weight_shape: Sequence[int], stride: Sequence[int], padding: Sequence[int],
                      dilation: Sequence[int], groups: int, deterministic: bool = False) -> Tensor:
    """The conv weight gradient (``aten.convolution_backward``, float64) gathered at the flat indices."""
    w = torch.zeros(tuple(weight_shape), dtype=torch.float64)
    _, dw, _ = torch.ops.aten.convolution_backward(
        grad_out.double(), input.double(), w, None, list(stride), list(padding), list(dilation), False, [0, 0],
        groups, [False, True, False])
    return dw.reshape(-1).index_select(0, indices.long()).to(opmath_dtype(grad_out.dtype))


def sara_spmm(indices: Tensor, values: Tensor, row_ptr: Optional[Tensor], rows: int, cols: int, dense: Tensor,
              transpose: bool, deterministic: bool = False) -> Tensor:
    """S·D ([rows×ℓ] from [cols×ℓ]) or Sᵀ·D ([cols×ℓ] from [rows×ℓ]) with S[r_j, c_j] = values_j, dense S."""
    S = torch.zeros(rows * cols, dtype=torch.float64)
    S.index_put_((indices.long(),), values.double(), accumulate=True)
    S = S.view(rows, cols)
    out = (S.t() if transpose else S) @ dense.double()
    return out.to(values.dtype)


# ---- optimizer (§3.4) ------------------------------------------------------------------------------------
def sara_adamw_step_(deltas: List[Tensor], exp_avgs: List[Tensor], exp_avg_sqs: List[Tensor], grads: List[Tensor],
                     weights: List[Tensor], indices: List[Tensor], bases: List[Tensor], lr: float, beta1: float,
                     beta2: float, eps: float, weight_decay: float, bias_correction1: float, bias_correction2: float,
                     decay_absolute: bool, alpha: float) -> None:
    """One AdamW step per δ in the operation order of torch's ``_single_tensor_adamw``, then the write-through
    weight[idx] = RN_w(base + α·δ). Tensors are updated in place."""
    bc2_sqrt = bias_correction2 ** 0.5
    step_size = lr / bias_correction1
    with torch.no_grad():
        for d, m, v, g, w, idx, b in zip(deltas, exp_avgs, exp_avg_sqs, grads, weights, indices, bases):
            if decay_absolute:
                d.sub_((b.to(d.dtype) + d) * (lr * weight_decay))
            else:
                d.mul_(1 - lr * weight_decay)
            m.lerp_(g, 1 - beta1)
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
            denom = (v.sqrt() / bc2_sqrt).add_(eps)
            d.addcdiv_(m, denom, value=-step_size)
            op = opmath_dtype(w.dtype)
            w[torch.unravel_index(idx.long(), w.shape)] = (b.to(op) + alpha * d.to(op)).to(w.dtype)


# ---- composites (§2.4): forward + autograd through plain torch ----------------------------------------------
def _weight_with_delta(weight: Tensor, delta: Tensor, indices: Tensor) -> Tensor:
    """The weight's value, made differentiable w.r.t. δ at idx: W + scatter(δ − δ.detach()) equals W bitwise
    and its gradient w.r.t. δ is dW[idx] (index_add's backward gathers)."""
    zero = (delta - delta.detach()).to(weight.dtype)
    return weight.detach().reshape(-1).index_add(0, indices.long(), zero).view(weight.shape)


def sara_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                row_ptr: Optional[Tensor] = None, wgrad: str = "auto") -> Tensor:
    """F.linear with ``weight`` already holding W_eff; gradients reach input, bias and δ (dδ = dW[idx])."""
    return F.linear(input, _weight_with_delta(weight, delta, indices), bias)


def sara_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                row_ptr: Optional[Tensor], stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                groups: int, wgrad: str = "auto") -> Tensor:
    """F.conv2d with ``weight`` already holding W_eff; gradients reach input, bias and δ."""
    return F.conv2d(input, _weight_with_delta(weight, delta, indices), bias, tuple(stride), tuple(padding),
                    tuple(dilation), groups)
