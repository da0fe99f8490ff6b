"""SaRA ops (specs/sara.md §2.4, §3.1-§3.5): selection, scatter, masked weight gradients, fused sparse AdamW, spmm.

C++ kernels (``torch.ops.fastnorm.sara_*``; CPU and CUDA) get their fake (meta) functions here; the Python
composites ``sara_linear``, ``sara_conv2d`` and ``sara_merge`` are ``torch.library.custom_op``s in the same
namespace whose backward (``sara_linear_backward`` / ``sara_conv2d_backward``) computes only the k masked entries
of the weight gradient, either with the SDDMM kernels (no dense dW is ever allocated) or as dense dW then gather,
chosen by density (``wgrad="auto"``) or forced (``"sddmm"`` / ``"dense"``).

Index convention: ``indices`` are sorted, unique, row-major flat indices into the weight viewed as [rows, cols]
(Linear: [out_features, in_features]; Conv2d: [O, C/groups·kh·kw]); int32 while the weight has < 2^31 elements.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "abs_key_of", "value_of_key", "key_bits", "index_dtype",
    "sara_abs_histogram_", "radix_select", "sara_select", "select_threshold", "select_topk_smallest",
    "sara_row_ptr", "sara_scatter_", "sara_merge",
    "sara_sddmm", "sara_conv2d_sddmm", "sara_adamw_step_", "sara_spmm",
    "sara_linear", "sara_conv2d", "sara_linear_backward", "sara_conv2d_backward",
    "WGRAD_CROSSOVER", "wgrad_crossover", "resolve_wgrad",
]

ops = torch.ops.fastnorm
_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_INT_VIEW = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
             torch.float64: torch.int64}
_KEY_BITS = {torch.float16: 16, torch.bfloat16: 16, torch.float32: 32, torch.float64: 64}


def _acc(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def index_dtype(numel: int) -> torch.dtype:
    """int32 flat indices while they fit (numel < 2^31), else int64."""
    return torch.int32 if numel < 2 ** 31 else torch.int64


def key_bits(dtype: torch.dtype) -> int:
    """Bits of a magnitude key (16 for fp16/bf16, 32 for fp32, 64 for fp64)."""
    if dtype not in _KEY_BITS:
        raise TypeError(f"fastnorm.sara: dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    return _KEY_BITS[dtype]


def abs_key_of(value: float, dtype: torch.dtype) -> int:
    """Magnitude key of ``value`` rounded to ``dtype`` (how ``w.abs() < value`` compares in that dtype)."""
    bits = key_bits(dtype)
    t = torch.tensor([float(value)], dtype=torch.float64).to(dtype).view(_INT_VIEW[dtype]).to(torch.int64)
    return int(t[0]) & ((1 << (bits - 1)) - 1)


def value_of_key(key: int, dtype: torch.dtype) -> float:
    """The non-negative value of ``dtype`` whose magnitude key is ``key``."""
    bits = key_bits(dtype)
    signed = key - (1 << bits) if key >= 1 << (bits - 1) else key
    return float(torch.tensor([signed], dtype=torch.int64).to(_INT_VIEW[dtype]).view(dtype)[0].double())


def _deterministic(d: Optional[bool]) -> bool:
    return torch.are_deterministic_algorithms_enabled() if d is None else bool(d)


# ---- selection (§3.1) -----------------------------------------------------------------------------------
def sara_abs_histogram_(weight: Tensor, hist: Tensor, shift: int, prefix_mask: int, prefix: int) -> None:
    """hist[d] += #{i : (key_i & prefix_mask) == prefix and (key_i >> shift) & 255 == d} (NaN skipped).

    ``hist`` is an int64 [256] tensor on the weight's device; calls over several weights sum into it."""
    ops.sara_abs_histogram_(weight, hist, int(shift), _as_int64(prefix_mask), _as_int64(prefix))


def _as_int64(v: int) -> int:
    """A 64-bit pattern as the signed int the schema carries (the kernel reads it back as uint64)."""
    v = int(v) & ((1 << 64) - 1)
    return v - (1 << 64) if v >= 1 << 63 else v


def radix_select(weights: Sequence[Tensor], k: int) -> Tuple[int, int]:
    """MSB-first radix select of the k-th smallest magnitude key over ``weights`` (one dtype), streaming: one
    256-bin histogram pass per 8-bit digit (fp16/bf16 2 passes, fp32 4, fp64 8), summed across the weights and
    never concatenating them. Returns ``(key_star, count_lt)``: the k-th smallest key and how many keys are
    below it, so ``sara_select(w, key_star, key_star, k - count_lt)`` takes exactly k entries (ties to the lowest
    flat index, then to the earlier weight when the caller spreads the quota in module order)."""
    weights = list(weights)
    if not weights:
        raise ValueError("fastnorm.radix_select: argument 'weights' must not be empty, got []")
    dtype = weights[0].dtype
    for i, w in enumerate(weights):
        if w.dtype != dtype:
            raise TypeError(f"fastnorm.radix_select: argument 'weights' must share one dtype ({dtype}), "
                            f"got {w.dtype} at position {i}")
    bits = key_bits(dtype)
    total = sum(int(w.numel()) for w in weights)
    if not 1 <= k <= total:
        raise ValueError(f"fastnorm.radix_select: argument 'k' must be in [1, {total}], got {k}")
    device = weights[0].device
    prefix, mask, below, rank = 0, 0, 0, int(k)  # rank: 1-based rank of the wanted key among the prefix's keys
    for shift in range(bits - 8, -1, -8):
        hist = torch.zeros(256, dtype=torch.int64, device=device)
        for w in weights:
            ops.sara_abs_histogram_(w, hist, shift, _as_int64(mask), _as_int64(prefix))
        counts = hist.tolist()  # one host sync per pass (256 integers)
        run = 0
        for d in range(256):
            if run + counts[d] >= rank:
                break
            run += counts[d]
        else:  # fewer non-NaN keys than k: NaN entries are never selected
            raise ValueError(f"fastnorm.radix_select: argument 'k' exceeds the {below + run} non-NaN entries, got {k}")
        below += run
        rank -= run
        prefix |= d << shift
        mask |= 255 << shift
    return prefix, below


def sara_select(weight: Tensor, key_lt: int, key_eq: int = -1, eq_quota: int = 0) -> Tuple[Tensor, Tensor]:
    """Entries with key < key_lt plus the first ``eq_quota`` (flat order) with key == key_eq (``key_eq < 0``: none).

    Returns ``(indices, base)``: sorted flat indices (int32 below 2^31 elements, else int64) and
    ``base = weight.flatten()[indices]`` bitwise, from one order-preserving compaction pass."""
    return ops.sara_select(weight, int(key_lt), int(key_eq), int(eq_quota))


def select_threshold(weight: Tensor, threshold: float) -> Tuple[Tensor, Tensor]:
    """Threshold mode: ``nonzero(|w| < θ)`` with θ first rounded to the weight dtype; θ must be > 0."""
    threshold = float(threshold)
    if not threshold > 0:
        raise ValueError(f"fastnorm.select_threshold: argument 'threshold' must be > 0, got {threshold}")
    return ops.sara_select(weight, abs_key_of(threshold, weight.dtype), -1, 0)


def select_topk_smallest(weight: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """Exactly k entries of smallest |w| (ties to the lowest flat index) by radix select + one compaction."""
    k = int(k)
    if k < 0 or k > weight.numel():
        raise ValueError(f"fastnorm.select_topk_smallest: argument 'k' must be in [0, {weight.numel()}], got {k}")
    if k == 0:
        return ops.sara_select(weight, 0, -1, 0)
    kstar, below = radix_select([weight], k)
    return ops.sara_select(weight, kstar, kstar, k - below)


# ---- layout / write-through (§3.2) ----------------------------------------------------------------------------
def sara_row_ptr(indices: Tensor, rows: int, cols: int) -> Tensor:
    """CSR row offsets [rows + 1] of sorted flat indices (int32 while k < 2^31)."""
    return ops.sara_row_ptr(indices, int(rows), int(cols))


def sara_scatter_(weight: Tensor, indices: Tensor, base: Optional[Tensor], delta: Tensor, alpha: float = 1.0) -> None:
    """weight[idx] = RN_w(base + α·δ), or RN_w(weight[idx] + α·δ) with ``base=None`` (add mode), in place.

    One rounding of an fp32 (fp64 for fp64 weights) sum: bitwise ``(base.float() + α·δ).to(weight.dtype)``."""
    with torch.no_grad():
        ops.sara_scatter_(weight, indices, base, delta, float(alpha))


# ---- masked weight gradient (§3.3) ------------------------------------------------------------------------------
def sara_sddmm(grad_out: Tensor, input: Tensor, indices: Tensor, row_ptr: Optional[Tensor] = None,
               cols: Optional[int] = None, deterministic: Optional[bool] = None) -> Tensor:
    """out_j = Σ_n grad_out[n, r_j]·input[n, c_j] for grad_out [N, rows], input [N, cols]: the masked entries of
    dW = grad_outᵀ·input without forming dW. float32 result (float64 for float64 inputs)."""
    cols = input.shape[-1] if cols is None else int(cols)
    return ops.sara_sddmm(grad_out, input, indices, row_ptr, cols, _deterministic(deterministic))


def sara_conv2d_sddmm(grad_out: Tensor, input: Tensor, indices: Tensor, row_ptr: Optional[Tensor],
                      weight_shape: Sequence[int], stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                      dilation: Sequence[int] = (1, 1), groups: int = 1,
                      deterministic: Optional[bool] = None) -> Tensor:
    """The masked entries of the Conv2d weight gradient (implicit im2col; no dense dW)."""
    return ops.sara_conv2d_sddmm(grad_out, input, indices, row_ptr, [int(s) for s in weight_shape],
                                 _pair(stride), _pair(padding), _pair(dilation), int(groups),
                                 _deterministic(deterministic))


def sara_spmm(indices: Tensor, values: Tensor, row_ptr: Optional[Tensor], rows: int, cols: int, dense: Tensor,
              transpose: bool = False, deterministic: Optional[bool] = None) -> Tensor:
    """S·D ([rows×ℓ] from [cols×ℓ]) or, with ``transpose``, Sᵀ·D ([cols×ℓ] from [rows×ℓ]) for the sparse S with
    S[r_j, c_j] = values_j (float32/float64)."""
    return ops.sara_spmm(indices, values, row_ptr, int(rows), int(cols), dense, bool(transpose),
                         _deterministic(deterministic))


# ---- optimizer (§3.4) ---------------------------------------------------------------------------------------------
def sara_adamw_step_(deltas: Sequence[Tensor], exp_avgs: Sequence[Tensor], exp_avg_sqs: Sequence[Tensor],
                     grads: Sequence[Tensor], weights: Sequence[Tensor], indices: Sequence[Tensor],
                     bases: Sequence[Tensor], *, lr: float, beta1: float, beta2: float, eps: float,
                     weight_decay: float, bias_correction1: float, bias_correction2: float,
                     decay_absolute: bool = False, alpha: float = 1.0) -> None:
    """Fused AdamW on the k-vectors δ (in torch's ``_single_tensor_adamw`` order, fp32 math; fp64 for fp64)
    followed by the write-through weight[idx] = RN_w(base + α·δ). ``bias_correction{1,2}`` = 1 − β^step.
    All lists share one device; deltas one dtype (float32, float64 for float64 weights), weights one dtype."""
    with torch.no_grad():
        ops.sara_adamw_step_(list(deltas), list(exp_avgs), list(exp_avg_sqs), list(grads), list(weights),
                             list(indices), list(bases), float(lr), float(beta1), float(beta2), float(eps),
                             float(weight_decay), float(bias_correction1), float(bias_correction2),
                             bool(decay_absolute), float(alpha))


# ---- fake (meta) functions of the C++ ops ------------------------------------------------------------------------
def _check_indices_fake(op: str, indices: Tensor, ref: Tensor, ref_name: str) -> None:
    if indices.dtype not in (torch.int32, torch.int64):
        raise RuntimeError(f"fastnorm.{op}: argument 'indices' must be int32 or int64, got {indices.dtype}")
    if indices.dim() != 1:
        raise RuntimeError(f"fastnorm.{op}: argument 'indices' must be 1-D, got shape {list(indices.shape)}")
    if indices.device != ref.device:
        raise RuntimeError(f"fastnorm.{op}: argument 'indices' must be on {ref.device} ({ref_name}'s device), "
                           f"got {indices.device}")


def _check_float_fake(op: str, name: str, t: Tensor) -> None:
    if t.dtype not in _FLOATS:
        raise RuntimeError(f"fastnorm.{op}: argument '{name}' must be float16, bfloat16, float32 or float64, "
                           f"got {t.dtype}")


@torch.library.register_fake("fastnorm::sara_abs_histogram_")
def _(weight, hist, shift, prefix_mask, prefix):
    _check_float_fake("sara_abs_histogram_", "weight", weight)
    return None


@torch.library.register_fake("fastnorm::sara_select")
def _(weight, key_lt, key_eq, eq_quota):
    _check_float_fake("sara_select", "weight", weight)
    ctx = torch.library.get_ctx()
    k = ctx.new_dynamic_size()
    return (weight.new_empty((k,), dtype=index_dtype(weight.numel())), weight.new_empty((k,)))


@torch.library.register_fake("fastnorm::sara_row_ptr")
def _(indices, rows, cols):
    _check_indices_fake("sara_row_ptr", indices, indices, "indices")
    return indices.new_empty((rows + 1,), dtype=torch.int32 if indices.numel() < 2 ** 31 else torch.int64)


@torch.library.register_fake("fastnorm::sara_scatter_")
def _(weight, indices, base, delta, alpha):
    _check_float_fake("sara_scatter_", "weight", weight)
    _check_indices_fake("sara_scatter_", indices, weight, "weight")
    return None


@torch.library.register_fake("fastnorm::sara_sddmm")
def _(grad_out, input, indices, row_ptr, cols, deterministic):
    _check_float_fake("sara_sddmm", "grad_out", grad_out)
    _check_indices_fake("sara_sddmm", indices, grad_out, "grad_out")
    if grad_out.dim() != 2 or input.dim() != 2:
        raise RuntimeError("fastnorm.sara_sddmm: argument 'grad_out' and 'input' must be 2-D, got shapes "
                           f"{list(grad_out.shape)} and {list(input.shape)}")
    return grad_out.new_empty(indices.shape, dtype=_acc(grad_out.dtype))


@torch.library.register_fake("fastnorm::sara_conv2d_sddmm")
def _(grad_out, input, indices, row_ptr, weight_shape, stride, padding, dilation, groups, deterministic):
    _check_float_fake("sara_conv2d_sddmm", "grad_out", grad_out)
    _check_indices_fake("sara_conv2d_sddmm", indices, grad_out, "grad_out")
    return grad_out.new_empty(indices.shape, dtype=_acc(grad_out.dtype))


@torch.library.register_fake("fastnorm::sara_adamw_step_")
def _(deltas, exp_avgs, exp_avg_sqs, grads, weights, indices, bases, *args):
    n = len(deltas)
    if any(len(x) != n for x in (exp_avgs, exp_avg_sqs, grads, weights, indices, bases)):
        raise RuntimeError("fastnorm.sara_adamw_step_: argument 'deltas' and the other lists must have equal lengths")
    return None


@torch.library.register_fake("fastnorm::sara_spmm")
def _(indices, values, row_ptr, rows, cols, dense, transpose, deterministic):
    if values.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"fastnorm.sara_spmm: argument 'values' must be float32 or float64, got {values.dtype}")
    return dense.new_empty((cols if transpose else rows, dense.shape[1]))


# ---- wgrad path choice (§3.3) -------------------------------------------------------------------------------------
# Density crossovers d*: sddmm at or below, dense above. Placeholders of the spec until
# bench/python/bench_sara.py --calibrate measures them; keys (device type, dtype or None, tf32 flag or None).
WGRAD_CROSSOVER: Dict[Tuple[str, Optional[torch.dtype], Optional[bool]], float] = {
    ("cpu", None, None): 0.20,
    ("cuda", torch.bfloat16, None): 0.03,
    ("cuda", torch.float16, None): 0.03,
    ("cuda", torch.float32, True): 0.06,
    ("cuda", torch.float32, False): 0.25,
    ("cuda", torch.float64, None): 0.25,
}
_DENSE_DW_LIMIT = 1 << 30  # a dense dW above 1 GiB always takes the sddmm path
_WGRAD_MODES = ("auto", "sddmm", "dense")


def wgrad_crossover(device: torch.device, dtype: torch.dtype) -> float:
    """d*(device, dtype) from WGRAD_CROSSOVER (tests may patch the table)."""
    if device.type == "cuda":
        tf32 = torch.backends.cuda.matmul.allow_tf32 if dtype == torch.float32 else None
        return WGRAD_CROSSOVER.get(("cuda", dtype, tf32), WGRAD_CROSSOVER.get(("cuda", dtype, None), 0.03))
    return WGRAD_CROSSOVER.get((device.type, dtype, None), WGRAD_CROSSOVER[("cpu", None, None)])


def resolve_wgrad(wgrad: str, k: int, numel: int, device: torch.device, dtype: torch.dtype) -> str:
    """"sddmm" or "dense". An explicit op argument wins; "auto" defers to the env FASTNORM_SARA_WGRAD (when set),
    then to the density rule: sddmm if k/numel <= d*(device, dtype) or the dense dW would exceed 1 GiB."""
    if wgrad not in _WGRAD_MODES:
        raise ValueError(f"fastnorm.sara: argument 'wgrad' must be one of {_WGRAD_MODES}, got {wgrad!r}")
    if wgrad == "auto":
        env = os.environ.get("FASTNORM_SARA_WGRAD", "").strip().lower()
        if env:
            if env not in _WGRAD_MODES:
                raise ValueError(f"fastnorm.sara: FASTNORM_SARA_WGRAD must be one of {_WGRAD_MODES}, got {env!r}")
            wgrad = env
    if wgrad != "auto":
        return wgrad
    if numel == 0:
        return "sddmm"
    if numel * torch.empty((), dtype=dtype).element_size() > _DENSE_DW_LIMIT:
        return "sddmm"
    return "sddmm" if k / numel <= wgrad_crossover(device, dtype) else "dense"


def _pair(v) -> List[int]:
    if isinstance(v, int):
        return [v, v]
    v = [int(x) for x in v]
    return v * 2 if len(v) == 1 else v


# ---- composites (§2.4, §3.3) ----------------------------------------------------------------------------------------
def _check_composite(op: str, input: Tensor, weight: Tensor, delta: Tensor, indices: Tensor, wgrad: str) -> None:
    if wgrad not in _WGRAD_MODES:
        raise ValueError(f"fastnorm.{op}: argument 'wgrad' must be one of {_WGRAD_MODES}, got {wgrad!r}")
    if indices.dtype not in (torch.int32, torch.int64) or indices.dim() != 1:
        raise RuntimeError(f"fastnorm.{op}: argument 'indices' must be a 1-D int32/int64 tensor, got "
                           f"{indices.dtype} {list(indices.shape)}")
    if delta.dim() != 1 or delta.shape[0] != indices.shape[0]:
        raise RuntimeError(f"fastnorm.{op}: argument 'delta' must have shape [{indices.shape[0]}] (indices' length), "
                           f"got {list(delta.shape)}")
    if delta.dtype not in _FLOATS:
        raise RuntimeError(f"fastnorm.{op}: argument 'delta' must be a float tensor, got {delta.dtype}")
    for name, t in (("weight", weight), ("delta", delta), ("indices", indices)):
        if t.device != input.device:
            raise RuntimeError(f"fastnorm.{op}: argument '{name}' must be on {input.device} (input's device), "
                               f"got {t.device}")


@torch.library.custom_op("fastnorm::sara_linear", mutates_args=())
def _sara_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                 row_ptr: Optional[Tensor], wgrad: str = "auto") -> Tensor:
    _check_composite("sara_linear", input, weight, delta, indices, wgrad)
    return F.linear(input, weight, bias)


@_sara_linear.register_fake
def _(input, weight, bias, delta, indices, row_ptr, wgrad="auto"):
    _check_composite("sara_linear", input, weight, delta, indices, wgrad)
    return F.linear(input, weight, bias)


def _linear_setup(ctx, inputs, output):
    input, weight, bias, delta, indices, row_ptr, wgrad = inputs
    ctx.save_for_backward(input, weight, indices, row_ptr)
    ctx.has_bias = bias is not None
    ctx.delta_dtype = delta.dtype
    ctx.wgrad = wgrad


def sara_linear_backward(grad: Tensor, input: Tensor, weight: Tensor, indices: Tensor, row_ptr: Optional[Tensor],
                         delta_dtype: torch.dtype, wgrad: str, needs: Sequence[bool]
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(dX, db, dδ) of sara_linear; ``needs`` = (input, bias, delta) gradient flags. dδ_j = Σ_n dY[n, r_j]·X[n, c_j]
    through sara_sddmm (no dense dW) or dense dW = dYᵀX in the weight dtype then gather, per resolve_wgrad."""
    rows, cols = weight.shape
    dx = grad.matmul(weight) if needs[0] else None
    db = grad.reshape(-1, rows).sum(0) if needs[1] else None
    dd = None
    if needs[2]:
        g2 = grad.reshape(-1, rows)
        x2 = input.reshape(-1, cols)
        k = indices.shape[0]
        path = resolve_wgrad(wgrad, k, rows * cols, weight.device, weight.dtype)
        if path == "sddmm":
            dd = ops.sara_sddmm(g2, x2, indices, row_ptr, cols, torch.are_deterministic_algorithms_enabled())
        else:  # official-equivalent: dW in the weight dtype, then gather
            dd = g2.t().matmul(x2).reshape(-1).index_select(0, indices.long())
        dd = dd.to(delta_dtype)
    return dx, db, dd


def _linear_backward(ctx, grad):
    input, weight, indices, row_ptr = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the kernels have no derivative
        raise RuntimeError("fastnorm.sara_linear: double backward is not supported (create_graph=True)")
    needs = (ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[2], ctx.needs_input_grad[3])
    dx, db, dd = sara_linear_backward(grad, input, weight, indices, row_ptr, ctx.delta_dtype, ctx.wgrad, needs)
    return dx, None, db, dd, None, None, None


_sara_linear.register_autograd(_linear_backward, setup_context=_linear_setup)


def sara_linear(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                row_ptr: Optional[Tensor] = None, wgrad: str = "auto") -> Tensor:
    """F.linear(input, weight, bias) where ``weight`` already holds W_eff (W0 with RN(base + α·δ) at idx).

    ``delta`` only carries the gradient: dδ = dW[idx] (masked entries of dYᵀX), computed without the dense dW on
    the sddmm path. The weight gets no gradient; double backward raises."""
    return _sara_linear(input, weight, bias, delta, indices, row_ptr, wgrad)


@torch.library.custom_op("fastnorm::sara_conv2d", mutates_args=())
def _sara_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                 row_ptr: Optional[Tensor], stride: List[int], padding: List[int], dilation: List[int], groups: int,
                 wgrad: str = "auto") -> Tensor:
    _check_composite("sara_conv2d", input, weight, delta, indices, wgrad)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


@_sara_conv2d.register_fake
def _(input, weight, bias, delta, indices, row_ptr, stride, padding, dilation, groups, wgrad="auto"):
    _check_composite("sara_conv2d", input, weight, delta, indices, wgrad)
    return F.conv2d(input, weight, bias, stride, padding, dilation, groups)


def _conv_setup(ctx, inputs, output):
    input, weight, bias, delta, indices, row_ptr, stride, padding, dilation, groups, wgrad = inputs
    ctx.save_for_backward(input, weight, indices, row_ptr)
    ctx.bias_shape = None if bias is None else list(bias.shape)
    ctx.delta_dtype = delta.dtype
    ctx.conv = (list(stride), list(padding), list(dilation), int(groups))
    ctx.wgrad = wgrad


def sara_conv2d_backward(grad: Tensor, input: Tensor, weight: Tensor, indices: Tensor, row_ptr: Optional[Tensor],
                         stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                         delta_dtype: torch.dtype, wgrad: str, needs: Sequence[bool], bias_shape=None
                         ) -> Tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor]]:
    """(dX, db, dδ) of sara_conv2d. dX and db come from ``aten.convolution_backward`` with the weight-grad output
    masked off (cuDNN / oneDNN never form dW); dδ from sara_conv2d_sddmm, or the dense weight grad then gather."""
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    dx = db = dd = None
    if needs[0] or needs[1]:
        dx, _, db = torch.ops.aten.convolution_backward(
            grad, input, weight, bias_shape if needs[1] else None, stride, padding, dilation, False, [0, 0], groups,
            [bool(needs[0]), False, bool(needs[1])])
        dx = dx if needs[0] else None
        db = db if needs[1] else None
    if needs[2]:
        k = indices.shape[0]
        path = resolve_wgrad(wgrad, k, weight.numel(), weight.device, weight.dtype)
        if path == "sddmm":
            dd = ops.sara_conv2d_sddmm(grad, input, indices, row_ptr, list(weight.shape), stride, padding, dilation,
                                       groups, torch.are_deterministic_algorithms_enabled())
        else:
            _, dw, _ = torch.ops.aten.convolution_backward(
                grad, input, weight, None, stride, padding, dilation, False, [0, 0], groups, [False, True, False])
            dd = dw.reshape(-1).index_select(0, indices.long())
        dd = dd.to(delta_dtype)
    return dx, db, dd


def _conv_backward(ctx, grad):
    input, weight, indices, row_ptr = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: the kernels have no derivative
        raise RuntimeError("fastnorm.sara_conv2d: double backward is not supported (create_graph=True)")
    stride, padding, dilation, groups = ctx.conv
    needs = (ctx.needs_input_grad[0], ctx.bias_shape is not None and ctx.needs_input_grad[2], ctx.needs_input_grad[3])
    dx, db, dd = sara_conv2d_backward(grad, input, weight, indices, row_ptr, stride, padding, dilation, groups,
                                      ctx.delta_dtype, ctx.wgrad, needs, ctx.bias_shape)
    return dx, None, db, dd, None, None, None, None, None, None, None


_sara_conv2d.register_autograd(_conv_backward, setup_context=_conv_setup)


def sara_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], delta: Tensor, indices: Tensor,
                row_ptr: Optional[Tensor] = None, stride: Sequence[int] = (1, 1), padding: Sequence[int] = (0, 0),
                dilation: Sequence[int] = (1, 1), groups: int = 1, wgrad: str = "auto") -> Tensor:
    """F.conv2d with ``weight`` already holding W_eff; dδ = masked entries of the conv weight gradient
    (weight viewed as [O, C/groups·kh·kw]). ``padding`` is symmetric per dim (pad asymmetrically with F.pad first)."""
    return _sara_conv2d(input, weight, bias, delta, indices, row_ptr, _pair(stride), _pair(padding), _pair(dilation),
                        int(groups), wgrad)


@torch.library.custom_op("fastnorm::sara_merge", mutates_args=())
def _sara_merge(weight: Tensor, indices: Tensor, base: Tensor, delta: Tensor, alpha: float) -> Tensor:
    out = weight.clone()
    ops.sara_scatter_(out, indices, base, delta, alpha)
    return out


@_sara_merge.register_fake
def _(weight, indices, base, delta, alpha):
    return torch.empty_like(weight)


def _merge_setup(ctx, inputs, output):
    weight, indices, base, delta, alpha = inputs
    ctx.save_for_backward(indices)
    ctx.alpha = float(alpha)
    ctx.meta = (weight.dtype, base.dtype, delta.dtype)


def _merge_backward(ctx, grad):
    (indices,) = ctx.saved_tensors
    w_dtype, b_dtype, d_dtype = ctx.meta
    g_idx = grad.reshape(-1).index_select(0, indices.long())
    dw = dbase = dd = None
    if ctx.needs_input_grad[0]:  # entries at idx were overwritten
        dw = grad.reshape(-1).index_fill(0, indices.long(), 0).view(grad.shape).to(w_dtype)
    if ctx.needs_input_grad[2]:
        dbase = g_idx.to(b_dtype)
    if ctx.needs_input_grad[3]:
        dd = (g_idx.to(_acc(d_dtype)) * ctx.alpha).to(d_dtype)
    return dw, None, dbase, dd, None


_sara_merge.register_autograd(_merge_backward, setup_context=_merge_setup)


def sara_merge(weight: Tensor, indices: Tensor, base: Tensor, delta: Tensor, alpha: float = 1.0) -> Tensor:
    """A copy of ``weight`` with weight[idx] = RN_w(base + α·δ) (a small fresh tensor, e.g. for a masked bias).
    d_delta = α·grad[idx]."""
    return _sara_merge(weight, indices, base, delta, float(alpha))
