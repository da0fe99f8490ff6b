"""Train a small MLP with fastnorm's Lion and with lion-pytorch and print both loss curves (specs/lion.md §6.19).

Setup: an MLP 32→128→128→10 (GELU) learns the labels of a fixed random teacher on 8192 samples; batch 256,
lr 3e-4, weight decay 0.1, 10 % linear warm-up then cosine decay (LambdaLR). Both optimizers start from the
same init and see the same batches. Without lion-pytorch the baseline is the plain-PyTorch reference
(``fastnorm.reference.lion``). Runs in seconds on a CPU:

    python examples/lion_train.py [--steps 300] [--seed 0] [--bf16]

``--bf16`` trains bf16 weights with fastnorm's stochastic rounding (fp32 state), against the fp32 baseline.
"""
import argparse
import math
import time

import torch

import fastnorm
from fastnorm.optim import Lion


class ReferenceLion(torch.optim.Optimizer):
    """The float64 plain-PyTorch reference as an optimizer (the baseline when lion-pytorch is absent)."""

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            ps = [p for p in g["params"] if p.grad is not None]
            ms = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in ps]
            res = fastnorm.reference.lion.lion_step(ps, [p.grad for p in ps], ms, lr=g["lr"], betas=g["betas"],
                                                    weight_decay=g["weight_decay"])
            for p, m, np_, nm in zip(ps, ms, res.params, res.exp_avgs):
                p.copy_(np_)
                m.copy_(nm)


def baseline():
    try:
        import lion_pytorch
        return "lion_pytorch.Lion", lion_pytorch.Lion
    except ImportError:
        return "fastnorm.reference.lion", ReferenceLion


def data(n=8192):
    g = torch.Generator().manual_seed(1234)
    teacher = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 10))
    with torch.no_grad():
        for p in teacher.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
        x = torch.randn(n, 32, generator=g)
        y = teacher(x).argmax(-1)
    return x, y


def train(make_opt, x, y, steps, seed, dtype=torch.float32, batch=256):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 128), torch.nn.GELU(), torch.nn.Linear(128, 128),
                                torch.nn.GELU(), torch.nn.Linear(128, 10)).to(dtype)
    opt = make_opt(model.parameters())
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / (steps - warm))))
    order = torch.Generator().manual_seed(seed)
    perm, pos, ema, curve = torch.randperm(len(x), generator=order), 0, None, []
    t0 = time.perf_counter()
    for _ in range(steps):
        if pos + batch > len(x):
            perm, pos = torch.randperm(len(x), generator=order), 0
        idx = perm[pos:pos + batch]
        pos += batch
        loss = torch.nn.functional.cross_entropy(model(x[idx].to(dtype)).float(), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        curve.append(ema)
    return curve, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--bf16", action="store_true", help="fastnorm on bf16 weights with stochastic rounding")
    args = ap.parse_args()

    x, y = data()
    name, Peer = baseline()
    if args.bf16:
        fn_opt = lambda ps: Lion(ps, lr=args.lr, weight_decay=0.1, stochastic_rounding=True)  # noqa: E731
        fn_name, fn_dtype = "fastnorm Lion (bf16 + SR)", torch.bfloat16
    else:
        fn_opt = lambda ps: Lion(ps, lr=args.lr, weight_decay=0.1)  # noqa: E731
        fn_name, fn_dtype = "fastnorm Lion", torch.float32
    fn, t_fn = train(fn_opt, x, y, args.steps, args.seed, fn_dtype)
    pe, t_pe = train(lambda ps: Peer(ps, lr=args.lr, weight_decay=0.1), x, y, args.steps, args.seed)

    print(f"EMA(0.9) training loss, seed {args.seed}, {args.steps} steps")
    print(f"{'step':>6} {fn_name:>26} {name:>26}")
    for k in list(range(0, args.steps, 25)) + [args.steps - 1]:
        print(f"{k + 1:>6} {fn[k]:>26.4f} {pe[k]:>26.4f}")
    rel = abs(fn[-1] - pe[-1]) / pe[-1]
    print(f"final: {fn[-1]:.4f} vs {pe[-1]:.4f} ({100 * rel:.2f} % apart); "
          f"train time {t_fn:.2f} s vs {t_pe:.2f} s (whole loop, not only the optimizer)")


if __name__ == "__main__":
    main()
