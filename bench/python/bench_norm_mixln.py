"""Benchmarks of ``fastnorm.patch`` and ``MixLNBlock`` (specs/norm.md §3.10) on the CPU.

- patch: an HF-style ``LlamaRMSNorm`` (plain PyTorch) against the module ``fastnorm.patch`` puts in its place
  (``fastnorm.nn.LlamaRMSNorm``), M = 4096, N in {768, 1024, 4096}, float32 and bfloat16.
- MixLNBlock: the Pre-LN and Post-LN blocks with identity attention/MLP (so only the norms and residual adds
  are timed) against the unfused plain-PyTorch block, forward + backward, plus the bytes saved for backward.

Run:  python -m pytest bench/python/bench_norm_mixln.py --benchmark-json=out.json
Ratios in extra_info are baseline time / fastnorm time, measured interleaved in the same run.
"""
import copy

import pytest
import torch

import fastnorm

from conftest import interleaved, pick

SHAPES = pick([(4096, 1024)], [(4096, 768), (4096, 1024), (4096, 4096)])
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class HFRMSNorm(torch.nn.Module):
    """Hugging Face LlamaRMSNorm as written there."""

    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(d))
        self.variance_epsilon = eps

    def forward(self, h):
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon)
        return self.weight * h.to(dtype)


class RefBlock(torch.nn.Module):
    """Unfused Mix-LN block: the residual add and the norm are separate ops."""

    def __init__(self, layer_type, d):
        super().__init__()
        self.layer_type, self.self_attn, self.mlp = layer_type, torch.nn.Identity(), torch.nn.Identity()
        names = ("input_layernorm", "post_attention_layernorm") if layer_type == "pre" else \
            ("post_attention_layernorm", "post_feedforward_layernorm")
        for n in names:
            setattr(self, n, HFRMSNorm(d))

    def forward(self, h):
        if self.layer_type == "pre":
            h = h + self.self_attn(self.input_layernorm(h))
            return h + self.mlp(self.post_attention_layernorm(h))
        h = self.post_attention_layernorm(h + self.self_attn(h))
        return self.post_feedforward_layernorm(h + self.mlp(h))


def _inputs(dtype, m, n):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(m, n, generator=g).to(dtype), torch.randn(m, n, generator=g).to(dtype))


def _step(module, x, dy, pas):
    if pas == "forward":
        def step():
            with torch.no_grad():
                module(x)
        return step
    leaf = x.clone().requires_grad_()

    def step():
        module(leaf).backward(dy)
        leaf.grad = None
        for p in module.parameters():
            p.grad = None
    return step


def _saved_bytes(module, x):
    """Bytes autograd saves for backward in one forward (parameters excluded)."""
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = t.untyped_storage().data_ptr()
        if key not in params and key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
        return t

    leaf = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(leaf)
    return total


def _record(benchmark, medians, extra):
    benchmark.extra_info.update(extra)
    benchmark.extra_info["ratio baseline/fastnorm"] = medians["baseline"] / medians["fastnorm"]


@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_patched_llama_rmsnorm_cpu(benchmark, pas, dtype_name, shape):
    m, n = shape
    dtype = DTYPES[dtype_name]
    holder = torch.nn.Module()
    holder.norm = HFRMSNorm(n).to(dtype)
    baseline = copy.deepcopy(holder.norm)
    assert fastnorm.patch(holder) == ["norm"]
    x, dy = _inputs(dtype, m, n)
    benchmark.group = f"patch LlamaRMSNorm {pas} {dtype_name} cpu {m}x{n}"
    medians = interleaved(benchmark, {"fastnorm": _step(holder.norm, x, dy, pas),
                                      "baseline": _step(baseline, x, dy, pas)})
    _record(benchmark, medians, {"pass": pas, "dtype": dtype_name, "M": m, "N": n})


@pytest.mark.parametrize("layer_type", ["pre", "post"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_mixln_block_cpu(benchmark, layer_type, dtype_name):
    m, n = 4096, 1024
    dtype = DTYPES[dtype_name]
    block = fastnorm.nn.MixLNBlock(layer_type, n, torch.nn.Identity(), torch.nn.Identity(), dtype=dtype)
    ref = RefBlock(layer_type, n).to(dtype)
    x, dy = _inputs(dtype, m, n)
    benchmark.group = f"MixLNBlock {layer_type} forward+backward {dtype_name} cpu {m}x{n}"
    medians = interleaved(benchmark, {"fastnorm": _step(block, x, dy, "forward+backward"),
                                      "baseline": _step(ref, x, dy, "forward+backward")})
    _record(benchmark, medians, {"layer_type": layer_type, "dtype": dtype_name, "M": m, "N": n,
                                 "saved_bytes fastnorm": _saved_bytes(block, x),
                                 "saved_bytes baseline": _saved_bytes(ref, x)})
