"""Tests of fastnorm.optim.Lion (specs/lion.md §6 items 4, 5, 6, 7, 8 (timm parity), 10, 15, 16, 19).

The op itself (opcheck, reference sweep, layout, errors) is covered by test_lion.py.
"""
import math
import os
import warnings
from copy import deepcopy

import pytest
import torch

import fastnorm  # noqa: F401
from fastnorm.optim import Lion
from fastnorm.reference import lion as ref

from conftest import HAS_CUDA, ulp_distance

HAS_OP = hasattr(torch.ops.fastnorm, "lion_step_")
needs_op = pytest.mark.skipif(not HAS_OP, reason="this build has no torch.ops.fastnorm.lion_step_")


def make(shape, dtype=torch.float32, seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def params_of(shapes, dtype=torch.float32, seed=0, device="cpu"):
    return [torch.nn.Parameter(make(s, dtype, seed + i, device=device)) for i, s in enumerate(shapes)]


def clone_params(ps):
    return [torch.nn.Parameter(p.detach().clone()) for p in ps]


def set_grads(ps, grads):
    for p, g in zip(ps, grads):
        p.grad = None if g is None else g.clone()


def timm_lion():
    pytest.importorskip("torchvision", reason="timm needs torchvision to import")
    timm_optim = pytest.importorskip("timm.optim")
    return timm_optim.Lion


SHAPES = [(33, 17), (1000,), (7,), (4, 3, 5)]


# ---- constructor ------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    dict(lr=-1e-3), dict(betas=(1.0, 0.99)), dict(betas=(0.9, -0.1)), dict(betas=(0.9, 1.0)),
    dict(weight_decay=-0.1), dict(decay_mode="bogus"), dict(nan_policy="ignore"), dict(cautious_min_frac=0.0),
    dict(sr_seed=-1), dict(fused=True, foreach=True), dict(stochastic_rounding=True, master_weights=True),
    dict(decoupled_weight_decay=True, decay_mode="corrected"), dict(decoupled_weight_decay=False, decay_mode="decoupled"),
    dict(corrected_weight_decay=False, decay_mode="corrected"), dict(caution=False, cautious=True),
    dict(state_dtype=torch.int32), dict(lr=0.0, decay_mode="decoupled"),
])
def test_constructor_rejects(kwargs):
    with pytest.raises(ValueError):
        Lion(params_of([(3,)]), **kwargs)


def test_aliases_and_group_keys():
    opt = Lion(params_of([(3,)]), lr=3e-4, decoupled_weight_decay=True, caution=True)
    g = opt.param_groups[0]
    assert g["decay_mode"] == "decoupled" and g["cautious"] and g["decay_ref_lr"] == 3e-4
    assert Lion(params_of([(3,)]), corrected_weight_decay=True).param_groups[0]["decay_mode"] == "corrected"
    keys = {"lr", "betas", "weight_decay", "decay_mode", "decay_ref_lr", "cautious", "cautious_min_frac",
            "stochastic_rounding", "sr_seed", "master_weights", "state_dtype", "nan_policy", "maximize", "foreach",
            "fused", "capturable"}
    assert keys <= set(g)
    sr = Lion(params_of([(3,)], torch.bfloat16), stochastic_rounding=True).param_groups[0]["sr_step"]
    assert sr.dtype == torch.int64 and sr.dim() == 0 and sr.device.type == "cpu"


def test_sr_needs_bf16_and_fused_needs_supported_param():
    with pytest.raises(ValueError, match="bf16"):
        Lion(params_of([(3,)], torch.float16), stochastic_rounding=True)
    with pytest.raises(ValueError, match="bf16"):
        Lion(params_of([(3,)], torch.float32), stochastic_rounding=True)
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    with pytest.raises(RuntimeError, match="param 0"):
        Lion([p], fused=True)


def test_state_created_lazily_one_key_at_a_time():
    ps = params_of([(5,), (6,)], torch.bfloat16)
    opt = Lion(ps, lr=1e-3, master_weights=True)
    set_grads(ps, [torch.randn(5).bfloat16(), None])
    opt.step()
    assert set(opt.state[ps[0]]) == {"exp_avg", "master_param"}
    assert ps[1] not in opt.state  # no grad, no state
    assert opt.state[ps[0]]["exp_avg"].dtype == torch.float32
    assert opt.state[ps[0]]["master_param"].dtype == torch.float32
    # state from a peer (exp_avg only) gains master_param on the next step
    del opt.state[ps[0]]["master_param"]
    set_grads(ps, [torch.randn(5).bfloat16(), None])
    opt.step()
    assert "master_param" in opt.state[ps[0]]
    assert "step" not in opt.state[ps[0]]


# ---- 4. decay modes ---------------------------------------------------------------------------------
def _hand_step(p, g, m, lr, wd, mode, ref_lr, b1=0.9, b2=0.99):
    delta = {"paper": lr * wd, "decoupled": lr * wd / ref_lr, "corrected": lr * lr * wd / ref_lr, "fixed": wd}[mode]
    c = b1 * m + (1 - b1) * g
    return p * (1 - delta) - lr * torch.sign(c), b2 * m + (1 - b2) * g


@pytest.mark.parametrize("mode", ["paper", "decoupled", "corrected", "fixed"])
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_decay_modes_with_scheduler(mode, lr_kind):
    base_lr, wd = 1e-2, (0.05 if mode == "fixed" else 0.5)
    p = torch.nn.Parameter(make((257,), torch.float64, 1))
    lr = torch.tensor(base_lr, dtype=torch.float64) if lr_kind == "tensor" else base_lr
    opt = Lion([p], lr=lr, weight_decay=wd, decay_mode=mode)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    pe, me = p.detach().clone(), torch.zeros(257, dtype=torch.float64)
    for step in range(4):
        g = make((257,), torch.float64, 10 + step)
        p.grad = g.clone()
        cur = float(opt.param_groups[0]["lr"])
        assert math.isclose(cur, base_lr / (1 + step), rel_tol=1e-12)
        opt.step()
        sched.step()
        pe, me = _hand_step(pe, g, me, cur, wd, mode, base_lr)
        torch.testing.assert_close(p.detach(), pe, rtol=0, atol=1e-14)
        torch.testing.assert_close(opt.state[p]["exp_avg"], me, rtol=1e-13, atol=1e-16)
    if lr_kind == "tensor":
        assert opt.param_groups[0]["lr"] is lr  # the scheduler fills the tensor in place


# ---- 5. AMP -----------------------------------------------------------------------------------------
@needs_op
@pytest.mark.parametrize("master", [False, True])
def test_found_inf_skips_and_grad_scale_unscales(master):
    dt = torch.bfloat16 if master else torch.float32
    ps = params_of(SHAPES, dt)
    opt = Lion(ps, lr=1e-2, weight_decay=0.1, master_weights=master)
    assert opt._step_supports_amp_scaling
    set_grads(ps, [make(p.shape, dt, 50 + i) for i, p in enumerate(ps)])
    opt.step()  # create state
    before = [(p.detach().clone(), {k: v.clone() for k, v in opt.state[p].items()}) for p in ps]
    set_grads(ps, [make(p.shape, dt, 60 + i) for i, p in enumerate(ps)])
    opt.grad_scale = torch.tensor([1024.0])
    opt.found_inf = torch.tensor([1.0])
    opt.step()
    for p, (pb, sb) in zip(ps, before):
        assert torch.equal(p.detach(), pb)
        for k, v in sb.items():
            assert torch.equal(opt.state[p][k], v)
    # grad_scale = S equals stepping with g / S (S a power of two: exact)
    other = clone_params(ps)
    opt2 = Lion(other, lr=1e-2, weight_decay=0.1, master_weights=master)
    opt2.load_state_dict(deepcopy(opt.state_dict()))  # torch's .to() would share same-dtype tensors
    opt.found_inf = torch.tensor(0.0)
    grads = [make(p.shape, dt, 70 + i) for i, p in enumerate(ps)]
    set_grads(ps, [g * 1024 for g in grads])
    set_grads(other, grads)
    opt.step()
    del opt.grad_scale, opt.found_inf
    opt2.step()
    for a, b in zip(ps, other):
        assert torch.equal(a.detach(), b.detach())
        assert torch.equal(ps[0].grad, grads[0] * 1024)  # the scaled grad is not written back


def _amp_scaler_run(device):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).to(device)
    opt = Lion(model.parameters(), lr=1e-3, weight_decay=0.1)
    assert opt._step_supports_amp_scaling
    scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    x, y = torch.randn(64, 16, device=device), torch.randn(64, 4, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for it in range(3):
            opt.zero_grad()
            with torch.autocast(device, dtype=torch.bfloat16):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            if it == 1:
                before = [p.detach().clone() for p in model.parameters()]
                state_before = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
                next(model.parameters()).grad[0, 0] = float("inf")
                scale_before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            if it == 1:
                assert scaler.get_scale() == scale_before * 0.5  # backoff
                for p, b, s in zip(model.parameters(), before, state_before):
                    assert torch.equal(p.detach(), b)
                    assert torch.equal(opt.state[p]["exp_avg"], s)
            assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    return model


@needs_op
def test_grad_scaler_cpu():
    _amp_scaler_run("cpu")


@needs_op
def test_grad_scaler_unscale_then_clip():
    """scaler.unscale_ (for clipping) before step: grads are unscaled on the host, the op gets found_inf only."""
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    ref = torch.nn.Linear(8, 4)
    ref.load_state_dict(model.state_dict())
    opt, ropt = Lion(model.parameters(), lr=1e-2), Lion(ref.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x = torch.randn(16, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for _ in range(2):
            opt.zero_grad()
            ropt.zero_grad()
            scaler.scale(model(x).square().mean()).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
            scaler.step(opt)
            scaler.update()
            ref(x).square().mean().backward()
            ropt.step()
    for p, q in zip(model.parameters(), ref.parameters()):
        assert torch.equal(p.detach(), q.detach())


@pytest.mark.parametrize("foreach", [True, False])
def test_torch_path_amp(foreach):
    """The pure-torch paths honour grad_scale / found_inf too; GradScaler unscales for them on the host."""
    ps = params_of(SHAPES)
    opt = Lion(ps, lr=1e-2, weight_decay=0.1, foreach=foreach, fused=False if not foreach else None)
    assert not opt._step_supports_amp_scaling
    set_grads(ps, [make(p.shape, seed=i) for i, p in enumerate(ps)])
    opt.step()
    before = [p.detach().clone() for p in ps]
    m_before = [opt.state[p]["exp_avg"].clone() for p in ps]
    opt.grad_scale, opt.found_inf = torch.tensor(4.0), torch.tensor(1.0)
    opt.step()
    assert all(torch.equal(p.detach(), b) for p, b in zip(ps, before))
    assert all(torch.equal(opt.state[p]["exp_avg"], m) for p, m in zip(ps, m_before))
    qs = clone_params(ps)
    opt2 = Lion(qs, lr=1e-2, weight_decay=0.1, foreach=foreach, fused=False if not foreach else None)
    opt2.load_state_dict(deepcopy(opt.state_dict()))
    opt.found_inf = torch.tensor(0.0)
    grads = [make(p.shape, seed=20 + i) for i, p in enumerate(ps)]
    set_grads(ps, [g * 4 for g in grads])
    set_grads(qs, grads)
    opt.step()
    opt2.step()
    assert all(torch.equal(p.detach(), q.detach()) for p, q in zip(ps, qs))
    # GradScaler with a non-fused optimizer: the classic unscale-and-skip protocol
    model = torch.nn.Linear(8, 4)
    opt3 = Lion(model.parameters(), lr=1e-2, foreach=foreach, fused=False if not foreach else None)
    scaler = torch.amp.GradScaler("cpu", init_scale=64.0)
    scaler.scale(model(torch.randn(4, 8)).sum()).backward()
    model.weight.grad[0, 0] = float("nan")
    w = model.weight.detach().clone()
    scaler.step(opt3)
    scaler.update()
    assert torch.equal(model.weight.detach(), w) and scaler.get_scale() == 32.0


@needs_op
@pytest.mark.cuda
def test_grad_scaler_cuda_no_sync():
    _amp_scaler_run("cuda")
    model = torch.nn.Linear(64, 64).cuda()
    opt = Lion(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda")
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    scaler.step(opt)  # warm-up (state creation)
    scaler.update()
    model(torch.randn(8, 64, device="cuda")).sum().backward()
    opt.grad_scale = torch.ones(1, device="cuda")
    opt.found_inf = torch.zeros(1, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- 6. peer parity ---------------------------------------------------------------------------------
def mismatches(a, b):
    return int((a.detach() != b.detach()).sum())


@needs_op
@pytest.mark.parametrize("peer", ["eager", "foreach"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("decoupled", [False, True])
def test_lucidrains_parity_free(peer, wd, decoupled):
    lp = pytest.importorskip("lion_pytorch")
    Peer = lp.Lion if peer == "eager" else pytest.importorskip("lion_pytorch.foreach").Lion
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    opt = Lion(ps, lr=1e-3, weight_decay=wd, decoupled_weight_decay=decoupled)
    popt = Peer(qs, lr=1e-3, weight_decay=wd, decoupled_weight_decay=decoupled)
    for step in range(20):
        grads = [make(p.shape, seed=1000 * step + i) for i, p in enumerate(ps)]
        set_grads(ps, grads)
        set_grads(qs, grads)
        opt.step()
        popt.step()
    for p, q in zip(ps, qs):
        assert mismatches(p, q) <= max(10, 1e-4 * p.numel())


@needs_op
@pytest.mark.parametrize("peer", ["eager", "foreach"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
@pytest.mark.parametrize("decoupled", [False, True])
def test_lucidrains_parity_steered(peer, wd, decoupled):
    """g = (c_target - β1·m)/(1 - β1) with |c_target| ≥ 1e-2: no sign is near a tie, so p matches exactly."""
    lp = pytest.importorskip("lion_pytorch")
    Peer = lp.Lion if peer == "eager" else pytest.importorskip("lion_pytorch.foreach").Lion
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    opt = Lion(ps, lr=1e-3, weight_decay=wd, decoupled_weight_decay=decoupled)
    popt = Peer(qs, lr=1e-3, weight_decay=wd, decoupled_weight_decay=decoupled)
    ms = [torch.zeros(p.shape) for p in ps]
    for step in range(20):
        grads = []
        for i, p in enumerate(ps):
            t = make(p.shape, seed=2000 * step + i)
            ct = torch.sign(t) * (1e-2 + t.abs())
            grads.append(((ct - 0.9 * ms[i]) / 0.1).float())
        set_grads(ps, grads)
        set_grads(qs, grads)
        opt.step()
        popt.step()
        for i, (p, q) in enumerate(zip(ps, qs)):
            assert torch.equal(p.detach(), q.detach()), f"step {step} tensor {i}"
            # m within rtol 1e-6 (atol 1e-6 of the tensor's scale: the foreach peer's lerp cancels near 0)
            m, pm = opt.state[p]["exp_avg"], popt.state[q]["exp_avg"]
            torch.testing.assert_close(m, pm, rtol=1e-6, atol=1e-6 * pm.abs().max().item())
            ms[i] = opt.state[p]["exp_avg"].clone()


@needs_op
@pytest.mark.parametrize("lr", [1e-3, 1e-2])
def test_lucidrains_parity_bf16_state(lr):
    """weight_decay=0: with decay the peer rounds p·(1−δ) to bf16 before the step (two roundings, and torch
    rounds ``alpha`` to bf16), so ~15 % of elements drift by 2+ ulps over 5 steps; fastnorm rounds once (§3.1)
    and matches the exact reference bit for bit (test_paths_bitwise_equal)."""
    lp = pytest.importorskip("lion_pytorch")
    ps = params_of(SHAPES, torch.bfloat16)
    qs = clone_params(ps)
    opt = Lion(ps, lr=lr, state_dtype=torch.bfloat16)
    popt = lp.Lion(qs, lr=lr)
    for step in range(5):
        grads = [make(p.shape, torch.bfloat16, 3000 * step + i) for i, p in enumerate(ps)]
        set_grads(ps, grads)
        set_grads(qs, grads)
        opt.step()
        popt.step()
    for p, q in zip(ps, qs):
        assert opt.state[p]["exp_avg"].dtype == torch.bfloat16
        far = (ulp_distance(p.detach(), q.detach()) > 1).sum().item()
        assert far <= 0.01 * p.numel()


# ---- 7. state_dict ----------------------------------------------------------------------------------
def _run(opt, ps, steps, seed):
    for step in range(steps):
        set_grads(ps, [make(p.shape, p.dtype, seed + 100 * step + i) for i, p in enumerate(ps)])
        opt.step()


@needs_op
@pytest.mark.parametrize("direction", ["to_peer", "from_peer"])
def test_state_dict_lucidrains(direction):
    lp = pytest.importorskip("lion_pytorch")
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    if direction == "to_peer":
        src, src_ps = Lion(ps, lr=1e-3, weight_decay=0.1), ps
        _run(src, ps, 3, 7)
        for p, q in zip(ps, qs):
            q.data.copy_(p.detach())
        dst, dst_ps = lp.Lion(qs, lr=1e-3, weight_decay=0.1), qs
    else:
        src, src_ps = lp.Lion(ps, lr=1e-3, weight_decay=0.1), ps
        _run(src, ps, 3, 7)
        for p, q in zip(ps, qs):
            q.data.copy_(p.detach())
        dst, dst_ps = Lion(qs, lr=1e-3, weight_decay=0.1), qs
    dst.load_state_dict(deepcopy(src.state_dict()))
    for p, q in zip(src_ps, dst_ps):
        assert torch.equal(src.state[p]["exp_avg"], dst.state[q]["exp_avg"])
    _run(src, src_ps, 5, 77)
    _run(dst, dst_ps, 5, 77)
    for p, q in zip(src_ps, dst_ps):
        assert mismatches(p, q) <= max(10, 1e-4 * p.numel())


@needs_op
def test_state_dict_from_peer_keeps_settings_and_upcasts():
    lp = pytest.importorskip("lion_pytorch")
    ps = params_of(SHAPES, torch.bfloat16)
    peer = lp.Lion(clone_params(ps), lr=1e-3, weight_decay=0.1)
    _run(peer, peer.param_groups[0]["params"], 2, 5)
    opt = Lion(ps, lr=1e-3, weight_decay=0.1, decoupled_weight_decay=True, master_weights=True)
    opt.load_state_dict(deepcopy(peer.state_dict()))
    g = opt.param_groups[0]
    assert g["decay_mode"] == "decoupled" and g["master_weights"] and g["decay_ref_lr"] == 1e-3
    for p, q in zip(ps, peer.param_groups[0]["params"]):
        m = opt.state[p]["exp_avg"]
        assert m.dtype == torch.float32 and torch.equal(m, peer.state[q]["exp_avg"].float())
    _run(opt, ps, 1, 9)
    assert all("master_param" in opt.state[p] for p in ps)


@needs_op
def test_state_dict_bf16_round_trip():
    ps = params_of(SHAPES, torch.bfloat16)
    lr = torch.tensor(1e-3)
    opt = Lion(ps, lr=lr, weight_decay=0.1, stochastic_rounding=True)
    _run(opt, ps, 3, 11)
    sd = deepcopy(opt.state_dict())
    saved = {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()}
    qs = clone_params(ps)
    lr2 = torch.tensor(5e-2)
    opt2 = Lion(qs, lr=lr2, stochastic_rounding=True)
    sr2 = opt2.param_groups[0]["sr_step"]
    opt2.load_state_dict(sd)
    g2 = opt2.param_groups[0]
    assert g2["lr"] is lr2 and float(lr2) == float(lr)
    assert g2["sr_step"] is sr2 and int(sr2) == 3
    assert g2["weight_decay"] == 0.1
    for i, q in enumerate(qs):
        m = opt2.state[q]["exp_avg"]
        assert m.dtype == torch.float32 and torch.equal(m, saved[i]["exp_avg"])
    _run(opt, ps, 2, 13)
    _run(opt2, qs, 2, 13)
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
    # master weights round trip
    ms = params_of(SHAPES, torch.bfloat16)
    mo = Lion(ms, lr=1e-3, master_weights=True)
    _run(mo, ms, 2, 17)
    mo2 = Lion(clone_params(ms), lr=1e-3, master_weights=True)
    mo2.load_state_dict(deepcopy(mo.state_dict()))
    for p, q in zip(ms, mo2.param_groups[0]["params"]):
        assert mo2.state[q]["master_param"].dtype == torch.float32
        assert torch.equal(mo2.state[q]["master_param"], mo.state[p]["master_param"])


@needs_op
def test_state_dict_timm_keys():
    sd = Lion(params_of([(3,)]), lr=1e-3, cautious=True, decay_mode="corrected").state_dict()
    g = sd["param_groups"][0]
    assert g["caution"] is True and g["corrected_weight_decay"] is True and g["max_lr_snapshot"] == 1e-3
    # a timm-style dict maps back
    opt = Lion(params_of([(3,)]), lr=1e-3, weight_decay=0.1)
    tsd = opt.state_dict()
    tg = tsd["param_groups"][0]
    for k in ("cautious", "decay_mode", "decay_ref_lr"):
        del tg[k]
    tg.update(caution=True, corrected_weight_decay=True, max_lr_snapshot=2e-3)
    opt.load_state_dict(tsd)
    g = opt.param_groups[0]
    assert g["cautious"] and g["decay_mode"] == "corrected" and g["decay_ref_lr"] == 2e-3
    assert not set(("caution", "corrected_weight_decay", "max_lr_snapshot")) & set(g)


@needs_op
@pytest.mark.parametrize("caution", [False, True])
@pytest.mark.parametrize("corrected", [False, True])
def test_state_dict_timm_interchange(caution, corrected):
    TimmLion = timm_lion()
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    opt = Lion(ps, lr=1e-3, weight_decay=0.1, caution=caution, corrected_weight_decay=corrected)
    topt = TimmLion(qs, lr=1e-3, weight_decay=0.1, caution=caution, corrected_weight_decay=corrected)
    _run(opt, ps, 3, 21)
    for p, q in zip(ps, qs):
        q.data.copy_(p.detach())
    topt.load_state_dict(deepcopy(opt.state_dict()))
    back = Lion(clone_params(ps), lr=1e-3)
    back.load_state_dict(deepcopy(topt.state_dict()))
    assert back.param_groups[0]["cautious"] == caution
    assert (back.param_groups[0]["decay_mode"] == "corrected") == corrected
    _run(opt, ps, 5, 23)
    _run(topt, qs, 5, 23)
    for p, q in zip(ps, qs):
        assert mismatches(p, q) <= max(10, 1e-4 * p.numel())


# ---- 8. cautious: timm parity ------------------------------------------------------------------------
@needs_op
def test_cautious_timm_parity():
    TimmLion = timm_lion()
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    opt = Lion(ps, lr=1e-3, weight_decay=0.1, cautious=True)
    topt = TimmLion(qs, lr=1e-3, weight_decay=0.1, caution=True)
    for step in range(10):
        grads = [make(p.shape, seed=4000 * step + i) for i, p in enumerate(ps)]
        set_grads(ps, grads)
        set_grads(qs, grads)
        opt.step()
        topt.step()
    for p, q in zip(ps, qs):
        assert mismatches(p, q) <= max(10, 1e-4 * p.numel())


# ---- paths agree: fused == pure-torch foreach == per-tensor loop == exact reference -------------------
CONFIGS = [
    dict(dtype=torch.float32),
    dict(dtype=torch.float64, weight_decay=0.1, decay_mode="corrected"),
    dict(dtype=torch.float32, cautious=True, weight_decay=0.1),
    dict(dtype=torch.float32, maximize=True, decay_mode="decoupled", weight_decay=0.3),
    dict(dtype=torch.bfloat16, weight_decay=0.1),
    dict(dtype=torch.float16, weight_decay=0.1, state_dtype=torch.float16),
    dict(dtype=torch.bfloat16, master_weights=True, weight_decay=0.1),
    dict(dtype=torch.bfloat16, stochastic_rounding=True, sr_seed=1234, weight_decay=0.1),
    dict(dtype=torch.float32, nan_policy="torch", cautious=True),
]


@needs_op
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("lr_kind", ["float", "tensor"])
def test_paths_bitwise_equal(cfg, lr_kind):
    cfg = dict(cfg)
    dtype = cfg.pop("dtype")
    shapes = [(33, 17), (1000,), (7,), (3, 4, 5, 6)]
    base = params_of(shapes, dtype)
    base[3].data = base[3].data.to(memory_format=torch.channels_last)
    runs = {}
    for path in ("fused", "foreach", "loop", "reference"):
        ps = clone_params(base)
        ps[3].data = ps[3].data.to(memory_format=torch.channels_last)
        lr = torch.tensor(3e-3) if lr_kind == "tensor" else 3e-3
        kw = dict(cfg, lr=lr)
        if path == "fused":
            opt = Lion(ps, fused=True, **kw)
            assert opt._group_path(opt.param_groups[0]) == "fused"
        elif path == "foreach":
            opt = Lion(ps, foreach=True, **kw)
        elif path == "loop":
            opt = Lion(ps, foreach=False, fused=False, **kw)
            assert opt._group_path(opt.param_groups[0]) == "loop"
        else:
            opt = Lion(ps, foreach=True, **kw)
            opt.step = _reference_step(opt)
        for step in range(3):
            grads = [make(p.shape, dtype, 500 * step + i) for i, p in enumerate(ps)]
            grads[2][3] = 0.0
            set_grads(ps, grads)
            opt.step()
        runs[path] = (ps, opt)
    fps, fopt = runs["fused"]
    for path in ("foreach", "loop", "reference"):
        ps, opt = runs[path]
        for i, (a, b) in enumerate(zip(fps, ps)):
            assert torch.equal(a.detach(), b.detach()), f"{path}: param {i}"
            for k in fopt.state[a]:
                assert torch.equal(fopt.state[a][k], opt.state[b][k]), f"{path}: {k} {i}"


def _reference_step(opt):
    """Replace opt.step by the exact-T reference (state created by the optimizer's _init_group)."""
    def step():
        with torch.no_grad():
            for g in opt.param_groups:
                ps, gs, ms, ws = [], [], [], []
                opt._init_group(g, ps, gs, ms, ws)
                ref.lion_step_(ps, gs, ms, master_params=ws or None, lr=g["lr"], betas=g["betas"],
                               weight_decay=g["weight_decay"], decay_mode=g["decay_mode"],
                               decay_ref_lr=g["decay_ref_lr"], maximize=g["maximize"], cautious=g["cautious"],
                               cautious_min_frac=g["cautious_min_frac"],
                               stochastic_rounding=g["stochastic_rounding"], sr_seed=g["sr_seed"],
                               sr_step=g.get("sr_step"), nan_policy=g["nan_policy"])
                if g["stochastic_rounding"]:
                    g["sr_step"].add_(1)
    return step


@needs_op
def test_sr_step_advances_and_changes_bits():
    ps = params_of([(4096,)], torch.bfloat16)
    opt = Lion(ps, lr=1e-3, stochastic_rounding=True)
    sr = opt.param_groups[0]["sr_step"]
    outs = []
    for step in range(2):
        p0 = ps[0].detach().clone()
        ps[0].grad = make((4096,), torch.bfloat16, 1)
        opt.step()
        assert int(sr) == step + 1 and opt.param_groups[0]["sr_step"] is sr
        outs.append(ps[0].detach().float() - p0.float())
    assert not torch.equal(outs[0], outs[1])


# ---- 10. options ------------------------------------------------------------------------------------
@needs_op
def test_maximize_equals_negated_grad():
    ps = params_of(SHAPES)
    qs = clone_params(ps)
    a = Lion(ps, lr=1e-2, weight_decay=0.1, maximize=True)
    b = Lion(qs, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        grads = [make(p.shape, seed=10 * step + i) for i, p in enumerate(ps)]
        set_grads(ps, grads)
        set_grads(qs, [-g for g in grads])
        a.step()
        b.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())


@needs_op
@pytest.mark.parametrize("fused", [None, False])
def test_complex_params_view_as_real(fused):
    z = torch.nn.Parameter(torch.complex(make((5, 3), seed=1), make((5, 3), seed=2)))
    r = torch.nn.Parameter(torch.view_as_real(z.detach()).clone())
    a = Lion([z], lr=1e-2, weight_decay=0.1, fused=fused)
    b = Lion([r], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        g = torch.complex(make((5, 3), seed=10 + step), make((5, 3), seed=20 + step))
        z.grad = g.clone()
        r.grad = torch.view_as_real(g).clone()
        a.step()
        b.step()
    assert torch.equal(torch.view_as_real(z.detach()), r.detach())
    assert a.state[z]["exp_avg"].dtype == torch.complex64


@needs_op
def test_complex_matches_timm():
    TimmLion = timm_lion()
    z = torch.nn.Parameter(torch.complex(make((64,), seed=1), make((64,), seed=2)))
    w = torch.nn.Parameter(z.detach().clone())
    a, b = Lion([z], lr=1e-2), TimmLion([w], lr=1e-2)
    for step in range(3):
        g = torch.complex(make((64,), seed=10 + step), make((64,), seed=20 + step))
        z.grad, w.grad = g.clone(), g.clone()
        a.step()
        b.step()
    assert mismatches(torch.view_as_real(z), torch.view_as_real(w)) <= 10


@needs_op
def test_groups_no_grad_and_add_param_group():
    ps = params_of(SHAPES)
    opt = Lion([{"params": ps[:2], "lr": 1e-2, "weight_decay": 0.2}, {"params": ps[2:3]}], lr=1e-3)
    qs = clone_params(ps)
    r1 = Lion(qs[:2], lr=1e-2, weight_decay=0.2)
    r2 = Lion(qs[2:3], lr=1e-3)
    grads = [make(p.shape, seed=i) for i, p in enumerate(ps)]
    set_grads(ps, grads[:3] + [None])
    set_grads(qs, grads[:3] + [None])
    opt.step()
    r1.step()
    r2.step()
    for p, q in zip(ps[:3], qs[:3]):
        assert torch.equal(p.detach(), q.detach())
    assert ps[3] not in opt.state
    # mid-run
    opt.add_param_group({"params": [ps[3]], "lr": 5e-3, "decay_mode": "fixed", "weight_decay": 1e-3})
    r3 = Lion([qs[3]], lr=5e-3, decay_mode="fixed", weight_decay=1e-3)
    grads = [make(p.shape, seed=40 + i) for i, p in enumerate(ps)]
    set_grads(ps, grads)
    set_grads(qs, grads)
    opt.step()
    for o in (r1, r2, r3):
        o.step()
    for p, q in zip(ps, qs):
        assert torch.equal(p.detach(), q.detach())
    assert opt.param_groups[2]["decay_ref_lr"] == 1e-3  # the constructor lr


def test_sparse_grad_rejected():
    p = torch.nn.Parameter(torch.zeros(4, 3))
    p.grad = torch.zeros(4, 3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        Lion([p]).step()


def test_step_has_no_grad_scaler_kwarg():
    import inspect
    assert "grad_scaler" not in inspect.signature(Lion.step).parameters


@needs_op
def test_closure_runs_with_grad():
    p = torch.nn.Parameter(torch.ones(3))
    opt = Lion([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p * p).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == 3.0
    assert torch.equal(p.detach(), torch.full((3,), 0.9))


# ---- 15. torch.compile ------------------------------------------------------------------------------
@needs_op
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_compiled_step_equals_eager(device):
    import torch._dynamo
    torch._dynamo.reset()
    shapes = [(64, 32), (32,), (10, 64)]
    ps = params_of(shapes, device=device)
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    lr_a = torch.tensor(1e-2, device=device)
    lr_b = torch.tensor(1e-2, device=device)
    a = Lion(ps, lr=lr_a, weight_decay=0.1)
    b = Lion(qs, lr=lr_b, weight_decay=0.1)
    step = torch.compile(a.step, fullgraph=True)
    for i in range(3):
        grads = [make(p.shape, seed=100 * i + j, device=device) for j, p in enumerate(ps)]
        set_grads(ps, grads)
        set_grads(qs, grads)
        if i == 0:
            a.step()  # state creation eagerly, as with torch's optimizers
        else:
            step()
        b.step()
        for p, q in zip(ps, qs):
            assert torch.equal(p.detach(), q.detach())
    # a scheduler-changed tensor lr causes no recompile
    with torch._dynamo.config.patch(error_on_recompile=True):
        for i in range(2):
            lr_a.fill_(lr_a.item() * 0.5)
            lr_b.fill_(lr_b.item() * 0.5)
            grads = [make(p.shape, seed=900 + 10 * i + j, device=device) for j, p in enumerate(ps)]
            set_grads(ps, grads)
            set_grads(qs, grads)
            step()
            b.step()
            for p, q in zip(ps, qs):
                assert torch.equal(p.detach(), q.detach())
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
        b.step()
        eager_peak = torch.cuda.max_memory_allocated() - base
        torch.cuda.reset_peak_memory_stats()
        step()
        comp_peak = torch.cuda.max_memory_allocated() - base
        nbytes = sum(p.numel() * p.element_size() for p in ps)
        assert comp_peak <= eager_peak + 0.01 * nbytes + 4096


@needs_op
def test_compiled_sr_step_advances():
    import torch._dynamo
    torch._dynamo.reset()
    ps = params_of([(256,)], torch.bfloat16)
    opt = Lion(ps, lr=torch.tensor(1e-3), stochastic_rounding=True)
    ps[0].grad = make((256,), torch.bfloat16, 1)
    opt.step()
    step = torch.compile(opt.step, fullgraph=True)
    ps[0].grad = make((256,), torch.bfloat16, 2)
    step()
    assert int(opt.param_groups[0]["sr_step"]) == 2


# ---- 16. CUDA graphs --------------------------------------------------------------------------------
@needs_op
@pytest.mark.cuda
@pytest.mark.parametrize("sr", [False, True])
def test_cuda_graph_capture_replay(sr):
    dtype = torch.bfloat16 if sr else torch.float32
    shapes = [(256, 128), (128,), (1000,)]
    ps = params_of(shapes, dtype, device="cuda")
    qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    lr = torch.tensor(1e-3, device="cuda")
    a = Lion(ps, lr=lr, weight_decay=0.1, capturable=True, stochastic_rounding=sr)
    b = Lion(qs, lr=1e-3, weight_decay=0.1, stochastic_rounding=sr)
    assert a.param_groups[0].get("sr_step", torch.zeros((), device="cuda")).is_cuda
    static = [torch.zeros_like(p) for p in ps]
    for p, s in zip(ps, static):
        p.grad = s
    g0 = [make(p.shape, dtype, 7 + i, device="cuda") for i, p in enumerate(ps)]
    for s, g in zip(static, g0):
        s.copy_(g)
    set_grads(qs, g0)
    a.step()  # warm-up creates state
    b.step()
    s_stream = torch.cuda.Stream()
    s_stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(s_stream):
        with torch.cuda.graph(graph):
            a.step()
    torch.cuda.current_stream().wait_stream(s_stream)
    for r in range(5):
        new_lr = 1e-3 * (0.7 ** (r + 1))
        lr.fill_(new_lr)
        b.param_groups[0]["lr"] = float(lr.item())
        grads = [make(p.shape, dtype, 100 + 10 * r + i, device="cuda") for i, p in enumerate(ps)]
        for s, g in zip(static, grads):
            s.copy_(g)
        set_grads(qs, grads)
        graph.replay()
        b.step()
        torch.cuda.synchronize()
        for p, q in zip(ps, qs):
            assert torch.equal(p.detach(), q.detach())
    if sr:
        assert int(a.param_groups[0]["sr_step"]) == int(b.param_groups[0]["sr_step"]) == 6


# ---- 19. training quality ---------------------------------------------------------------------------
def _train(opt_factory, seed, steps, n_samples=8192, batch=256):
    g = torch.Generator().manual_seed(1234)  # fixed teacher
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(n_samples, 32, generator=g)
    with torch.no_grad():
        y = teacher(x).argmax(-1)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                                torch.nn.GELU(), torch.nn.Linear(128, 10))
    opt = opt_factory(model.parameters())
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    order = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n_samples, generator=order)
    pos, ema, curve = 0, None, []
    for step in range(steps):
        if pos + batch > n_samples:
            perm, pos = torch.randperm(n_samples, generator=order), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        curve.append(ema)
    return curve


@needs_op
@pytest.mark.slow
def test_training_quality_matches_lion_pytorch():
    """§6.19 with 300 steps under FASTNORM_FULL_TESTS=1; CI runs the same criterion on 120 steps."""
    lp = pytest.importorskip("lion_pytorch")
    steps = 300 if os.environ.get("FASTNORM_FULL_TESTS") == "1" else 120
    fn = [_train(lambda ps: Lion(ps, lr=3e-4, weight_decay=0.1), s, steps) for s in (0, 1, 2)]
    pe = [_train(lambda ps: lp.Lion(ps, lr=3e-4, weight_decay=0.1), s, steps) for s in (0, 1, 2)]
    fn_t, pe_t = torch.tensor(fn), torch.tensor(pe)
    for k in range(24, steps, 25):
        mf, mp = fn_t[:, k].mean().item(), pe_t[:, k].mean().item()
        sd = pe_t[:, k].std().item()
        assert abs(mf - mp) <= max(3 * sd, 0.02 * mp), f"step {k}: {mf} vs {mp} (σ {sd})"
    assert abs(fn_t[:, -1].mean() - pe_t[:, -1].mean()) <= 0.02 * pe_t[:, -1].mean()
    assert pe_t[:, -1].mean() < 0.92 * pe_t[:, 0].mean()  # it actually learned


@needs_op
def test_deepcopy_and_pickle_keep_behaviour():
    import pickle
    ps = params_of([(5,)], torch.bfloat16)
    opt = Lion(ps, lr=1e-3, stochastic_rounding=True, cautious=True)
    _run(opt, ps, 1, 3)
    for other in (deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        g = other.state_dict()["param_groups"][0]
        assert g["caution"] is True and "differentiable" not in g
        assert int(other.param_groups[0]["sr_step"]) == 1


# ---- the reference module itself --------------------------------------------------------------------
def test_reference_philox_known_answers():
    assert ref.philox4x32_10([0, 0, 0, 0], [0, 0]) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    m = 0xFFFFFFFF
    assert ref.philox4x32_10([m] * 4, [m, m]) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)
    c = torch.tensor([0, m, 12345, 2 ** 31 + 7])
    out = ref.philox4x32_10_tensor(c, c ^ 0x55, c >> 3, 77, 0xDEADBEEF, 3)
    for i in range(4):
        ci = int(c[i])
        expect = ref.philox4x32_10([ci, ci ^ 0x55, ci >> 3, 77], [0xDEADBEEF, 3])
        assert tuple(int(w[i]) for w in out) == expect


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_reference_fma_is_correctly_rounded(dtype):
    from fractions import Fraction
    import numpy as np
    g = torch.Generator().manual_seed(3)
    n = 3000
    a = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(n, generator=g, dtype=torch.float64).to(dtype)
    c = (-(a.double() * b.double()) * (1 + torch.randn(n, generator=g, dtype=torch.float64) * 1e-6)).to(dtype)
    c[::3] = torch.randn(len(c[::3]), generator=g, dtype=torch.float64).to(dtype)  # no cancellation
    r = ref.fma_rn(a, b, c)
    for i in range(n):
        exact = Fraction(a[i].item()) * Fraction(b[i].item()) + Fraction(c[i].item())
        if dtype == torch.float64:
            want = float(exact)  # Fraction -> float rounds correctly
        else:
            f = np.float32(float(exact))
            cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
            want = float(min(cands, key=lambda x: (abs(Fraction(float(x)) - exact),
                                                  int(np.array(x).view(np.int32)) & 1)))
        assert r[i].item() == want, (i, a[i].item(), b[i].item(), c[i].item())


def test_reference_float64_mode_close_to_exact_mode():
    ps = [make((100,), torch.float64, 1), make((7, 3), torch.float64, 2)]
    gs = [make(p.shape, torch.float64, 10 + i) for i, p in enumerate(ps)]
    ms = [make(p.shape, torch.float64, 20 + i, scale=0.1) for i, p in enumerate(ps)]
    kw = dict(lr=1e-2, weight_decay=0.1, decay_mode="corrected", decay_ref_lr=3e-2, cautious=True)
    a = ref.lion_step(ps, gs, ms, precision="float64", **kw)
    b = ref.lion_step(ps, gs, ms, precision="exact", **kw)
    for x, y in zip(a.params + a.exp_avgs, b.params + b.exp_avgs):
        torch.testing.assert_close(x, y, rtol=1e-14, atol=1e-15)
    assert all(torch.equal(p, make(p.shape, torch.float64, 1 + i)) for i, p in enumerate(ps))  # out of place
