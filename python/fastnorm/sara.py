"""``fastnorm.sara``: SaRA sparse fine-tuning at the model level (specs/sara.md §2.1, §2.2, §3.1, §3.7).

``SaRAConfig`` (the PEFT-style config written as ``adapter_config.json``), target-module rules, the streamed
index selection over a model (threshold / density / budget / lora_rank), and the module-level functions
``get_sara_model``, ``select_indices``, ``merge_adapter`` and ``load_adapter_state``. The optimizer,
``fastnorm.sara.SaRA``, lives in ``fastnorm.optim.sara`` and is re-exported here lazily (the two modules import
each other).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["SaRA", "SaRAConfig", "get_sara_model", "select_indices", "merge_adapter", "load_adapter_state",
           "ADAPTER_CONFIG_NAME", "ADAPTER_WEIGHTS_NAME", "ADAPTER_WEIGHTS_NAME_PT"]

ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ADAPTER_WEIGHTS_NAME_PT = "adapter_model.bin"  # torch.save of the same dict when safetensors is missing
FORMAT = "fastnorm-sara"
FORMAT_VERSION = 1

_BIAS_MODES = ("none", "sara", "all")
_WGRAD = ("auto", "sddmm", "dense")
_RANK_METHODS = ("sketch", "svd")
_RANK_LAYERS = ("one", "all")
_RANK_TARGETS = ("delta", "masked_weight")
_PPA_MODES = ("intersect", "reselect")
_SCOPES = ("layer", "global")


def __getattr__(name):  # lazy re-export: fastnorm.optim.sara imports this module
    if name == "SaRA":
        from .optim.sara import SaRA
        return SaRA
    raise AttributeError(f"module 'fastnorm.sara' has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------------------------
# Config (§2.2)
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class SaRAConfig:
    """Every SaRA knob, PEFT style. At most one of threshold / density / budget / lora_rank may be set; with none
    set, ``threshold`` resolves to 2e-3 (the official default of the paper's experiments)."""
    threshold: Optional[float] = None
    density: Optional[float] = None
    budget: Optional[int] = None
    lora_rank: Optional[int] = None
    lora_rank_scope: str = "layer"
    target_modules: Optional[Union[str, List[str]]] = None
    exclude_modules: Optional[Union[str, List[str]]] = None
    modules_to_save: Optional[Union[str, List[str]]] = None
    bias: str = "none"
    norms: str = "none"
    alpha: float = 1.0
    wgrad: str = "auto"
    lambda_rank: float = 5e-4
    rank_method: str = "sketch"
    rank_q: int = 8
    rank_oversample: int = 4
    rank_power_iters: int = 1
    rank_layers: str = "one"
    rank_interval: int = 1
    rank_min_dim: int = 64
    rank_include_conv: bool = False
    rank_target: str = "delta"
    progressive_step: Optional[Union[float, int]] = 0.5
    progressive_mode: str = "intersect"
    seed: int = 0

    def __post_init__(self):
        self.validate()

    # -- selectors ---------------------------------------------------------------------------------------------
    @property
    def mode(self) -> str:
        """"threshold", "density", "budget", "lora_rank" (per layer) or "lora_rank_global"."""
        if self.density is not None:
            return "density"
        if self.budget is not None:
            return "budget"
        if self.lora_rank is not None:
            return "lora_rank_global" if self.lora_rank_scope == "global" else "lora_rank"
        return "threshold"

    @property
    def effective_threshold(self) -> Optional[float]:
        if self.mode != "threshold":
            return None
        return 2e-3 if self.threshold is None else float(self.threshold)

    def validate(self) -> None:
        set_ = [n for n in ("threshold", "density", "budget", "lora_rank") if getattr(self, n) is not None]
        if len(set_) > 1:
            raise ValueError(f"fastnorm.sara.SaRAConfig: at most one of threshold/density/budget/lora_rank may be "
                             f"set, got {', '.join(set_)}")
        if self.threshold is not None:
            t = self.threshold
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (t > 0) or math.isinf(t):
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'threshold' must be a finite float > 0, "
                                 f"got {t!r}")
        if self.density is not None:
            d = self.density
            if isinstance(d, bool) or not isinstance(d, (int, float)) or not (0.0 < d <= 1.0):
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'density' must be in (0, 1], got {d!r}")
        for name in ("budget", "lora_rank"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{name}' must be an int >= 1, got {v!r}")
        _choice("lora_rank_scope", self.lora_rank_scope, _SCOPES)
        _choice("bias", self.bias, _BIAS_MODES)
        _choice("norms", self.norms, _BIAS_MODES)
        _choice("wgrad", self.wgrad, _WGRAD)
        _choice("rank_method", self.rank_method, _RANK_METHODS)
        _choice("rank_layers", self.rank_layers, _RANK_LAYERS)
        _choice("rank_target", self.rank_target, _RANK_TARGETS)
        _choice("progressive_mode", self.progressive_mode, _PPA_MODES)
        if "sara" in (self.bias, self.norms) and self.mode != "threshold":
            which = "bias" if self.bias == "sara" else "norms"
            raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{which}'='sara' needs threshold mode (a masked "
                             f"1-D tensor has no rows/cols budget), got mode {self.mode!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)):
            raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'alpha' must be a finite float, got {self.alpha!r}")
        if not (self.lambda_rank >= 0 and math.isfinite(self.lambda_rank)):
            raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'lambda_rank' must be >= 0, got {self.lambda_rank!r}")
        for name in ("rank_q", "rank_power_iters", "rank_interval"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{name}' must be an int >= 1, got {v!r}")
        for name in ("rank_oversample", "rank_min_dim"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{name}' must be an int >= 0, got {v!r}")
        p = self.progressive_step
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'progressive_step' must be a float in (0, 1), "
                                 f"an int >= 1 or None, got {p!r}")
            if isinstance(p, float) and not (0.0 < p < 1.0):
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'progressive_step' as a float is a fraction of "
                                 f"total_steps and must be in (0, 1), got {p!r}")
            if isinstance(p, int) and p < 1:
                raise ValueError(f"fastnorm.sara.SaRAConfig: argument 'progressive_step' as an int must be >= 1, "
                                 f"got {p!r}")
        for name in ("target_modules", "exclude_modules", "modules_to_save"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                if not all(isinstance(s, str) for s in v):
                    raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{name}' must be a str or a list of str, "
                                     f"got {v!r}")
                setattr(self, name, list(v))

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "SaRAConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def save_pretrained(self, directory: str, **extra) -> None:
        os.makedirs(directory, exist_ok=True)
        d = self.to_dict()
        d.update(extra)
        with open(os.path.join(directory, ADAPTER_CONFIG_NAME), "w") as f:
            json.dump(d, f, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, directory: str) -> "SaRAConfig":
        with open(os.path.join(directory, ADAPTER_CONFIG_NAME)) as f:
            return cls.from_dict(json.load(f))


def _choice(name, value, allowed):
    if value not in allowed:
        raise ValueError(f"fastnorm.sara.SaRAConfig: argument '{name}' must be one of {allowed}, got {value!r}")


# ---------------------------------------------------------------------------------------------------------------
# Target rules (PEFT conventions)
# ---------------------------------------------------------------------------------------------------------------
def _matches(rule, name: str) -> bool:
    """PEFT's rule: a str is a full-match regex, a list matches an exact name or a '.'-suffix."""
    if rule is None:
        return False
    if isinstance(rule, str):
        return re.fullmatch(rule, name) is not None
    return any(name == key or name.endswith("." + key) for key in rule)


def _is_norm(m: nn.Module) -> bool:
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)) or \
        (hasattr(nn, "RMSNorm") and isinstance(m, nn.RMSNorm)) or "Norm" in type(m).__name__


def _output_layer(model: nn.Module):
    get = getattr(model, "get_output_embeddings", None)
    if callable(get):
        try:
            return get()
        except Exception:
            return None
    return None


def find_targets(model: nn.Module, config: SaRAConfig) -> Tuple[List[Tuple[str, nn.Module]], List[Tuple[str, nn.Module]]]:
    """(targets, modules_to_save) in module order, each a list of (qualified name, module).

    ``target_modules=None``: every nn.Linear / nn.Conv2d (children of nn.MultiheadAttention skipped with a warning,
    since MHA reads ``out_proj.weight`` directly); ``"all-linear"``: every nn.Linear except the output layer;
    otherwise PEFT rules. A matched module of another type raises TypeError naming it."""
    from .nn.sara import SaRALayer
    save: List[Tuple[str, nn.Module]] = []
    save_prefixes: List[str] = []
    mha_children = set()
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            for cname, c in m.named_modules():
                if cname:
                    mha_children.add(f"{name}.{cname}" if name else cname)
    for name, m in model.named_modules():
        if name and _matches(config.modules_to_save, name) and not any(name.startswith(p + ".") for p in save_prefixes):
            save.append((name, m))
            save_prefixes.append(name)
    out = []
    warned = False
    out_layer = _output_layer(model)
    tm = config.target_modules
    for name, m in model.named_modules():
        if not name:
            continue
        if isinstance(m, SaRALayer):
            raise ValueError(f"fastnorm.sara: module {name!r} is already wrapped by SaRA (one active adapter in v1)")
        if name in save_prefixes or any(name.startswith(p + ".") for p in save_prefixes):
            continue
        if _matches(config.exclude_modules, name):
            continue
        if tm is None:
            hit = isinstance(m, (nn.Linear, nn.Conv2d))
            if hit and name in mha_children:
                if not warned:
                    warnings.warn(f"fastnorm.sara: skipping {name!r} (and other nn.MultiheadAttention children): "
                                  f"MultiheadAttention reads its weights directly, SaRA cannot wrap them", stacklevel=3)
                    warned = True
                continue
        elif tm == "all-linear":
            hit = isinstance(m, nn.Linear) and m is not out_layer and name not in mha_children
        else:
            hit = _matches(tm, name)
            if hit and (isinstance(m, nn.MultiheadAttention) or name in mha_children):
                raise TypeError(f"fastnorm.sara: target module {name!r} belongs to nn.MultiheadAttention, which reads "
                                f"in_proj_weight/out_proj.weight directly; SaRA cannot adapt it")
        if not hit:
            continue
        if not isinstance(m, (nn.Linear, nn.Conv2d)):
            raise TypeError(f"fastnorm.sara: target module {name!r} has unsupported type {type(m).__name__} "
                            f"(expected nn.Linear or nn.Conv2d)")
        out.append((name, m))
    if tm is not None and tm != "all-linear" and not out:
        raise ValueError(f"fastnorm.sara: target_modules={tm!r} matched no module of the model")
    return out, save


# ---------------------------------------------------------------------------------------------------------------
# Magnitude keys and selection (§3.1)
# ---------------------------------------------------------------------------------------------------------------
_INT_OF = {torch.float16: torch.int16, torch.bfloat16: torch.int16, torch.float32: torch.int32,
           torch.float64: torch.int64}


def _key_bits(dtype: torch.dtype) -> int:
    if dtype not in _INT_OF:
        raise TypeError(f"fastnorm.sara: weight dtype must be float16/bfloat16/float32/float64, got {dtype}")
    return torch.finfo(dtype).bits - 1  # sign bit cleared


def magnitude_key(value: float, dtype: torch.dtype) -> int:
    """key(|x|) of a Python float rounded to ``dtype`` (bit pattern with the sign cleared)."""
    t = torch.tensor([value], dtype=dtype)
    bits = int(t.view(_INT_OF[dtype]).to(torch.int64)[0])
    return bits & ((1 << _key_bits(dtype)) - 1)


def key_value(key: int, dtype: torch.dtype) -> float:
    """The non-negative float of ``dtype`` whose magnitude key is ``key`` (as a Python float)."""
    it = _INT_OF[dtype]
    nbits = torch.finfo(dtype).bits
    signed = key - (1 << nbits) if key >= (1 << (nbits - 1)) else key
    return float(torch.tensor([signed], dtype=torch.int64).to(it).view(dtype)[0].double())


def _flat(weight: Tensor) -> Tensor:
    return weight.detach()


def _radix_select(weights: Sequence[Tensor], k: int, what: str) -> Tuple[int, List[int], List[int]]:
    """MSB-first radix select of the k-th smallest magnitude key over ``weights`` (same dtype), streaming: each
    pass sums 256-bin histograms across the tensors, never concatenating them. Returns (key*, count_lt per tensor,
    count_eq per tensor)."""
    dtype = weights[0].dtype
    kb = _key_bits(dtype)
    total_bits = kb + 1
    keymask = (1 << kb) - 1
    shifts = list(range(total_bits - 8, -1, -8))
    prefix, mask = 0, 0
    remaining = k
    lt = [0] * len(weights)
    eq = [0] * len(weights)
    hist_op = torch.ops.fastnorm.sara_abs_histogram_
    for s in shifts:
        hists = []
        for w in weights:
            h = torch.zeros(256, dtype=torch.int64, device=w.device)
            hist_op(_flat(w), h, s, mask, prefix)
            hists.append(h)
        H = torch.stack([h.cpu() for h in hists]) if hists else torch.zeros(0, 256, dtype=torch.int64)
        tot = H.sum(0)
        cum = tot.cumsum(0)
        if int(cum[-1]) < remaining:
            raise ValueError(f"fastnorm.sara: {what} asks for {k} entries but only "
                             f"{k - remaining + int(cum[-1])} non-NaN entries exist")
        d = int(torch.searchsorted(cum, torch.tensor([remaining]), right=False)[0])
        below = int(cum[d] - tot[d])
        remaining -= below
        for i in range(len(weights)):
            lt[i] += int(H[i, :d].sum())
        prefix |= d << s
        mask |= (0xFF << s) & keymask  # keys have kb bits: the top digit's high bit never exists (fits int64)
        if s == shifts[-1]:
            eq = [int(H[i, d]) for i in range(len(weights))]
    return prefix, lt, eq


def select_indices(weight: Tensor, *, threshold: Optional[float] = None, k: Optional[int] = None
                   ) -> Tuple[Tensor, Tensor]:
    """(indices, base) of one tensor: entries with |w| < θ (θ rounded to the weight dtype) or the k smallest |w|
    (ties to the lowest flat index). Indices are sorted row-major flat positions (int32 below 2³¹ entries),
    base = w.flatten()[indices] bitwise. NaN entries are never selected."""
    if (threshold is None) == (k is None):
        raise ValueError("fastnorm.sara.select_indices: pass exactly one of 'threshold' and 'k'")
    if threshold is not None:
        if not (threshold > 0):
            raise ValueError(f"fastnorm.sara.select_indices: argument 'threshold' must be > 0, got {threshold!r}")
        return _select_lt(weight, magnitude_key(threshold, weight.dtype))
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"fastnorm.sara.select_indices: argument 'k' must be an int >= 0, got {k!r}")
    if k > weight.numel():
        raise ValueError(f"fastnorm.sara.select_indices: argument 'k' = {k} exceeds the tensor's {weight.numel()} "
                         f"entries")
    if k == 0:
        return _select_lt(weight, 0)
    key, lt, eq = _radix_select([weight], k, "select_indices")
    return torch.ops.fastnorm.sara_select(_flat(weight), key, key, k - lt[0])


def _select_lt(weight: Tensor, key_lt: int, key_eq: int = 0, quota: int = 0) -> Tuple[Tensor, Tensor]:
    return torch.ops.fastnorm.sara_select(_flat(weight), int(key_lt), int(key_eq), int(quota))


def _rows_cols(module: nn.Module) -> Tuple[int, int]:
    w = module.weight
    if isinstance(module, nn.Conv2d):
        return w.shape[0], w.shape[1] * w.shape[2] * w.shape[3]
    return w.shape[0], w.shape[1]


def _select_targets(targets: List[Tuple[str, nn.Module]], config: SaRAConfig):
    """Per target: (indices, base, cutoff float, cutoff_le bool). Streams over the target weights."""
    mode = config.mode
    ws = [m.weight for _, m in targets]
    out = []
    if mode == "threshold":
        th = config.effective_threshold
        for (name, m), w in zip(targets, ws):
            key = magnitude_key(th, w.dtype)
            idx, base = _select_lt(w, key)
            out.append((idx, base, key_value(key, w.dtype), False))
        return out
    if mode in ("density", "lora_rank"):
        for (name, m), w in zip(targets, ws):
            if mode == "density":
                k = int(math.floor(config.density * w.numel()))
            else:
                rows, cols = _rows_cols(m)
                k = config.lora_rank * (rows + cols)
            if k > w.numel():
                raise ValueError(f"fastnorm.sara: layer {name!r}: lora_rank={config.lora_rank} asks for k = r·(rows+cols)"
                                 f" = {k} entries but the weight has only {w.numel()}")
            if k == 0:
                idx, base = _select_lt(w, 0)
                out.append((idx, base, 0.0, True))
                continue
            key, lt, eq = _radix_select([w], k, f"layer {name!r}")
            idx, base = _select_lt(w, key, key, k - lt[0])
            out.append((idx, base, key_value(key, w.dtype), True))
        return out
    # global modes: one K over all targets, histograms summed per dtype group while streaming.
    if mode == "budget":
        K = config.budget
    else:
        K = sum(config.lora_rank * sum(_rows_cols(m)) for _, m in targets)
    total = sum(w.numel() for w in ws)
    if K > total:
        raise ValueError(f"fastnorm.sara: budget K = {K} exceeds the {total} entries of the target weights")
    dtypes = {w.dtype for w in ws}
    if len(dtypes) != 1:
        raise ValueError(f"fastnorm.sara: a global budget needs one weight dtype over the targets (magnitude keys are "
                         f"per format), got {sorted(str(d) for d in dtypes)}")
    key, lt, eq = _radix_select(ws, K, "the global budget")
    quota = K - sum(lt)
    for (name, m), w, e in zip(targets, ws, eq):
        q = min(quota, e)
        quota -= q
        idx, base = _select_lt(w, key, key, q)
        out.append((idx, base, key_value(key, w.dtype), True))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Wrapping (get_sara_model)
# ---------------------------------------------------------------------------------------------------------------
def _set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def get_sara_model(model: nn.Module, config: Optional[SaRAConfig] = None, *, indices: Optional[Dict[str, Tensor]] = None,
                   freeze: bool = True) -> nn.Module:
    """Wrap the target layers of ``model`` in place (SaRALinear / SaRAConv2d) and return it.

    Selection runs on the stored weights; ``indices`` (per ``{name}.weight``) skips it (loading). With ``freeze``
    every parameter except the deltas, ``modules_to_save`` and ``bias``/``norms="all"`` gets requires_grad=False.
    Vector deltas (``bias``/``norms="sara"``) are registered with ``torch.nn.utils.parametrize``."""
    from .nn.sara import SaRAConv2d, SaRALinear, SaRAVectorDelta
    config = SaRAConfig() if config is None else config
    config.validate()
    if any(type(m).__name__ in ("FullyShardedDataParallel", "FSDPModule") or hasattr(m, "_fsdp_wrapped_module")
           for m in model.modules()):
        raise NotImplementedError("fastnorm.sara: FSDP-wrapped models are not supported in v1")
    targets, save = find_targets(model, config)
    # A Parameter shared by two targets gets one adapter state: later users become aliases of the first owner.
    owners: Dict[int, int] = {}
    uniq, alias_of = [], {}
    for i, (name, m) in enumerate(targets):
        pid = id(m.weight)
        if pid in owners:
            alias_of[i] = owners[pid]
        else:
            owners[pid] = i
            uniq.append(i)
    if indices is None:
        sel = _select_targets([targets[i] for i in uniq], config)
    else:
        sel = []
        for i in uniq:
            name, m = targets[i]
            key = f"{name}.weight"
            if key not in indices:
                raise ValueError(f"fastnorm.sara: the adapter has no entry for layer {name!r} ({key}.sara_indices)")
            idx = indices[key]
            sel.append((idx, None, float("inf"), True))
    if freeze:
        for p in model.parameters():
            p.requires_grad_(False)
    wrapped: Dict[int, nn.Module] = {}
    for j, i in enumerate(uniq):
        name, m = targets[i]
        idx, base, cutoff, le = sel[j]
        cls = SaRAConv2d if isinstance(m, nn.Conv2d) else SaRALinear
        w = cls(m, idx, base=base, cutoff=cutoff, cutoff_le=le, alpha=config.alpha, wgrad=config.wgrad,
                name=name)
        wrapped[i] = w
        _set_submodule(model, name, w)
    for i, owner in alias_of.items():
        name, m = targets[i]
        cls = SaRAConv2d if isinstance(m, nn.Conv2d) else SaRALinear
        _set_submodule(model, name, cls.alias(m, wrapped[owner], name=name))
    model._sara_modules_to_save = [n for n, _ in save]
    # dense trainables
    for name, m in save:
        for p in m.parameters():
            p.requires_grad_(True)
    vec_th = config.effective_threshold
    for mode, kind in ((config.bias, "bias"), (config.norms, "norms")):
        if mode == "none":
            continue
        for path, owner, pname, t in list(_vector_params(model, kind)):
            if mode == "all":
                t.requires_grad_(True)
            elif indices is not None:
                if path not in indices:
                    raise ValueError(f"fastnorm.sara: the adapter has no entry for {path!r} ({path}.sara_indices)")
                SaRAVectorDelta.register(owner, pname, indices[path], alpha=config.alpha)
            else:
                key = magnitude_key(vec_th, t.dtype)
                idx, base = _select_lt(t, key)
                SaRAVectorDelta.register(owner, pname, idx, base, alpha=config.alpha, cutoff=key_value(key, t.dtype))
    model._sara_config = config
    model._sara_modules_to_save = [n for n, _ in save]
    return model


def unwrapped_name(name: str) -> str:
    """A qualified name in the wrapped model -> the same tensor's name in the plain model."""
    parts = [p for p in name.split(".") if p != "base_layer"]
    out = []
    i = 0
    while i < len(parts):
        if parts[i] == "parametrizations" and i + 2 < len(parts) and parts[i + 2] == "original":
            out.append(parts[i + 1])
            i += 3
            continue
        out.append(parts[i])
        i += 1
    return ".".join(out)


def _vector_params(model: nn.Module, kind: str):
    """(unwrapped path, module, param name, tensor) of biases of SaRA layers (kind "bias") or of the 1-D
    weight/bias of norm layers (kind "norms"), modules_to_save excluded."""
    from .nn.sara import SaRALayer
    seen = set()
    saved = getattr(model, "_sara_modules_to_save", None) or []
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") for s in saved):
            continue
        if kind == "bias" and isinstance(m, SaRALayer) and not m.is_alias:
            b = m.base_layer._parameters.get("bias")
            if isinstance(b, nn.Parameter) and id(b) not in seen:
                seen.add(id(b))
                yield unwrapped_name(name + ".bias"), m.base_layer, "bias", b
        elif kind == "norms" and _is_norm(m) and not isinstance(m, SaRALayer):
            for pname in ("weight", "bias"):
                t = m._parameters.get(pname)
                if isinstance(t, nn.Parameter) and t.dim() == 1 and id(t) not in seen:
                    seen.add(id(t))
                    yield unwrapped_name(f"{name}.{pname}" if name else pname), m, pname, t


# ---------------------------------------------------------------------------------------------------------------
# Adapter files (§3.7)
# ---------------------------------------------------------------------------------------------------------------
def _have_safetensors() -> bool:
    try:
        import safetensors.torch  # noqa: F401
        return True
    except Exception:
        return False


def load_adapter_state(src: Union[str, os.PathLike]) -> Tuple[Dict[str, Tensor], SaRAConfig]:
    """(tensor dict, SaRAConfig) from a directory written by ``SaRA.save_pretrained``. The returned config carries
    the raw JSON under ``config._raw`` (shapes, checksums, format)."""
    src = os.fspath(src)
    cfg_path = os.path.join(src, ADAPTER_CONFIG_NAME)
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(f"fastnorm.sara.load_adapter_state: no {ADAPTER_CONFIG_NAME} in {src!r}")
    with open(cfg_path) as f:
        raw = json.load(f)
    if raw.get("format") != FORMAT:
        raise ValueError(f"fastnorm.sara.load_adapter_state: {cfg_path} has format {raw.get('format')!r}, expected "
                         f"{FORMAT!r}")
    if int(raw.get("version", 0)) > FORMAT_VERSION:
        raise ValueError(f"fastnorm.sara.load_adapter_state: adapter version {raw.get('version')} is newer than this "
                         f"fastnorm ({FORMAT_VERSION})")
    st = os.path.join(src, ADAPTER_WEIGHTS_NAME)
    pt = os.path.join(src, ADAPTER_WEIGHTS_NAME_PT)
    if os.path.isfile(st):
        if not _have_safetensors():
            raise RuntimeError(f"fastnorm.sara.load_adapter_state: {st} needs the safetensors package")
        from safetensors.torch import load_file
        sd = load_file(st)
    elif os.path.isfile(pt):
        sd = torch.load(pt, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"fastnorm.sara.load_adapter_state: neither {ADAPTER_WEIGHTS_NAME} nor "
                                f"{ADAPTER_WEIGHTS_NAME_PT} in {src!r}")
    cfg = SaRAConfig.from_dict(raw)
    cfg._raw = raw
    return sd, cfg


def _as_state(src) -> Tuple[Dict[str, Tensor], Dict[str, Any], Optional[SaRAConfig]]:
    if isinstance(src, (str, os.PathLike)):
        sd, cfg = load_adapter_state(src)
        return sd, cfg._raw, cfg
    if isinstance(src, dict):
        return src, {}, None
    raise TypeError(f"fastnorm.sara: an adapter source must be a directory or a state dict, got {type(src).__name__}")


def _check_checksum(what: str, base: Tensor, expected, strict: bool) -> None:
    if expected is None:
        return
    count, total = int(expected[0]), float(expected[1])
    got_n = base.numel()
    got = float(base.detach().double().sum().cpu()) if got_n else 0.0
    ok = got_n == count and (got == total or abs(got - total) <= 1e-12 * max(1.0, abs(total)))
    if not ok:
        msg = (f"fastnorm.sara: base_checksum mismatch for {what}: the adapter was trained on a base with "
               f"(count {count}, sum {total!r}) at its indices, this model has (count {got_n}, sum {got!r}); "
               f"wrong base model?")
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=3)


def _sara_entries(sd: Dict[str, Tensor]) -> Dict[str, Tuple[Tensor, Tensor]]:
    out = {}
    for key, v in sd.items():
        if key.endswith(".sara_indices"):
            stem = key[: -len(".sara_indices")]
            dkey = stem + ".sara_delta"
            if dkey not in sd:
                raise ValueError(f"fastnorm.sara: adapter has {key} but no {dkey}")
            out[stem] = (v, sd[dkey])
    return out


def merge_adapter(model: nn.Module, src, alpha: float = 1.0, strict: bool = True) -> nn.Module:
    """Bake an adapter into a plain model: weight[idx] = RN_w(W + α·δ) via ``sara_scatter_`` in add mode, dense
    trainables copied. ``src``: a directory or an ``adapter_state_dict()``. A checksum mismatch raises (warns with
    ``strict=False``); a missing or non-fitting tensor raises ValueError naming it."""
    sd, raw, _ = _as_state(src)
    checks = raw.get("base_checksum", {})
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for stem, (idx, delta) in _sara_entries(sd).items():
            t = params.get(stem)
            if t is None:
                msg = f"fastnorm.sara.merge_adapter: the model has no parameter {stem!r}"
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, stacklevel=2)
                continue
            _validate_indices(idx, t.numel(), stem)
            if idx.numel() != delta.numel():
                raise ValueError(f"fastnorm.sara.merge_adapter: {stem}: {idx.numel()} indices but {delta.numel()} "
                                 f"deltas")
            idx_d = idx.to(t.device)
            _check_checksum(stem, t.detach().reshape(-1).index_select(0, idx_d.long()), checks.get(stem), strict)
            flat = t.detach().reshape(-1) if t.is_contiguous() else None
            if flat is None:
                raise ValueError(f"fastnorm.sara.merge_adapter: {stem} must be contiguous")
            dd = delta.to(device=t.device, dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)
            torch.ops.fastnorm.sara_scatter_(flat, idx_d, None, dd, float(alpha))
        for key, v in sd.items():
            if key.endswith(".sara_indices") or key.endswith(".sara_delta"):
                continue
            t = params.get(key)
            if t is None:
                buf = dict(model.named_buffers()).get(key)
                t = buf
            if t is None:
                msg = f"fastnorm.sara.merge_adapter: the model has no tensor {key!r}"
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, stacklevel=2)
                continue
            if t.shape != v.shape:
                raise ValueError(f"fastnorm.sara.merge_adapter: {key} has shape {list(t.shape)} in the model but "
                                 f"{list(v.shape)} in the adapter")
            t.copy_(v)
    return model


def _validate_indices(idx: Tensor, numel: int, what: str) -> None:
    """Sorted, unique, in range, integer, 1-D (checked once at construction and load, never per call)."""
    if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"fastnorm.sara: {what}: indices must be a 1-D int32/int64 tensor, got "
                         f"{idx.dtype} of shape {list(idx.shape)}")
    if idx.dtype == torch.int32 and numel >= 2 ** 31:
        raise ValueError(f"fastnorm.sara: {what}: int32 indices refused for a weight of {numel} >= 2^31 entries")
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= numel:
        raise ValueError(f"fastnorm.sara: {what}: indices out of range [0, {numel}): min {lo}, max {hi}")
    if idx.numel() > 1 and not bool((idx[1:] > idx[:-1]).all()):
        raise ValueError(f"fastnorm.sara: {what}: indices must be sorted and unique")
