"""SaRA layers (specs/sara.md §2.3, §3.2): ``SaRALinear``, ``SaRAConv2d`` and the ``SaRAVectorDelta``
parametrization.

Design (§3.2, merged-resident weights with exact restore): the wrapped layer's own weight holds
W_eff = W0 except at the k trainable positions, where it holds RN_w(base + α·δ). The forward is therefore the stock
dense GEMM/conv (``fastnorm.sara_linear`` / ``sara_conv2d`` run F.linear / F.conv2d on it and only route the masked
weight gradient to δ), no second dense weight ever exists, and ``unmerge()`` writes ``sara_base`` (W0[idx],
bitwise) back. Entries retired by the progressive step (§3.6) move to ``sara_frozen_*``; their W_eff stays in the
weight.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize

__all__ = ["SaRALayer", "SaRALinear", "SaRAConv2d", "SaRAVectorDelta"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _index_dtype(numel: int) -> torch.dtype:
    return torch.int32 if numel < 2 ** 31 else torch.int64


def _set_param_data(p: nn.Parameter, data: Tensor) -> None:
    """Give Parameter ``p`` new data of a possibly different shape, keeping the Python object (optimizer groups,
    state keys and schedulers keep referring to it). ``p.data = x`` is not enough when the shape changes: a leaf that
    already took part in a backward keeps its AccumulateGrad node with the old shape, and the next backward fails
    ("expected shape compatible with [old k]"). ``swap_tensors`` moves the autograd metadata out with the old data."""
    if data.shape == p.shape:
        p.data = data
        return
    new = nn.Parameter(data, requires_grad=p.requires_grad)
    try:
        torch.utils.swap_tensors(p, new)
    except RuntimeError:
        p.data = data


def _compiling() -> bool:
    try:
        return torch.compiler.is_compiling()
    except Exception:  # pragma: no cover
        return False


class _SparseState(nn.Module):
    """The k-vector state shared by the layer wrappers and the vector parametrization: ``sara_delta`` (Parameter),
    ``sara_indices``/``sara_base``, ``sara_frozen_{indices,delta,base}``, ``sara_cutoff``."""

    def _init_sparse(self, target: Tensor, indices: Tensor, base: Optional[Tensor], cutoff: float, cutoff_le: bool,
                     alpha: float, what: str) -> None:
        from ..sara import _validate_indices
        numel = target.numel()
        indices = indices.to(device=target.device)
        if indices.dtype == torch.int64 and numel < 2 ** 31:
            indices = indices.to(torch.int32)
        _validate_indices(indices, numel, what)
        flat = target.detach().reshape(-1)
        if base is None:
            base = flat.index_select(0, indices.long())
        else:
            base = base.to(device=target.device)
            if base.dtype != target.dtype or base.shape != indices.shape:
                raise ValueError(f"fastnorm.sara: {what}: base must be a [{indices.numel()}] {target.dtype} tensor, "
                                 f"got {list(base.shape)} {base.dtype}")
        ddt = _acc_dtype(target.dtype)
        self.sara_delta = nn.Parameter(torch.zeros(indices.numel(), dtype=ddt, device=target.device))
        self.register_buffer("sara_indices", indices.contiguous())
        self.register_buffer("sara_base", base.contiguous().clone())
        self.register_buffer("sara_frozen_indices", indices.new_empty(0))
        self.register_buffer("sara_frozen_delta", torch.empty(0, dtype=ddt, device=target.device))
        self.register_buffer("sara_frozen_base", torch.empty(0, dtype=target.dtype, device=target.device))
        self.register_buffer("sara_cutoff", torch.tensor(float(cutoff), dtype=torch.float64))
        self.cutoff_le = bool(cutoff_le)
        self.alpha = float(alpha)
        self.merged = True
        self.what = what

    # -- sizes ---------------------------------------------------------------------------------------------------
    @property
    def num_active(self) -> int:
        return self.sara_delta.numel()

    @property
    def num_frozen(self) -> int:
        return self.sara_frozen_indices.numel()

    def union_state(self, dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """(indices, delta, base) over active ∪ frozen, sorted by index (the adapter file's layout)."""
        d = self.sara_delta.detach()
        if dtype is not None:
            d = d.to(dtype)
        if self.num_frozen == 0:
            return self.sara_indices, d, self.sara_base
        fd = self.sara_frozen_delta.to(d.dtype)
        idx = torch.cat([self.sara_indices, self.sara_frozen_indices])
        order = torch.argsort(idx, stable=True)
        return idx[order], torch.cat([d, fd])[order], torch.cat([self.sara_base, self.sara_frozen_base])[order]

    # -- state-dict: shapes change at the progressive step ----------------------------------------------------------
    _SPARSE_KEYS = ("sara_indices", "sara_base", "sara_frozen_indices", "sara_frozen_delta", "sara_frozen_base")

    def _resize_for_load(self, state_dict, prefix) -> None:
        for name in self._SPARSE_KEYS + ("sara_delta",):
            key = prefix + name
            if key not in state_dict:
                continue
            src = state_dict[key]
            cur = getattr(self, name)
            if src.shape != cur.shape:
                new = torch.empty(src.shape, dtype=cur.dtype if name != "sara_indices" and name != "sara_frozen_indices"
                                  else src.dtype, device=cur.device)
                if name == "sara_delta":
                    _set_param_data(self.sara_delta, new)
                else:
                    setattr(self, name, new)
            elif name in ("sara_indices", "sara_frozen_indices") and src.dtype != cur.dtype:
                setattr(self, name, torch.empty(src.shape, dtype=src.dtype, device=cur.device))

    # -- progressive parameter adjustment (§3.6) ----------------------------------------------------------------------
    def _progress(self, mode: str, current: Tensor) -> Tensor:
        """Shrink (and for "reselect" extend) the active set in place. ``current``: the tensor whose never-trained
        entries hold W0. Returns the remap: for each new active entry its old position, or -1 (new entry)."""
        from ..sara import magnitude_key
        idx, d, base = self.sara_indices, self.sara_delta.data, self.sara_base
        acc = _acc_dtype(base.dtype)
        v = base.to(acc) + d.to(acc)
        c = float(self.sara_cutoff)
        keep = (v.abs() <= c) if self.cutoff_le else (v.abs() < c)
        retire = ~keep
        if bool(retire.any()):
            fi = torch.cat([self.sara_frozen_indices, idx[retire]])
            order = torch.argsort(fi, stable=True)
            self.sara_frozen_indices = fi[order].contiguous()
            self.sara_frozen_delta = torch.cat([self.sara_frozen_delta, d[retire].to(self.sara_frozen_delta.dtype)]
                                               )[order].contiguous()
            self.sara_frozen_base = torch.cat([self.sara_frozen_base, base[retire]])[order].contiguous()
        kept_pos = keep.nonzero().reshape(-1)
        new_idx, new_d, new_base = idx[keep], d[keep], base[keep]
        remap = kept_pos.to(torch.int64)
        if mode == "reselect":
            if not math.isfinite(c):
                raise ValueError(f"fastnorm.sara: {self.what}: reselect needs a finite cutoff (adapter loaded from a "
                                 f"file has none)")
            key = magnitude_key(c, current.dtype)
            if self.cutoff_le:
                key += 1
            cand, cbase = torch.ops.fastnorm.sara_select(current.detach(), key, 0, 0)
            trained = torch.cat([idx, self.sara_frozen_indices]).to(torch.int64)
            fresh = ~torch.isin(cand.to(torch.int64), trained)
            cand, cbase = cand[fresh], cbase[fresh]
            if cand.numel():
                allidx = torch.cat([new_idx, cand.to(new_idx.dtype)])
                order = torch.argsort(allidx, stable=True)
                new_idx = allidx[order]
                new_d = torch.cat([new_d, torch.zeros(cand.numel(), dtype=d.dtype, device=d.device)])[order]
                new_base = torch.cat([new_base, cbase])[order]
                remap = torch.cat([remap, torch.full((cand.numel(),), -1, dtype=torch.int64, device=remap.device)]
                                  )[order]
        self.sara_indices = new_idx.contiguous()
        self.sara_base = new_base.contiguous()
        self.sara_delta.grad = None
        _set_param_data(self.sara_delta, new_d.contiguous())  # same Parameter object: groups and schedulers keep it
        return remap


class SaRALayer(_SparseState):
    """Common part of SaRALinear / SaRAConv2d. ``base_layer`` is the original module (PEFT style)."""

    def __init__(self, base_layer: nn.Module, indices: Tensor, adapter_name: str = "default", *,
                 base: Optional[Tensor] = None, cutoff: float = math.inf, cutoff_le: bool = True, alpha: float = 1.0,
                 wgrad: str = "auto", name: Optional[str] = None):
        super().__init__()
        if not isinstance(adapter_name, str):
            raise TypeError(f"fastnorm.sara: argument 'adapter_name' must be a str, got {type(adapter_name).__name__}")
        self.base_layer = base_layer
        self.adapter_name = adapter_name
        self.is_alias = False
        self.wgrad = wgrad
        self.layer_name = name or type(base_layer).__name__
        w = base_layer.weight
        if not w.is_contiguous():  # channels_last conv weights: flat indices are row-major logical positions
            with torch.no_grad():
                w.data = w.data.contiguous()
        self._init_sparse(w, indices, base, cutoff, cutoff_le, alpha, f"layer {self.layer_name!r}")
        self.register_buffer("sara_row_ptr", self._make_row_ptr(), persistent=False)
        self._synced = None
        self._mark_synced()

    @classmethod
    def alias(cls, base_layer: nn.Module, owner: "SaRALayer", name: Optional[str] = None) -> "SaRALayer":
        """A second user of an adapted Parameter (tied weights): it runs the owner's δ, keeps no state."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.base_layer = base_layer
        self.adapter_name = owner.adapter_name
        self.is_alias = True
        self.layer_name = name or owner.layer_name
        object.__setattr__(self, "_owner_ref", owner)  # not a submodule: the state is saved once, by the owner
        return self

    @property
    def owner(self) -> "SaRALayer":
        return self._owner_ref if self.is_alias else self

    # -- geometry ----------------------------------------------------------------------------------------------------
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.base_layer.bias

    @property
    def rows(self) -> int:
        return self.base_layer.weight.shape[0]

    @property
    def cols(self) -> int:
        w = self.base_layer.weight
        return w.numel() // w.shape[0] if w.shape[0] else 0

    def _make_row_ptr(self) -> Tensor:
        return torch.ops.fastnorm.sara_row_ptr(self.sara_indices, self.rows, self.cols)

    # -- write-through ---------------------------------------------------------------------------------------------
    def _token(self):
        d = self.sara_delta
        return (d.data_ptr(), d._version, self.alpha)

    def _mark_synced(self) -> None:
        self._synced = self._token()

    def sync_(self) -> None:
        """weight[idx] = RN_w(base + α·δ) over active and frozen entries (§3.2)."""
        o = self.owner
        if self.is_alias:
            return o.sync_()
        with torch.no_grad():
            w = self.base_layer.weight.detach().view(-1)
            if o.num_active:
                torch.ops.fastnorm.sara_scatter_(w, o.sara_indices, o.sara_base, o.sara_delta.detach(), o.alpha)
            if o.num_frozen:
                torch.ops.fastnorm.sara_scatter_(w, o.sara_frozen_indices, o.sara_frozen_base, o.sara_frozen_delta,
                                                 o.alpha)
        o.merged = True
        o._mark_synced()

    def merge(self) -> None:
        self.sync_()

    def unmerge(self) -> None:
        """Write W0 back at every adapted position, bitwise (index_copy_ of ``sara_base``)."""
        o = self.owner
        if self.is_alias:
            return o.unmerge()
        with torch.no_grad():
            w = self.base_layer.weight.detach().view(-1)
            if o.num_active:
                w.index_copy_(0, o.sara_indices.long(), o.sara_base)
            if o.num_frozen:
                w.index_copy_(0, o.sara_frozen_indices.long(), o.sara_frozen_base)
        o.merged = False

    def set_scale(self, alpha: float) -> None:
        self.owner.alpha = float(alpha)
        if self.owner.merged:
            self.owner.sync_()

    def _check_stale(self) -> None:
        o = self.owner
        if o._synced != o._token():
            o.sync_()

    def _check_weight(self) -> None:
        if self.base_layer.weight.requires_grad:
            raise RuntimeError(f"fastnorm.sara: layer {self.layer_name!r}: the adapted weight has requires_grad=True; "
                               f"SaRA trains only sara_delta (the weight holds W_eff and must stay frozen)")

    def _use_op(self) -> bool:
        o = self.owner
        if not o.merged:
            return False
        if not _compiling():
            self._check_stale()
        return torch.is_grad_enabled() and o.sara_delta.requires_grad

    @staticmethod
    def _autocast(x: Tensor, w: Tensor, b: Optional[Tensor]):
        dev = x.device.type
        if torch.is_autocast_enabled(dev):
            dt = torch.get_autocast_dtype(dev)
            return x.to(dt), w.to(dt), (b.to(dt) if b is not None else None), dev
        return x, w, b, None

    # -- unwrap / dtype moves ----------------------------------------------------------------------------------------
    def unwrap(self) -> nn.Module:
        return self.base_layer

    def _apply(self, fn, recurse=True):
        if self.is_alias:
            return super()._apply(fn, recurse)
        keep = {"sara_delta": self.sara_delta.data, "sara_frozen_delta": self.sara_frozen_delta,
                "sara_cutoff": self.sara_cutoff}
        grad = self.sara_delta.grad
        super()._apply(fn, recurse)
        w = self.base_layer.weight
        want = _acc_dtype(w.dtype)
        # δ keeps fp32 (fp64 for fp64 weights) through model.half()/.bfloat16(): restore from the pre-move copies
        # so no precision is lost in a round trip through the low dtype.
        self.sara_delta.data = keep["sara_delta"].to(device=w.device, dtype=want)
        if grad is not None:
            self.sara_delta.grad = grad.to(device=w.device, dtype=want)
        self.sara_frozen_delta = keep["sara_frozen_delta"].to(device=w.device, dtype=want)
        self.sara_cutoff = keep["sara_cutoff"].to(device=w.device, dtype=torch.float64)
        if self.sara_base.dtype != w.dtype:
            self.sara_base = self.sara_base.to(w.dtype)
            self.sara_frozen_base = self.sara_frozen_base.to(w.dtype)
        if self.merged:
            self.sync_()
        return self

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if not self.is_alias:
            self._resize_for_load(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if not self.is_alias:
            from ..sara import _validate_indices
            n = self.base_layer.weight.numel()
            _validate_indices(self.sara_indices, n, f"layer {self.layer_name!r} (loaded sara_indices)")
            _validate_indices(self.sara_frozen_indices, n, f"layer {self.layer_name!r} (loaded sara_frozen_indices)")
            self.sara_row_ptr = self._make_row_ptr()
            self._synced = None  # the next forward (or SaRA.step) rewrites the weight from base + α·δ

    def _progress(self, mode: str, current: Optional[Tensor] = None) -> Tensor:
        remap = super()._progress(mode, self.base_layer.weight if current is None else current)
        self.sara_row_ptr = self._make_row_ptr()
        self._mark_synced()
        return remap

    def extra_repr(self) -> str:
        if self.is_alias:
            return f"alias of {self.owner.layer_name!r}"
        n = self.base_layer.weight.numel()
        return (f"k_active={self.num_active}, k_frozen={self.num_frozen}, density={self.num_active / max(n, 1):.4g}, "
                f"alpha={self.alpha}, wgrad={self.wgrad!r}, merged={self.merged}")


class SaRALinear(SaRALayer):
    """nn.Linear with a SaRA sparse delta (rows = out_features, cols = in_features)."""

    def __init__(self, base_layer: nn.Linear, indices: Tensor, adapter_name: str = "default", **kw):
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"fastnorm.sara.SaRALinear: base_layer must be an nn.Linear, got "
                            f"{type(base_layer).__name__}")
        super().__init__(base_layer, indices, adapter_name, **kw)

    def forward(self, x: Tensor) -> Tensor:
        self._check_weight()
        if not self._use_op():
            return self.base_layer(x)
        o = self.owner
        x, w, b, dev = self._autocast(x, self.base_layer.weight, self.base_layer.bias)
        if dev is None:
            return torch.ops.fastnorm.sara_linear(x, w, b, o.sara_delta, o.sara_indices, o.sara_row_ptr, o.wgrad)
        with torch.autocast(dev, enabled=False):
            return torch.ops.fastnorm.sara_linear(x, w, b, o.sara_delta, o.sara_indices, o.sara_row_ptr, o.wgrad)


class SaRAConv2d(SaRALayer):
    """nn.Conv2d with a SaRA sparse delta (rows = out_channels, cols = in_channels/groups·kh·kw)."""

    def __init__(self, base_layer: nn.Conv2d, indices: Tensor, adapter_name: str = "default", **kw):
        if not isinstance(base_layer, nn.Conv2d):
            raise TypeError(f"fastnorm.sara.SaRAConv2d: base_layer must be an nn.Conv2d, got "
                            f"{type(base_layer).__name__}")
        super().__init__(base_layer, indices, adapter_name, **kw)

    def _padding(self, x: Tensor) -> Tuple[Tensor, list]:
        m = self.base_layer
        if m.padding_mode != "zeros":
            return F.pad(x, m._reversed_padding_repeated_twice, mode=m.padding_mode), [0, 0]
        if isinstance(m.padding, str):
            if m.padding == "valid":
                return x, [0, 0]
            tot = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
            if all(t % 2 == 0 for t in tot):
                return x, [t // 2 for t in tot]
            return F.pad(x, m._reversed_padding_repeated_twice), [0, 0]  # asymmetric 'same', as nn.Conv2d does
        return x, list(m.padding)

    def forward(self, x: Tensor) -> Tensor:
        self._check_weight()
        if not self._use_op():
            return self.base_layer(x)
        o = self.owner
        m = self.base_layer
        x, pad = self._padding(x)
        x, w, b, dev = self._autocast(x, m.weight, m.bias)
        args = (x, w, b, o.sara_delta, o.sara_indices, o.sara_row_ptr, list(m.stride), pad, list(m.dilation),
                m.groups, o.wgrad)
        if dev is None:
            return torch.ops.fastnorm.sara_conv2d(*args)
        with torch.autocast(dev, enabled=False):
            return torch.ops.fastnorm.sara_conv2d(*args)


class SaRAVectorDelta(_SparseState):
    """Parametrization of a masked 1-D tensor (``bias``/``norms="sara"``): returns ``sara_merge(X, idx, base, δ, α)``,
    a small fresh copy of the vector with the k adapted entries written (d_delta = α·grad[idx])."""

    def __init__(self, target: Tensor, indices: Tensor, base: Optional[Tensor] = None, *, alpha: float = 1.0,
                 cutoff: float = math.inf, cutoff_le: bool = False, what: str = "vector"):
        super().__init__()
        self._init_sparse(target, indices, base, cutoff, cutoff_le, alpha, what)

    @classmethod
    def register(cls, module: nn.Module, name: str, indices: Tensor, base: Optional[Tensor] = None, *,
                 alpha: float = 1.0, cutoff: float = math.inf, cutoff_le: bool = False) -> "SaRAVectorDelta":
        t = getattr(module, name)
        p = cls(t, indices, base, alpha=alpha, cutoff=cutoff, cutoff_le=cutoff_le,
                what=f"{type(module).__name__}.{name}")
        parametrize.register_parametrization(module, name, p, unsafe=True)
        return p

    def forward(self, X: Tensor) -> Tensor:
        if not self.merged or self.num_active + self.num_frozen == 0:
            return X
        out = X
        if self.num_frozen:
            out = torch.ops.fastnorm.sara_merge(out, self.sara_frozen_indices, self.sara_frozen_base,
                                                self.sara_frozen_delta, self.alpha)
        if self.num_active:
            out = torch.ops.fastnorm.sara_merge(out, self.sara_indices, self.sara_base, self.sara_delta, self.alpha)
        return out

    def sync_(self) -> None:
        self.merged = True

    def merge(self) -> None:
        self.merged = True

    def unmerge(self) -> None:
        self.merged = False

    def set_scale(self, alpha: float) -> None:
        self.alpha = float(alpha)

    def _apply(self, fn, recurse=True):
        keep = (self.sara_delta.data, self.sara_frozen_delta, self.sara_cutoff)
        super()._apply(fn, recurse)
        dev = self.sara_base.device
        want = _acc_dtype(self.sara_base.dtype)
        self.sara_delta.data = keep[0].to(device=dev, dtype=want)
        self.sara_frozen_delta = keep[1].to(device=dev, dtype=want)
        self.sara_cutoff = keep[2].to(device=dev, dtype=torch.float64)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args):
        self._resize_for_load(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args)
