"""HyperAttention as a drop-in for ``F.scaled_dot_product_attention`` (specs/hyper_attention.md §2.2)."""
import warnings
from typing import Callable, Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.hyper_attention import hyper_attention, plan_sizes

_EXACT_FALLBACKS = ("sdpa", "fastnorm")
# The exact fallback calls torch's own SDPA, captured here: patch_attention rebinds F.scaled_dot_product_attention
# to a HyperAttention, which through F would call itself again (infinite recursion) on every exact call.
_torch_sdpa = torch._C._nn.scaled_dot_product_attention
_UNSUPPORTED = ("error", "exact")


class HyperAttention(nn.Module):
    """Near-linear approximate attention with the positional signature of ``F.scaled_dot_product_attention``.

    The LSH projection ``lsh_proj`` (float32 [dim_head, lsh_num_projs]) is a persistent buffer, drawn at
    construction from ``torch.Generator().manual_seed(seed)`` (or the global RNG when seed is None) and kept
    float32 by ``.half()`` / ``.to(dtype)``. Calls whose keys all fit in ``min_seq_len`` are exact and go to SDPA
    (``exact_fallback="sdpa"``, unless ``return_lse``) or to fastnorm's exact kernel (``"fastnorm"``).
    ``attn_mask`` / ``dropout_p > 0`` raise NotImplementedError (``unsupported="error"``) or delegate the whole
    call to SDPA with a one-time warning (``"exact"``). With ``seed`` set, the module owns one generator per
    device (seeded with ``seed``, not saved) used when a call passes none.

    Compared with the official ``HyperAttention(input_dim, lsh_num_projs, block_size, sample_size, min_seq_len,
    cuda)``: ``dim_head`` is ``input_dim``; ``cuda`` has no equivalent; forward arguments follow SDPA."""

    def __init__(self, dim_head: int, lsh_num_projs: int = 7, block_size: int = 256, sample_size: int = 256,
                 min_seq_len: int = 4096, layout: str = "bhnd", exact_fallback: str = "sdpa",
                 unsupported: str = "error", resample_lsh: bool = False, seed: Optional[int] = None, device=None):
        super().__init__()
        if layout not in ("bhnd", "bnhd"):
            raise ValueError(f"fastnorm.nn.HyperAttention: layout must be 'bhnd' or 'bnhd', got {layout!r}")
        if exact_fallback not in _EXACT_FALLBACKS:
            raise ValueError(f"fastnorm.nn.HyperAttention: exact_fallback must be one of {_EXACT_FALLBACKS}, "
                             f"got {exact_fallback!r}")
        if unsupported not in _UNSUPPORTED:
            raise ValueError(f"fastnorm.nn.HyperAttention: unsupported must be one of {_UNSUPPORTED}, "
                             f"got {unsupported!r}")
        if not 0 <= int(lsh_num_projs) <= 16:
            raise ValueError(f"fastnorm.nn.HyperAttention: lsh_num_projs must be in [0, 16], got {lsh_num_projs}")
        if int(dim_head) < 1:
            raise ValueError(f"fastnorm.nn.HyperAttention: dim_head must be >= 1, got {dim_head}")
        self.dim_head, self.lsh_num_projs = int(dim_head), int(lsh_num_projs)
        self.block_size, self.sample_size, self.min_seq_len = int(block_size), int(sample_size), int(min_seq_len)
        self.layout, self.exact_fallback, self.unsupported = layout, exact_fallback, unsupported
        self.resample_lsh, self.seed = bool(resample_lsh), seed
        self._generators: Dict[str, torch.Generator] = {}
        self._warned = False
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        proj = torch.randn(self.dim_head, self.lsh_num_projs, dtype=torch.float32, generator=gen)
        self.register_buffer("lsh_proj", proj.to(device) if device is not None else proj, persistent=True)

    def extra_repr(self) -> str:
        return (f"dim_head={self.dim_head}, lsh_num_projs={self.lsh_num_projs}, block_size={self.block_size}, "
                f"sample_size={self.sample_size}, min_seq_len={self.min_seq_len}, layout={self.layout!r}")

    @torch.no_grad()
    def reset_lsh(self, generator: Optional[torch.Generator] = None) -> None:
        """Redraws ``lsh_proj`` in place (standard normal) from `generator` (default: the global RNG)."""
        gdev = generator.device if generator is not None else torch.device("cpu")
        new = torch.randn(self.dim_head, self.lsh_num_projs, dtype=torch.float32, device=gdev, generator=generator)
        self.lsh_proj.copy_(new)

    def _apply(self, fn, recurse=True):
        # .half()/.to(dtype) must not change the projection's dtype (hash bits must not depend on the
        # model's compute dtype); device moves still apply.
        proj = self.lsh_proj
        out = super()._apply(fn, recurse)
        if self.lsh_proj.dtype != torch.float32:
            self.lsh_proj = proj.to(self.lsh_proj.device)  # the original float32 values, on the new device
        return out

    def _generator(self, device: torch.device) -> Optional[torch.Generator]:
        if self.seed is None:
            return None
        key = str(device)
        g = self._generators.get(key)
        if g is None:
            g = torch.Generator(device=device).manual_seed(self.seed)
            self._generators[key] = g
        return g

    def _sdpa(self, query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa):
        if self.layout == "bnhd":
            query, key, value = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
        out = _torch_sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                          is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
        return out.transpose(1, 2) if self.layout == "bnhd" else out

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attn_mask: Optional[Tensor] = None,
                dropout_p: float = 0.0, is_causal: bool = False, scale: Optional[float] = None,
                enable_gqa: bool = False, *, generator: Optional[torch.Generator] = None, return_lse: bool = False):
        op = "nn.HyperAttention"
        if attn_mask is not None or dropout_p > 0:
            arg = "attn_mask" if attn_mask is not None else "dropout_p"
            if self.unsupported == "error" or return_lse:
                raise NotImplementedError(f"fastnorm.{op}: '{arg}' is not supported by HyperAttention "
                                          f"(use unsupported='exact' to delegate such calls to SDPA)")
            if not self._warned:
                warnings.warn(f"fastnorm.{op}: '{arg}' given; delegating the call to "
                              "F.scaled_dot_product_attention (exact attention)", stacklevel=2)
                self._warned = True
            return self._sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
        if query.dim() != 4 or key.dim() != 4:
            raise ValueError(f"fastnorm.{op}: query and key must be 4-D, got {list(query.shape)}, {list(key.shape)}")
        hdim = 1 if self.layout == "bhnd" else 2
        if query.shape[hdim] != key.shape[hdim] and not enable_gqa:
            raise RuntimeError(f"fastnorm.{op}: query has {query.shape[hdim]} heads but key has {key.shape[hdim]}; "
                               "pass enable_gqa=True for grouped-query attention (as in SDPA)")
        if query.shape[-1] != self.dim_head:
            raise ValueError(f"fastnorm.{op}: query head dim {query.shape[-1]} must equal dim_head={self.dim_head}")
        nq, nk = query.shape[3 - hdim], key.shape[3 - hdim]
        exact = plan_sizes(nq, nk, bool(is_causal) and nq == nk, self.block_size, self.sample_size,
                           self.min_seq_len)[1] == 0
        if exact and self.exact_fallback == "sdpa" and not return_lse:
            return self._sdpa(query, key, value, None, 0.0, is_causal, scale, enable_gqa)
        gen = generator if generator is not None else self._generator(query.device)
        return hyper_attention(query, key, value, bool(is_causal), scale, self.lsh_num_projs, self.block_size,
                               self.sample_size, self.min_seq_len, gen, return_lse, layout=self.layout,
                               lsh_proj=None if self.resample_lsh else self.lsh_proj.to(query.device),
                               _resample_lsh=self.resample_lsh)


class _PatchHandle:
    def __init__(self):
        self._undo: List[Callable[[], None]] = []

    def remove(self) -> None:
        while self._undo:
            self._undo.pop()()


def patch_attention(model: nn.Module, dim_head: int, *, filter_fn: Optional[Callable[[str, nn.Module], bool]] = None,
                    **hyper_kwargs) -> _PatchHandle:
    """Attaches a child ``hyper_attention`` (a HyperAttention) to every selected submodule (default: innermost
    modules whose class name ends in "Attention") and, for the duration of that submodule's forward only, rebinds
    ``torch.nn.functional.scaled_dot_product_attention`` to it. ``handle.remove()`` undoes everything.
    Limits: not thread-safe; no effect on code that imported the function by name; not traced by torch.compile."""
    def default_filter(name, mod):
        if not type(mod).__name__.endswith("Attention") or isinstance(mod, HyperAttention):
            return False
        return not any(type(c).__name__.endswith("Attention") and not isinstance(c, HyperAttention)
                       for _, c in mod.named_modules() if c is not mod)

    select = filter_fn or default_filter
    handle = _PatchHandle()
    targets = [(n, m) for n, m in model.named_modules() if select(n, m)]
    for name, mod in targets:
        ha = HyperAttention(dim_head, **hyper_kwargs)
        try:
            ha = ha.to(next(mod.parameters()).device)
        except StopIteration:
            pass
        mod.add_module("hyper_attention", ha)

        def pre(m, args, kwargs, _ha=ha):
            m._fastnorm_saved_sdpa = F.scaled_dot_product_attention
            F.scaled_dot_product_attention = _ha
            return None

        def post(m, args, kwargs, output):
            F.scaled_dot_product_attention = m._fastnorm_saved_sdpa
            del m._fastnorm_saved_sdpa
            return None

        h1 = mod.register_forward_pre_hook(pre, with_kwargs=True)
        h2 = mod.register_forward_hook(post, with_kwargs=True, always_call=True)

        def undo(mod=mod, h1=h1, h2=h2):
            h1.remove()
            h2.remove()
            if "hyper_attention" in mod._modules:
                del mod._modules["hyper_attention"]
        handle._undo.append(undo)
    return handle


# ---- Hugging Face transformers integration ---------------------------------------------------------------------
HF_ATTN_IMPLEMENTATION = "fastnorm_hyper"
_HF_UNSUPPORTED_KWARGS = ("softcap", "sliding_window", "s_aux", "sinks", "position_bias")


def hf_attention_forward(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                         attention_mask: Optional[Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
                         is_causal: Optional[bool] = None, **kwargs):
    """An attention function for ``transformers.AttentionInterface`` (registered as ``"fastnorm_hyper"`` by
    :func:`patch_hf_attention`), with the calling convention of transformers' ``sdpa_attention_forward``:
    query [B, Hq, Nq, D], key/value [B, Hkv, Nk, D] -> (out [B, Nq, Hq, D] contiguous, None).

    It runs ``module.hyper_attention`` (the child HyperAttention that ``patch_hf_attention`` attaches). The mask
    interface is registered as transformers' ``sdpa_mask``, so ``attention_mask`` is None exactly when the mask
    is the plain causal one (training, prefill without padding) or when every key is visible (one-token decode
    steps); causality then comes from ``is_causal`` as in the SDPA integration (a one-token query is not causal,
    and an empty-static-cache prefill with Nk > Nq uses the first Nq keys). A non-None ``attention_mask``
    (padding, packed sequences, chunked prefill, static-cache decode) or ``dropout > 0`` follows the child's
    ``unsupported`` policy: ``"error"`` raises NotImplementedError, ``"exact"`` hands the whole call to
    transformers' SDPA function with a one-time warning. Grouped-query attention is native (query head h reads
    kv head h // (Hq/Hkv), the mapping of transformers' ``repeat_kv``); ``scaling`` is passed as the scale.
    Soft-capping, sliding windows, attention sinks and position biases raise NotImplementedError.
    """
    op = "nn.hf_attention_forward"
    ha = module._modules.get("hyper_attention")
    if not isinstance(ha, HyperAttention):
        raise RuntimeError(f"fastnorm.{op}: {type(module).__name__} has no 'hyper_attention' child; "
                           "attach one with fastnorm.nn.patch_hf_attention(model)")
    for name in _HF_UNSUPPORTED_KWARGS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"fastnorm.{op}: '{name}' is not supported by HyperAttention")
    if attention_mask is not None or dropout > 0:
        arg = "attention_mask" if attention_mask is not None else "dropout"
        if ha.unsupported == "error":
            raise NotImplementedError(
                f"fastnorm.{op}: '{arg}' given ({'a padding, packed-sequence, chunked-prefill or static-cache mask' if arg == 'attention_mask' else f'dropout={dropout}'}); "  # noqa: E501
                "HyperAttention supports plain causal or full attention only (build the HyperAttention children "
                "with unsupported='exact' to hand such calls to exact SDPA)")
        if not ha._warned:
            warnings.warn(f"fastnorm.{op}: '{arg}' given; delegating the call to transformers' SDPA attention "
                          "(exact attention)", stacklevel=2)
            ha._warned = True
        from transformers.integrations.sdpa_attention import sdpa_attention_forward
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if ha.layout != "bhnd":
        raise ValueError(f"fastnorm.{op}: the hyper_attention child must use layout 'bhnd' (transformers passes "
                         f"[B, H, N, D]), got {ha.layout!r}")
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True)) and q_len > 1
    if causal and kv_len > q_len:
        # Only reached for a prefill into an empty static cache (otherwise the mask would not be None): the
        # first q_len keys are the real ones, as in transformers' SDPA integration.
        key, value = key[:, :, :q_len], value[:, :, :q_len]
    out = ha(query, key, value, None, 0.0, causal, scaling, query.shape[1] != key.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _register_hf() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    AttentionInterface.register(HF_ATTN_IMPLEMENTATION, hf_attention_forward)
    # Without a mask function for this name, transformers builds no mask at all, and a padding mask would be
    # dropped silently; sdpa_mask returns None for the plain causal case and a boolean mask otherwise.
    AttentionMaskInterface.register(HF_ATTN_IMPLEMENTATION, sdpa_mask)


def patch_hf_attention(model: nn.Module, *, filter_fn: Optional[Callable[[str, nn.Module], bool]] = None,
                       **hyper_kwargs) -> _PatchHandle:
    """Runs a Hugging Face ``transformers`` model's attention through HyperAttention.

    Registers :func:`hf_attention_forward` under ``"fastnorm_hyper"`` (``transformers.AttentionInterface`` and
    ``AttentionMaskInterface``), attaches a child ``hyper_attention`` = ``HyperAttention(module.head_dim,
    layout="bhnd", **hyper_kwargs)`` to every selected module (default: modules whose class name ends in
    "Attention" and that have an integer ``head_dim``; its ``lsh_proj`` is then in the state_dict), and switches
    the model with ``model.set_attn_implementation("fastnorm_hyper")``. ``handle.remove()`` restores the previous
    implementation and removes the children. Under ``torch.compile(fullgraph=True)`` pass ``seed=None``: approximating
    calls draw from an explicit generator when ``seed`` is set, which dynamo cannot trace. Only models whose attention layers dispatch through
    ``ALL_ATTENTION_FUNCTIONS`` (Llama, Mistral, Qwen2, ... in transformers >= 4.48) are affected; see
    :func:`hf_attention_forward` for what is supported."""
    op = "nn.patch_hf_attention"
    if not hasattr(model, "set_attn_implementation") or not hasattr(model, "config"):
        raise TypeError(f"fastnorm.{op}: model must be a transformers PreTrainedModel, got {type(model).__name__}")
    if "layout" in hyper_kwargs and hyper_kwargs["layout"] != "bhnd":
        raise ValueError(f"fastnorm.{op}: layout must be 'bhnd' (transformers passes [B, H, N, D])")
    hyper_kwargs.pop("layout", None)
    _register_hf()

    def default_filter(name, mod):
        return (type(mod).__name__.endswith("Attention") and not isinstance(mod, HyperAttention)
                and isinstance(getattr(mod, "head_dim", None), int))

    select = filter_fn or default_filter
    targets = [(n, m) for n, m in model.named_modules() if select(n, m)]
    if not targets:
        raise ValueError(f"fastnorm.{op}: no attention module selected in {type(model).__name__}")
    for name, mod in targets:
        if "hyper_attention" in mod._modules:
            raise ValueError(f"fastnorm.{op}: {name} already has a 'hyper_attention' child")
    handle = _PatchHandle()
    previous = model.config._attn_implementation
    for name, mod in targets:
        ha = HyperAttention(mod.head_dim, layout="bhnd", **hyper_kwargs)
        try:
            ha = ha.to(next(mod.parameters()).device)
        except StopIteration:
            pass
        if ha.seed is not None:
            # Create the seeded generator now: created lazily inside the first forward, it would break
            # torch.compile (a Generator cannot be created in a compiled region).
            ha._generator(ha.lsh_proj.device)
        mod.add_module("hyper_attention", ha)
        handle._undo.append(lambda mod=mod: mod._modules.pop("hyper_attention", None))
    handle._undo.insert(0, lambda: model.set_attn_implementation(previous))  # undone last
    try:
        model.set_attn_implementation(HF_ATTN_IMPLEMENTATION)
    except Exception:
        handle.remove()
        raise
    if model.config._attn_implementation != HF_ATTN_IMPLEMENTATION:
        # transformers only logs a warning for models that do not dispatch through AttentionInterface
        handle.remove()
        raise ValueError(f"fastnorm.{op}: {type(model).__name__} did not switch to {HF_ATTN_IMPLEMENTATION!r} (its "
                         "attention does not dispatch through transformers.AttentionInterface); nothing patched")
    return handle
