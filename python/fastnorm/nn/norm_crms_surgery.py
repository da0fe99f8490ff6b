"""Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm model conversion (specs/norm.md §3.5; Jiang et al., NeurIPS 2023).

A Pre-LN transformer whose residual stream is only ever read through LayerNorms can be made to keep a
zero-mean stream: center every writer's output (then LayerNorm's mean subtraction is the identity and
LayerNorm equals RMSNorm with the same eps), optionally fold the norms' affine into the Linear layers that
read them, and, with no affine left, drop the stream's last coordinate (it is minus the sum of the
others): writers keep d-1 outputs, readers absorb the dropped column, the norms become ``CRMSNorm``.
The functions change the model in place and return it. They refuse a model where some module reads or
writes the stream without being listed in the spec (the result would be silently wrong otherwise).
"""
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import torch
from torch import nn

from .norm import RMSNorm
from .norm_crms import CRMSNorm


@dataclass
class PreLNSpec:
    """``writers``: names of everything that adds into the residual stream (``nn.Embedding``, ``nn.Linear``
    with d outputs, or an ``nn.Parameter`` with d last, e.g. a cls token or learned positions).
    ``norms``: each LayerNorm's name -> the names of the ``nn.Linear`` modules that read its output.
    ``ignore``: names of modules with d inputs or outputs that neither read nor write the stream (an
    inner projection, say); everything else of width d must be listed above."""
    writers: List[str]
    norms: Dict[str, List[str]]
    ignore: List[str] = field(default_factory=list)


def _fail(op: str, msg: str):
    raise ValueError(f"fastnorm.{op}: {msg}")


def _resolve(model: nn.Module, name: str, op: str):
    """(owner module, attribute, object) of a submodule or parameter name."""
    owner_name, _, attr = name.rpartition(".")
    try:
        owner = model.get_submodule(owner_name) if owner_name else model
    except AttributeError:
        _fail(op, f"{name!r} is not in the model")
    obj = getattr(owner, attr, None)
    if obj is None or not isinstance(obj, (nn.Module, nn.Parameter)):
        _fail(op, f"{name!r} is not a submodule or Parameter of the model")
    return owner, attr, obj


def _check(model: nn.Module, spec: PreLNSpec, op: str) -> Tuple[int, dict]:
    """Validates the spec against the model; returns d and the resolved objects."""
    if not spec.norms:
        _fail(op, "spec.norms is empty")
    norms = {}
    d = None
    for name, readers in spec.norms.items():
        _, _, ln = _resolve(model, name, op)
        if type(ln) is not nn.LayerNorm:
            _fail(op, f"norm {name!r} is a {type(ln).__name__}, expected torch.nn.LayerNorm")
        if len(ln.normalized_shape) != 1:
            _fail(op, f"norm {name!r} normalises over {list(ln.normalized_shape)}; only the last dim is supported")
        if d is None:
            d = ln.normalized_shape[0]
        elif ln.normalized_shape[0] != d:
            _fail(op, f"norm {name!r} has width {ln.normalized_shape[0]} but the stream width is {d}")
        if not readers:
            _fail(op, f"norm {name!r} lists no reading Linear")
        rs = []
        for r in readers:
            _, _, lin = _resolve(model, r, op)
            if not isinstance(lin, nn.Linear) or lin.in_features != d:
                _fail(op, f"reader {r!r} of norm {name!r} must be an nn.Linear with in_features={d}, got {lin}")
            rs.append(r)
        norms[name] = rs
    writers = []
    for w in spec.writers:
        _, _, obj = _resolve(model, w, op)
        ok = (isinstance(obj, nn.Embedding) and obj.embedding_dim == d) or \
             (isinstance(obj, nn.Linear) and obj.out_features == d) or \
             (isinstance(obj, nn.Parameter) and obj.dim() >= 1 and obj.shape[-1] == d)
        if not ok:
            _fail(op, f"writer {w!r} must be an nn.Embedding of dim {d}, an nn.Linear with out_features={d} or an "
                      f"nn.Parameter with last dim {d}, got {type(obj).__name__}")
        writers.append(w)
    # Everything else of width d must be accounted for: an unlisted reader or writer breaks the conversion.
    listed = set(writers) | set(norms) | {r for rs in norms.values() for r in rs} | set(spec.ignore)
    for name, mod in model.named_modules():
        if name in listed:
            continue
        if isinstance(mod, nn.LayerNorm) and tuple(mod.normalized_shape) == (d,):
            _fail(op, f"{name!r} is a LayerNorm of width {d} that is not listed in spec.norms")
        if isinstance(mod, nn.Linear) and mod.in_features == d:
            _fail(op, f"{name!r} (nn.Linear with in_features={d}) reads the residual stream but is not listed as a "
                      f"reader of a norm in spec.norms (list it, or in spec.ignore if it does not read the stream)")
        if isinstance(mod, nn.Linear) and mod.out_features == d:
            _fail(op, f"{name!r} (nn.Linear with out_features={d}) is not listed in spec.writers")
        if isinstance(mod, nn.Embedding) and mod.embedding_dim == d:
            _fail(op, f"{name!r} (nn.Embedding of dim {d}) is not listed in spec.writers")
        if isinstance(mod, (nn.MultiheadAttention,)):
            _fail(op, f"{name!r} is an nn.MultiheadAttention (its fused in_proj is not supported); use nn.Linear "
                      f"projections")
        if isinstance(mod, (nn.Linear, nn.LayerNorm, nn.Embedding)):
            continue
        for pname, p in mod.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if full not in listed and p.dim() >= 1 and p.shape[-1] == d:
                _fail(op, f"Parameter {full!r} has last dim {d} but is not listed in spec.writers")
    return d, norms


@torch.no_grad()
def _center(model: nn.Module, writers: Sequence[str], op: str) -> None:
    for w in writers:
        _, _, obj = _resolve(model, w, op)
        if isinstance(obj, nn.Parameter):
            obj.sub_(obj.mean(-1, keepdim=True))
        elif isinstance(obj, nn.Embedding):
            obj.weight.sub_(obj.weight.mean(-1, keepdim=True))
        else:  # Linear: every output row minus the mean row, the bias minus its mean
            obj.weight.sub_(obj.weight.mean(0, keepdim=True))
            if obj.bias is not None:
                obj.bias.sub_(obj.bias.mean())


@torch.no_grad()
def _fold(model: nn.Module, norms: Dict[str, List[str]], op: str) -> None:
    """consumer W <- W diag(gamma), b <- b + W_old beta (bias created when beta != 0); the norm loses its affine."""
    for name, readers in norms.items():
        _, _, ln = _resolve(model, name, op)
        gamma, beta = ln.weight, ln.bias
        for r in readers:
            owner, attr, lin = _resolve(model, r, op)
            w_old = lin.weight.clone()
            if gamma is not None:
                lin.weight.mul_(gamma.to(lin.weight.dtype))
            if beta is not None and bool((beta != 0).any()):
                shift = w_old @ beta.to(w_old.dtype)
                if lin.bias is None:
                    lin.bias = nn.Parameter(shift)
                else:
                    lin.bias.add_(shift)
        ln.weight, ln.bias = None, None
        ln.elementwise_affine = False


def pre_ln_to_pre_rmsnorm(model: nn.Module, spec: PreLNSpec, *, fold_affine: bool = False) -> nn.Module:
    """Pre-LN -> Pre-RMSNorm: center the writers, then each LayerNorm becomes ``fastnorm.nn.RMSNorm`` with
    the same eps and the same weight and bias (or none, after folding them into the readers)."""
    op = "pre_ln_to_pre_rmsnorm"
    d, norms = _check(model, spec, op)
    if fold_affine:
        _fold(model, norms, op)
    _center(model, spec.writers, op)
    for name in norms:
        owner, attr, ln = _resolve(model, name, op)
        w, b = ln.weight, ln.bias
        ref = next(model.parameters())
        new = RMSNorm(d, eps=ln.eps, elementwise_affine=w is not None, bias=b is not None,
                      device=ref.device, dtype=(w if w is not None else ref).dtype)
        with torch.no_grad():
            if w is not None:
                new.weight.copy_(w)
            if b is not None:
                new.bias.copy_(b)
        setattr(owner, attr, new)
    return model


def pre_ln_to_pre_crmsnorm(model: nn.Module, spec: PreLNSpec) -> nn.Module:
    """Pre-LN -> Pre-CRMSNorm: fold the norms' affine into the readers, center the writers, then compress the
    stream to d-1 coordinates: writers keep their first d-1 outputs, readers take W[:, :-1] - W[:, -1:], and
    the norms become ``CRMSNorm(d-1, eps)``. Modules are replaced by new ones of the new shapes."""
    op = "pre_ln_to_pre_crmsnorm"
    d, norms = _check(model, spec, op)
    _fold(model, norms, op)
    _center(model, spec.writers, op)
    with torch.no_grad():
        for w in spec.writers:
            owner, attr, obj = _resolve(model, w, op)
            if isinstance(obj, nn.Parameter):
                setattr(owner, attr, nn.Parameter(obj[..., :-1].clone(), requires_grad=obj.requires_grad))
            elif isinstance(obj, nn.Embedding):
                new = nn.Embedding(obj.num_embeddings, d - 1, padding_idx=obj.padding_idx, max_norm=obj.max_norm,
                                   norm_type=obj.norm_type, scale_grad_by_freq=obj.scale_grad_by_freq,
                                   sparse=obj.sparse, device=obj.weight.device, dtype=obj.weight.dtype)
                new.weight.copy_(obj.weight[:, :-1])
                setattr(owner, attr, new)
            else:
                new = nn.Linear(obj.in_features, d - 1, bias=obj.bias is not None, device=obj.weight.device,
                                dtype=obj.weight.dtype)
                new.weight.copy_(obj.weight[:-1])
                if obj.bias is not None:
                    new.bias.copy_(obj.bias[:-1])
                setattr(owner, attr, new)
        for name, readers in norms.items():
            for r in readers:
                owner, attr, lin = _resolve(model, r, op)
                new = nn.Linear(d - 1, lin.out_features, bias=lin.bias is not None, device=lin.weight.device,
                                dtype=lin.weight.dtype)
                new.weight.copy_(lin.weight[:, :-1] - lin.weight[:, -1:])
                if lin.bias is not None:
                    new.bias.copy_(lin.bias)
                setattr(owner, attr, new)
            owner, attr, ln = _resolve(model, name, op)
            setattr(owner, attr, CRMSNorm(d - 1, eps=ln.eps))
    return model
