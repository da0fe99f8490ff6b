"""``fastnorm.optim.Lion``: the Lion optimizer on top of the fused ``lion_step_`` op (specs/lion.md §2.2, §3).

The optimizer owns the policy (groups, lazy state, AMP, SR step counter, state_dict interchange with
lucidrains' ``lion-pytorch`` and timm); the arithmetic is the op's. Params the op cannot take (other devices or
dtypes, or ``foreach=True``) run a pure-torch path with the same rounding order (§3.1).
"""
from __future__ import annotations

import math
import struct
import warnings
from copy import deepcopy
from itertools import chain
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor
from torch.optim.optimizer import Optimizer

__all__ = ["Lion"]

_DECAY_MODES = ("paper", "decoupled", "corrected", "fixed")
_DECAY_POWER = {"paper": 1, "decoupled": 1, "corrected": 2, "fixed": 0}
_NAN_POLICIES = ("propagate", "torch")
_FUSED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_LOW = (torch.bfloat16, torch.float16)
_TIMM_KEYS = ("caution", "corrected_weight_decay", "max_lr_snapshot")


def _is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except Exception:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def _dtype_name(dt) -> Optional[str]:
    if dt is None:
        return None
    if isinstance(dt, str):
        name = dt[6:] if dt.startswith("torch.") else dt
        dt = getattr(torch, name, None)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"Invalid state_dtype: {name!r}")
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"Invalid state_dtype: {dt!r}")
    if dt not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise ValueError(f"Invalid state_dtype: {dt} (expected a floating dtype)")
    return str(dt).replace("torch.", "")


def _fused_op():
    """The functional op, or None when this build does not have it."""
    try:
        from ..ops.lion import lion_step_
    except Exception:
        return None
    if not hasattr(torch.ops.fastnorm, "lion_step_"):
        return None
    return lion_step_


_FUSED = []  # cache: [callable or None]


def _get_fused():
    if not _FUSED:
        _FUSED.append(_fused_op())
    return _FUSED[0]


def _fused_supported(p: Tensor) -> bool:
    dt = p.dtype
    if p.is_complex():
        dt = {torch.complex64: torch.float32, torch.complex128: torch.float64}.get(dt)
    return dt in _FUSED_DTYPES and p.device.type in ("cpu", "cuda") and not p.is_sparse


class Lion(Optimizer):
    r"""Lion (Chen et al. 2023, arXiv:2302.06675) with fused multi-tensor kernels (specs/lion.md).

    Per element: ``c = β1·m + (1−β1)·g``, ``p ← p·(1−δ) − lr·sign(c)``, ``m ← β2·m + (1−β2)·g``, with δ from
    ``decay_mode``: "paper" lr·λ, "decoupled" lr·λ/decay_ref_lr (lucidrains), "corrected" lr²·λ/decay_ref_lr
    (timm), "fixed" λ. ``decay_ref_lr`` defaults to the constructor lr for every group.

    Args:
        params: iterable of params or param groups.
        lr: learning rate, a float or a one-element floating tensor (use a tensor under ``torch.compile`` and
            CUDA graphs: schedulers ``fill_`` it in place, so nothing recompiles).
        betas: (β1, β2), each in [0, 1).
        weight_decay: λ ≥ 0.
        decay_mode, decay_ref_lr: see above.
        cautious, cautious_min_frac: timm-normalised cautious masking (arXiv:2411.16085).
        stochastic_rounding, sr_seed: stochastic rounding of bf16 params (Philox4x32-10, seeded by ``sr_seed`` and
            the group's ``sr_step`` counter, identical on every DDP rank by default).
        master_weights: keep an fp32 ``master_param`` for bf16/fp16 params.
        state_dtype: dtype of ``exp_avg``; None gives fp32 for bf16/fp16 params and the param dtype otherwise.
        nan_policy: "propagate" (a NaN momentum makes the weight NaN) or "torch" (sign(NaN) = 0, torch.sign).
        maximize: maximise the objective.
        foreach, fused: path selection (``fused=None``: the fastnorm op where every param is a floating CPU/CUDA
            tensor; ``foreach=True``: the pure-torch path).
        capturable: CUDA-graph safe (params on CUDA, tensor lr on the device, ``sr_step`` on the device).
        decoupled_weight_decay, caution, corrected_weight_decay: lucidrains / timm aliases.

    .. warning::
        **Plain bf16 training stalls.** With bf16 params and round-to-nearest, a weight moves only when
        lr ≥ ulp(p)/2: at lr = 1e-4 weights with |p| ≳ 0.03 never change, and a decay factor 1 − 1e-5 rounds to 1,
        silently. Use ``master_weights=True`` (fp32 master copy, 20 B/param) or ``stochastic_rounding=True``
        (unbiased rounding, 14 B/param) for bf16 params.

    Notes:
        * ``step()`` has no ``grad_scaler`` argument; with every group on the fused op,
          ``_step_supports_amp_scaling`` is True and ``torch.amp.GradScaler`` hands ``grad_scale`` /
          ``found_inf`` to the op (grads are unscaled in-kernel and **not** written back: ``.grad`` read after
          ``scaler.step`` is still scaled).
        * Complex params are updated through ``view_as_real`` (timm semantics); DTensor params (FSDP2) through
          ``to_local()``, so cautious counts are per local shard.
        * ``state_dict()`` adds timm's ``caution`` / ``corrected_weight_decay`` / ``max_lr_snapshot`` keys to each
          group; ``load_state_dict`` keeps fp32 state for bf16 params (torch's would cast it to bf16) and accepts
          lucidrains' and timm's dicts.
    """

    def __init__(self, params, lr=1e-4, betas: Tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0, *,
                 decay_mode: str = "paper", decay_ref_lr: Optional[float] = None, cautious: bool = False,
                 cautious_min_frac: float = 1e-3, stochastic_rounding: bool = False, sr_seed: int = 0,
                 master_weights: bool = False, state_dtype=None, nan_policy: str = "propagate",
                 maximize: bool = False, foreach: Optional[bool] = None, fused: Optional[bool] = None,
                 capturable: bool = False, decoupled_weight_decay: Optional[bool] = None,
                 caution: Optional[bool] = None, corrected_weight_decay: Optional[bool] = None):
        # ---- peer aliases (§2.2) ----
        if decoupled_weight_decay is not None:
            if decoupled_weight_decay and decay_mode == "paper":
                decay_mode = "decoupled"
            elif bool(decoupled_weight_decay) != (decay_mode == "decoupled"):
                raise ValueError(f"decoupled_weight_decay={decoupled_weight_decay} contradicts "
                                 f"decay_mode={decay_mode!r}")
        if corrected_weight_decay is not None:
            if corrected_weight_decay and decay_mode == "paper":
                decay_mode = "corrected"
            elif bool(corrected_weight_decay) != (decay_mode == "corrected"):
                raise ValueError(f"corrected_weight_decay={corrected_weight_decay} contradicts "
                                 f"decay_mode={decay_mode!r}")
        if caution is not None:
            if caution and not cautious:
                cautious = True
            elif bool(caution) != bool(cautious):
                raise ValueError(f"caution={caution} contradicts cautious={cautious}")

        # ---- validation (§2.2) ----
        if isinstance(lr, Tensor):
            if lr.numel() != 1 or not lr.is_floating_point():
                raise ValueError(f"Invalid learning rate: a tensor lr must hold one floating element, got "
                                 f"shape {list(lr.shape)} and dtype {lr.dtype}")
            lr_value = float(lr.detach().cpu().item())
        else:
            lr_value = float(lr)
        if not (lr_value >= 0.0) or math.isinf(lr_value):
            raise ValueError(f"Invalid learning rate: {lr_value}")
        self._check_betas(betas)
        if not (float(weight_decay) >= 0.0) or math.isinf(float(weight_decay)):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if decay_mode not in _DECAY_MODES:
            raise ValueError(f"Invalid decay_mode: {decay_mode!r} (expected one of {_DECAY_MODES})")
        if decay_ref_lr is None:
            decay_ref_lr = lr_value
        decay_ref_lr = float(decay_ref_lr)
        if decay_mode in ("decoupled", "corrected") and not (decay_ref_lr > 0.0 and math.isfinite(decay_ref_lr)):
            raise ValueError(f"Invalid decay_ref_lr: {decay_ref_lr} (decay_mode={decay_mode!r} divides by it)")
        if not (0.0 < float(cautious_min_frac) <= 1.0):
            raise ValueError(f"Invalid cautious_min_frac: {cautious_min_frac} (expected 0 < value <= 1)")
        if isinstance(sr_seed, bool) or not isinstance(sr_seed, int) or not (0 <= sr_seed < 2 ** 64):
            raise ValueError(f"Invalid sr_seed: {sr_seed!r} (expected an int in [0, 2^64))")
        if nan_policy not in _NAN_POLICIES:
            raise ValueError(f"Invalid nan_policy: {nan_policy!r} (expected one of {_NAN_POLICIES})")
        if fused and foreach:
            raise ValueError("`fused` and `foreach` cannot both be True")
        if stochastic_rounding and master_weights:
            raise ValueError("stochastic_rounding and master_weights exclude each other (the master is exact)")
        state_dtype = _dtype_name(state_dtype)

        defaults = dict(lr=lr, betas=tuple(betas), weight_decay=float(weight_decay), decay_mode=decay_mode,
                        decay_ref_lr=decay_ref_lr, cautious=bool(cautious),
                        cautious_min_frac=float(cautious_min_frac), stochastic_rounding=bool(stochastic_rounding),
                        sr_seed=int(sr_seed), master_weights=bool(master_weights), state_dtype=state_dtype,
                        nan_policy=nan_policy, maximize=bool(maximize), foreach=foreach, fused=fused,
                        capturable=bool(capturable))
        super().__init__(params, defaults)
        self.register_state_dict_post_hook(Lion._add_timm_aliases)
        if capturable and not isinstance(lr, Tensor):
            warnings.warn("fastnorm.optim.Lion: capturable=True with a float lr bakes the lr into a captured "
                          "CUDA graph; pass lr as a CUDA tensor to change it between replays", stacklevel=2)

    # ---- groups ---------------------------------------------------------------------------------------
    @staticmethod
    def _check_betas(betas):
        if len(betas) != 2:
            raise ValueError(f"Invalid betas: expected two values, got {betas!r}")
        for i, b in enumerate(betas):
            if not (0.0 <= float(b) < 1.0):
                raise ValueError(f"Invalid beta parameter at index {i}: {b} (expected 0 <= beta < 1)")

    def add_param_group(self, param_group: Dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        self._check_betas(group["betas"])
        if group["decay_mode"] not in _DECAY_MODES:
            raise ValueError(f"Invalid decay_mode: {group['decay_mode']!r} (expected one of {_DECAY_MODES})")
        group["state_dtype"] = _dtype_name(group["state_dtype"])
        if group["fused"] and group["foreach"]:
            raise ValueError("`fused` and `foreach` cannot both be True")
        if group["stochastic_rounding"] and group["master_weights"]:
            raise ValueError("stochastic_rounding and master_weights exclude each other")
        for i, p in enumerate(group["params"]):
            if group["fused"] and not _fused_supported(p):
                raise RuntimeError(f"fastnorm.optim.Lion: fused=True needs floating CPU/CUDA params, but param "
                                   f"{i} of group {len(self.param_groups) - 1} is on {p.device} with dtype {p.dtype}")
            if group["stochastic_rounding"] and p.dtype != torch.bfloat16:
                raise ValueError(f"fastnorm.optim.Lion: stochastic_rounding needs bf16 params, but param {i} of "
                                 f"group {len(self.param_groups) - 1} has dtype {p.dtype}")
            if group["capturable"] and not p.is_cuda and not _is_dtensor(p):
                raise ValueError(f"fastnorm.optim.Lion: capturable=True needs CUDA params, but param {i} is on "
                                 f"{p.device}")
            sdt = group["state_dtype"]
            if sdt is not None and not p.is_complex():
                sd = getattr(torch, sdt)
                ok = sd == torch.float64 if p.dtype == torch.float64 else sd in (p.dtype, torch.float32)
                if not ok:
                    raise ValueError(f"fastnorm.optim.Lion: state_dtype {sdt} is not allowed for param {i} of dtype "
                                     f"{p.dtype} (expected the param dtype or float32)")
        if group["fused"] and group["params"] and _get_fused() is None:
            raise RuntimeError("fastnorm.optim.Lion: fused=True but this fastnorm build has no lion_step_ op")
        if group["stochastic_rounding"] and "sr_step" not in group:
            dev = group["params"][0].device if (group["capturable"] and group["params"]) else torch.device("cpu")
            group["sr_step"] = torch.zeros((), dtype=torch.int64, device=dev)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                if k != "differentiable":  # torch's __setstate__ adds it to defaults; Lion has no such key
                    group.setdefault(k, v)
        # hooks are not pickled (torch's __getstate__ keeps defaults, state and groups only): re-register
        if not any(h is Lion._add_timm_aliases for h in self._optimizer_state_dict_post_hooks.values()):
            self.register_state_dict_post_hook(Lion._add_timm_aliases)

    @staticmethod
    def _state_dtype(group, p: Tensor) -> torch.dtype:
        if p.is_complex():
            return p.dtype
        if group["state_dtype"] is not None:
            return getattr(torch, group["state_dtype"])
        return torch.float32 if p.dtype in _LOW else p.dtype

    @staticmethod
    def _wants_master(group, p: Tensor) -> bool:
        return bool(group["master_weights"]) and p.dtype in _LOW

    def _group_path(self, group) -> str:
        if group["foreach"]:
            return "foreach"
        if group["fused"]:
            return "fused"
        if group["fused"] is None and _get_fused() is not None and all(_fused_supported(p) for p in group["params"]):
            return "fused"
        if group["foreach"] is None:
            from torch.utils._foreach_utils import _get_foreach_kernels_supported_devices
            devs = set(_get_foreach_kernels_supported_devices()) | {"cpu"}
            if all(p.device.type in devs for p in group["params"]):
                return "foreach"
        return "loop"

    @property
    def _step_supports_amp_scaling(self) -> bool:
        return len(self.param_groups) > 0 and all(self._group_path(g) == "fused" for g in self.param_groups)

    # ---- state ----------------------------------------------------------------------------------------
    def _init_group(self, group, params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor],
                    masters: List[Tensor]) -> bool:
        """Collect the params with grads and their state, creating missing state keys one at a time.

        Appends the live tensors (dynamo maps them to their sources and runs this eagerly); complex and DTensor
        unwrapping (``view_as_real``, ``to_local``) happens on these lists right after, in :meth:`step`.
        """
        has_complex = False
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("fastnorm.optim.Lion does not support sparse gradients")
            has_complex |= torch.is_complex(p)
            params.append(p)
            grads.append(p.grad)
            state = self.state[p]
            sdt = self._state_dtype(group, p)
            if "exp_avg" not in state:
                state["exp_avg"] = torch.zeros_like(p, dtype=sdt, memory_format=torch.preserve_format)
            elif state["exp_avg"].dtype != sdt or state["exp_avg"].device != p.device:
                state["exp_avg"] = state["exp_avg"].to(device=p.device, dtype=sdt)
            exp_avgs.append(state["exp_avg"])
            if self._wants_master(group, p):
                if "master_param" not in state:
                    state["master_param"] = p.detach().to(torch.float32, memory_format=torch.preserve_format,
                                                          copy=True)
                elif state["master_param"].dtype != torch.float32:
                    state["master_param"] = state["master_param"].to(torch.float32)
                masters.append(state["master_param"])
        return has_complex

    # ---- step -----------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], Any]] = None):
        """Perform one optimization step (``closure`` re-evaluates the model under grad mode)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            params: List[Tensor] = []
            grads: List[Tensor] = []
            exp_avgs: List[Tensor] = []
            masters: List[Tensor] = []
            has_complex = self._init_group(group, params, grads, exp_avgs, masters)
            if len(params) == 0:
                continue
            path = self._group_path(group)
            params, grads, exp_avgs, masters = _unwrap(params, grads, exp_avgs, masters, has_complex)
            use_master = len(masters) > 0
            # one call per device (the op takes one device per call); slots are positions in that call
            devices = []
            for p in params:
                if p.device not in devices:
                    devices.append(p.device)
            for dev in devices:
                if len(devices) == 1:
                    bp, bg, bm, bw = params, grads, exp_avgs, masters
                else:
                    idx = [i for i, p in enumerate(params) if p.device == dev]
                    bp = [params[i] for i in idx]
                    bg = [grads[i] for i in idx]
                    bm = [exp_avgs[i] for i in idx]
                    bw = [masters[i] for i in idx] if use_master else []
                gs = None if grad_scale is None else grad_scale.to(dev, non_blocking=True)
                fi = None if found_inf is None else found_inf.to(dev, non_blocking=True)
                kwargs = dict(lr=group["lr"], betas=group["betas"], weight_decay=group["weight_decay"],
                              decay_mode=group["decay_mode"], decay_ref_lr=group["decay_ref_lr"],
                              master_params=bw if use_master else None, grad_scale=gs, found_inf=fi,
                              maximize=group["maximize"], cautious=group["cautious"],
                              cautious_min_frac=group["cautious_min_frac"],
                              stochastic_rounding=group["stochastic_rounding"], sr_seed=group["sr_seed"],
                              sr_step=group.get("sr_step") if group["stochastic_rounding"] else None,
                              nan_policy=group["nan_policy"])
                if path == "fused":
                    _get_fused()(bp, bg, bm, check_overlap=False, **kwargs)
                else:
                    lion_torch_(bp, bg, bm, foreach=(path == "foreach"), **kwargs)
            if group["stochastic_rounding"]:
                group["sr_step"].add_(1)
        return loss

    # ---- state_dict -----------------------------------------------------------------------------------
    @staticmethod
    def _add_timm_aliases(optimizer, state_dict):
        for g in state_dict["param_groups"]:
            g["caution"] = bool(g.get("cautious", False))
            g["corrected_weight_decay"] = g.get("decay_mode") == "corrected"
            g["max_lr_snapshot"] = g.get("decay_ref_lr")
        return state_dict

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Load a fastnorm, lucidrains or timm state dict (§3.9).

        Unlike torch's version, ``exp_avg`` is cast to this optimizer's state dtype (fp32 for bf16 params, so a
        bf16 peer's state is upcast) and ``master_param`` to fp32; saved group keys win, absent ones keep the
        live value; a live tensor lr and ``sr_step`` keep their identity (filled with the saved values).
        """
        state_dict = state_dict.copy()
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            res = pre_hook(self, state_dict)
            if res is not None:
                state_dict = res
        groups = self.param_groups
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(groups) != len(saved_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        if any(len(g["params"]) != len(s["params"]) for g, s in zip(groups, saved_groups)):
            raise ValueError("loaded state dict contains a parameter group that doesn't match the size of "
                             "optimizer's group")
        id_map = dict(zip(chain.from_iterable(s["params"] for s in saved_groups),
                          chain.from_iterable(g["params"] for g in groups)))
        id_group = {}
        for g in groups:
            for p in g["params"]:
                id_group[id(p)] = g

        new_groups = []
        for live, saved in zip(groups, saved_groups):
            new = dict(live)  # absent keys keep the live value
            timm = {k: saved.pop(k) for k in _TIMM_KEYS if k in saved}
            for k, v in saved.items():
                if k == "params":
                    continue
                if k == "lr" and isinstance(live["lr"], Tensor):
                    live["lr"].fill_(float(v.item() if isinstance(v, Tensor) else v))
                    new["lr"] = live["lr"]
                elif k == "sr_step" and isinstance(live.get("sr_step"), Tensor):
                    live["sr_step"].copy_(torch.as_tensor(v).to(torch.int64).reshape(()))
                    new["sr_step"] = live["sr_step"]
                elif k == "betas":
                    new[k] = tuple(v)
                else:
                    new[k] = v
            if "cautious" not in saved and "caution" in timm:
                new["cautious"] = bool(timm["caution"])
            if "decay_mode" not in saved and "corrected_weight_decay" in timm:
                if timm["corrected_weight_decay"]:
                    new["decay_mode"] = "corrected"
                    if "decay_ref_lr" not in saved and timm.get("max_lr_snapshot") is not None:
                        new["decay_ref_lr"] = float(timm["max_lr_snapshot"])
                elif new["decay_mode"] == "corrected":
                    new["decay_mode"] = "paper"
            if new.get("stochastic_rounding") and not isinstance(new.get("sr_step"), Tensor):
                dev = live["params"][0].device if (new["capturable"] and live["params"]) else torch.device("cpu")
                new["sr_step"] = torch.zeros((), dtype=torch.int64, device=dev)
            elif isinstance(new.get("sr_step"), Tensor) and new["sr_step"] is not live.get("sr_step"):
                dev = live["params"][0].device if (new["capturable"] and live["params"]) else torch.device("cpu")
                new["sr_step"] = new["sr_step"].to(device=dev, dtype=torch.int64).reshape(())
            new["params"] = live["params"]
            new["state_dtype"] = _dtype_name(new.get("state_dtype"))
            new_groups.append(new)

        group_of = {id(p): ng for ng in new_groups for p in ng["params"]}
        state: Dict[Any, Dict[str, Any]] = {}
        for k, v in state_dict["state"].items():
            if k not in id_map:
                state[k] = v
                continue
            p = id_map[k]
            g = group_of[id(p)]
            st = {}
            for key, val in v.items():
                if isinstance(val, Tensor):
                    if key == "exp_avg":
                        val = _to_like(val, p, self._state_dtype(g, p))
                    elif key == "master_param":
                        val = _to_like(val, p, torch.float32)
                    elif key == "step":
                        val = val
                    elif val.is_floating_point() and p.is_floating_point():
                        val = val.to(dtype=p.dtype, device=p.device)
                    else:
                        val = val.to(device=p.device)
                st[key] = val
            state[p] = st
        from collections import defaultdict
        dstate = defaultdict(dict)
        dstate.update(state)
        self.__setstate__({"state": dstate, "param_groups": new_groups})
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)


def _to_like(val: Tensor, p: Tensor, dtype: torch.dtype) -> Tensor:
    """val in ``dtype`` on p's device with p's strides (the op needs exp_avg/master strides equal to p's)."""
    if _is_dtensor(p) or _is_dtensor(val):
        return val.to(dtype=dtype)
    if p.is_complex() and not val.is_complex():
        dtype = p.dtype
    val = val.to(device=p.device, dtype=dtype)
    if val.shape == p.shape and val.stride() != p.stride():
        out = torch.empty_like(p, dtype=dtype, memory_format=torch.preserve_format)
        out.copy_(val)
        val = out
    return val


def _local(t: Tensor) -> Tensor:
    return t.to_local() if _is_dtensor(t) else t


def _unwrap(params, grads, exp_avgs, masters, has_complex):
    """DTensor -> local shard (mesh and placements must match), complex -> view_as_real."""
    if any(_is_dtensor(p) for p in params):
        for i, p in enumerate(params):
            for name, t in (("grad", grads[i]), ("exp_avg", exp_avgs[i])):
                if _is_dtensor(p) != _is_dtensor(t) or (_is_dtensor(p) and (
                        t.device_mesh != p.device_mesh or t.placements != p.placements)):
                    raise RuntimeError(f"fastnorm.optim.Lion: {name} of param {i} must be a DTensor with the "
                                       f"param's mesh and placements")
        params = [_local(t) for t in params]
        grads = [_local(t) for t in grads]
        exp_avgs = [_local(t) for t in exp_avgs]
        masters = [_local(t) for t in masters]
    if has_complex:
        def vr(t):
            return torch.view_as_real(t) if torch.is_complex(t) else t
        params = [vr(t) for t in params]
        grads = [vr(t) for t in grads]
        exp_avgs = [vr(t) for t in exp_avgs]
    return params, grads, exp_avgs, masters


# ---- the pure-torch path ------------------------------------------------------------------------------
def _opmath(dt: torch.dtype) -> torch.dtype:
    return torch.float64 if dt == torch.float64 else torch.float32


def lion_torch_(params: List[Tensor], grads: List[Tensor], exp_avgs: List[Tensor], *, lr, betas=(0.9, 0.99),
                weight_decay=0.0, decay_mode="paper", decay_ref_lr=None, master_params=None, grad_scale=None,
                found_inf=None, maximize=False, cautious=False, cautious_min_frac=1e-3, stochastic_rounding=False,
                sr_seed=0, sr_step=None, nan_policy="propagate", foreach=True) -> None:
    """The Lion step with torch ops, in the rounding order of §3.1 (opmath T, product rounded then an FMA:
    torch evaluates ``mul`` then ``add(alpha=)`` as one FMA on CPU and CUDA). ``foreach`` selects the
    ``torch._foreach_*`` kernels or a per-tensor loop. Used for params the fused op cannot take."""
    from ..reference.lion import bf16_round_stochastic, fma_rn, sr_random_bits_like

    n = len(params)
    if n == 0:
        return
    beta1, beta2 = float(betas[0]), float(betas[1])
    k = _DECAY_POWER[decay_mode]
    ref = float(decay_ref_lr) if decay_mode in ("decoupled", "corrected") else 1.0
    wd = float(weight_decay)
    propagate = nan_policy == "propagate"
    tensor_lr = isinstance(lr, Tensor)

    def fe(name, *args, **kw):
        if foreach:
            return getattr(torch, "_foreach_" + name)(*args, **kw)
        xs = args[0]
        rest = args[1:]
        out = []
        for i, x in enumerate(xs):
            r = [a[i] if isinstance(a, (list, tuple)) else a for a in rest]
            out.append(getattr(x, name)(*r, **kw))
        return out

    xs_src = master_params if master_params is not None else params
    xT = [x.to(_opmath(p.dtype)) for x, p in zip(xs_src, params)]
    gT = [g.to(_opmath(p.dtype)) for g, p in zip(grads, params)]
    if grad_scale is not None:
        gT = [g / grad_scale.to(g.dtype).reshape(()) for g in gT]
    if maximize:
        gT = fe("neg", gT)
    mT = [m.to(_opmath(p.dtype)) for m, p in zip(exp_avgs, params)]

    c = fe("mul", mT, beta1)
    fe("add_", c, gT, alpha=1.0 - beta1)
    s = fe("sign", c)
    if propagate:
        s = [torch.where(torch.isnan(ci), ci, si) for ci, si in zip(c, s)]
    u = s
    if cautious:
        lo = struct.unpack("f", struct.pack("f", float(cautious_min_frac)))[0]  # float32(min_frac)
        u = []
        for si, gi in zip(s, gT):
            keep = (si * gi) > 0
            frac = (keep.sum().to(torch.float64) / max(keep.numel(), 1)).to(torch.float32)
            q = torch.ones_like(frac).div_(torch.clamp(frac, min=lo)).to(si.dtype)
            u.append(torch.where(keep, si * q, torch.where(torch.isnan(si), si, torch.zeros_like(si))))

    if tensor_lr:
        lr_d = lr.to(torch.float64)
        delta = wd if k == 0 else (lr_d * (wd / ref) if k == 1 else ((lr_d * lr_d) / ref) * wd)
        dmul = 1.0 - delta
        x1 = [x * (dmul.to(device=x.device, dtype=x.dtype) if isinstance(dmul, Tensor) else dmul) for x in xT]
        x2 = []
        for xi, ui in zip(x1, u):
            lrT = lr.to(device=xi.device, dtype=torch.float64).to(xi.dtype).reshape(())
            if cautious:
                x2.append(fma_rn(-lrT, ui, xi))
            else:  # u in {-1, 0, 1, NaN}: lr*u is exact, so one rounding as the FMA
                x2.append(xi.sub_(ui * lrT))
    else:
        lr_f = float(lr)
        delta = wd if k == 0 else (lr_f * (wd / ref) if k == 1 else ((lr_f * lr_f) / ref) * wd)
        x2 = fe("mul", xT, 1.0 - delta)
        fe("add_", x2, u, alpha=-lr_f)
    m_new = fe("mul", mT, beta2)
    fe("add_", m_new, gT, alpha=1.0 - beta2)

    skip = None
    if found_inf is not None:
        skip = found_inf.reshape(()) != 0

    def commit(dst: Tensor, new: Tensor):
        new = new.to(dst.dtype) if new.dtype != dst.dtype else new
        if skip is not None:
            new = torch.where(skip.to(dst.device), dst, new)
        dst.copy_(new)

    for i in range(n):
        commit(exp_avgs[i], m_new[i])
        p = params[i]
        if master_params is not None:
            commit(master_params[i], x2[i])
            commit(p, x2[i])
        elif stochastic_rounding and p.dtype == torch.bfloat16:
            step = sr_step.to(p.device) if isinstance(sr_step, Tensor) else sr_step
            commit(p, bf16_round_stochastic(x2[i], sr_random_bits_like(p, i, step, int(sr_seed))))
        else:
            commit(p, x2[i])
