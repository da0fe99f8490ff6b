"""``fastnorm.patch``: swap a model's norm modules for fastnorm's in place (specs/norm.md §3.10).

The replacement keeps the *same* Parameter objects, so state_dict keys, storages and an optimizer built before
patching are unaffected. Detection of Hugging Face style RMSNorms is by attributes (a 1-D ``weight`` and a float
``variance_epsilon``, nothing else), which would also catch look-alikes computing something else (Gemma's
``(1 + w)``); ``verify`` runs old and new side by side once and leaves a module alone when they disagree.
"""
import math
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .. import _build
from .norm import LayerNorm, LlamaRMSNorm, RMSNorm

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
# Hook dicts are shared (not copied) with the new module, so RemovableHandles the caller holds still work.
_HOOK_ATTRS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks",
               "_is_full_backward_hook")
_VERIFY_ROWS = 4
_VERIFY_SEED = 0x5EED


def _ulp(v: Tensor, dtype: torch.dtype) -> Tensor:
    """Spacing of ``dtype`` at magnitude ``|v|`` (float64 tensor; subnormal spacing near zero)."""
    fi = torch.finfo(dtype)
    bits = {torch.float32: 23, torch.float64: 52, torch.float16: 10, torch.bfloat16: 7}[dtype]
    v = v.abs().clamp_min(fi.tiny)
    _, e = torch.frexp(v)  # v = m * 2**e with m in [0.5, 1)
    return torch.ldexp(torch.ones_like(v), e - 1 - bits)


def _within_one_ulp(a, b) -> Tuple[bool, str]:
    """Elementwise: equal, both NaN, or ``|a - b| <= ulp_T(|b|) + 16 ulp_acc(row max)``.

    One ulp of the output dtype T is the budget for the final rounding. Two correct implementations also
    differ in how their statistics round (torch's CPU LayerNorm computes ``x*rstd - mean*rstd``, which loses
    many ulps on elements near zero; rsqrt vs 1/sqrt; summation order), by a few ulps of the accumulation
    type (float32, float64 for float64) at the row's scale: measured up to 6 over N = 8..16384, hence 16.
    A (1+w) look-alike differs by O(1) at that scale: ~10^2 ulps in bf16, ~10^7 in float32.
    """
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        return False, f"outputs are {type(a).__name__} and {type(b).__name__}"
    if a.shape != b.shape or a.dtype != b.dtype:
        return False, f"outputs differ in shape/dtype: {list(a.shape)} {a.dtype} vs {list(b.shape)} {b.dtype}"
    if a.dtype not in _DTYPES:
        return False, f"unsupported output dtype {a.dtype}"
    acc = torch.float64 if a.dtype == torch.float64 else torch.float32
    a64, b64 = a.detach().double(), b.detach().double()
    finite = torch.isfinite(a64) & torch.isfinite(b64)
    row_max = torch.where(finite, b64.abs(), torch.zeros_like(b64)).amax(-1, keepdim=True)
    tol = _ulp(b64, a.dtype) + 16 * _ulp(row_max, acc)
    diff = torch.where(finite, (a64 - b64).abs(), torch.zeros_like(a64))
    ok = (a64 == b64) | (torch.isnan(a64) & torch.isnan(b64)) | (finite & (diff <= tol))
    if bool(ok.all()):
        return True, ""
    worst = float((diff / _ulp(row_max, a.dtype)).max())
    return False, f"outputs differ by up to {worst:.3g} ulp of the row's largest magnitude"


def _supported_device(t: Tensor) -> bool:
    if t.device.type in ("cpu", "meta"):
        return True
    return t.device.type == "cuda" and _build.loaded["_C_cuda"]


def _eps_ok(eps) -> bool:
    return eps is None or (isinstance(eps, (int, float)) and not isinstance(eps, bool)
                           and math.isfinite(eps) and eps > 0)


def _is_rms_norm_like(m: torch.nn.Module) -> bool:
    w = m._parameters.get("weight")
    return (isinstance(w, torch.nn.Parameter) and w.dim() == 1
            and isinstance(getattr(m, "variance_epsilon", None), float)
            and all(k == "weight" or p is None for k, p in m._parameters.items())
            and all(b is None for b in m._buffers.values())
            and all(c is None for c in m._modules.values()))


def _build_replacement(m: torch.nn.Module, layer_norm: bool, rms_norm: bool, rms_norm_like: bool,
                       include_subclasses: bool) -> Tuple[Optional[torch.nn.Module], Optional[str]]:
    """Returns (new module, None), (None, reason to warn) or (None, None) when ``m`` is not a candidate."""
    if type(m).__module__.startswith("fastnorm."):
        return None, None  # already ours (also makes patch idempotent)

    def kind_matches(base):
        return type(m) is base or (include_subclasses and isinstance(m, base))

    if isinstance(m, torch.nn.LayerNorm):
        if not (layer_norm and kind_matches(torch.nn.LayerNorm)):
            return None, None
        kind = "layer"
    elif isinstance(m, torch.nn.RMSNorm):
        if not (rms_norm and kind_matches(torch.nn.RMSNorm)):
            return None, None
        kind = "rms"
    elif rms_norm_like and _is_rms_norm_like(m):
        kind = "llama"
    else:
        return None, None

    extra = sorted({k for k, p in m._parameters.items() if p is not None} - {"weight", "bias"}
                   | {k for k, b in m._buffers.items() if b is not None}
                   | {k for k, c in m._modules.items() if c is not None})
    if extra:  # a subclass with more state: the new module could not keep its state_dict keys
        return None, f"it has state a fastnorm module would drop: {', '.join(extra)}"
    params = [p for p in m._parameters.values() if p is not None]
    for p in params:
        if p.dtype not in _DTYPES:
            return None, f"parameter dtype {p.dtype} is not supported"
        if not _supported_device(p):
            return None, f"device {p.device} has no fastnorm kernels"
    if len({(p.dtype, p.device) for p in params}) > 1:
        return None, "weight and bias differ in dtype or device"
    eps = m.variance_epsilon if kind == "llama" else m.eps
    if not _eps_ok(eps) or (kind == "layer" and eps is None):
        return None, f"eps {eps!r} is not a finite value > 0"

    # Built on the meta device so nothing is allocated, then given the old module's Parameter objects.
    if kind == "layer":
        new = LayerNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine,
                        bias=m.bias is not None, device="meta")
        new.weight, new.bias = m.weight, m.bias
    elif kind == "rms":
        new = RMSNorm(m.normalized_shape, eps=m.eps, elementwise_affine=m.elementwise_affine, device="meta")
        new.weight = m.weight
    else:
        new = LlamaRMSNorm(m.weight.shape[0], eps=m.variance_epsilon, device="meta")
        new.weight = m.weight
    new.train(m.training)
    return new, None


def _verify(old: torch.nn.Module, new: torch.nn.Module) -> Optional[str]:
    """Runs both forwards (not __call__: hooks must not fire) on one random 4-row input; None when equal to
    1 ulp, else why not."""
    params = [p for p in new.parameters(recurse=False)]
    dtype = params[0].dtype if params else torch.get_default_dtype()
    device = params[0].device if params else torch.device("cpu")
    if device.type == "meta":
        return None
    row = tuple(new.normalized_shape) if hasattr(new, "normalized_shape") else tuple(new.weight.shape)
    # A private generator: patching must not move the global RNG state.
    gen = torch.Generator().manual_seed(_VERIFY_SEED)
    x = torch.randn((_VERIFY_ROWS,) + row, generator=gen, dtype=torch.float64).to(device=device, dtype=dtype)
    try:
        with torch.no_grad():
            ok, why = _within_one_ulp(new.forward(x), old.forward(x))
    except Exception as e:  # noqa: BLE001  (any failure means: do not swap)
        return f"verify raised {type(e).__name__}: {e}"
    return None if ok else why + ", so it does not compute the same function"


def patch(model: torch.nn.Module, *, layer_norm: bool = True, rms_norm: bool = True, rms_norm_like: bool = True,
          include_subclasses: bool = False, verify: bool = True) -> List[str]:
    """Replaces norm modules of ``model`` in place by fastnorm's; returns the qualified names replaced.

    - exact ``torch.nn.LayerNorm`` -> :class:`fastnorm.nn.LayerNorm` (``layer_norm``);
    - exact ``torch.nn.RMSNorm`` -> :class:`fastnorm.nn.RMSNorm`, casting ``gemma``, same eps incl. None (``rms_norm``);
    - any module with a 1-D Parameter ``weight``, a float attribute ``variance_epsilon`` and no other parameters,
      buffers or children -> :class:`fastnorm.nn.LlamaRMSNorm`, casting ``llama`` (``rms_norm_like``).

    Subclasses of the torch classes are skipped unless ``include_subclasses``. The new module holds the same
    Parameter objects, the ``training`` flag and the forward/backward (pre-)hooks (the hook dicts are shared, so
    existing handles still remove them). With ``verify``, old and new run once on a random 4-row input in the
    weight's dtype and device (not on meta); a difference beyond 1 ulp (spelled out in ``_within_one_ulp``)
    leaves the module in place with a warning. A module shared under several names is replaced everywhere;
    ``model`` itself is never replaced (it has no parent to hold the new module).
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastnorm.patch: model must be a torch.nn.Module, got {type(model).__name__}")
    all_names = list(model.named_modules(remove_duplicate=False))
    names: Dict[int, List[str]] = {}
    for name, mod in all_names:
        names.setdefault(id(mod), []).append(name)

    decided: Dict[int, Optional[torch.nn.Module]] = {}

    def decide(mod: torch.nn.Module) -> Optional[torch.nn.Module]:
        if id(mod) in decided:
            return decided[id(mod)]
        label = names[id(mod)][0] or "<root>"
        new, reason = _build_replacement(mod, layer_norm, rms_norm, rms_norm_like, include_subclasses)
        if new is not None and verify:
            reason = _verify(mod, new)
            if reason is not None:
                new = None
        if reason is not None:
            warnings.warn(f"fastnorm.patch: {label} ({type(mod).__name__}) left in place: {reason}", stacklevel=3)
        if new is not None:
            for attr in _HOOK_ATTRS:
                if attr in mod.__dict__:
                    setattr(new, attr, mod.__dict__[attr])
        decided[id(mod)] = new
        return new

    if _build_replacement(model, layer_norm, rms_norm, rms_norm_like, include_subclasses)[0] is not None:
        warnings.warn("fastnorm.patch: the root module is a norm and cannot be replaced in place; patch a module "
                      "that contains it", stacklevel=2)

    replaced = set()
    for parent in list(model.modules()):
        for key, child in list(parent._modules.items()):
            if child is None:
                continue
            new = decide(child)
            if new is not None:
                parent._modules[key] = new
                replaced.add(id(child))
    return [name for name, mod in all_names if id(mod) in replaced]
