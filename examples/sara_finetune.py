"""SaRA vs LoRA vs full fine-tuning on the CPU with data shipped in scikit-learn (specs/sara.md §7 B5).

    python examples/sara_finetune.py            # full run (pretrain 400 steps, fine-tune 200 steps per method)
    python examples/sara_finetune.py --quick    # < 60 s smoke run (smaller model, fewer steps)

Task: ``load_digits`` (8×8, scaled to [0, 1], 80/20 split with seed 0). A ReLU MLP 64→1536→1536→1536→10 (layers
``fc_in``/``h1``/``h2``/``head``) is pretrained on upright digits, then fine-tuned on digits rotated by 90° (batches of
512 drawn with replacement, ±1-pixel shifts, Gaussian noise σ = 0.05) from identical pretrained copies with:

* full fine-tuning, ``torch.optim.AdamW`` (lr 3e-4);
* LoRA r = 16, α = 32 on fc_in/h1/h2, ``head`` in modules_to_save, lr 1e-3 (``peft`` if installed, else
  ``fastnorm.reference.lora``);
* SaRA ``lora_rank=16`` on the same modules (the same 123,904 trainable entries), ``head`` in modules_to_save,
  lr 1e-3, λ = 5e-4 sketch regulariser, progressive step at 50 % (intersect).

Printed per method: trainable parameters, loss curve, test accuracy, step time (mean of timed steps after warm-up,
fixed ``torch.set_num_threads``) and peak step memory = persistent (unique storages of params, buffers, grads and
optimizer state at step start) + transient (maximum running sum of the signed ``torch.profiler`` memory events over
one full step), the spec's CPU memory protocol.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from torch import nn


# ---- data -------------------------------------------------------------------------------------------------------
def load_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    d = load_digits()
    X = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    idx_tr, idx_te = train_test_split(range(len(y)), test_size=0.2, random_state=seed)
    return X[idx_tr], y[idx_tr], X[idx_te], y[idx_te]


def rotate90(X: torch.Tensor) -> torch.Tensor:
    return torch.rot90(X.view(-1, 8, 8), 1, dims=(1, 2)).reshape(-1, 64).contiguous()


def make_batches(X: torch.Tensor, y: torch.Tensor, n_batches: int, batch: int, *, shift: int = 1,
                 noise: float = 0.05, seed: int = 1) -> List:
    """Batches drawn with replacement, each image shifted by up to ±shift pixels (zero fill) plus N(0, noise²)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        i = torch.randint(len(y), (batch,), generator=g)
        img = F.pad(X[i].view(-1, 1, 8, 8), (shift,) * 4)
        dy = torch.randint(0, 2 * shift + 1, (batch,), generator=g)
        dx = torch.randint(0, 2 * shift + 1, (batch,), generator=g)
        rows = (dy[:, None] + torch.arange(8)[None, :])  # [B, 8]
        cols = (dx[:, None] + torch.arange(8)[None, :])
        img = img[torch.arange(batch)[:, None, None], 0, rows[:, :, None], cols[:, None, :]]
        img = img.reshape(batch, 64) + noise * torch.randn(batch, 64, generator=g)
        out.append((img.contiguous(), y[i]))
    return out


# ---- model ------------------------------------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, hidden: int = 1536, n_in: int = 64, n_out: int = 10):
        super().__init__()
        self.fc_in = nn.Linear(n_in, hidden)
        self.h1 = nn.Linear(hidden, hidden)
        self.h2 = nn.Linear(hidden, hidden)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x):
        x = F.relu(self.fc_in(x))
        x = F.relu(self.h1(x))
        x = F.relu(self.h2(x))
        return self.head(x)


def pretrain(model: nn.Module, X, y, steps: int, batch: int = 256, lr: float = 1e-3, seed: int = 0) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    loss = float("nan")
    for _ in range(steps):
        i = torch.randint(len(y), (batch,), generator=g)
        l = F.cross_entropy(model(X[i]), y[i])
        l.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss = float(l.detach())
    return loss


@torch.no_grad()
def accuracy(model: nn.Module, X, y) -> float:
    return float((model(X).argmax(-1) == y).float().mean())


# ---- methods ----------------------------------------------------------------------------------------------------
TARGETS = ["fc_in", "h1", "h2"]


def setup_full(model: nn.Module, total_steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)
    return model, opt, sum(p.numel() for p in model.parameters())


def setup_lora(model: nn.Module, total_steps: int, r: int = 16, prefer_peft: bool = True):
    try:
        if not prefer_peft:
            raise ImportError
        from peft import LoraConfig, get_peft_model
        cfg = LoraConfig(r=r, lora_alpha=2 * r, lora_dropout=0.0, target_modules=TARGETS, modules_to_save=["head"])
        model = get_peft_model(model, cfg)
        name = "LoRA (peft)"
    except ImportError:
        from fastnorm.reference.lora import apply_lora
        model = apply_lora(model, TARGETS, r=r, lora_alpha=2 * r, modules_to_save=["head"])
        name = "LoRA (fastnorm.reference.lora)"
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    setup_lora.last_name = name
    return model, opt, sum(p.numel() for p in params)


setup_lora.last_name = "LoRA"


def setup_sara(model: nn.Module, total_steps: int, r: int = 16, **kw):
    import fastnorm
    opt = fastnorm.sara.SaRA(model, lora_rank=r, target_modules=TARGETS, modules_to_save=["head"], lr=1e-3,
                             lambda_rank=5e-4, rank_method="sketch", progressive_step=0.5,
                             progressive_mode="intersect", total_steps=total_steps, **kw)
    return model, opt, opt.num_trainable_parameters()


# ---- measurement --------------------------------------------------------------------------------------------------
def _storages(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or not isinstance(t, torch.Tensor) or t.device.type != "cpu":
            continue
        st = t.untyped_storage()
        key = st.data_ptr()
        if key in seen or st.nbytes() == 0:
            continue
        seen.add(key)
        total += st.nbytes()
    return total


def persistent_bytes(model: nn.Module, opt) -> int:
    ts = list(model.parameters()) + list(model.buffers()) + [p.grad for p in model.parameters()]
    for st in opt.state.values():
        ts += [v for v in st.values() if isinstance(v, torch.Tensor)]
    return _storages(ts)


def transient_peak_bytes(step: Callable[[], None]) -> int:
    """Maximum running sum of the signed CPU memory events of ``torch.profiler`` over one call of ``step``."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    evs = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    evs.sort(key=lambda e: e.start_ns())
    run = peak = 0
    for e in evs:
        run += int(e.nbytes())
        peak = max(peak, run)
    return peak


def step_fn(model: nn.Module, opt, batches, it: List[int]):
    def step():
        xb, yb = batches[it[0] % len(batches)]
        it[0] += 1
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())
    return step


def run_method(name: str, setup, base: nn.Module, batches, steps: int, Xte, yte, *, timed: int = 30, warmup: int = 5,
               log_every: int = 20, verbose: bool = True) -> Dict:
    model = copy.deepcopy(base)
    model, opt, n_train = setup(model, steps)
    it = [0]
    step = step_fn(model, opt, batches, it)
    losses = []
    for s in range(steps):
        losses.append(step())
        if verbose and (s % log_every == 0 or s == steps - 1):
            print(f"  {name:32s} step {s:4d} loss {losses[-1]:.4f}", flush=True)
    acc = accuracy(model, Xte, yte)
    # timing and memory on the trained model (same batches, steps past the schedule: lr keeps its value)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(timed):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    pers = persistent_bytes(model, opt)
    trans = transient_peak_bytes(step)
    return {"name": name, "trainable": n_train, "losses": losses, "acc": acc, "step_ms": 1e3 * statistics.mean(times),
            "step_ms_median": 1e3 * statistics.median(times), "persistent": pers, "transient": trans,
            "peak": pers + trans, "model": model, "opt": opt}


def build(quick: bool, seed: int = 0):
    hidden = 512 if quick else 1536
    pre_steps = 100 if quick else 400
    torch.manual_seed(seed)
    Xtr, ytr, Xte, yte = load_data(seed)
    base = MLP(hidden)
    pre_loss = pretrain(base, Xtr, ytr, pre_steps)
    Xtr_r, Xte_r = rotate90(Xtr), rotate90(Xte)
    return base, pre_loss, Xtr_r, ytr, Xte_r, yte


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small model and few steps (< 60 s)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--no-peft", action="store_true", help="use fastnorm.reference.lora even if peft is installed")
    args = ap.parse_args(argv)
    try:
        import sklearn  # noqa: F401
    except ImportError:
        print("scikit-learn is not installed; this example needs sklearn.datasets.load_digits")
        return 0
    import fastnorm  # noqa: F401
    threads = args.threads or min(2, torch.get_num_threads())
    torch.set_num_threads(threads)
    steps = args.steps or (40 if args.quick else 200)
    batch = 256 if args.quick else 512
    timed, warmup = (5, 2) if args.quick else (30, 5)
    t0 = time.time()
    base, pre_loss, Xtr, ytr, Xte, yte = build(args.quick)
    print(f"pretrained on upright digits: final loss {pre_loss:.4f}, rotated test accuracy before fine-tuning "
          f"{accuracy(base, Xte, yte):.3f} ({time.time() - t0:.1f} s, {threads} threads)")
    batches = make_batches(Xtr, ytr, steps + warmup + timed + 2, batch)
    methods = [("full FT (AdamW)", setup_full),
               ("LoRA", lambda m, T: setup_lora(m, T, prefer_peft=not args.no_peft)),
               ("SaRA", setup_sara)]
    results = []
    for name, setup in methods:
        r = run_method(name, setup, base, batches, steps, Xte, yte, timed=timed, warmup=warmup,
                       log_every=max(1, steps // 5))
        if name == "LoRA":
            r["name"] = setup_lora.last_name
        results.append(r)
    print()
    print(f"{'method':32s} {'trainable':>10s} {'loss0':>7s} {'lossN':>7s} {'fall':>6s} {'test acc':>8s} "
          f"{'step ms':>8s} {'peak MB':>8s} {'(pers+trans)':>16s}")
    for r in results:
        l0 = r["losses"][0]
        ln = statistics.mean(r["losses"][-5:])
        print(f"{r['name']:32s} {r['trainable']:10d} {l0:7.3f} {ln:7.3f} {100 * (1 - ln / l0):5.1f}% "
              f"{r['acc']:8.3f} {r['step_ms']:8.2f} {r['peak'] / 2**20:8.2f} "
              f"{r['persistent'] / 2**20:7.2f}+{r['transient'] / 2**20:.2f}")
    full, lora, sara = results
    print(f"\nSaRA/LoRA peak {sara['peak'] / lora['peak']:.3f}, SaRA/full peak {sara['peak'] / full['peak']:.3f}, "
          f"SaRA/LoRA step time {sara['step_ms'] / lora['step_ms']:.3f}  (total {time.time() - t0:.1f} s)")
    try:
        import pytorch_optimizer  # noqa: F401
        print("pytorch_optimizer is installed but its SaRA is not compared in this version of the example")
    except ImportError:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
