"""Functional Lion step (specs/lion.md §2.1): one in-place multi-tensor update, ``torch.ops.fastnorm.lion_step_``.

Per element (opmath float32; float64 for float64 params)::

    c = (1 - beta1) * g + beta1 * m          # product rounded, then one FMA
    p = p * (1 - delta) - lr * sign(c)       # decay, then the step: two roundings
    m = (1 - beta2) * g + beta2 * m

``sign(+-0) = 0`` as ``torch.sign``. The op is not differentiable and never writes the grads.
"""
from typing import Optional, Sequence, Tuple, Union

import torch

# decay_mode -> (decay_lr_power k, whether decay_ref_lr is needed): delta = weight_decay * lr^k / ref.
DECAY_MODES = {"paper": (1, False), "decoupled": (1, True), "corrected": (2, True), "fixed": (0, False)}
NAN_POLICIES = {"propagate": 0, "torch": 1}
_OP = "fastnorm.lion_step_"


def decay_args(decay_mode: str, decay_ref_lr: Optional[float]) -> Tuple[int, float]:
    """The op's (decay_lr_power, decay_ref) for a decay mode (specs/lion.md §3.3)."""
    if decay_mode not in DECAY_MODES:
        raise ValueError(f"{_OP}: decay_mode: expected one of {sorted(DECAY_MODES)}, got {decay_mode!r}")
    k, needs_ref = DECAY_MODES[decay_mode]
    if not needs_ref:
        return k, 1.0
    if decay_ref_lr is None:
        raise ValueError(f"{_OP}: decay_ref_lr: expected a float > 0 with decay_mode={decay_mode!r}, got None")
    ref = float(decay_ref_lr)
    if not ref > 0:
        raise ValueError(f"{_OP}: decay_ref_lr: expected a value > 0, got {ref}")
    return k, ref


def nan_policy_code(nan_policy: str) -> int:
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"{_OP}: nan_policy: expected 'propagate' or 'torch', got {nan_policy!r}")
    return NAN_POLICIES[nan_policy]


def lion_step_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    *,
    lr: Union[float, torch.Tensor],
    betas: Tuple[float, float] = (0.9, 0.99),
    weight_decay: float = 0.0,
    decay_mode: str = "paper",
    decay_ref_lr: Optional[float] = None,
    master_params: Optional[Sequence[torch.Tensor]] = None,
    grad_scale: Optional[torch.Tensor] = None,
    found_inf: Optional[torch.Tensor] = None,
    maximize: bool = False,
    cautious: bool = False,
    cautious_min_frac: float = 1e-3,
    stochastic_rounding: bool = False,
    sr_seed: int = 0,
    sr_step: Optional[Union[int, torch.Tensor]] = None,
    nan_policy: str = "propagate",
    check_overlap: bool = True,
) -> None:
    """Updates ``params`` and ``exp_avgs`` (and ``master_params``) in place with one Lion step.

    Args:
        params, grads, exp_avgs: equal-length lists; grads have the params' dtype, exp_avgs the params' dtype
            or float32 (float64 params: float64). Params must be dense; exp_avgs and master_params have
            exactly the params' strides. A grad in another layout is copied once into the param's.
        lr: a float, or a one-element floating tensor (read by the kernel: no host sync, no recompiles).
        betas: (beta1, beta2) in [0, 1).
        weight_decay, decay_mode, decay_ref_lr: decay per step delta = weight_decay * lr^k / ref with
            "paper" (k=1, ref=1), "decoupled" (k=1, ref=decay_ref_lr), "corrected" (k=2, ref=decay_ref_lr),
            "fixed" (k=0).
        master_params: float32 master weights of bfloat16/float16 params (exp_avgs float32): the update runs on
            them and params become their round-to-nearest copy.
        grad_scale, found_inf: GradScaler's one-element float32 tensors on the params' device; found_inf != 0
            skips the step, grads are divided by grad_scale in the kernel (and not written back).
        maximize: step along +g.
        cautious, cautious_min_frac: timm's cautious mask, u = sign(c) / max(frac, min_frac) where
            sign(c) * g > 0, else 0 (frac: the kept fraction of the tensor).
        stochastic_rounding, sr_seed, sr_step: bfloat16 params rounded stochastically with Philox bits keyed
            by (sr_seed, element, list position, sr_step). sr_step: an int or an int64 tensor.
        nan_policy: "propagate" (a NaN momentum makes p NaN) or "torch" (sign(NaN) = 0, the element freezes).
        check_overlap: reject tensors whose memory overlaps a tensor the step writes.
    """
    beta1, beta2 = betas
    k, ref = decay_args(decay_mode, decay_ref_lr)
    policy = nan_policy_code(nan_policy)
    if isinstance(lr, torch.Tensor):
        lr_f, lr_t = 0.0, lr
    else:
        lr_f, lr_t = float(lr), None
    if sr_step is not None and not isinstance(sr_step, torch.Tensor):
        sr_step = torch.tensor(int(sr_step), dtype=torch.int64)
    kwargs = dict(
        decay_lr_power=k, decay_ref=ref, lr_tensor=lr_t, grad_scale=grad_scale, found_inf=found_inf,
        maximize=bool(maximize), cautious=bool(cautious), cautious_min_frac=float(cautious_min_frac),
        stochastic_rounding=bool(stochastic_rounding), sr_seed=int(sr_seed), sr_step=sr_step, nan_policy=policy,
        check_overlap=bool(check_overlap))
    if len(params) == 0:  # no tensor: nothing to dispatch on; the op's list checks still apply
        _fake_checks(params, grads, exp_avgs, master_params)
        return
    with torch.no_grad():
        if master_params is None:
            torch.ops.fastnorm.lion_step_(list(params), list(grads), list(exp_avgs), lr_f, float(beta1), float(beta2),
                                          float(weight_decay), **kwargs)
        else:
            torch.ops.fastnorm.lion_step_.master(list(params), list(grads), list(exp_avgs), list(master_params), lr_f,
                                                 float(beta1), float(beta2), float(weight_decay), **kwargs)


def _fake_checks(params, grads, exp_avgs, masters) -> None:
    """The list, shape and dtype checks of specs/lion.md §5, for FakeTensor / torch.compile tracing."""
    n = len(params)
    lens = [n, len(grads), len(exp_avgs)] + ([len(masters)] if masters is not None else [])
    if any(x != n for x in lens):
        names = "params, grads, exp_avgs" + (", master_params" if masters is not None else "")
        raise RuntimeError(f"{_OP}: {names}: expected equal lengths, got {', '.join(map(str, lens))}")
    for i, p in enumerate(params):
        if p.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise RuntimeError(f"{_OP}: params[{i}]: expected float32, float64, float16 or bfloat16, got {p.dtype}")
        others = [("grads", grads[i]), ("exp_avgs", exp_avgs[i])]
        if masters is not None:
            others.append(("master_params", masters[i]))
        for name, t in others:
            if t.shape != p.shape:
                raise RuntimeError(f"{_OP}: {name}[{i}]: expected shape {list(p.shape)} (the param's), "
                                   f"got {list(t.shape)}")
            if t.device != p.device:
                raise RuntimeError(f"{_OP}: {name}[{i}]: expected a tensor on {p.device}, got {t.device}")
        if grads[i].dtype != p.dtype:
            raise RuntimeError(f"{_OP}: grads[{i}]: expected dtype {p.dtype} (the param's), got {grads[i].dtype}")


@torch.library.register_fake("fastnorm::lion_step_")
def _(params, grads, exp_avgs, lr, beta1, beta2, weight_decay, **kwargs):
    _fake_checks(params, grads, exp_avgs, None)
    return None


@torch.library.register_fake("fastnorm::lion_step_.master")
def _(params, grads, exp_avgs, master_params, lr, beta1, beta2, weight_decay, **kwargs):
    _fake_checks(params, grads, exp_avgs, master_params)
    return None


def _autograd_guard(op):
    """The op is not differentiable: under grad mode it refuses tensors that require grad (specs/lion.md §5),
    instead of silently mutating leaves autograd tracks. Otherwise it runs the kernel below autograd."""

    def kernel(*args, **kwargs):
        n_lists = 4 if op is torch.ops.fastnorm.lion_step_.master else 3
        if torch.is_grad_enabled():
            for name, ts in zip(("params", "grads", "exp_avgs", "master_params"), args[:n_lists]):
                if name != "grads" and any(t.requires_grad for t in ts):
                    raise RuntimeError(f"{_OP}: {name}: expected no tensor that requires grad while grad mode is on "
                                       "(call under torch.no_grad())")
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args, **kwargs)

    return kernel


torch.library.impl("fastnorm::lion_step_", "Autograd")(_autograd_guard(torch.ops.fastnorm.lion_step_.default))
torch.library.impl("fastnorm::lion_step_.master", "Autograd")(_autograd_guard(torch.ops.fastnorm.lion_step_.master))
