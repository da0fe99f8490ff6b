"""Small causal language model: how much does HyperAttention cost in perplexity? (specs/hyper_attention.md §7.6)

A synthetic corpus (nothing is downloaded): vocabulary 512, an order-1 Markov chain with 8 likely successors per
token (Dirichlet weights), and in each 256-token chunk, with probability 0.5, a copy of an earlier span of 64-256
tokens, so that long-range retrieval matters. The model (4 layers, d_model 256, 4 heads x 64, RoPE, SwiGLU, RMSNorm)
is trained with exact attention (F.scaled_dot_product_attention; AdamW, lr 1e-3, cosine schedule), then evaluated on
held-out sequences with
  exact      exact attention in every layer
  hyper-all  fastnorm.nn.HyperAttention in every layer
  hyper-half HyperAttention in the last half of the layers
reporting the mean next-token NLL (natural log), perplexity e^NLL, the official scripts' convention 2^NLL (§8 item 13)
and the deltas against exact.

Configs:  gpu   length 16384, 2000 steps, default hyper settings (min_seq_len 4096, b = m = 256)
          cpu   length 2048, 300 steps, min_seq_len 512, b = m = 64 (the spec's CPU config: ~20 min on 2 cores)
          quick length 512, 200 steps, min_seq_len 128, b = m = 16, batch 1, 2 layers, d_model 128 = 2 heads x 64
                (smaller than the spec's model, so that it runs in a few minutes on 2 busy cores)
          smoke tiny, for CI
Note: with the default min_seq_len 4096, causal hyper attention is exact up to length 8192 (§3.6).

  python examples/hyper_attention_lm.py --config quick
"""
import argparse
import math
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastnorm
import fastnorm.nn

CONFIGS = {
    "gpu": dict(length=16384, steps=2000, batch=1, min_seq_len=4096, block=256, samples=256, eval_seqs=64,
                layers=4, d_model=256, heads=4),
    "cpu": dict(length=2048, steps=300, batch=2, min_seq_len=512, block=64, samples=64, eval_seqs=64,
                layers=4, d_model=256, heads=4),
    "quick": dict(length=512, steps=200, batch=1, min_seq_len=128, block=16, samples=16, eval_seqs=16,
                  layers=2, d_model=128, heads=2),
    "smoke": dict(length=256, steps=4, batch=1, min_seq_len=64, block=16, samples=16, eval_seqs=2,
                  layers=2, d_model=64, heads=2),
}
VOCAB = 512


# ---- corpus --------------------------------------------------------------------------------------------------------
class Corpus:
    """Order-1 Markov chain (8 successors per token, Dirichlet(1) weights, 2% uniform smoothing) plus copied spans."""

    def __init__(self, seed=0):
        g = torch.Generator().manual_seed(seed)
        succ = torch.stack([torch.randperm(VOCAB, generator=g)[:8] for _ in range(VOCAB)])
        w = -torch.log(torch.rand(VOCAB, 8, generator=g).clamp_min(1e-12))  # normalised Exp(1) = Dirichlet(1)
        w = w / w.sum(-1, keepdim=True)
        P = torch.full((VOCAB, VOCAB), 0.02 / VOCAB)
        P.scatter_add_(1, succ, 0.98 * w)
        self.cdf = (P / P.sum(-1, keepdim=True)).cumsum(-1)

    def sample(self, count, n, g):
        """count sequences of n tokens (the chain is vectorised over sequences)."""
        x = torch.empty(count, n, dtype=torch.long)
        x[:, 0] = torch.randint(0, VOCAB, (count,), generator=g)
        u = torch.rand(n, count, generator=g)  # row t: the uniforms of step t (contiguous)
        for t in range(1, n):
            x[:, t] = torch.searchsorted(self.cdf[x[:, t - 1]], u[t].unsqueeze(1)).squeeze(1).clamp_max(VOCAB - 1)
        for i in range(count):
            for c0 in range(256, n, 256):  # chunk [c0, c0 + 256): maybe a copy of an earlier span
                if torch.rand(1, generator=g).item() < 0.5:
                    ln = min(int(torch.randint(64, 257, (1,), generator=g)), c0)
                    src = int(torch.randint(0, c0 - ln + 1, (1,), generator=g))
                    dst = c0 + int(torch.randint(0, 256 - ln + 1, (1,), generator=g))
                    ln = min(ln, n - dst)
                    if ln > 0:
                        x[i, dst:dst + ln] = x[i, src:src + ln].clone()
        return x


def make_batches(corpus, count, length, seed):
    return corpus.sample(count, length + 1, torch.Generator().manual_seed(seed))


# ---- model ---------------------------------------------------------------------------------------------------------
class _FunctionalHyper(nn.Module):
    """Stand-in for fastnorm.nn.HyperAttention in builds that lack the module: the functional op with a persistent
    LSH projection buffer and a seeded generator (same semantics for this example's calls)."""

    def __init__(self, dim_head, block_size, sample_size, min_seq_len, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("lsh_proj", torch.randn(dim_head, 7, generator=g))
        self.kw = dict(block_size=block_size, sample_size=sample_size, min_seq_len=min_seq_len)
        self.seed = seed

    def forward(self, q, k, v, is_causal=False):
        gen = torch.Generator(device=q.device).manual_seed(self.seed)
        return fastnorm.hyper_attention(q, k, v, is_causal, generator=gen, lsh_proj=self.lsh_proj, **self.kw)


def hyper_module(dim_head, seed, **kw):
    if hasattr(fastnorm.nn, "HyperAttention"):
        return fastnorm.nn.HyperAttention(dim_head, seed=seed, **kw)
    return _FunctionalHyper(dim_head, seed=seed, **kw)


def rope(x, base=10000.0):
    n, d = x.shape[-2], x.shape[-1]
    inv = base ** (-torch.arange(0, d, 2, dtype=torch.float32, device=x.device) / d)
    ang = torch.arange(n, dtype=torch.float32, device=x.device)[:, None] * inv
    c, s = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)


class Block(nn.Module):
    def __init__(self, d, heads, hyper_kwargs, seed):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        hid = int(8 * d / 3)
        self.w12 = nn.Linear(d, 2 * hid, bias=False)
        self.w3 = nn.Linear(hid, d, bias=False)
        self.use_hyper = False
        # the HyperAttention module owns its LSH projection as a persistent buffer (saved with the model)
        self.hyper = hyper_module(self.dh, seed, **hyper_kwargs)

    def forward(self, x):
        B, N, D = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, N, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k = rope(q), rope(k)
        if self.use_hyper:
            a = self.hyper(q, k, v, is_causal=True)
        else:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, N, D))
        h1, h2 = self.w12(self.n2(x)).chunk(2, dim=-1)
        return x + self.w3(F.silu(h1) * h2)


class LM(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["d_model"]
        hk = dict(block_size=cfg["block"], sample_size=cfg["samples"], min_seq_len=cfg["min_seq_len"])
        self.emb = nn.Embedding(VOCAB, d)
        self.blocks = nn.ModuleList(Block(d, cfg["heads"], hk, seed=100 + i) for i in range(cfg["layers"]))
        self.norm = nn.RMSNorm(d)
        nn.init.normal_(self.emb.weight, std=0.02)  # tied output layer: unit-variance rows would give huge logits

    def forward(self, idx):
        x = self.emb(idx)
        for b in self.blocks:
            x = b(x)
        return self.norm(x) @ self.emb.weight.T


def nll(model, data):
    tot, cnt = 0.0, 0
    with torch.no_grad():
        for seq in data:
            logits = model(seq[None, :-1])
            tot += F.cross_entropy(logits[0].float(), seq[1:], reduction="sum").item()
            cnt += seq.numel() - 1
    return tot / cnt


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="quick", choices=sorted(CONFIGS))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    cfg = CONFIGS[a.config]
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    t0 = time.time()
    corpus = Corpus(a.seed)
    train = make_batches(corpus, cfg["steps"] * cfg["batch"], cfg["length"], seed=1).to(dev)
    held = make_batches(corpus, cfg["eval_seqs"], cfg["length"], seed=2).to(dev)
    print(f"config {a.config}: {cfg}; corpus built in {time.time() - t0:.0f} s", file=sys.stderr)
    model = LM(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg["steps"])
    model.train()
    for step in range(cfg["steps"]):
        batch = train[step * cfg["batch"]:(step + 1) * cfg["batch"]]
        loss = F.cross_entropy(model(batch[:, :-1]).flatten(0, 1).float(), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % max(1, cfg["steps"] // 10) == 0 or step == cfg["steps"] - 1:
            print(f"step {step:5d}  train loss {loss.item():.4f}  ({time.time() - t0:.0f} s)", file=sys.stderr)
    model.eval()
    L = len(model.blocks)
    results = {}
    for name, hyper_layers in (("exact", []), ("hyper-all", list(range(L))), ("hyper-half", list(range(L // 2, L)))):
        for i, b in enumerate(model.blocks):
            b.use_hyper = i in hyper_layers
        results[name] = nll(model, held)
    ex = results["exact"]
    print(f"\nSmall causal LM (§7.6), config {a.config}, device {a.device}, length {cfg['length']}, "
          f"{cfg['eval_seqs']} held-out sequences; hyper: b={cfg['block']}, m={cfg['samples']}, "
          f"min_seq_len={cfg['min_seq_len']}\n")
    print("| attention | NLL (nats/token) | ppl e^NLL | ppl 2^NLL (official convention) | delta e^NLL | delta 2^NLL |")
    print("|---|---|---|---|---|---|")
    for name, v in results.items():
        print(f"| {name} | {v:.4f} | {math.exp(v):.3f} | {2 ** v:.3f} | {math.exp(v) - math.exp(ex):+.3f} | "
              f"{2 ** v - 2 ** ex:+.3f} |")
    print(f"\n(total {time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
