"""A small Llama built with Hugging Face transformers, patched with fastnorm norms and HyperAttention, trained
with fastnorm's Lion (issue 8, "Models"; docs/models.md).

Nothing is downloaded: the model comes from a local ``LlamaConfig`` (default: hidden 128, 2 layers, 4 query heads
sharing 2 key/value heads (GQA), head dim 32, vocabulary 1000) with random weights, and the data are synthetic
token ids. Steps:

1. Build the model twice from the same seed: ``ref`` (transformers' own LlamaRMSNorm and SDPA attention) and
   ``patched``, on which
   - ``fastnorm.patch(model)`` swaps every LlamaRMSNorm for ``fastnorm.nn.LlamaRMSNorm`` (same Parameter objects;
     each swap is verified to 1 ulp on a random input, a module that disagrees would be left in place with a warning,
     which this script treats as a failure), and
   - ``fastnorm.nn.patch_hf_attention(model, ...)`` registers fastnorm's HyperAttention as the transformers attention
     implementation ``"fastnorm_hyper"`` (GQA native, ``scaling`` passed through, causal from ``is_causal``; padding
     masks and dropout rejected) with ``exact_fallback="fastnorm"``, so that even the exact path runs fastnorm's
     kernel rather than SDPA.
2. Parity before training (float32): logits of ``patched`` vs ``ref`` at a length <= min_seq_len (every attention is
   exact; asserted within ``--tol``), the greedy ``generate`` with KV cache (same tokens, per-step scores within
   ``--tol``), and at a length > 2*min_seq_len, where causal HyperAttention approximates the off-diagonal blocks:
   that deviation is reported, not asserted.
3. A padding mask must be rejected (NotImplementedError), not silently ignored.
4. Training: ``--steps`` Lion steps on a learnable synthetic task (arithmetic progressions modulo ``--alphabet`` with a
   random start and a random stride in 1..4: the next token follows from the previous two), for ``patched`` and, from
   the same init and batches, ``ref``; the patched loss must fall by ``--min-drop`` (relative) and below the unigram
   floor ln(alphabet), and both loss curves are
   printed side by side (Lion's sign() turns 1e-6 differences into different updates of near-zero momenta, so the
   curves are compared loosely, ``--train-tol``).
5. After training: the approximate path's deviation again (trained attention is more peaked than at init).

Exit status 0 when every check passed, 1 otherwise.

    python examples/llama_fastnorm.py                  # default
    python examples/llama_fastnorm.py --hidden 256 --layers 4 --heads 8 --kv-heads 2 --steps 50
"""
import argparse
import copy
import math
import sys
import time
import warnings
from typing import Dict, List, Tuple

import torch

import fastnorm
import fastnorm.nn
from fastnorm.optim import Lion


def build_config(hidden: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2, vocab: int = 1000,
                 max_positions: int = 2048):
    """A local LlamaConfig (no hub access). intermediate size ~ 8/3 hidden, rounded up to 32, as in Llama."""
    from transformers import LlamaConfig
    if hidden % heads or heads % kv_heads:
        raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads}), heads of kv_heads ({kv_heads})")
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=-(-8 * hidden // 3 // 32) * 32,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=max_positions, rms_norm_eps=1e-6, attention_dropout=0.0,
                       tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       attn_implementation="sdpa")


def build_models(config, seed: int = 0):
    """``ref`` (unpatched) and an identical deep copy (to be patched), float32 on CPU, in eval mode."""
    from transformers import LlamaForCausalLM
    torch.manual_seed(seed)
    ref = LlamaForCausalLM(config).float().eval()
    return ref, copy.deepcopy(ref)


def patch_model(model, *, min_seq_len: int, block_size: int, sample_size: int, seed: int = 0,
                exact_fallback: str = "fastnorm") -> Tuple[List[str], object]:
    """Norms via ``fastnorm.patch`` (a verification warning becomes an error), attention via
    ``fastnorm.nn.patch_hf_attention``. Returns (names of the swapped norms, the attention patch handle)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = fastnorm.patch(model)
    left = [str(w.message) for w in caught if "fastnorm.patch" in str(w.message)]
    if left:
        raise RuntimeError("fastnorm.patch left norms in place: " + "; ".join(left))
    handle = fastnorm.nn.patch_hf_attention(model, min_seq_len=min_seq_len, block_size=block_size,
                                            sample_size=sample_size, exact_fallback=exact_fallback, seed=seed)
    return names, handle


def fastnorm_modules(model) -> Dict[str, int]:
    """Counts of fastnorm modules and of modules still from transformers' norm class."""
    out = {"fastnorm.nn.LlamaRMSNorm": 0, "fastnorm.nn.HyperAttention": 0, "transformers LlamaRMSNorm": 0}
    for m in model.modules():
        if isinstance(m, fastnorm.nn.LlamaRMSNorm):
            out["fastnorm.nn.LlamaRMSNorm"] += 1
        elif isinstance(m, fastnorm.nn.HyperAttention):
            out["fastnorm.nn.HyperAttention"] += 1
        elif type(m).__name__ == "LlamaRMSNorm":
            out["transformers LlamaRMSNorm"] += 1
    return out


def fastnorm_op_calls(model, ids: torch.Tensor) -> Dict[str, int]:
    """Which torch.ops.fastnorm ops one forward of ``model`` runs (from the profiler's op names)."""
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model(ids)
    return {e.key: e.count for e in prof.key_averages() if e.key.startswith("fastnorm::")}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 over the entries where a or b is finite (generate's logits processors set
    banned tokens to -inf in both); a finite/infinite mismatch counts as inf."""
    a, b = a.detach().double(), b.detach().double()
    both_inf = ~torch.isfinite(a) & (a == b)
    if not bool((torch.isfinite(a) == torch.isfinite(b)).all()):
        return math.inf
    d = torch.where(both_inf, 0.0, a - b)
    return float(d.norm() / torch.where(both_inf, 0.0, b).norm())


def logits_parity(ref, patched, seq_len: int, batch: int = 2, vocab: int = 1000, seed: int = 1) -> Dict[str, float]:
    """Normwise relative error ||patched - ref|| / ||ref|| of the logits, the largest absolute difference, the
    fraction of equal argmaxes and both mean cross-entropies, on random token ids (the same for both)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, seq_len), generator=g)
    with torch.no_grad():
        a = ref(ids, labels=ids)
        b = patched(ids, labels=ids)
    return dict(seq_len=seq_len, rel=_rel(b.logits, a.logits), max_abs=float((b.logits - a.logits).abs().max()),
                argmax_agree=float((b.logits.argmax(-1) == a.logits.argmax(-1)).double().mean()),
                loss_ref=float(a.loss), loss_patched=float(b.loss))


def generation_parity(ref, patched, prompt_len: int = 8, new_tokens: int = 8, vocab: int = 1000, seed: int = 2
                      ) -> Dict[str, float]:
    """Greedy generation with the KV cache (prefill, then one-token decode steps): same tokens, and the largest
    normwise relative difference of the per-step scores."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (2, prompt_len), generator=g)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
              return_dict_in_generate=True, output_scores=True, pad_token_id=0)
    with torch.no_grad():
        a = ref.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        b = patched.generate(ids, attention_mask=torch.ones_like(ids), **kw)
    rel = max(_rel(sb, sa) for sa, sb in zip(a.scores, b.scores))
    return dict(same_tokens=bool(torch.equal(a.sequences, b.sequences)), max_step_rel=rel,
                new_tokens=int(a.sequences.shape[1] - prompt_len))


def padding_mask_rejected(patched, vocab: int = 1000) -> bool:
    """A left-padded batch must raise NotImplementedError (HyperAttention has no masks), not be ignored."""
    ids = torch.randint(3, vocab, (2, 8))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    try:
        with torch.no_grad():
            patched(ids, attention_mask=mask)
    except NotImplementedError:
        return True
    return False


def task_batch(batch: int, seq_len: int, alphabet: int, gen: torch.Generator, max_stride: int = 4) -> torch.Tensor:
    """Arithmetic progressions modulo ``alphabet`` over the token ids 3 .. 3+alphabet-1 (pad/bos/eos stay out),
    each sequence with a random start and a random stride in 1..max_stride: from the previous two tokens the next
    one is determined, so the loss can go well below ln(alphabet) (the unigram floor)."""
    start = torch.randint(0, alphabet, (batch, 1), generator=gen)
    stride = torch.randint(1, max_stride + 1, (batch, 1), generator=gen)
    return 3 + (start + stride * torch.arange(seq_len)) % alphabet


def train(model, steps: int, batch: int, seq_len: int, alphabet: int = 64, lr: float = 3e-3, seed: int = 3
          ) -> List[float]:
    """``steps`` Lion steps (fastnorm.optim.Lion, weight decay 0.1) on the progression task; per-step losses."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    opt = Lion(model.parameters(), lr=lr, betas=(0.9, 0.99), weight_decay=0.1)
    losses = []
    for _ in range(steps):
        ids = task_batch(batch, seq_len, alphabet, g)
        loss = model(ids, labels=ids).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.detach().item())
    model.eval()
    return losses


def approx_deviation(patched, seq_len: int, batch: int, alphabet: int = 64, seed: int = 4) -> Dict[str, float]:
    """HyperAttention (approximating at this length) vs exact attention on the *same* weights: the model is
    switched to transformers' SDPA for the reference forward and back afterwards. Data: the training task."""
    g = torch.Generator().manual_seed(seed)
    ids = task_batch(batch, seq_len, alphabet, g)
    with torch.no_grad():
        hyp = patched(ids, labels=ids)
        impl = patched.config._attn_implementation
        patched.set_attn_implementation("sdpa")
        try:
            ex = patched(ids, labels=ids)
        finally:
            patched.set_attn_implementation(impl)
    return dict(seq_len=seq_len, rel=_rel(hyp.logits, ex.logits),
                argmax_agree=float((hyp.logits.argmax(-1) == ex.logits.argmax(-1)).double().mean()),
                loss_exact=float(ex.loss), loss_hyper=float(hyp.loss))


def continuation_accuracy(model, alphabet: int = 64, prompt_len: int = 16, new_tokens: int = 8, seed: int = 5
                          ) -> float:
    """Fraction of greedily generated tokens (with the KV cache) that continue task progressions correctly."""
    g = torch.Generator().manual_seed(seed)
    seqs = task_batch(8, prompt_len + new_tokens, alphabet, g)
    with torch.no_grad():
        out = model.generate(seqs[:, :prompt_len], attention_mask=torch.ones_like(seqs[:, :prompt_len]),
                             max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             pad_token_id=0)
    return float((out[:, prompt_len:] == seqs[:, prompt_len:]).double().mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--alphabet", type=int, default=64, help="task tokens (progressions modulo this)")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=64, help="training and exact-parity length (<= --min-seq-len)")
    p.add_argument("--long-seq-len", type=int, default=512, help="length for the approximate path (> 2*min_seq_len)")
    p.add_argument("--min-seq-len", type=int, default=64, help="HyperAttention min_seq_len")
    p.add_argument("--block-size", type=int, default=32)
    p.add_argument("--sample-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol", type=float, default=1e-5, help="normwise relative logits tolerance, exact path")
    p.add_argument("--min-drop", type=float, default=0.4, help="required relative loss decrease (first 5 -> last 5 steps)")
    p.add_argument("--train-tol", type=float, default=0.1, help="allowed |patched-ref|/ref of the final loss")
    p.add_argument("--no-ref-train", action="store_true", help="skip training the unpatched model")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: leave)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.seq_len > a.min_seq_len:
        p.error("--seq-len must be <= --min-seq-len (the exact path); the approximate one is --long-seq-len")
    t0 = time.perf_counter()
    failures: List[str] = []

    def check(ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            failures.append(what)

    cfg = build_config(a.hidden, a.layers, a.heads, a.kv_heads, a.vocab, max(2048, a.long_seq_len))
    ref, patched = build_models(cfg, a.seed)
    names, _handle = patch_model(patched, min_seq_len=a.min_seq_len, block_size=a.block_size,
                                 sample_size=a.sample_size, seed=a.seed)
    n_params = sum(p.numel() for p in ref.parameters())
    print(f"Llama: hidden {a.hidden}, {a.layers} layers, {a.heads} q heads / {a.kv_heads} kv heads "
          f"(head dim {a.hidden // a.heads}), vocab {a.vocab}, {n_params / 1e6:.2f} M params, float32, "
          f"{torch.get_num_threads()} threads")
    print(f"HyperAttention: min_seq_len {a.min_seq_len}, block {a.block_size}, sample {a.sample_size}, "
          f"exact_fallback 'fastnorm' (causal exact for n <= {2 * a.min_seq_len})")

    print("patching")
    mods = fastnorm_modules(patched)
    check(len(names) == 2 * a.layers + 1 and mods["transformers LlamaRMSNorm"] == 0,
          f"fastnorm.patch swapped {len(names)} norms (want {2 * a.layers + 1}), verified to 1 ulp; modules: {mods}")
    check(mods["fastnorm.nn.HyperAttention"] == a.layers and patched.config._attn_implementation == "fastnorm_hyper",
          f"attention implementation {patched.config._attn_implementation!r}, "
          f"{mods['fastnorm.nn.HyperAttention']} HyperAttention children")
    calls = fastnorm_op_calls(patched, torch.randint(3, a.vocab, (1, a.seq_len)))
    check(calls.get("fastnorm::rms_norm", 0) == 2 * a.layers + 1 and calls.get("fastnorm::hyper_attention", 0)
          == a.layers, f"one forward runs fastnorm ops {calls}")

    print(f"parity before training (exact path, length {a.seq_len} <= min_seq_len)")
    par = logits_parity(ref, patched, a.seq_len, 2, a.vocab)
    check(par["rel"] <= a.tol, f"logits rel err {par['rel']:.2e} (max abs {par['max_abs']:.2e}) <= {a.tol:g}; "
          f"argmax agree {par['argmax_agree']:.4f}; loss {par['loss_ref']:.6f} vs {par['loss_patched']:.6f}")
    gen = generation_parity(ref, patched, vocab=a.vocab)
    check(gen["same_tokens"] and gen["max_step_rel"] <= a.tol,
          f"greedy generate with KV cache ({gen['new_tokens']} new tokens): same tokens {gen['same_tokens']}, "
          f"scores rel err {gen['max_step_rel']:.2e}")
    check(padding_mask_rejected(patched, a.vocab), "a padding mask raises NotImplementedError (not ignored)")
    approx0 = logits_parity(ref, patched, a.long_seq_len, 1, a.vocab)
    print(f"  [info] approximate path, length {a.long_seq_len}, random weights and ids: logits rel err "
          f"{approx0['rel']:.3e}, argmax agree {approx0['argmax_agree']:.4f}, "
          f"loss {approx0['loss_ref']:.4f} (exact) vs {approx0['loss_patched']:.4f} (hyper)")

    print(f"training {a.steps} Lion steps (lr {a.lr:g}, weight decay 0.1, batch {a.batch}, length {a.seq_len}, "
          f"progressions mod {a.alphabet})")
    t1 = time.perf_counter()
    lp = train(patched, a.steps, a.batch, a.seq_len, a.alphabet, a.lr)
    t_pat = time.perf_counter() - t1
    lr_ = None
    if not a.no_ref_train:
        t1 = time.perf_counter()
        lr_ = train(ref, a.steps, a.batch, a.seq_len, a.alphabet, a.lr)
        t_ref = time.perf_counter() - t1
    print("   step  patched     ref")
    for i in sorted(set(list(range(0, a.steps, max(1, a.steps // 8))) + [a.steps - 1])):
        print(f"  {i + 1:5d}  {lp[i]:8.4f}  " + (f"{lr_[i]:8.4f}" if lr_ else "-"))
    k = min(5, a.steps)
    first, last = sum(lp[:k]) / k, sum(lp[-k:]) / k
    floor = math.log(a.alphabet)
    check(all(math.isfinite(x) for x in lp) and last <= (1 - a.min_drop) * first and last < floor,
          f"patched loss falls: mean of first {k} {first:.4f} -> last {k} {last:.4f} "
          f"({100 * (1 - last / first):.1f}% >= {100 * a.min_drop:.0f}%; below the unigram floor "
          f"ln {a.alphabet} = {floor:.3f})")
    if lr_:
        lastr = sum(lr_[-k:]) / k
        diff = max(abs(x - y) for x, y in zip(lp, lr_))
        check(abs(last - lastr) <= a.train_tol * lastr,
              f"patched vs unpatched (same init, batches, Lion): last-{k} mean {last:.4f} vs {lastr:.4f} "
              f"(|diff| <= {a.train_tol:g} rel); largest per-step |diff| {diff:.2e}; "
              f"time {t_pat:.1f} s vs {t_ref:.1f} s")
    approx1 = approx_deviation(patched, a.long_seq_len, 2, a.alphabet)
    print(f"  [info] approximate path after training, length {a.long_seq_len}, task data: logits rel err "
          f"{approx1['rel']:.3e}, argmax agree {approx1['argmax_agree']:.4f}, "
          f"loss {approx1['loss_exact']:.4f} (exact) vs {approx1['loss_hyper']:.4f} (hyper)")

    cont = continuation_accuracy(patched, a.alphabet)
    print(f"  [info] greedy generate (KV cache) continuing 8 progressions for 8 tokens after training: "
          f"{100 * cont:.0f}% of the tokens right")
    print(f"{'PASSED' if not failures else 'FAILED'}: {len(failures)} failed check(s); "
          f"total {time.perf_counter() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
