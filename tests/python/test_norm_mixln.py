"""Mix-LN, the modules' ``fused_add`` and ``fastnorm.patch`` (specs/norm.md §2.2, §2.3, §3.10, §6 test 15)."""
import copy
import warnings

import pytest
import torch

import fastnorm
from conftest import rel_err


def make(shape, dtype, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def randomize_(module, seed):
    """Random weights (and biases) so that a (1+w) module and a w module really differ."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5 + 1.0)
    return module


# ---- mixln_layer_types ----------------------------------------------------------------------------------
@pytest.mark.parametrize("L", [0, 1, 12, 24])
@pytest.mark.parametrize("alpha", [0.0, 0.25, 1.0])
def test_mixln_layer_types(L, alpha):
    expected_post = {(0.0,): 0, (1.0,): L}.get((alpha,), {0: 0, 1: 0, 12: 3, 24: 6}[L])
    types = fastnorm.mixln_layer_types(L, alpha)
    assert types == ["post"] * expected_post + ["pre"] * (L - expected_post)
    assert fastnorm.mixln_layer_types(L) == fastnorm.mixln_layer_types(L, 0.25)


def test_mixln_layer_types_rounding_and_errors():
    assert 0.29 * 100 < 29  # the binary rounding the 1e-9 guards against
    assert fastnorm.mixln_layer_types(100, 0.29).count("post") == 29
    assert fastnorm.mixln_layer_types(7, 0.5) == ["post"] * 3 + ["pre"] * 4  # floor, not round
    with pytest.raises(ValueError, match=r"fastnorm.mixln_layer_types: L must be an int >= 0, got -1"):
        fastnorm.mixln_layer_types(-1)
    with pytest.raises(ValueError, match=r"fastnorm.mixln_layer_types: L must be an int >= 0"):
        fastnorm.mixln_layer_types(2.5)
    with pytest.raises(ValueError, match=r"fastnorm.mixln_layer_types: alpha must be in \[0, 1\], got 1.5"):
        fastnorm.mixln_layer_types(12, 1.5)


# ---- MixLNBlock ----------------------------------------------------------------------------------------
class ToyAttention(torch.nn.Module):
    """Returns (out, weights) like HF attention; takes an extra keyword to show it is forwarded."""

    def __init__(self, d):
        super().__init__()
        self.q = torch.nn.Linear(d, d)

    def forward(self, h, *, scale=1.0):
        return torch.tanh(self.q(h)) * scale, None


class ToyMLP(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.up = torch.nn.Linear(d, 2 * d)
        self.down = torch.nn.Linear(2 * d, d)

    def forward(self, h):
        return self.down(torch.nn.functional.silu(self.up(h)))


class HFRMSNorm(torch.nn.Module):
    """Hugging Face LlamaRMSNorm, written out (weight + variance_epsilon)."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, h):
        dtype = h.dtype
        h = h.to(torch.float32 if dtype != torch.float64 else dtype)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class RefMixLNBlock(torch.nn.Module):
    """Unfused plain-PyTorch Mix-LN decoder layer with the same attribute names."""

    def __init__(self, layer_type, d, attn, mlp, norm, eps):
        super().__init__()
        self.layer_type, self.self_attn, self.mlp = layer_type, attn, mlp

        def mk():
            return HFRMSNorm(d, eps) if norm == "rms" else torch.nn.LayerNorm(d, eps=eps)

        if layer_type == "pre":
            self.input_layernorm, self.post_attention_layernorm = mk(), mk()
        else:
            self.post_attention_layernorm, self.post_feedforward_layernorm = mk(), mk()

    def forward(self, h, **kw):
        if self.layer_type == "pre":
            h = h + self.self_attn(self.input_layernorm(h), **kw)[0]
            return h + self.mlp(self.post_attention_layernorm(h))
        h = self.post_attention_layernorm(h + self.self_attn(h, **kw)[0])
        return self.post_feedforward_layernorm(h + self.mlp(h))


@pytest.mark.parametrize("layer_type", ["pre", "post"])
@pytest.mark.parametrize("norm", ["rms", "layer"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_mixln_block_matches_unfused_reference(layer_type, norm, dtype):
    d = 24
    torch.manual_seed(0)
    attn, mlp = ToyAttention(d).to(dtype), ToyMLP(d).to(dtype)
    block = fastnorm.nn.MixLNBlock(layer_type, d, attn, mlp, norm=norm, eps=1e-5, dtype=dtype)
    ref = RefMixLNBlock(layer_type, d, copy.deepcopy(attn), copy.deepcopy(mlp), norm, 1e-5).to(dtype)
    randomize_(block, 1)
    missing = ref.load_state_dict(block.state_dict())  # same names, so strict loading succeeds
    assert not missing.missing_keys and not missing.unexpected_keys

    x = make((2, 5, d), dtype, 2).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, yr = block(x, scale=0.7), ref(xr, scale=0.7)
    assert y.dtype == dtype and y.shape == x.shape
    gate = 1e-10 if dtype == torch.float64 else 1e-5
    assert rel_err(y, yr) < gate
    dy = make(y.shape, dtype, 3)
    y.backward(dy)
    yr.backward(dy)
    assert rel_err(x.grad, xr.grad) < gate * 10
    ref_params = dict(ref.named_parameters())
    for name, p in block.named_parameters():
        assert p.grad is not None, name
        assert rel_err(p.grad, ref_params[name].grad) < gate * 10, name


@pytest.mark.parametrize("norm", ["rms", "layer"])
def test_mixln_block_key_names(norm):
    d = 8
    extra = {"rms": ["weight"], "layer": ["weight", "bias"]}[norm]
    inner = {"self_attn.q.weight", "self_attn.q.bias", "mlp.up.weight", "mlp.up.bias", "mlp.down.weight",
             "mlp.down.bias"}
    pre = fastnorm.nn.MixLNBlock("pre", d, ToyAttention(d), ToyMLP(d), norm=norm)
    post = fastnorm.nn.MixLNBlock("post", d, ToyAttention(d), ToyMLP(d), norm=norm)
    assert set(pre.state_dict()) == inner | {f"{n}.{k}" for n in ("input_layernorm", "post_attention_layernorm")
                                             for k in extra}
    assert set(post.state_dict()) == inner | {f"{n}.{k}" for n in ("post_attention_layernorm",
                                                                   "post_feedforward_layernorm") for k in extra}
    kind = fastnorm.nn.LlamaRMSNorm if norm == "rms" else fastnorm.nn.LayerNorm
    assert all(isinstance(m, kind) for n, m in pre.named_children() if n.endswith("layernorm"))
    assert pre.input_layernorm.variance_epsilon == 1e-6 if norm == "rms" else pre.input_layernorm.eps == 1e-6


def test_mixln_block_errors():
    a, m = ToyAttention(4), ToyMLP(4)
    with pytest.raises(ValueError, match=r"fastnorm.MixLNBlock: layer_type must be 'pre' or 'post', got 'mid'"):
        fastnorm.nn.MixLNBlock("mid", 4, a, m)
    with pytest.raises(ValueError, match=r"fastnorm.MixLNBlock: norm must be 'rms' or 'layer', got 'batch'"):
        fastnorm.nn.MixLNBlock("pre", 4, a, m, norm="batch")
    with pytest.raises(TypeError, match=r"fastnorm.MixLNBlock: mlp must be a torch.nn.Module, got function"):
        fastnorm.nn.MixLNBlock("pre", 4, a, lambda h: h)


def test_mixln_model_from_layer_types():
    d, L = 8, 8
    layers = torch.nn.ModuleList(fastnorm.nn.MixLNBlock(t, d, ToyAttention(d), ToyMLP(d))
                                 for t in fastnorm.mixln_layer_types(L, 0.25))
    assert [b.layer_type for b in layers] == ["post", "post"] + ["pre"] * 6
    h = make((3, d), torch.float32, 4)
    for b in layers:
        h = b(h)
    assert torch.isfinite(h).all()


# ---- fused_add on every norm module --------------------------------------------------------------------
@pytest.mark.parametrize("name", ["LayerNorm", "RMSNorm", "LlamaRMSNorm", "FusedAddLayerNorm", "FusedAddRMSNorm"])
def test_fused_add_every_module(name):
    d = 40
    mod = randomize_(getattr(fastnorm.nn, name)(d), 5)
    x, r = make((3, d), torch.float32, 6), make((3, d), torch.float32, 7)
    y, s = mod.fused_add(x, r)
    assert torch.equal(s, x + r)
    plain = mod(x + r)
    plain = plain[0] if isinstance(plain, tuple) else plain
    assert torch.equal(y, plain)
    y0, s0 = mod.fused_add(x, None)  # residual=None: s = x
    assert torch.equal(s0, x) and s0.data_ptr() != x.data_ptr()

    xb, rb = x.bfloat16(), r.bfloat16()
    modb = copy.deepcopy(mod).bfloat16()
    _, sb = modb.fused_add(xb, rb)
    assert sb.dtype == torch.bfloat16
    yf, sf = modb.fused_add(xb, rb, residual_in_fp32=True)
    assert sf.dtype == torch.float32 and torch.equal(sf, xb.float() + rb.float())
    plain = modb(sf)  # the norm is applied to the stored (float32) sum
    assert rel_err(yf.float(), (plain[0] if isinstance(plain, tuple) else plain).float()) < 1e-2


# ---- patch: a tiny Llama-style model built here ----------------------------------------------------------
class GemmaLikeRMSNorm(torch.nn.Module):
    """Same attribute names as HF's LlamaRMSNorm but multiplies by (1 + w): verify must refuse it."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(d))
        self.variance_epsilon = eps

    def forward(self, h):
        hf = h.float()
        hf = hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return (hf * (1.0 + self.weight.float())).to(h.dtype)


class FP32LayerNorm(torch.nn.LayerNorm):
    """A LayerNorm subclass (computes in fp32): skipped unless include_subclasses."""

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return torch.nn.functional.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class TinyBlock(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.input_layernorm = HFRMSNorm(d)
        self.self_attn = ToyAttention(d)
        self.post_attention_layernorm = HFRMSNorm(d)
        self.mlp = ToyMLP(d)

    def forward(self, h):
        h = h + self.self_attn(self.input_layernorm(h))[0]
        return h + self.mlp(self.post_attention_layernorm(h))


class TinyLlama(torch.nn.Module):
    def __init__(self, vocab=50, d=32, layers=2):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, d)
        self.layers = torch.nn.ModuleList(TinyBlock(d) for _ in range(layers))
        self.ln = torch.nn.LayerNorm(d)
        self.rms = torch.nn.RMSNorm(d)  # eps=None: torch's rule
        self.gemma = GemmaLikeRMSNorm(d)
        self.sub = FP32LayerNorm(d)
        self.norm = HFRMSNorm(d, eps=1e-5)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        h = self.embed_tokens(ids)
        for layer in self.layers:
            h = layer(h)
        h = self.sub(self.gemma(self.rms(self.ln(h))))
        return self.lm_head(self.norm(h))


PATCHED = ["layers.0.input_layernorm", "layers.0.post_attention_layernorm", "layers.1.input_layernorm",
           "layers.1.post_attention_layernorm", "ln", "rms", "norm"]


def tiny_model(dtype=torch.float32, seed=10):
    torch.manual_seed(seed)
    model = TinyLlama().to(dtype)
    for m in model.modules():  # non-trivial affines everywhere, incl. the (1+w) look-alike
        if isinstance(m, (HFRMSNorm, GemmaLikeRMSNorm, torch.nn.LayerNorm, torch.nn.RMSNorm)):
            randomize_(m, seed + 1)
    return model


def snapshot(model):
    sd = model.state_dict(keep_vars=True)
    return list(sd), {k: v.data_ptr() for k, v in sd.items()}, {k: v for k, v in sd.items()}


def test_patch_tiny_llama():
    model = tiny_model()
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        before = model(ids)
    keys, ptrs, objs = snapshot(model)
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match=r"fastnorm.patch: gemma \(GemmaLikeRMSNorm\) left in place: outputs "
                                         r"differ by up to .* ulp"):
        names = fastnorm.patch(model)
    assert names == PATCHED
    assert torch.equal(torch.get_rng_state(), rng)  # verify used its own generator

    assert type(model.layers[0].input_layernorm) is fastnorm.nn.LlamaRMSNorm
    assert model.norm.variance_epsilon == 1e-5
    assert type(model.ln) is fastnorm.nn.LayerNorm
    assert type(model.rms) is fastnorm.nn.RMSNorm and model.rms.eps is None and model.rms.casting == "gemma"
    assert type(model.gemma) is GemmaLikeRMSNorm  # verify caught the (1+w) look-alike
    assert type(model.sub) is FP32LayerNorm  # subclass skipped by default

    keys2, ptrs2, objs2 = snapshot(model)
    assert keys2 == keys and ptrs2 == ptrs
    assert all(objs2[k] is objs[k] for k in keys)  # the very same Parameter objects
    with torch.no_grad():
        after = model(ids)
    assert rel_err(after, before) < 1e-5

    assert fastnorm.patch(model, rms_norm_like=False) == []  # idempotent: fastnorm modules are skipped
    with pytest.warns(UserWarning, match="gemma"):
        assert fastnorm.patch(model, include_subclasses=True) == ["sub"]
    assert type(model.sub) is fastnorm.nn.LayerNorm and model.sub.weight is objs["sub.weight"]


def test_patch_optimizer_built_before_still_trains():
    model = tiny_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastnorm.patch(model)
    held = {id(p) for p in opt.param_groups[0]["params"]}
    assert all(id(p) in held for p in model.parameters())
    ids = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(12))
    w0 = model.layers[1].input_layernorm.weight.detach().clone()
    ln0 = model.ln.bias.detach().clone()
    losses = []
    for _ in range(5):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids).flatten(0, 1), ids.flatten())
        loss.backward()
        assert model.layers[1].input_layernorm.weight.grad is not None
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.layers[1].input_layernorm.weight, w0)  # the optimizer updates the patched module
    assert not torch.equal(model.ln.bias, ln0)


def test_patch_keeps_training_flag_and_hooks():
    model = tiny_model()
    model.layers[0].eval()
    calls = []
    h1 = model.ln.register_forward_pre_hook(lambda m, args: calls.append(("pre", type(m).__name__)))
    model.ln.register_forward_hook(lambda m, args, out: calls.append(("post", type(m).__name__)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastnorm.patch(model)
    assert calls == []  # verify calls forward directly: hooks do not fire
    assert model.layers[0].input_layernorm.training is False and model.ln.training is True
    model.ln(make((2, 32), torch.float32, 13))
    assert calls == [("pre", "LayerNorm"), ("post", "LayerNorm")] and type(model.ln) is fastnorm.nn.LayerNorm
    h1.remove()  # a handle from before patching still removes the hook
    model.ln(make((2, 32), torch.float32, 13))
    assert calls[2:] == [("post", "LayerNorm")]


def test_patch_flags_shared_modules_and_root():
    model = tiny_model()
    model.extra = model.ln  # one module under two names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = fastnorm.patch(model, rms_norm=False, rms_norm_like=False)
    assert names == ["ln", "extra"]
    assert model.extra is model.ln and type(model.ln) is fastnorm.nn.LayerNorm
    assert type(model.rms) is torch.nn.RMSNorm and type(model.norm) is HFRMSNorm

    with pytest.warns(UserWarning, match="root module is a norm"):
        assert fastnorm.patch(torch.nn.LayerNorm(8)) == []
    with pytest.raises(TypeError, match="fastnorm.patch: model must be a torch.nn.Module"):
        fastnorm.patch("model")

    # Modules that only look RMSNorm-like are not candidates: an extra buffer, a 2-D weight, an int epsilon.
    odd = torch.nn.Module()
    odd.a = HFRMSNorm(8)
    odd.a.register_buffer("scale", torch.ones(1))
    odd.b = HFRMSNorm(8)
    odd.b.weight = torch.nn.Parameter(torch.ones(2, 4))
    odd.c = HFRMSNorm(8)
    odd.c.variance_epsilon = 1
    assert fastnorm.patch(odd) == []

    class ScaledLayerNorm(torch.nn.LayerNorm):  # a subclass with extra state is never replaced
        def __init__(self, d):
            super().__init__(d)
            self.register_buffer("scale", torch.ones(()))

    holder = torch.nn.Module()
    holder.s = ScaledLayerNorm(8)
    with pytest.warns(UserWarning, match=r"s \(ScaledLayerNorm\) left in place: it has state a fastnorm module "
                                         r"would drop: scale"):
        assert fastnorm.patch(holder, include_subclasses=True) == []


def test_patch_verify_off_and_meta():
    model = tiny_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no verify, no warning
        names = fastnorm.patch(model, verify=False)
    assert names == PATCHED[:6] + ["gemma", "norm"]
    assert type(model.gemma) is fastnorm.nn.LlamaRMSNorm  # what verify exists to prevent

    with torch.device("meta"):
        meta = TinyLlama()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = fastnorm.patch(meta)  # verify is skipped on meta tensors
    assert "gemma" in names and meta.ln.weight.is_meta


def test_patch_bf16_model():
    model = tiny_model(torch.bfloat16)
    ids = torch.randint(0, 50, (2, 5), generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        before = model(ids)
    with pytest.warns(UserWarning, match="gemma"):
        assert fastnorm.patch(model) == PATCHED
    with torch.no_grad():
        after = model(ids)
    assert rel_err(after, before) < 1e-2


@pytest.mark.cuda
def test_patch_cuda_model_matches_cpu():
    ids = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(22))
    outs = []
    for device in ("cpu", "cuda"):
        model = tiny_model().to(device)
        with pytest.warns(UserWarning, match="gemma"):
            assert fastnorm.patch(model) == PATCHED  # verify ran on the weights' device
        assert model.ln.weight.device.type == device
        with torch.no_grad():
            outs.append(model(ids.to(device)).cpu())
    assert rel_err(outs[1], outs[0]) < 1e-5


def patched_block():
    torch.manual_seed(15)
    block = TinyBlock(32)
    randomize_(block.input_layernorm, 16)
    randomize_(block.post_attention_layernorm, 17)
    assert fastnorm.patch(block) == ["input_layernorm", "post_attention_layernorm"]
    return block


def test_patch_compiled_block_equals_eager():
    # aot_eager runs the same kernels as eager, so forward and gradients must be bitwise equal; fullgraph
    # proves dynamo traces the patched modules (fake kernels, autograd registration) without a break.
    block = patched_block()
    x = make((2, 5, 32), torch.float32, 18).requires_grad_()
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    y, yc = block(x), compiled(x)
    assert torch.equal(yc, y)
    g, gc = torch.autograd.grad(y.sum(), x), torch.autograd.grad(yc.sum(), x)
    assert torch.equal(gc[0], g[0])

    mix = fastnorm.nn.MixLNBlock("post", 32, ToyAttention(32), ToyMLP(32), norm="layer")
    assert torch.equal(torch.compile(mix, fullgraph=True, backend="aot_eager")(x), mix(x))


@pytest.mark.slow
def test_patch_compiled_block_inductor():
    block = patched_block()
    x = make((2, 5, 32), torch.float32, 18)
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True)
    assert rel_err(compiled(x), block(x)) < 1e-6  # inductor may fuse the Linear/tanh/silu differently


def test_patch_hf_llama():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(19)
    model = transformers.LlamaForCausalLM(cfg).eval()
    for name, m in model.named_modules():
        if name.endswith("norm"):
            randomize_(m, 20)
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(21))
    with torch.no_grad():
        before = model(ids).logits
    keys, ptrs, objs = snapshot(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = fastnorm.patch(model)
    expected = [f"model.layers.{i}.{n}" for i in range(2) for n in ("input_layernorm", "post_attention_layernorm")]
    assert names == expected + ["model.norm"]
    assert all(type(model.get_submodule(n)) is fastnorm.nn.LlamaRMSNorm for n in names)
    keys2, ptrs2, objs2 = snapshot(model)
    assert keys2 == keys and ptrs2 == ptrs and all(objs2[k] is objs[k] for k in keys)
    with torch.no_grad():
        after = model(ids).logits
    assert rel_err(after, before) < 1e-5
    w0 = model.model.norm.weight.detach().clone()
    model.train()
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert not torch.equal(model.model.norm.weight, w0)
