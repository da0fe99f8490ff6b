"""``fastnorm.sara.SaRA``: the one-line SaRA API (specs/sara.md §2.1, §3.4–§3.7).

``SaRA(model, threshold=2e-3, total_steps=T)`` wraps the target layers of ``model`` in place and *is* the optimizer:
param group 0 holds the k-sized deltas (fused sparse AdamW ``sara_adamw_step_``, or Lion = ``lion_step_`` +
``sara_scatter_``), group 1 the dense trainables (``modules_to_save``, ``bias``/``norms="all"``) with torch's AdamW
math. Both groups keep the standard AdamW keys, so LR schedulers, GradScaler and ``clip_grad_norm_`` work.

On top of the update the optimizer adds the low-rank (nuclear-norm) regulariser's gradient to δ.grad after backward
(§3.5, randomized warm-started sketch, never a dense S), and runs the progressive parameter adjustment once (§3.6),
keeping the optimizer state aligned with the shrunk (or re-selected) δ.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.optim.optimizer import Optimizer

from .. import sara as _sara
from ..nn.sara import SaRALayer, SaRAVectorDelta, _acc_dtype
from ..sara import SaRAConfig

__all__ = ["SaRA"]

_SELECTORS = ("threshold", "density", "budget", "lora_rank")
_CONFIG_FIELDS = {f for f in SaRAConfig.__dataclass_fields__}


def _lr_value(lr) -> float:
    return float(lr.item()) if isinstance(lr, Tensor) else float(lr)


class _RankLoss(torch.autograd.Function):
    """value = λ·ΣR̃ (computed outside autograd); backward hands λ·g_l (k-sized) to each δ_l."""

    @staticmethod
    def forward(ctx, value: Tensor, grads, *deltas):
        ctx.grads = grads
        return value.clone()

    @staticmethod
    def backward(ctx, gout):
        outs = []
        for g in ctx.grads:
            outs.append(None if g is None else g * gout.to(g.dtype))
        return (None, None, *outs)


class SaRA(Optimizer):
    r"""SaRA (Hu et al., ICLR 2025) sparse fine-tuning as a ``torch.optim.Optimizer`` (specs/sara.md).

    Args:
        model: the nn.Module to adapt (wrapped in place: target nn.Linear/nn.Conv2d become SaRALinear/SaRAConv2d).
        threshold: train |W0| < θ (global, absolute). Other selectors (``density``, ``budget``, ``lora_rank``) and
            every other :class:`SaRAConfig` field are keywords; keywords override ``config``.
        config: a SaRAConfig (copied).
        total_steps: needed by a float ``progressive_step`` (a fraction of it); None warns and disables the step.
        lr: None → 1e-3·exp(−350·θ) in threshold mode (the official rule), 5e-4 otherwise, ÷5 for Lion.
        betas, eps, weight_decay: AdamW hyper-parameters (betas default (0.9, 0.999); Lion (0.9, 0.99)).
        weight_decay_target: "delta" (δ ← δ(1−lr·wd)) or "absolute" (decay of base+δ toward 0, official).
        optimizer: "adamw" (fused sparse AdamW) or "lion" (fastnorm's lion_step_ then sara_scatter_).
    """

    def __init__(self, model: nn.Module, threshold: Optional[float] = None, *, config: Optional[SaRAConfig] = None,
                 total_steps: Optional[int] = None, lr: Optional[float] = None,
                 betas: Optional[Tuple[float, float]] = None, eps: float = 1e-8, weight_decay: float = 1e-2,
                 weight_decay_target: str = "delta", optimizer: str = "adamw", amsgrad: bool = False,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 foreach: Optional[bool] = None, fused: Optional[bool] = None,
                 _indices: Optional[Dict[str, Tensor]] = None, **config_fields):
        if not isinstance(model, nn.Module):
            raise TypeError(f"fastnorm.sara.SaRA: argument 'model' must be an nn.Module (SaRA wraps its layers), got "
                            f"{type(model).__name__}")
        for name, v in (("amsgrad", amsgrad), ("maximize", maximize), ("capturable", capturable),
                        ("differentiable", differentiable)):
            if v:
                raise ValueError(f"fastnorm.sara.SaRA: argument '{name}'=True is not supported")
        if fused is not None or foreach is not None:
            raise ValueError("fastnorm.sara.SaRA: 'fused'/'foreach' are fixed (the sparse step is always the fused "
                             "op); leave them None")
        if optimizer not in ("adamw", "lion"):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'optimizer' must be 'adamw' or 'lion', got {optimizer!r}")
        if weight_decay_target not in ("delta", "absolute"):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'weight_decay_target' must be 'delta' or 'absolute', got "
                             f"{weight_decay_target!r}")
        unknown = set(config_fields) - _CONFIG_FIELDS
        if unknown:
            raise TypeError(f"fastnorm.sara.SaRA: unexpected keyword argument(s) {sorted(unknown)}")
        if threshold is not None:
            config_fields["threshold"] = threshold
        base_cfg = copy.deepcopy(config) if config is not None else SaRAConfig()
        d = base_cfg.to_dict()
        if any(k in config_fields for k in _SELECTORS):  # a selector keyword replaces the config's selector
            for k in _SELECTORS:
                d[k] = None
        d.update(config_fields)
        cfg = SaRAConfig(**d)  # validates (conflicting selectors, threshold <= 0, ...)
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'total_steps' must be an int >= 1, got {total_steps!r}")
        if betas is None:
            betas = (0.9, 0.99) if optimizer == "lion" else (0.9, 0.999)
        betas = tuple(float(b) for b in betas)
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'betas' must be two values in [0, 1), got {betas!r}")
        if not (eps >= 0.0):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'eps' must be >= 0, got {eps!r}")
        if not (weight_decay >= 0.0):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'weight_decay' must be >= 0, got {weight_decay!r}")
        if lr is None:
            lr = 1e-3 * math.exp(-350.0 * cfg.effective_threshold) if cfg.mode == "threshold" else 5e-4
            if optimizer == "lion":
                lr /= 5.0
        if not (_lr_value(lr) >= 0.0):
            raise ValueError(f"fastnorm.sara.SaRA: argument 'lr' must be >= 0, got {lr!r}")

        _sara.get_sara_model(model, cfg, indices=_indices)
        self.model = model
        self.config = cfg
        self.total_steps = total_steps
        self.optimizer_name = optimizer
        self.weight_decay_target = weight_decay_target
        self.step_count = 0
        self.progressed = False
        self.last_rank_value: Optional[float] = None
        self._gen = torch.Generator().manual_seed(int(cfg.seed))
        self._remaps: Dict[int, Tuple[int, Tensor]] = {}
        self._unloaded = False
        self._collect()

        deltas = [l.sara_delta for l in self._layers] + [v.sara_delta for _, _, v in self._vectors]
        ids = {id(p) for p in deltas}
        dense, seen = [], set()
        for p in model.parameters():
            if p.requires_grad and id(p) not in ids and id(p) not in seen:
                seen.add(id(p))
                dense.append(p)
        defaults = dict(lr=lr, betas=betas, eps=float(eps), weight_decay=float(weight_decay), amsgrad=False,
                        maximize=False, foreach=None, capturable=False, differentiable=False, fused=None,
                        decoupled_weight_decay=True)
        super().__init__([{"params": deltas, "sara": True}, {"params": dense, "sara": False}], defaults)
        self._ppa_at = self._progress_step()

    # ---- bookkeeping -----------------------------------------------------------------------------------------
    def _collect(self) -> None:
        self._layers: List[SaRALayer] = []
        self._layer_names: Dict[int, str] = {}
        self._vectors: List[Tuple[str, nn.Module, SaRAVectorDelta]] = []  # (unwrapped path, owner, parametrization)
        from torch.nn.utils import parametrize
        for name, m in self.model.named_modules():
            if isinstance(m, SaRALayer) and not m.is_alias:
                self._layers.append(m)
                self._layer_names[id(m)] = name
        for name, m in self.model.named_modules():
            if not parametrize.is_parametrized(m):
                continue
            for pname, plist in m.parametrizations.items():
                for p in plist:
                    if isinstance(p, SaRAVectorDelta):
                        self._vectors.append((_sara.unwrapped_name(f"{name}.{pname}" if name else pname), m, p))
        self._owner_of: Dict[int, Any] = {id(l.sara_delta): l for l in self._layers}
        self._owner_of.update({id(v.sara_delta): v for _, _, v in self._vectors})

    def _progress_step(self) -> Optional[int]:
        p = self.config.progressive_step
        if p is None:
            return None
        if isinstance(p, float):
            if self.total_steps is None:
                warnings.warn("fastnorm.sara.SaRA: progressive_step is a fraction of total_steps but total_steps is "
                              "None; the progressive parameter adjustment is disabled (pass total_steps=, an int "
                              "progressive_step, or call progress_now())", stacklevel=3)
                return None
            return max(1, int(math.floor(p * self.total_steps)))
        return int(p)

    def _check_live(self) -> None:
        if self._unloaded:
            raise RuntimeError("fastnorm.sara.SaRA: merge_and_unload() has removed the adapter; this optimizer is "
                               "no longer usable")

    # ---- public helpers --------------------------------------------------------------------------------------
    def trainable_parameters(self) -> List[nn.Parameter]:
        return [p for g in self.param_groups for p in g["params"]]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def sync_(self) -> None:
        """Rewrite every adapted weight from base + α·δ (after editing δ by hand or a foreign optimizer)."""
        self._check_live()
        for l in self._layers:
            l.sync_()

    def merge(self) -> None:
        self._check_live()
        for l in self._layers:
            l.merge()
        for _, _, v in self._vectors:
            v.merge()

    def unmerge(self) -> None:
        self._check_live()
        for l in self._layers:
            l.unmerge()
        for _, _, v in self._vectors:
            v.unmerge()

    @contextlib.contextmanager
    def disable_adapter(self):
        """Run the base model: W0 is written back bitwise on entry and W_eff restored on exit."""
        self._check_live()
        was = [l.merged for l in self._layers] + [v.merged for _, _, v in self._vectors]
        self.unmerge()
        try:
            yield self.model
        finally:
            mods = self._layers + [v for _, _, v in self._vectors]
            for m, w in zip(mods, was):
                if w:
                    m.merge()

    def set_scale(self, alpha: float) -> None:
        alpha = float(alpha)
        if not math.isfinite(alpha):
            raise ValueError(f"fastnorm.sara.SaRA.set_scale: argument 'alpha' must be finite, got {alpha}")
        self.config.alpha = alpha
        for l in self._layers:
            l.set_scale(alpha)
        for _, _, v in self._vectors:
            v.set_scale(alpha)

    def merge_and_unload(self) -> nn.Module:
        """Restore the original modules keeping W_eff in their weights; returns the plain model."""
        from torch.nn.utils import parametrize
        self._check_live()
        self.merge()
        for name, m in list(self.model.named_modules()):
            if isinstance(m, SaRALayer):
                _sara._set_submodule(self.model, name, m.base_layer)
        for path, owner, v in self._vectors:
            pname = path.rsplit(".", 1)[-1]
            parametrize.remove_parametrizations(owner, pname, leave_parametrized=True)
        for attr in ("_sara_config", "_sara_modules_to_save"):
            if hasattr(self.model, attr):
                delattr(self.model, attr)
        self._unloaded = True
        return self.model

    # ---- the step (§3.4) ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None):
        self._check_live()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.step_count += 1
        cfg = self.config
        if cfg.lambda_rank > 0 and self.step_count % cfg.rank_interval == 0:
            terms = self._rank_terms(self._rank_layers_now())
            total = 0.0
            for layer, value, g in terms:
                total += value
                if g is None:
                    continue
                d = layer.sara_delta
                if d.grad is None:
                    d.grad = (g * cfg.lambda_rank).to(d.dtype)
                else:
                    d.grad.add_(g.to(d.grad.dtype), alpha=cfg.lambda_rank)
            self.last_rank_value = cfg.lambda_rank * total if terms else 0.0
        self._step_sparse(self.param_groups[0])
        for g in self.param_groups[1:]:
            self._step_dense(g)
        for l in self._layers:
            l._mark_synced()
        if not self.progressed and self._ppa_at is not None and self.step_count == self._ppa_at:
            self.progress_now()
        return loss

    def _init_state(self, p: Tensor) -> Dict[str, Any]:
        st = self.state[p]
        if len(st) == 0 or "exp_avg" not in st:
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, dtype=_acc_dtype(p.dtype), memory_format=torch.preserve_format)
            if self.optimizer_name == "adamw":
                st["exp_avg_sq"] = torch.zeros_like(p, dtype=_acc_dtype(p.dtype), memory_format=torch.preserve_format)
        return st

    def _step_sparse(self, group) -> None:
        lr = _lr_value(group["lr"])
        beta1, beta2 = group["betas"]
        eps, wd = group["eps"], group["weight_decay"]
        absolute = self.weight_decay_target == "absolute"
        alpha = self.config.alpha
        buckets: Dict[Tuple, List] = {}
        for p in group["params"]:
            if p.grad is None or p.numel() == 0:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("fastnorm.sara.SaRA: sparse gradients are not supported")
            st = self._init_state(p)
            st["step"] += 1
            owner = self._owner_of[id(p)]
            step = float(st["step"])
            if isinstance(owner, SaRAVectorDelta):
                self._vector_update(owner, p, st, lr, beta1, beta2, eps, wd, step, absolute)
                continue
            w = owner.base_layer.weight
            key = (w.device, w.dtype, step)
            buckets.setdefault(key, []).append((p, st, owner, w))
        for (dev, wdt, step), items in buckets.items():
            deltas = [p.detach() for p, _, _, _ in items]
            grads = [p.grad if p.grad.dtype == p.dtype else p.grad.to(p.dtype) for p, _, _, _ in items]
            weights = [w.detach().view(-1) for _, _, _, w in items]
            idxs = [o.sara_indices for _, _, o, _ in items]
            bases = [o.sara_base for _, _, o, _ in items]
            if self.optimizer_name == "adamw":
                bc1 = 1.0 - beta1 ** step
                bc2 = 1.0 - beta2 ** step
                torch.ops.fastnorm.sara_adamw_step_(deltas, [st["exp_avg"] for _, st, _, _ in items],
                                                    [st["exp_avg_sq"] for _, st, _, _ in items], grads, weights,
                                                    idxs, bases, lr, beta1, beta2, eps, wd, bc1, bc2, absolute, alpha)
            else:
                from ..ops.lion import lion_step_
                wd_eff = wd
                if absolute and wd != 0.0:  # official decay toward 0 of base+δ, before the sign step
                    for dd, b in zip(deltas, bases):
                        dd.sub_((b.to(dd.dtype) + dd) * (lr * wd))
                    wd_eff = 0.0
                lion_step_(deltas, grads, [st["exp_avg"] for _, st, _, _ in items], lr=lr, betas=(beta1, beta2),
                           weight_decay=wd_eff)
                for dd, w, i, b in zip(deltas, weights, idxs, bases):
                    torch.ops.fastnorm.sara_scatter_(w, i, b, dd, alpha)

    def _vector_update(self, owner, p, st, lr, beta1, beta2, eps, wd, step, absolute) -> None:
        """1-D masked tensors (bias/norms="sara"): tiny, no resident weight to write: torch ops, same order."""
        d = p.detach()
        g = p.grad.to(d.dtype)
        if self.optimizer_name == "lion":
            from ..ops.lion import lion_step_
            if absolute and wd:
                d.sub_((owner.sara_base.to(d.dtype) + d) * (lr * wd))
                wd = 0.0
            lion_step_([d], [g], [st["exp_avg"]], lr=lr, betas=(beta1, beta2), weight_decay=wd)
            return
        if absolute:
            d.sub_((owner.sara_base.to(d.dtype) + d) * (lr * wd))
        else:
            d.mul_(1.0 - lr * wd)
        st["exp_avg"].lerp_(g, 1.0 - beta1)
        st["exp_avg_sq"].mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
        denom = (st["exp_avg_sq"].sqrt() / math.sqrt(bc2)).add_(eps)
        d.addcdiv_(st["exp_avg"], denom, value=-lr / bc1)

    def _step_dense(self, group) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("fastnorm.sara.SaRA: sparse gradients are not supported")
        beta1, beta2 = group["betas"]
        if self.optimizer_name == "lion":
            from ..ops.lion import lion_step_
            sts = [self._init_state(p) for p in params]
            for st in sts:
                st["step"] += 1
            lion_step_(params, [p.grad for p in params], [st["exp_avg"] for st in sts], lr=group["lr"],
                       betas=(beta1, beta2), weight_decay=group["weight_decay"])
            return
        sts = []
        for p in params:
            st = self.state[p]
            if len(st) == 0:
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            sts.append(st)
        from torch.optim.adamw import adamw
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in sts], [s["exp_avg_sq"] for s in sts], [],
              [s["step"] for s in sts], foreach=False, capturable=False, differentiable=False, fused=None,
              grad_scale=None, found_inf=None, has_complex=False, amsgrad=False, beta1=beta1, beta2=beta2,
              lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    # ---- the low-rank regulariser (§3.5) ---------------------------------------------------------------------------
    def _eligible(self) -> List[SaRALayer]:
        cfg = self.config
        out = []
        for l in self._layers:
            if l.num_active == 0:
                continue
            is_conv = l.base_layer.weight.dim() == 4
            if is_conv and not cfg.rank_include_conv:
                continue
            if min(l.rows, l.cols) > cfg.rank_min_dim:
                out.append(l)
        return out

    def _rank_layers_now(self) -> List[SaRALayer]:
        el = self._eligible()
        if not el:
            return []
        if self.config.rank_layers == "all":
            return el
        i = int(torch.randint(len(el), (1,), generator=self._gen))
        return [el[i]]

    def _rank_terms(self, layers) -> List[Tuple[SaRALayer, float, Optional[Tensor]]]:
        out = []
        for l in layers:
            value, g = self._rank_one(l)
            out.append((l, value, g))
        return out

    def _values(self, l: SaRALayer, acc: torch.dtype) -> Tuple[Tensor, Tensor]:
        s = l.sara_delta.detach().to(acc)
        sf = l.sara_frozen_delta.to(acc)
        if self.config.rank_target == "masked_weight":
            s = s + l.sara_base.to(acc)
            sf = sf + l.sara_frozen_base.to(acc)
        return s, sf

    def _rank_one(self, l: SaRALayer) -> Tuple[float, Optional[Tensor]]:
        """(R̃, g) for one layer: the nuclear norm (or its randomized upper bound) of S and its gradient on the
        active support (k-sized)."""
        cfg = self.config
        acc = _acc_dtype(l.sara_delta.dtype)
        rows, cols = l.rows, l.cols
        s, sf = self._values(l, acc)
        det = torch.are_deterministic_algorithms_enabled()
        if cfg.rank_method == "svd":
            S = torch.zeros(rows * cols, dtype=acc, device=s.device)
            S[l.sara_indices.long()] = s
            if sf.numel():
                S[l.sara_frozen_indices.long()] = sf
            U, sig, Vh = torch.linalg.svd(S.view(rows, cols), full_matrices=False)
            if sig.numel() == 0 or float(sig[0]) == 0.0:
                return 0.0, torch.zeros_like(s)
            keep = sig > 1e-6 * sig[0]
            G = U[:, keep] @ Vh[keep]
            return float(sig.sum()), G.reshape(-1)[l.sara_indices.long()]
        m = min(rows, cols)
        ell = min(cfg.rank_q + cfg.rank_oversample, m)
        q = min(cfg.rank_q, ell)
        st = self.state[l.sara_delta]
        omega = st.get("rank_basis")
        first = omega is None or tuple(omega.shape) != (cols, ell)
        if first:
            omega = torch.randn(cols, ell, generator=self._gen, dtype=acc).to(s.device)
        else:
            omega = omega.to(acc)
        idx, fidx, rp = l.sara_indices, l.sara_frozen_indices, l.sara_row_ptr

        def S_mul(D: Tensor, transpose: bool) -> Tensor:
            D = D.contiguous()
            out = torch.ops.fastnorm.sara_spmm(idx, s, rp, rows, cols, D, transpose, det)
            if fidx.numel():
                out = out + torch.ops.fastnorm.sara_spmm(fidx, sf, None, rows, cols, D, transpose, det)
            return out

        Z = Q = None
        for _ in range(2 if first else cfg.rank_power_iters):  # subspace iteration, warm-started from rank_basis
            Q = torch.linalg.qr(S_mul(omega, False)).Q        # [rows, ℓ]
            Z = S_mul(Q, True)                                 # [cols, ℓ] = Sᵀ Q
            omega = torch.linalg.qr(Z).Q
        Vz, sig, Wh = torch.linalg.svd(Z, full_matrices=False)  # Z = Vz·diag(σ)·Wh
        U = Q @ Wh.mT                                           # S ≈ Q·Zᵀ = (Q·Whᵀ)·Σ·Vzᵀ
        st["rank_basis"] = Vz.contiguous()
        # Top q with σ > 1e-6·σ1, as a 0/1 weight instead of a slice: no host sync until the one at the end.
        sq = sig[:q]
        keep = (sq > 1e-6 * sig[0]).to(acc)
        sq = sq * keep
        qk = keep.sum()
        Uq, Vq = U[:, :q] * keep, Vz[:, :q]
        UqT = Uq.mT.contiguous()
        VqT = Vq.mT.contiguous()
        USqT = (Uq * sq).mT.contiguous()
        a = torch.ops.fastnorm.sara_sddmm(UqT, VqT, idx, rp, cols, det).to(acc)
        b = torch.ops.fastnorm.sara_sddmm(USqT, VqT, idx, rp, cols, det).to(acc)
        ss = torch.dot(s, s)
        sb = torch.dot(s, b)
        if fidx.numel():
            bf = torch.ops.fastnorm.sara_sddmm(USqT, VqT, fidx, None, cols, det).to(acc)
            ss = ss + torch.dot(sf, sf)
            sb = sb + torch.dot(sf, bf)
        rf = torch.sqrt(torch.clamp(ss - 2.0 * sb + (sq * sq).sum(), min=0.0))  # ‖S − U_q Σ_q V_qᵀ‖_F
        tail = torch.sqrt(torch.clamp(m - qk, min=0.0))
        value = sq.sum() + tail * rf
        # tail term of the gradient only when the residual is resolvable (‖R‖_F > 1e-6·‖s‖) and m > q
        use = (tail > 0) & (rf > 1e-6 * torch.sqrt(ss))
        coef = torch.where(use, tail / torch.where(use, rf, torch.ones_like(rf)), torch.zeros_like(rf))
        g = a + coef * (s - b)
        return float(value), g  # the one host sync of the call

    def rank_loss(self, lambda_rank: Optional[float] = None) -> Tensor:
        """λ·ΣR̃ over the layers the config selects, differentiable w.r.t. the δ (only the k-sized g is saved).
        For users who add the penalty to their loss themselves (then construct with ``lambda_rank=0`` and pass
        the λ here)."""
        lam = self.config.lambda_rank if lambda_rank is None else float(lambda_rank)
        layers = self._rank_layers_now()
        with torch.no_grad():
            terms = self._rank_terms(layers)
        deltas = [l.sara_delta for l, _, _ in terms]
        grads = tuple(None if g is None else (lam * g).to(l.sara_delta.dtype) for l, _, g in terms)
        value = lam * sum(v for _, v, _ in terms)
        dev = deltas[0].device if deltas else torch.device("cpu")
        self.last_rank_value = value
        vt = torch.tensor(value, dtype=deltas[0].dtype if deltas else torch.float32, device=dev)
        if not deltas:
            return vt
        return _RankLoss.apply(vt, grads, *deltas)

    # ---- progressive parameter adjustment (§3.6) ----------------------------------------------------------------
    def progress_now(self) -> None:
        """Run the progressive step now: intersect (or reselect) every adapted tensor's active set; survivors keep
        their δ and bitwise moments, retired entries are frozen in place (outputs unchanged)."""
        self._check_live()
        mode = self.config.progressive_mode
        self._remaps = {}
        for l in self._layers:
            d = l.sara_delta
            old = d.numel()
            remap = l._progress(mode)
            self._remaps[id(d)] = (old, remap)
            self._remap_state(self.state, d, old, remap)
        for path, owner, v in self._vectors:
            d = v.sara_delta
            old = d.numel()
            pname = path.rsplit(".", 1)[-1]
            current = owner.parametrizations[pname].original
            remap = v._progress(mode, current)
            self._remaps[id(d)] = (old, remap)
            self._remap_state(self.state, d, old, remap)
        self.progressed = True

    @staticmethod
    def _remap_state(state, p: Tensor, old: int, remap: Tensor) -> None:
        st = state.get(p)
        if not st:
            return
        valid = remap >= 0
        src = remap.clamp(min=0)
        for key, val in list(st.items()):
            if isinstance(val, Tensor) and val.dim() == 1 and val.numel() == old and key != "step":
                r = src.to(val.device)
                new = val.index_select(0, r)
                if not bool(valid.all()):
                    new[~valid.to(val.device)] = 0
                st[key] = new

    def remap_optimizer_state(self, opt: Optimizer) -> None:
        """Apply the last progressive step's gather to a user-built optimizer over the same δ."""
        for group in opt.param_groups:
            for p in group["params"]:
                r = self._remaps.get(id(p))
                if r is not None:
                    self._remap_state(opt.state, p, r[0], r[1])

    # ---- state dicts -----------------------------------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        sd = super().state_dict()
        sd["sara"] = {"step_count": self.step_count, "progressed": self.progressed,
                      "rng_state": self._gen.get_state(), "config": self.config.to_dict(),
                      "optimizer": self.optimizer_name, "weight_decay_target": self.weight_decay_target,
                      "total_steps": self.total_steps}
        return sd

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        extra = state_dict.pop("sara", None)
        for p in self.trainable_parameters():  # δ may have been resized by model.load_state_dict (after PPA)
            self.state.pop(p, None)
        super().load_state_dict(state_dict)
        if extra is not None:
            self.step_count = int(extra["step_count"])
            self.progressed = bool(extra["progressed"])
            self._gen.set_state(extra["rng_state"])
            self.config = SaRAConfig.from_dict(extra["config"])
        for l in self._layers:
            l._synced = None  # resync on the next forward

    # ---- adapter files (§3.7) -----------------------------------------------------------------------------------
    def adapter_state_dict(self, dtype: torch.dtype = torch.float32) -> Dict[str, Tensor]:
        """Per adapted ``{path}.{param}``: ``.sara_indices`` (sorted active ∪ frozen) and ``.sara_delta`` (aligned,
        ``dtype``), plus the dense trainables under their plain names. Contiguous, no shared storage."""
        self._check_live()
        sd: Dict[str, Tensor] = {}
        for l in self._layers:
            stem = _sara.unwrapped_name(self._layer_names[id(l)]) + ".weight"
            idx, d, _ = l.union_state(dtype)
            sd[stem + ".sara_indices"] = idx.detach().contiguous().clone()
            sd[stem + ".sara_delta"] = d.detach().contiguous().clone()
        for path, _, v in self._vectors:
            idx, d, _ = v.union_state(dtype)
            sd[path + ".sara_indices"] = idx.detach().contiguous().clone()
            sd[path + ".sara_delta"] = d.detach().contiguous().clone()
        dense_ids = {id(p) for p in self.param_groups[1]["params"]}
        for name, p in self.model.named_parameters():
            if id(p) in dense_ids:
                sd[_sara.unwrapped_name(name)] = p.detach().contiguous().clone()
        return sd

    def _checksums(self) -> Tuple[Dict[str, List], Dict[str, List[int]]]:
        checks, shapes = {}, {}
        for l in self._layers:
            stem = _sara.unwrapped_name(self._layer_names[id(l)]) + ".weight"
            _, _, base = l.union_state()
            checks[stem] = [int(base.numel()), float(base.double().sum().cpu()) if base.numel() else 0.0]
            shapes[stem] = list(l.base_layer.weight.shape)
        for path, owner, v in self._vectors:
            _, _, base = v.union_state()
            checks[path] = [int(base.numel()), float(base.double().sum().cpu()) if base.numel() else 0.0]
            shapes[path] = list(owner.parametrizations[path.rsplit(".", 1)[-1]].original.shape)
        return checks, shapes

    def save_pretrained(self, directory: str, *, safe_serialization: Optional[bool] = None) -> None:
        """``adapter_model.safetensors`` (``adapter_model.bin`` via torch.save without safetensors) and
        ``adapter_config.json`` (config, format, version, weight shapes, per-tensor base_checksum)."""
        sd = self.adapter_state_dict()
        checks, shapes = self._checksums()
        extra = {"format": _sara.FORMAT, "version": _sara.FORMAT_VERSION, "weight_shapes": shapes,
                 "base_checksum": checks, "progressed": self.progressed,
                 "modules_to_save_params": [k for k in sd if not k.endswith((".sara_indices", ".sara_delta"))]}
        os.makedirs(directory, exist_ok=True)
        self.config.save_pretrained(directory, **extra)
        use_st = _sara._have_safetensors() if safe_serialization is None else bool(safe_serialization)
        if use_st:
            from safetensors.torch import save_file
            meta = {"format": _sara.FORMAT, "config": json.dumps({**self.config.to_dict(), **extra}, sort_keys=True)}
            save_file(sd, os.path.join(directory, _sara.ADAPTER_WEIGHTS_NAME), metadata=meta)
        else:
            torch.save(sd, os.path.join(directory, _sara.ADAPTER_WEIGHTS_NAME_PT))

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str, *, strict: bool = True, **kw) -> "SaRA":
        """Wrap ``model`` (holding the base weights) with the adapter in ``directory``: stored indices (never a mask
        recomputed from θ), base gathered from the model and checked against ``base_checksum`` (mismatch:
        ValueError; ``strict=False`` warns), deltas and dense trainables loaded, weights synced. Keywords override
        config fields / optimizer arguments."""
        sd, cfg = _sara.load_adapter_state(directory)
        raw = cfg._raw
        entries = _sara._sara_entries(sd)
        indices = {stem: idx for stem, (idx, _) in entries.items()}
        for stem, shape in raw.get("weight_shapes", {}).items():
            try:
                t = model.get_parameter(stem)
            except AttributeError:
                raise ValueError(f"fastnorm.sara.SaRA.from_pretrained: the model has no parameter {stem!r} for the "
                                 f"adapter") from None
            if list(t.shape) != list(shape):
                raise ValueError(f"fastnorm.sara.SaRA.from_pretrained: layer {stem!r} has shape {list(t.shape)} but "
                                 f"the adapter was trained on {list(shape)}")
        opt_kw = {k: kw.pop(k) for k in list(kw) if k not in _CONFIG_FIELDS}
        cfg_fields = cfg.to_dict()  # the stored indices are used as they are: selectors only set defaults (lr)
        if any(k in kw for k in _SELECTORS):
            for k in _SELECTORS:
                cfg_fields[k] = None
        cfg_fields.update(kw)
        opt = cls(model, config=SaRAConfig(**cfg_fields), _indices=indices, **opt_kw)
        checks = raw.get("base_checksum", {})
        with torch.no_grad():
            for l in opt._layers:
                stem = _sara.unwrapped_name(opt._layer_names[id(l)]) + ".weight"
                _sara._check_checksum(stem, l.sara_base, checks.get(stem), strict)
                l.sara_delta.copy_(entries[stem][1].to(l.sara_delta.dtype))
                l.sync_()
            for path, _, v in opt._vectors:
                _sara._check_checksum(path, v.sara_base, checks.get(path), strict)
                v.sara_delta.copy_(entries[path][1].to(v.sara_delta.dtype))
            dense = {_sara.unwrapped_name(n): p for n, p in model.named_parameters()
                     if id(p) in {id(q) for q in opt.param_groups[1]["params"]}}
            for key, val in sd.items():
                if key.endswith((".sara_indices", ".sara_delta")):
                    continue
                if key not in dense:
                    msg = f"fastnorm.sara.SaRA.from_pretrained: adapter tensor {key!r} matches no trainable parameter"
                    if strict:
                        raise ValueError(msg)
                    warnings.warn(msg, stacklevel=2)
                    continue
                dense[key].copy_(val)
        opt.progressed = bool(raw.get("progressed", False))
        return opt
