"""SaRA user-facing layer (specs/sara.md §2.1–§2.3, §3.1–§3.8, §5, §6 items 1–3, 9–17, 20): selection orchestration,
targeting, the wrapped layers, the SaRA optimizer, the regulariser, PPA, adapter files. The ops themselves are tested in
the kernel tests; here they are used through the public API and compared with ``fastnorm.reference.sara`` / dense torch.
"""
import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fastnorm
from fastnorm.nn.sara import SaRAConv2d, SaRALinear, SaRAVectorDelta
from fastnorm.sara import SaRAConfig, get_sara_model, load_adapter_state, merge_adapter, select_indices


ref = pytest.importorskip("fastnorm.reference.sara")
SaRA = fastnorm.sara.SaRA
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class MLP(nn.Module):
    def __init__(self, d_in=24, hidden=80, d_out=5, bias=True):
        super().__init__()
        self.fc_in = nn.Linear(d_in, hidden, bias=bias)
        self.h1 = nn.Linear(hidden, hidden, bias=bias)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, d_out, bias=bias)

    def forward(self, x):
        return self.head(self.norm(F.relu(self.h1(F.relu(self.fc_in(x))))))


def make_mlp(seed=0, dtype=torch.float32, **kw):
    torch.manual_seed(seed)
    m = MLP(**kw).to(dtype)
    with torch.no_grad():  # pretrained-like weights with a spread of magnitudes
        for p in m.parameters():
            p.mul_(1.0 + torch.rand_like(p))
    return m


def data(n=16, d_in=24, d_out=5, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d_in, generator=g, dtype=dtype), torch.randint(0, d_out, (n,), generator=g)


def train(model, opt, x, y, steps, closure_loss=None):
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss))
    return losses


def flat_w(layer):
    return layer.base_layer.weight.detach().reshape(-1)


def check_invariant(layer, alpha=1.0):
    """W[idx] == RN_w(base + α·δ) (active and frozen), W elsewhere == W0."""
    w = flat_w(layer)
    for idx, base, d in ((layer.sara_indices, layer.sara_base, layer.sara_delta.detach()),
                         (layer.sara_frozen_indices, layer.sara_frozen_base, layer.sara_frozen_delta)):
        acc = torch.float64 if w.dtype == torch.float64 else torch.float32
        want = (base.to(acc) + alpha * d.to(acc)).to(w.dtype)
        assert torch.equal(w[idx.long()], want)


# ---------------------------------------------------------------------------------------------------------------
# 1. selection (§3.1) vs the reference
# ---------------------------------------------------------------------------------------------------------------
SPECIALS = [0.0, -0.0, 1e-40, -1e-40, float("inf"), float("-inf"), float("nan"), 5e-3, -5e-3, 2e-3, -2e-3]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_threshold_selection_matches_nonzero(dtype):
    g = torch.Generator().manual_seed(0)
    w = (torch.randn(37, 29, generator=g) * 4e-3).to(dtype)
    th = 2e-3
    flat = w.view(-1)
    flat[: len(SPECIALS)] = torch.tensor(SPECIALS, dtype=torch.float64).to(dtype)
    flat[20] = torch.tensor(th, dtype=torch.float64).to(dtype)  # |w| == θ_w: excluded
    idx, base = select_indices(w, threshold=th)
    th_w = torch.tensor(th, dtype=torch.float64).to(dtype)
    want = torch.nonzero(w.reshape(-1).abs() < th_w).reshape(-1)
    assert idx.dtype == torch.int32
    assert torch.equal(idx.long(), want)
    assert torch.equal(base.view(torch.uint8), w.reshape(-1)[want].view(torch.uint8))  # bitwise, -0 kept
    assert torch.equal(idx, ref.select_threshold(w, th))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_exact_k_selection_ties(dtype):
    g = torch.Generator().manual_seed(1)
    w = torch.randint(-6, 7, (31, 17), generator=g).to(dtype) * 0.25  # many ties
    w.view(-1)[5] = float("nan")
    for k in (0, 1, 7, 100, 256, w.numel() - 1):
        idx, base = select_indices(w, k=k)
        assert idx.numel() == k
        assert torch.equal(idx.long(), ref.select_k(w, k).long())
        if 0 < k < w.numel() - 1:
            a = w.reshape(-1).abs().double()
            mask = torch.zeros(w.numel(), dtype=torch.bool)
            mask[idx.long()] = True
            valid = ~torch.isnan(a)
            assert a[mask].max() <= a[~mask & valid].min()
    with pytest.raises(ValueError, match="exceeds"):
        select_indices(w, k=w.numel() + 1)
    with pytest.raises(ValueError, match="threshold"):
        select_indices(w, threshold=-1.0)


def _layers_k(model):
    return {n: m.num_active for n, m in model.named_modules() if isinstance(m, SaRALinear)}


def test_lora_rank_density_budget_modes():
    m = get_sara_model(make_mlp(), SaRAConfig(lora_rank=2))
    ks = _layers_k(m)
    assert ks == {"fc_in": 2 * (80 + 24), "h1": 2 * 160, "head": 2 * 85}
    m = get_sara_model(make_mlp(), SaRAConfig(density=0.05))
    ks = _layers_k(m)
    assert ks == {"fc_in": int(0.05 * 80 * 24), "h1": int(0.05 * 6400), "head": int(0.05 * 400)}
    # global budget: K smallest |w| over all targets, ties in module order then flat order
    base = make_mlp()
    ws = [base.fc_in.weight, base.h1.weight, base.head.weight]
    K = 700
    m = get_sara_model(copy.deepcopy(base), SaRAConfig(budget=K))
    assert sum(_layers_k(m).values()) == K
    kstar, nlt = ref.radix_select_key(ws, K)
    picked = [m.fc_in, m.h1, m.head]
    for layer, w in zip(picked, ws):
        keys = ref.abs_key(w.detach().reshape(-1))
        sel = keys[layer.sara_indices.long()]
        assert bool((sel <= kstar).all())
        assert int((keys < kstar).sum()) <= layer.num_active
    # lora_rank global: K = Σ r(rows+cols)
    m = get_sara_model(copy.deepcopy(base), SaRAConfig(lora_rank=2, lora_rank_scope="global"))
    assert sum(_layers_k(m).values()) == 2 * (104 + 160 + 85)


def test_global_budget_ties_module_order():
    m = nn.Sequential(nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False))
    with torch.no_grad():
        m[0].weight.fill_(1.0)
        m[1].weight.fill_(1.0)
        m[0].weight[0, 0] = 0.5
    get_sara_model(m, SaRAConfig(budget=20))
    assert m[0].num_active == 16 and m[1].num_active == 4
    assert m[1].sara_indices.tolist() == [0, 1, 2, 3]


def test_lora_rank_too_large_names_layer():
    m = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ValueError, match="'0'"):
        get_sara_model(m, SaRAConfig(lora_rank=3))


# ---------------------------------------------------------------------------------------------------------------
# 2. targeting (PEFT rules)
# ---------------------------------------------------------------------------------------------------------------
class Nest(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.ModuleDict({"q_proj": nn.Linear(8, 8), "v_proj": nn.Linear(8, 8), "conv": nn.Conv2d(2, 4, 3)})
        self.emb = nn.Embedding(10, 8)
        self.mha = nn.MultiheadAttention(8, 2)
        self.lm_head = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.lm_head


def _wrapped(m):
    return sorted(n for n, x in m.named_modules() if isinstance(x, (SaRALinear, SaRAConv2d)))


def test_target_rules():
    with pytest.warns(UserWarning, match="MultiheadAttention"):
        m = get_sara_model(Nest(), SaRAConfig(threshold=1e-1))
    assert _wrapped(m) == ["block.conv", "block.q_proj", "block.v_proj", "lm_head"]
    m = get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=["q_proj"]))
    assert _wrapped(m) == ["block.q_proj"]
    m = get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=r"block\.(q|v)_proj"))
    assert _wrapped(m) == ["block.q_proj", "block.v_proj"]
    m = get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules="all-linear"))
    assert _wrapped(m) == ["block.q_proj", "block.v_proj"]  # output layer and MHA excluded
    m = get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=["q_proj", "v_proj", "conv"],
                                          exclude_modules=["v_proj"]))
    assert _wrapped(m) == ["block.conv", "block.q_proj"]
    with pytest.raises(TypeError, match="Embedding"):
        get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=["emb"]))
    with pytest.raises(TypeError, match="MultiheadAttention"):
        get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=["out_proj"]))
    with pytest.raises(ValueError, match="matched no module"):
        get_sara_model(Nest(), SaRAConfig(threshold=1e-1, target_modules=["nothing"]))


def test_modules_to_save_bias_norm_modes():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, target_modules=["fc_in", "h1"], modules_to_save=["head"], bias="all", norms="all")
    dense = {id(p) for p in opt.param_groups[1]["params"]}
    assert id(m.head.weight) in dense and id(m.head.bias) in dense
    assert id(m.fc_in.base_layer.bias) in dense and id(m.norm.weight) in dense
    assert not m.fc_in.base_layer.weight.requires_grad
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, target_modules=["fc_in", "h1"], bias="sara", norms="none", lr=1e-2)
    vecs = [v for _, _, v in opt._vectors]
    assert len(vecs) == 2 and all(isinstance(v, SaRAVectorDelta) for v in vecs)
    x, y = data()
    out0 = m(x).detach()
    train(m, opt, x, y, 3)
    b = m.fc_in.base_layer.bias  # parametrized: W0 + δ at its masked entries
    v = m.fc_in.base_layer.parametrizations.bias[0]
    orig = m.fc_in.base_layer.parametrizations.bias.original
    assert v.sara_delta.abs().sum() > 0
    assert torch.equal(b[v.sara_indices.long()], (v.sara_base.float() + v.sara_delta.detach()))
    mask = torch.ones(b.numel(), dtype=torch.bool)
    mask[v.sara_indices.long()] = False
    assert torch.equal(b.detach()[mask], orig.detach()[mask])
    assert not torch.equal(m(x).detach(), out0)
    with pytest.raises(ValueError, match="threshold mode"):
        SaRA(make_mlp(), lora_rank=2, bias="sara")


def test_tied_weights_adapted_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = nn.Linear(16, 16)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(F.relu(self.a(x)))

    torch.manual_seed(0)
    m = Tied()
    ref_m = copy.deepcopy(m)
    opt = SaRA(m, lora_rank=1)
    assert len(opt.param_groups[0]["params"]) == 1
    assert m.b.is_alias and m.b.owner is m.a
    x = torch.randn(8, 16)
    m(x).square().sum().backward()
    # δ gradient collects both uses: compare with the dense gradient of the tied weight gathered at idx
    w = ref_m.a.weight
    ref_m(x).square().sum().backward()
    want = w.grad.reshape(-1)[m.a.sara_indices.long()]
    torch.testing.assert_close(m.a.sara_delta.grad, want, rtol=1e-5, atol=1e-6)
    assert "b.sara_delta" not in m.state_dict()


# ---------------------------------------------------------------------------------------------------------------
# 3. layers: forward, gradient, memory
# ---------------------------------------------------------------------------------------------------------------
def test_forward_is_dense_and_delta_grad_matches_dense_gather():
    torch.manual_seed(0)
    lin = nn.Linear(40, 30).double()
    idx, base = select_indices(lin.weight, k=100)
    layer = SaRALinear(lin, idx)
    lin.weight.requires_grad_(False)
    with torch.no_grad():
        layer.sara_delta.normal_()
    layer.sync_()
    check_invariant(layer)
    x = torch.randn(7, 3, 40, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    W = lin.weight.detach().clone().requires_grad_(True)
    y_ref = F.linear(x, W, lin.bias)
    assert torch.equal(y, y_ref)
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    torch.testing.assert_close(layer.sara_delta.grad, W.grad.reshape(-1)[idx.long()], rtol=1e-12, atol=1e-12)
    assert lin.weight.grad is None


def test_conv_layer_grad_and_padding_modes():
    torch.manual_seed(0)
    for kw in (dict(padding=1), dict(padding="same", dilation=2), dict(padding=1, padding_mode="reflect"),
               dict(stride=2, groups=2)):
        conv = nn.Conv2d(4, 6, 3, **kw).double()
        idx, _ = select_indices(conv.weight, k=30)
        layer = SaRAConv2d(conv, idx)
        conv.weight.requires_grad_(False)
        with torch.no_grad():
            layer.sara_delta.normal_()
        layer.sync_()
        x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
        y = layer(x)
        W = conv.weight.detach().clone().requires_grad_(True)
        y_ref = conv._conv_forward(x, W, conv.bias)
        torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
        g = torch.randn_like(y)
        y.backward(g)
        y_ref.backward(g)
        torch.testing.assert_close(layer.sara_delta.grad, W.grad.reshape(-1)[idx.long()], rtol=1e-10, atol=1e-10)


def _param_buffer_bytes(model):
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        s = t.untyped_storage()
        if s.data_ptr() not in seen:
            seen.add(s.data_ptr())
            total += s.nbytes()
    return total


def test_no_second_dense_weight():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 256))
    before = _param_buffer_bytes(m)
    opt = SaRA(m, density=0.02)
    k = sum(l.num_active for l in opt._layers)
    after = _param_buffer_bytes(m)
    # δ fp32 + indices int32 + base fp32 + cutoff + row_ptr: k-sized, never a second [256, 256] weight
    rows = 2 * 257
    assert after - before <= k * 12 + rows * 4 + 2 * 8 + 1024
    assert after - before < 256 * 256 * 4
    # the forward allocates no dense-weight-sized block (input small: N·cols < rows·cols)
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(8, 256)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        m(x).sum().backward()
    sizes = [int(e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    assert max(sizes) < 256 * 256 * 4


# ---------------------------------------------------------------------------------------------------------------
# 4. merge / unmerge / disable / resync (§3.2, §3.7)
# ---------------------------------------------------------------------------------------------------------------
def test_merge_unmerge_disable_exact_and_resync():
    m = make_mlp()
    w0 = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = SaRA(m, threshold=0.05, lambda_rank=0.0, lr=1e-2)
    x, y = data()
    train(m, opt, x, y, 4)
    for l in opt._layers:
        check_invariant(l)
    out = m(x).detach()
    with opt.disable_adapter():
        for name in ("fc_in", "h1", "head"):
            assert torch.equal(getattr(m, name).base_layer.weight, w0[f"{name}.weight"])
        base_out = m(x).detach()
    assert torch.equal(m(x).detach(), out)
    opt.unmerge()
    assert torch.equal(m(x).detach(), base_out)
    opt.merge()
    assert torch.equal(m(x).detach(), out)
    # foreign optimizer: SGD moves δ; the next forward resyncs the weight
    sgd = torch.optim.SGD(opt.trainable_parameters(), lr=0.1)
    F.cross_entropy(m(x), y).backward()
    sgd.step()
    sgd.zero_grad()
    m(x)
    for l in opt._layers:
        check_invariant(l)
    # manual edit + sync_
    with torch.no_grad():
        m.h1.sara_delta.add_(0.01)
    opt.sync_()
    check_invariant(m.h1)
    # set_scale rewrites with the new α; α = 0 restores the base bitwise
    opt.set_scale(0.0)
    assert torch.equal(m.h1.base_layer.weight, w0["h1.weight"])
    opt.set_scale(0.5)
    check_invariant(m.h1, alpha=0.5)
    opt.set_scale(1.0)
    check_invariant(m.h1)


def test_merge_and_unload_keeps_outputs():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, bias="sara", lr=1e-2)
    x, y = data()
    train(m, opt, x, y, 3)
    with torch.no_grad():
        out = m(x)
    plain = opt.merge_and_unload()
    assert all(type(mod) is not SaRALinear for mod in plain.modules())
    assert not any("parametrizations" in n for n, _ in plain.named_modules())
    with torch.no_grad():
        assert torch.equal(plain(x), out)
    with pytest.raises(RuntimeError, match="merge_and_unload"):
        opt.step()


def test_state_dict_load_triggers_resync():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05)
    x, y = data()
    train(m, opt, x, y, 2)
    sd = copy.deepcopy(m.state_dict())
    with torch.no_grad():
        m.h1.sara_delta.zero_()
    m.load_state_dict(sd)
    m(x)
    check_invariant(m.h1)


def test_half_keeps_delta_fp32_and_resyncs():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05)
    x, y = data()
    train(m, opt, x, y, 2)
    d = m.h1.sara_delta.detach().clone()
    m.half()
    assert m.h1.sara_delta.dtype == torch.float32 and torch.equal(m.h1.sara_delta.detach(), d)
    assert m.h1.sara_base.dtype == torch.float16 and m.h1.sara_cutoff.dtype == torch.float64
    check_invariant(m.h1)


def test_autocast_bf16_keeps_delta_fp32():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05)
    x, y = data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    assert out.dtype == torch.bfloat16
    F.cross_entropy(out.float(), y).backward()
    assert m.h1.sara_delta.grad.dtype == torch.float32
    opt.step()
    check_invariant(m.h1)


def test_requires_grad_weight_raises_at_forward():
    m = make_mlp()
    SaRA(m, threshold=0.05)
    m.h1.base_layer.weight.requires_grad_(True)
    with pytest.raises(RuntimeError, match="requires_grad"):
        m(data()[0])


# ---------------------------------------------------------------------------------------------------------------
# 5. optimizer step (§3.4)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["delta", "absolute"])
def test_fused_adamw_matches_torch_adamw(target):
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, lambda_rank=0.0, weight_decay=0.1, lr=1e-2, weight_decay_target=target,
               progressive_step=None)
    layer = m.h1
    d_ref = layer.sara_delta.detach().clone().requires_grad_(True)
    base = layer.sara_base.float()
    ref_opt = torch.optim.AdamW([d_ref], lr=1e-2, weight_decay=0.1 if target == "delta" else 0.0, foreach=False)
    x, y = data()
    for _ in range(10):
        F.cross_entropy(m(x), y).backward()
        d_ref.grad = layer.sara_delta.grad.clone()
        if target == "absolute":
            with torch.no_grad():
                d_ref.sub_((base + d_ref) * (1e-2 * 0.1))
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        # same op order as torch's _single_tensor_adamw; FMA contraction may differ by a few ulp per step (an
        # absolute bound near 0, where δ crosses zero and ulps are tiny)
        torch.testing.assert_close(layer.sara_delta.detach(), d_ref.detach(), rtol=2e-6, atol=1e-8)
        check_invariant(layer)
    st = opt.state[layer.sara_delta]
    assert st["step"].dtype == torch.float32 and float(st["step"]) == 10
    assert st["exp_avg"].shape == layer.sara_delta.shape and st["exp_avg_sq"].dtype == torch.float32


def test_lion_path():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, optimizer="lion", lambda_rank=0.0, weight_decay=0.0, progressive_step=None)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert math.isclose(opt.param_groups[0]["lr"], 1e-3 * math.exp(-350 * 0.05) / 5)
    layer = m.h1
    d_ref = layer.sara_delta.detach().clone().requires_grad_(True)
    ref_opt = fastnorm.optim.Lion([d_ref], lr=opt.param_groups[0]["lr"], betas=(0.9, 0.99))
    x, y = data()
    for _ in range(5):
        F.cross_entropy(m(x), y).backward()
        d_ref.grad = layer.sara_delta.grad.clone()
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        assert torch.equal(layer.sara_delta.detach(), d_ref.detach())
        check_invariant(layer)
    assert set(opt.state[layer.sara_delta]) == {"step", "exp_avg"}


def test_default_lr_rule():
    assert math.isclose(SaRA(make_mlp(), threshold=2e-3).param_groups[0]["lr"], 1e-3 * math.exp(-0.7))
    assert abs(SaRA(make_mlp(), threshold=2e-3).param_groups[0]["lr"] - 4.97e-4) < 1e-6
    assert SaRA(make_mlp(), lora_rank=1).param_groups[0]["lr"] == 5e-4


def test_schedulers_clip_grad_scaler():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, modules_to_save=["head"], lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    x, y = data()
    d0 = m.h1.sara_delta.detach().clone()
    for _ in range(3):
        loss = F.cross_entropy(m(x), y)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(opt.trainable_parameters(), 0.5)
        assert torch.isfinite(norm)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        sched.step()
    assert opt.param_groups[0]["lr"] < 1e-2 and opt.param_groups[1]["lr"] < 1e-2
    assert not torch.equal(m.h1.sara_delta.detach(), d0)
    check_invariant(m.h1)


def test_optimizer_state_dict_round_trip():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, modules_to_save=["head"], total_steps=20)
    x, y = data()
    train(m, opt, x, y, 3)
    sd = copy.deepcopy(opt.state_dict())  # torch's load_state_dict keeps same-dtype tensors by reference
    assert {"step_count", "progressed", "rng_state", "config"} <= set(sd["sara"])
    # a fresh SaRA over a fresh copy of the same wrapped state
    m3 = make_mlp()
    opt3 = SaRA(m3, threshold=0.05, modules_to_save=["head"], total_steps=20)
    m3.load_state_dict(m.state_dict())
    opt3.load_state_dict(sd)
    assert opt3.step_count == 3
    l1 = train(m, opt, x, y, 3)
    l3 = train(m3, opt3, x, y, 3)
    assert l1 == l3
    assert torch.equal(m.h1.sara_delta, m3.h1.sara_delta)


# ---------------------------------------------------------------------------------------------------------------
# 6. regulariser (§3.5)
# ---------------------------------------------------------------------------------------------------------------
def _layer_with_delta(rows, cols, k, seed=0, rank=None, dtype=torch.float64):
    torch.manual_seed(seed)
    lin = nn.Linear(cols, rows, bias=False).to(dtype)
    m = nn.Sequential(lin)
    return m


def _dense_S(layer):
    rows, cols = layer.rows, layer.cols
    S = torch.zeros(rows * cols, dtype=torch.float64)
    S[layer.sara_indices.long()] = layer.sara_delta.detach().double()
    if layer.num_frozen:
        S[layer.sara_frozen_indices.long()] = layer.sara_frozen_delta.double()
    return S.view(rows, cols)


def test_svd_regulariser_matches_autograd_nuclear_norm():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 10, bias=False).double())
    opt = SaRA(m, density=0.5, rank_method="svd", rank_min_dim=4, lambda_rank=1.0, progressive_step=None)
    layer = m[0]
    with torch.no_grad():
        layer.sara_delta.normal_()
    val, g = opt._rank_one(layer)
    idx = layer.sara_indices.long()
    s = layer.sara_delta.detach().clone().requires_grad_(True)
    S = torch.zeros(120, dtype=torch.float64).index_put((idx,), s).view(10, 12)
    nuc = torch.linalg.matrix_norm(S, "nuc")
    nuc.backward()
    assert math.isclose(val, float(nuc), rel_tol=1e-12)
    torch.testing.assert_close(g, s.grad, rtol=1e-9, atol=1e-10)
    # rank_loss carries the same gradient into δ
    loss = opt.rank_loss(lambda_rank=2.0)
    loss.backward()
    torch.testing.assert_close(layer.sara_delta.grad, 2.0 * s.grad, rtol=1e-9, atol=1e-10)
    assert math.isclose(float(loss), 2.0 * float(nuc), rel_tol=1e-9)


def test_sketch_exact_for_low_rank():
    torch.manual_seed(0)
    rows, cols = 90, 70
    m = nn.Sequential(nn.Linear(cols, rows, bias=False).double())
    opt = SaRA(m, density=1.0, rank_q=8, rank_oversample=4, lambda_rank=1.0, progressive_step=None)
    layer = m[0]
    L = torch.randn(rows, 3, dtype=torch.float64) @ torch.randn(3, cols, dtype=torch.float64)  # rank 3 <= q
    with torch.no_grad():
        layer.sara_delta.copy_(L.reshape(-1)[layer.sara_indices.long()])
    val, g = opt._rank_one(layer)
    S = _dense_S(layer)
    exact = float(torch.linalg.matrix_norm(S, "nuc"))
    assert math.isclose(val, exact, rel_tol=1e-6)
    U, sig, Vh = torch.linalg.svd(S, full_matrices=False)
    r = int((sig > 1e-6 * sig[0]).sum())
    G = (U[:, :r] @ Vh[:r]).reshape(-1)[layer.sara_indices.long()]
    torch.testing.assert_close(g, G, rtol=1e-5, atol=1e-6)


def _surrogate(s, idx, rows, cols, q):
    S = torch.zeros(rows * cols, dtype=torch.float64).index_put((idx,), s).view(rows, cols)
    sig = torch.linalg.svdvals(S)
    top = sig[:q]
    tail2 = torch.clamp((S * S).sum() - (top * top).sum(), min=0)
    return top.sum() + math.sqrt(min(rows, cols) - q) * torch.sqrt(tail2)


def test_sketch_converges_to_surrogate_gradient():
    torch.manual_seed(0)
    rows, cols, q = 80, 72, 4
    m = nn.Sequential(nn.Linear(cols, rows, bias=False).double())
    opt = SaRA(m, density=1.0, rank_q=q, rank_oversample=4, lambda_rank=1.0, progressive_step=None, rank_min_dim=8)
    layer = m[0]
    idx = layer.sara_indices.long()
    # a clear spectral gap after q: dominant rank-4 part plus small noise on the support
    L = (torch.randn(rows, q, dtype=torch.float64) * torch.tensor([9.0, 7.0, 5.0, 4.0], dtype=torch.float64)) \
        @ torch.randn(q, cols, dtype=torch.float64)
    with torch.no_grad():
        layer.sara_delta.copy_(L.reshape(-1)[idx] + 0.01 * torch.randn(idx.numel(), dtype=torch.float64))
    for _ in range(25):  # warm calls
        val, g = opt._rank_one(layer)
    sig = torch.linalg.svdvals(_dense_S(layer))
    assert float(sig[q - 1] / sig[q]) >= 1.5
    s = layer.sara_delta.detach().clone().requires_grad_(True)
    R = _surrogate(s, idx, rows, cols, q)
    R.backward()
    assert math.isclose(val, float(R), rel_tol=1e-3)
    torch.testing.assert_close(g, s.grad, rtol=1e-3, atol=1e-3 * float(s.grad.abs().max()))
    assert val >= float(torch.linalg.matrix_norm(_dense_S(layer), "nuc")) * (1 - 1e-6)  # upper bound


def test_rank_gradient_reaches_delta_never_base():
    m = make_mlp(hidden=96)
    opt = SaRA(m, threshold=0.05, lambda_rank=1e-2, rank_layers="all", lr=1e-2, progressive_step=None)
    el = opt._eligible()
    assert [opt._layer_names[id(l)] for l in el] == ["h1"]
    with torch.no_grad():
        m.h1.sara_delta.normal_(0, 0.01)
    d0 = m.h1.sara_delta.detach().clone()
    opt.step()  # zero task loss: no backward at all, only the regulariser
    assert not torch.equal(m.h1.sara_delta.detach(), d0)
    assert opt.last_rank_value > 0
    for p in m.parameters():
        if p is not m.h1.sara_delta and p is not m.fc_in.sara_delta and p is not m.head.sara_delta:
            assert p.grad is None
    check_invariant(m.h1)


def test_rank_zero_delta_gives_zero():
    m = make_mlp(hidden=96)
    opt = SaRA(m, threshold=0.05, lambda_rank=1.0, rank_layers="all")
    val, g = opt._rank_one(m.h1)
    assert val == 0.0 and not g.any()


# ---------------------------------------------------------------------------------------------------------------
# 7. progressive parameter adjustment (§3.6)
# ---------------------------------------------------------------------------------------------------------------
def test_ppa_intersect_keeps_state_consistent():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, total_steps=10, lr=5e-2, lambda_rank=0.0)
    assert opt._ppa_at == 5
    x, y = data()
    train(m, opt, x, y, 4)
    layer = m.h1
    d_obj = layer.sara_delta
    old_idx = layer.sara_indices.clone()
    st = opt.state[d_obj]
    F.cross_entropy(m(x), y).backward()
    opt.step()  # step 5: update then PPA
    opt.zero_grad()
    assert opt.progressed
    assert layer.sara_delta is d_obj and opt.param_groups[0]["params"][1] is d_obj
    v = (layer.sara_base.float() + d_obj.detach()).abs()
    assert bool((v < float(layer.sara_cutoff)).all())
    union = torch.cat([layer.sara_indices, layer.sara_frozen_indices]).sort().values
    assert torch.equal(union, old_idx)
    assert layer.num_frozen > 0
    check_invariant(layer)
    st = opt.state[d_obj]
    assert st["exp_avg"].shape == d_obj.shape and st["exp_avg_sq"].shape == d_obj.shape
    assert float(st["step"]) == 5
    assert layer.sara_row_ptr[-1] == layer.num_active
    frozen = layer.sara_frozen_delta.clone()
    train(m, opt, x, y, 2)
    assert torch.equal(layer.sara_frozen_delta, frozen)  # frozen values persist
    check_invariant(layer)


def test_ppa_outputs_and_moments_bitwise():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, lr=5e-2, lambda_rank=0.0, progressive_step=None)
    x, y = data()
    train(m, opt, x, y, 4)
    layer = m.h1
    with torch.no_grad():
        out = m(x)
    st = opt.state[layer.sara_delta]
    old_idx = layer.sara_indices.clone()
    ea, es, d = st["exp_avg"].clone(), st["exp_avg_sq"].clone(), layer.sara_delta.detach().clone()
    opt.progress_now()
    pos = torch.searchsorted(old_idx, layer.sara_indices)
    assert torch.equal(opt.state[layer.sara_delta]["exp_avg"], ea[pos])
    assert torch.equal(opt.state[layer.sara_delta]["exp_avg_sq"], es[pos])
    assert torch.equal(layer.sara_delta.detach(), d[pos])
    with torch.no_grad():
        assert torch.equal(m(x), out)
    assert opt.state[layer.sara_delta]["step"] == 4  # step kept


def test_ppa_reselect_new_entries_start_at_zero():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, lr=5e-2, lambda_rank=0.0, progressive_step=None, progressive_mode="reselect")
    layer = m.h1
    x, y = data()
    train(m, opt, x, y, 2)
    # make room: a never-trained entry whose |W0| passes the cutoff (write W0 below θ at an unselected spot)
    with torch.no_grad():
        w = layer.base_layer.weight.view(-1)
        mask = torch.ones(w.numel(), dtype=torch.bool)
        mask[layer.sara_indices.long()] = False
        spot = int(mask.nonzero()[0])
        w[spot] = 0.01
    opt.progress_now()
    pos = int((layer.sara_indices.long() == spot).nonzero()[0])
    assert float(layer.sara_delta[pos]) == 0.0
    st = opt.state[layer.sara_delta]
    assert float(st["exp_avg"][pos]) == 0.0 and float(st["exp_avg_sq"][pos]) == 0.0
    assert float(layer.sara_base[pos]) == float(torch.tensor(0.01))
    train(m, opt, x, y, 1)
    check_invariant(layer)


def test_total_steps_none_warns():
    with pytest.warns(UserWarning, match="total_steps"):
        opt = SaRA(make_mlp(), threshold=0.05)
    assert opt._ppa_at is None
    x, y = data()
    train(opt.model, opt, x, y, 2)


def test_resume_after_ppa_bitwise(tmp_path):
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, total_steps=6, lr=5e-2, modules_to_save=["head"])
    x, y = data()
    train(m, opt, x, y, 4)
    assert opt.progressed
    torch.save({"model": m.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    l_a = train(m, opt, x, y, 5)
    m2 = make_mlp()
    opt2 = SaRA(m2, threshold=0.05, total_steps=6, lr=5e-2, modules_to_save=["head"])
    ck = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    m2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    assert opt2.progressed and opt2.step_count == 4
    l_b = train(m2, opt2, x, y, 5)
    assert l_a == l_b
    for a, b in zip(m.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------------------------------------------------------
# 8. adapter files (§3.7)
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("safe", [True, False])
def test_save_load_round_trip(tmp_path, safe):
    if safe:
        pytest.importorskip("safetensors")
    base = make_mlp()
    m = copy.deepcopy(base)
    opt = SaRA(m, threshold=0.05, modules_to_save=["head"], total_steps=6, lr=5e-2)
    x, y = data()
    train(m, opt, x, y, 5)  # includes PPA at step 3
    assert opt.progressed
    sd = opt.adapter_state_dict()
    assert set(sd) == {"fc_in.weight.sara_indices", "fc_in.weight.sara_delta", "h1.weight.sara_indices",
                       "h1.weight.sara_delta", "head.weight", "head.bias"}
    assert sd["h1.weight.sara_delta"].dtype == torch.float32 and sd["h1.weight.sara_indices"].dtype == torch.int32
    assert sd["h1.weight.sara_indices"].numel() == m.h1.num_active + m.h1.num_frozen
    opt.save_pretrained(tmp_path, safe_serialization=safe)
    files = set(os.listdir(tmp_path))
    assert "adapter_config.json" in files
    assert ("adapter_model.safetensors" if safe else "adapter_model.bin") in files
    cfg = json.load(open(tmp_path / "adapter_config.json"))
    assert cfg["format"] == "fastnorm-sara" and cfg["version"] == 1 and cfg["threshold"] == 0.05
    assert cfg["weight_shapes"]["h1.weight"] == [80, 80]
    sd2, cfg2 = load_adapter_state(tmp_path)
    assert isinstance(cfg2, SaRAConfig) and set(sd2) == set(sd)
    # fresh base + adapter reproduces W_eff bitwise
    m2 = copy.deepcopy(base)
    opt2 = SaRA.from_pretrained(m2, tmp_path)
    for name in ("fc_in", "h1"):
        assert torch.equal(getattr(m2, name).base_layer.weight, getattr(m, name).base_layer.weight)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
    assert opt2.progressed
    # merge_adapter into a plain model: within one rounding of W_eff
    m3 = copy.deepcopy(base)
    merge_adapter(m3, tmp_path)
    assert torch.equal(m3.h1.weight, m.h1.base_layer.weight)  # W0 + δ == base + δ in one fp32 rounding
    assert torch.equal(m3.head.weight, m.head.weight)
    # α scaling
    m4 = copy.deepcopy(base)
    merge_adapter(m4, tmp_path, alpha=0.0)
    assert torch.equal(m4.h1.weight, base.h1.weight)


def test_checksum_mismatch_raises(tmp_path):
    base = make_mlp()
    m = copy.deepcopy(base)
    opt = SaRA(m, threshold=0.05)
    opt.save_pretrained(tmp_path)
    other = make_mlp(seed=5)
    with pytest.raises(ValueError, match="base_checksum"):
        SaRA.from_pretrained(other, tmp_path)
    with pytest.raises(ValueError, match="base_checksum"):
        merge_adapter(make_mlp(seed=5), tmp_path)
    with pytest.warns(UserWarning, match="base_checksum"):
        merge_adapter(make_mlp(seed=5), tmp_path, strict=False)
    small = MLP(hidden=40)
    with pytest.raises(ValueError, match="fc_in.weight"):
        SaRA.from_pretrained(small, tmp_path)


def test_safetensors_metadata(tmp_path):
    st = pytest.importorskip("safetensors")
    m = make_mlp()
    opt = SaRA(m, threshold=0.05)
    opt.save_pretrained(tmp_path)
    with st.safe_open(str(tmp_path / "adapter_model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "fastnorm-sara" and "base_checksum" in json.loads(meta["config"])


# ---------------------------------------------------------------------------------------------------------------
# 9. config and errors (§2.2, §5)
# ---------------------------------------------------------------------------------------------------------------
def test_config_round_trip(tmp_path):
    c = SaRAConfig(lora_rank=4, target_modules=["q", "v"], modules_to_save="head", progressive_step=100)
    assert SaRAConfig.from_dict(c.to_dict()) == c
    c.save_pretrained(str(tmp_path))
    assert SaRAConfig.from_pretrained(str(tmp_path)) == c
    assert SaRAConfig().effective_threshold == 2e-3 and SaRAConfig().mode == "threshold"


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(threshold=-1e-3), ValueError, "threshold"),
    (dict(threshold=0.0), ValueError, "threshold"),
    (dict(threshold=1e-3, density=0.1), ValueError, "at most one"),
    (dict(lora_rank=4, budget=10), ValueError, "at most one"),
    (dict(density=0.0), ValueError, "density"),
    (dict(density=1.5), ValueError, "density"),
    (dict(budget=0), ValueError, "budget"),
    (dict(lora_rank=0), ValueError, "lora_rank"),
    (dict(wgrad="fast"), ValueError, "wgrad"),
    (dict(rank_method="full"), ValueError, "rank_method"),
    (dict(progressive_step=1.5), ValueError, "progressive_step"),
    (dict(progressive_mode="x"), ValueError, "progressive_mode"),
    (dict(lambda_rank=-1.0), ValueError, "lambda_rank"),
])
def test_config_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        SaRAConfig(**kw)


@pytest.mark.parametrize("kw,exc,msg", [
    (dict(threshold=-1.0), ValueError, "threshold"),
    (dict(threshold=1e-3, density=0.5), ValueError, "at most one"),
    (dict(amsgrad=True), ValueError, "amsgrad"),
    (dict(maximize=True), ValueError, "maximize"),
    (dict(capturable=True), ValueError, "capturable"),
    (dict(differentiable=True), ValueError, "differentiable"),
    (dict(optimizer="sgd"), ValueError, "optimizer"),
    (dict(weight_decay_target="x"), ValueError, "weight_decay_target"),
    (dict(betas=(0.9, 1.0)), ValueError, "betas"),
    (dict(frobnicate=1), TypeError, "frobnicate"),
    (dict(total_steps=0), ValueError, "total_steps"),
])
def test_sara_errors(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        SaRA(make_mlp(), **kw)


def test_sara_needs_module_and_config_override():
    with pytest.raises(TypeError, match="nn.Module"):
        SaRA([torch.zeros(3, requires_grad=True)])
    cfg = SaRAConfig(threshold=0.05, lambda_rank=0.0)
    opt = SaRA(make_mlp(), config=cfg, lora_rank=2)  # a selector keyword replaces the config's selector
    assert opt.config.mode == "lora_rank" and opt.config.lambda_rank == 0.0 and cfg.threshold == 0.05
    with pytest.raises(ValueError, match="already wrapped"):
        SaRA(opt.model, threshold=0.05)


def test_bad_indices_rejected():
    lin = nn.Linear(4, 3)
    with pytest.raises(ValueError, match="out of range"):
        SaRALinear(lin, torch.tensor([0, 12], dtype=torch.int32))
    with pytest.raises(ValueError, match="sorted and unique"):
        SaRALinear(lin, torch.tensor([3, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="1-D int32/int64"):
        SaRALinear(lin, torch.tensor([0.0, 1.0]))
    with pytest.raises(TypeError, match="nn.Linear"):
        SaRALinear(nn.Conv2d(1, 1, 1), torch.tensor([0], dtype=torch.int32))


def test_nan_weights_never_selected():
    lin = nn.Linear(8, 8)
    with torch.no_grad():
        lin.weight[0, 0] = float("nan")
        lin.weight[0, 1] = 0.0
    idx, _ = select_indices(lin.weight, k=64 - 1)
    assert 0 not in idx.tolist() and 1 in idx.tolist()
    with pytest.raises(ValueError, match="non-NaN"):
        select_indices(lin.weight, k=64)


# ---------------------------------------------------------------------------------------------------------------
# 10. compile, example
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_compile_matches_eager():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05)
    x, y = data()
    train(m, opt, x, y, 2)
    out = m(x)
    out.sum().backward()
    g = m.h1.sara_delta.grad.clone()
    opt.zero_grad()
    cm = torch.compile(m, fullgraph=True)
    out_c = cm(x)
    out_c.sum().backward()
    torch.testing.assert_close(out_c, out, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.h1.sara_delta.grad, g, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_example_quick_runs():
    pytest.importorskip("sklearn")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(fastnorm.__file__)),
                                         env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "sara_finetune.py"), "--quick",
                        "--threads", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [l for l in r.stdout.splitlines() if "%" in l and ("SaRA" in l or "LoRA" in l or "full FT" in l)]
    assert len(rows) == 3, r.stdout
    for l in rows:
        fall = float(l.split("%")[0].split()[-1])
        assert fall >= 30.0, l


def test_remap_optimizer_state_user_optimizer():
    m = make_mlp()
    opt = SaRA(m, threshold=0.05, lr=5e-2, lambda_rank=0.0, progressive_step=None)
    x, y = data()
    train(m, opt, x, y, 3)  # move δ so that the progressive step retires entries
    d = m.h1.sara_delta
    user = torch.optim.Adam([d], lr=1e-3)
    F.cross_entropy(m(x), y).backward()
    user.step()
    user.zero_grad()
    old_idx = m.h1.sara_indices.clone()
    ea = user.state[d]["exp_avg"].clone()
    opt.progress_now()
    assert m.h1.num_frozen > 0
    opt.remap_optimizer_state(user)
    pos = torch.searchsorted(old_idx, m.h1.sara_indices)
    assert torch.equal(user.state[d]["exp_avg"], ea[pos])
    F.cross_entropy(m(x), y).backward()  # the user optimizer keeps working on the shrunk δ
    user.step()
    m(x)
    check_invariant(m.h1)


def test_save_load_vector_deltas(tmp_path):
    base = make_mlp()
    with torch.no_grad():
        base.norm.weight[:6] = 0.01
    m = copy.deepcopy(base)
    opt = SaRA(m, threshold=0.05, bias="sara", norms="sara", lr=1e-2, progressive_step=None)
    x, y = data()
    train(m, opt, x, y, 3)
    opt.save_pretrained(tmp_path)
    sd, _ = load_adapter_state(tmp_path)
    assert {"fc_in.bias.sara_indices", "h1.bias.sara_delta", "norm.weight.sara_indices"} <= set(sd)
    assert sd["norm.weight.sara_indices"].tolist() == list(range(6))
    m2 = copy.deepcopy(base)
    SaRA.from_pretrained(m2, tmp_path)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))
    m3 = copy.deepcopy(base)
    merge_adapter(m3, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(m3(x), m(x), rtol=1e-6, atol=1e-6)


def test_config_wgrad_reaches_the_op():
    for wgrad in ("dense", "sddmm"):
        m = make_mlp()
        SaRA(m, threshold=0.05, wgrad=wgrad)
        assert m.h1.wgrad == wgrad
        x, y = data()
        F.cross_entropy(m(x), y).backward()
        assert m.h1.sara_delta.grad is not None and torch.isfinite(m.h1.sara_delta.grad).all()


def test_conv_model_step_ppa_save_load(tmp_path):
    torch.manual_seed(0)

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, groups=2),
                             nn.Flatten(), nn.Linear(8 * 3 * 3, 4))

    base = net()
    m = copy.deepcopy(base)
    opt = SaRA(m, threshold=0.1, lr=1e-2, bias="sara", total_steps=4, rank_include_conv=True, rank_min_dim=2,
               rank_layers="all")
    assert isinstance(m[0], SaRAConv2d) and isinstance(m[2], SaRAConv2d)
    x = torch.randn(4, 3, 8, 8)
    y = torch.randint(0, 4, (4,))
    train(m, opt, x, y, 4)
    assert opt.progressed
    for l in opt._layers:
        check_invariant(l)
    opt.save_pretrained(tmp_path)
    m2 = copy.deepcopy(base)
    SaRA.from_pretrained(m2, tmp_path)
    with torch.no_grad():
        assert torch.equal(m2(x), m(x))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_precision_and_fp64_weights(dtype):
    m = make_mlp(dtype=dtype)
    w0 = m.h1.weight.detach().clone()
    opt = SaRA(m, threshold=0.05, lr=1e-2, progressive_step=None)
    want = torch.float64 if dtype == torch.float64 else torch.float32
    assert m.h1.sara_delta.dtype == want and m.h1.sara_base.dtype == dtype
    x, y = data(dtype=dtype)
    train(m, opt, x, y, 3)
    assert opt.state[m.h1.sara_delta]["exp_avg"].dtype == want
    check_invariant(m.h1)
    assert not torch.equal(m.h1.base_layer.weight, w0)
    opt.unmerge()  # exact restore, no drift of the base in low precision
    assert torch.equal(m.h1.base_layer.weight, w0)
