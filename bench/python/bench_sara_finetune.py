"""SaRA fine-tuning step on the example's model (specs/sara.md §7 B5, target T2).

Run:  OMP_NUM_THREADS=2 python -m pytest bench/python/bench_sara_finetune.py --benchmark-json=out.json -s

Model and data of ``examples/sara_finetune.py``: fp32 ReLU MLP 64→1536→1536→1536→10, batches of 512 rotated digits.
Methods built from identical weights: full fine-tuning (``torch.optim.AdamW``), LoRA r = 16 on fc_in/h1/h2 with
``head`` in modules_to_save (``peft`` when installed, and the in-repo ``fastnorm.reference.lora`` always), SaRA
``lora_rank=16`` on the same modules (equal trainable budget: 123,904 + head), λ = 5e-4 sketch, PPA at 50 %.

Recorded per method (extra_info): step time (interleaved rounds: every round runs one step of each method in turn,
so machine noise hits all alike; median), peak step memory by the spec's CPU protocol (persistent storages at step
start + maximum running sum of the signed torch.profiler memory events over one step) and its breakdown; and the
T2 ratios SaRA/LoRA peak (≤ 1), SaRA/full peak (≤ 0.6), SaRA/LoRA step time (≤ 1.2), each with PASS/FAIL.
"""
import copy
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F

import fastnorm  # noqa: F401

from conftest import interleaved

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _example():
    spec = importlib.util.spec_from_file_location("sara_finetune_example",
                                                  os.path.join(ROOT, "examples", "sara_finetune.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def setup():
    pytest.importorskip("sklearn")
    ex = _example()
    torch.manual_seed(0)
    Xtr, ytr, Xte, yte = ex.load_data(0)
    base = ex.MLP(1536)
    ex.pretrain(base, Xtr, ytr, steps=40)  # a short pretrain: selection sees trained-looking weights
    batches = ex.make_batches(ex.rotate90(Xtr), ytr, 8, 512)
    methods = {"full": ex.setup_full, "lora_ref": lambda m, T: ex.setup_lora(m, T, prefer_peft=False),
               "sara": ex.setup_sara}
    try:
        import peft  # noqa: F401
        methods["lora_peft"] = lambda m, T: ex.setup_lora(m, T, prefer_peft=True)
    except ImportError:
        pass
    built = {}
    for name, fn in methods.items():
        model, opt, n = fn(copy.deepcopy(base), 10_000)
        it = [0]
        step = ex.step_fn(model, opt, batches, it)
        for _ in range(3):
            step()
        built[name] = (model, opt, n, step)
    return ex, built


def test_finetune_step(benchmark, setup):
    ex, built = setup
    fns = {k: v[3] for k, v in built.items()}
    fns = {"sara": fns.pop("sara"), **fns}
    med = interleaved(benchmark, fns, rounds=15, warmup=2)
    mem = {}
    for k, (model, opt, n, step) in built.items():
        pers = ex.persistent_bytes(model, opt)
        trans = ex.transient_peak_bytes(step)
        mem[k] = {"persistent_MiB": pers / 2**20, "transient_MiB": trans / 2**20, "peak_MiB": (pers + trans) / 2**20,
                  "trainable": n}
    lora = "lora_peft" if "lora_peft" in built else "lora_ref"
    r_peak_lora = mem["sara"]["peak_MiB"] / mem[lora]["peak_MiB"]
    r_peak_lora_ref = mem["sara"]["peak_MiB"] / mem["lora_ref"]["peak_MiB"]
    r_peak_full = mem["sara"]["peak_MiB"] / mem["full"]["peak_MiB"]
    r_time = med["sara"] / med[lora]
    r_time_ref = med["sara"] / med["lora_ref"]
    e = benchmark.extra_info
    e.update({"op": "sara_finetune_step", "device": "cpu", "dtype": "fp32", "threads": torch.get_num_threads(),
              "memory": mem, "lora_baseline": lora,
              "sara/lora_peak": r_peak_lora, "sara/lora_ref_peak": r_peak_lora_ref, "sara/full_peak": r_peak_full,
              "sara/lora_time": r_time, "sara/lora_ref_time": r_time_ref,
              "T2_peak_vs_lora": "PASS" if r_peak_lora <= 1.0 else "FAIL",
              "T2_peak_vs_full": "PASS" if r_peak_full <= 0.6 else "FAIL",
              "T2_time_vs_lora": "PASS" if r_time <= 1.2 else "FAIL"})
    benchmark.group = "sara finetune step cpu"
    print()
    for k in built:
        m = mem[k]
        print(f"  {k:10s} trainable {m['trainable']:8d}  step {1e3 * med[k]:8.2f} ms  peak {m['peak_MiB']:7.2f} MiB "
              f"(persistent {m['persistent_MiB']:.2f} + transient {m['transient_MiB']:.2f})")
    print(f"  T2: SaRA/{lora} peak {r_peak_lora:.3f} [{e['T2_peak_vs_lora']}], SaRA/full peak {r_peak_full:.3f} "
          f"[{e['T2_peak_vs_full']}], SaRA/{lora} step time {r_time:.3f} [{e['T2_time_vs_lora']}]; "
          f"vs lora_ref: peak {r_peak_lora_ref:.3f}, time {r_time_ref:.3f}")
    assert mem["sara"]["trainable"] == mem["lora_ref"]["trainable"]


def test_peak_after_progressive_step(benchmark, setup):
    """The same step after the progressive step (intersect): retired entries drop their moments (persistent memory
    shrinks by 8 bytes each, frozen entries keep δ, index and base)."""
    ex, built = setup
    model, opt, n, step = built["sara"]
    lora = "lora_peft" if "lora_peft" in built else "lora_ref"
    lmodel, lopt, _, lstep = built[lora]
    k0 = sum(l.num_active for l in opt._layers)
    opt.progress_now()
    step()
    k1 = sum(l.num_active for l in opt._layers)
    pers = ex.persistent_bytes(model, opt)
    trans = ex.transient_peak_bytes(step)
    lpeak = ex.persistent_bytes(lmodel, lopt) + ex.transient_peak_bytes(lstep)
    benchmark.pedantic(step, rounds=3, warmup_rounds=0, iterations=1)
    r = (pers + trans) / lpeak
    benchmark.extra_info.update({"op": "sara_finetune_step_after_ppa", "k_active_before": k0, "k_active_after": k1,
                                 "persistent_MiB": pers / 2**20, "transient_MiB": trans / 2**20,
                                 "sara/lora_peak": r, "T2_peak_vs_lora": "PASS" if r <= 1.0 else "FAIL"})
    benchmark.group = "sara finetune step cpu (after PPA)"
    print(f"\n  after PPA: k_active {k0} -> {k1}, peak {(pers + trans) / 2**20:.2f} MiB (persistent {pers / 2**20:.2f} "
          f"+ transient {trans / 2**20:.2f}), SaRA/{lora} peak {r:.3f} [{benchmark.extra_info['T2_peak_vs_lora']}]")


def test_step_phases(benchmark, setup):
    """Where SaRA's step time goes: forward+backward vs the optimizer step (incl. the rank regulariser)."""
    import time
    ex, built = setup
    model, opt, n, _ = built["sara"]
    xb, yb = ex.make_batches(ex.rotate90(ex.load_data(0)[0]), ex.load_data(0)[1], 1, 512)[0]
    fb, st, rk = [], [], []

    def one():
        t0 = time.perf_counter()
        F.cross_entropy(model(xb), yb).backward()
        t1 = time.perf_counter()
        with torch.no_grad():
            opt._rank_terms(opt._rank_layers_now())
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        fb.append(t1 - t0)
        rk.append(t2 - t1)
        st.append(t3 - t2)

    benchmark.pedantic(one, rounds=10, warmup_rounds=2, iterations=1)
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    benchmark.extra_info.update({"op": "sara_step_phases", "fwd_bwd_s": med(fb), "rank_terms_s": med(rk),
                                 "opt_step_s": med(st)})
    benchmark.group = "sara finetune phases cpu"
    print(f"\n  SaRA phases: fwd+bwd {1e3 * med(fb):.2f} ms, one rank term {1e3 * med(rk):.2f} ms, "
          f"opt.step (incl. rank term) {1e3 * med(st):.2f} ms")
