"""Turns benchmark JSON files into Markdown tables and rewrites the generated blocks of bench/RESULTS.md and docs/*.md.

    python bench/update_results.py [JSON ...] [--targets FILE ...] [--print] [--dry-run]

JSON files: pytest-benchmark output (`--benchmark-json`) of bench/python/bench_*.py, and Google Benchmark output
(`--benchmark_out=... --benchmark_out_format=json`) of the fastnorm_bench_* binaries; with none given, every
bench/out/*.json. Every record is routed to a block by the bench file (or binary) it came from and its device:

    <!-- bench:<name> begin -->
    ... replaced on every run that produced results for <name> ...
    <!-- bench:<name> end -->

The contract (docs/benchmarks.md): only the text between the two markers of a block that this run produced is
replaced; everything outside the markers, and every block this run did not produce (a GPU block on a CPU run, a
benchmark that was skipped or failed), is left byte for byte as it was. Each generated block starts with one header
line: date, machine (CPU model, cores, load average at the start), torch version, mode and command.

`--print` writes the tables to stdout instead (bench/python/summarize.py is this with one file).
"""
import argparse
import glob
import json
import os
import re
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK_RE = re.compile(r"(<!-- bench:([a-z0-9_-]+) begin -->\n)(.*?)(<!-- bench:\2 end -->)", re.S)
LOADED = 2.5  # load average above which a 2-core run is called loaded (the project's rule: quiet means < 2.5)

# bench file (module stem) or Google Benchmark binary -> block family; the device suffix (-cpu / -gpu) is added
FAMILY = {
    "bench_norm": "norm",
    "bench_norm_crms": "norm-seed", "bench_norm_alpha_bn": "norm-seed", "bench_norm_evonorm": "norm-seed",
    "bench_norm_power": "norm-seed", "bench_norm_unified": "norm-seed", "bench_norm_mixln": "norm-seed",
    "bench_lion": "lion",
    "bench_poincare": "poincare",
    "bench_poincare_resnet": "poincare-layers",
    "bench_hyper_attention": "hyper_attention", "bench_hyper_attention_cuda": "hyper_attention",
    "bench_sara": "sara",
    "bench_sara_finetune": "sara-finetune",
    "fastnorm_bench_norm": "norm-cpp", "fastnorm_bench_lion": "lion-cpp",
}


# ---- reading --------------------------------------------------------------------------------------------------
class Record:
    """One benchmark case: the implementations' median seconds (fastnorm first), extra fields, and its run."""

    def __init__(self, block, module, label, impls, extra, run, order):
        self.block, self.module, self.label, self.impls, self.extra, self.run, self.order = \
            block, module, label, impls, extra, run, order

    @property
    def fast(self):
        return fast_key(self.impls)


def fast_key(impls):
    """fastnorm's implementation among impls: "fastnorm", else the first fastnorm_*/sara one, else the first."""
    if "fastnorm" in impls:
        return "fastnorm"
    for k in impls:
        if k.startswith("fastnorm") or k == "sara":
            return k
    return next(iter(impls), None)


def is_cuda(b):
    e = b.get("extra_info", {})
    dev = str(e.get("device", ""))
    return ("cuda" in b.get("name", "").lower() or "cuda" in dev.lower() or "card" in e
            or "cuda" in (b.get("group") or "").split())


def _causal(e):
    return "causal" if e.get("causal") else "non-causal"


def _density(e):
    return f"density {100 * e['density']:g} %" if isinstance(e.get("density"), (int, float)) else ""


# labels of cases whose bench sets no pytest-benchmark group, from their extra_info
LABELS = {
    "bench_poincare": lambda e, name: (f"{e['op']} fwd+bwd D={e['D']} N={e['N']} {e['dtype']}" if "D" in e else
                                       f"{e['op']} fwd+bwd {e.get('shape')} {'weighted' if e.get('weighted') else 'unweighted'}"),
    "bench_norm_evonorm": lambda e, name: (f"{e['op']} {e['pass']} {e.get('dtype', '')} {e.get('format', '')} cpu "
                                           f"{name.split('[')[1].split('-')[0]}"),
    "bench_hyper_attention": lambda e, name: (f"{'fwd+bwd' if 'backward' in name else 'forward'} {_causal(e)} "
                                              f"N={e['N']}"),
    "bench_hyper_attention_cuda": lambda e, name: (f"{'fwd+bwd' if e.get('backward') else 'forward'} {_causal(e)} "
                                                   f"N={e['N']}"),
    "bench_sara": lambda e, name: {"B1": f"B1 Linear wgrad {e.get('shape', '')} {_density(e)} {e.get('dtype', '')}",
                                   "B1-memory": f"B1 backward memory {e.get('shape', '')} {_density(e)}",
                                   "B2": f"B2 Conv2d wgrad {name.split('[')[-1].split('-')[0]} {_density(e)}",
                                   "B3": f"B3 sparse AdamW k={e.get('k')}"}.get(e.get("case"), name),
}


def _label(b, module=None):
    if b.get("group"):
        return b["group"]
    name = b.get("name", "?")
    name = name[5:] if name.startswith("test_") else name
    try:
        return " ".join(LABELS[module](b.get("extra_info", {}), name).split())
    except (KeyError, TypeError, ValueError):
        return name


def _impls(b):
    """{impl: median seconds} of a pytest-benchmark record ({} when it times nothing comparable)."""
    e = b.get("extra_info", {})
    med = e.get("median_s")
    if isinstance(med, dict):
        return {k: float(v) for k, v in med.items() if isinstance(v, (int, float)) and v > 0}
    if isinstance(med, (int, float)) and "impl" in e:
        return {e["impl"]: float(med)}
    if isinstance(e.get("ms"), dict):  # bench_hyper_attention_cuda: milliseconds per implementation
        return {k: v / 1e3 for k, v in e["ms"].items() if isinstance(v, (int, float)) and v == v}
    if e.get("median_s") is None and any(isinstance(e.get(k), (int, float)) for k in ("fwd_bwd_s",)):
        return {"fastnorm": b["stats"]["median"]}
    if isinstance(med, (int, float)) and med > 0:
        return {"fastnorm": float(med)}
    return {}


def _pytest_run(data, path):
    meta = dict(data.get("fastnorm_run") or {})
    mi = data.get("machine_info", {})
    meta.setdefault("start", data.get("datetime"))
    meta.setdefault("cpu_model", mi.get("cpu", {}).get("brand_raw") or mi.get("processor") or "?")
    meta.setdefault("cores", mi.get("cpu", {}).get("count"))
    meta.setdefault("mode", None)
    meta.setdefault("command", None)
    meta["path"] = path
    return meta


def read_pytest(data, path, order0=0):
    run = _pytest_run(data, path)
    records = []
    merged = {}  # (module, group) -> Record, for one-implementation-per-test records (CUDA cases)
    for i, b in enumerate(data.get("benchmarks", [])):
        module = os.path.splitext(os.path.basename(b.get("fullname", "").split("::")[0]))[0]
        family = FAMILY.get(module)
        if family is None:
            continue
        cuda = is_cuda(b)
        block = f"{family}-{'gpu' if cuda else 'cpu'}"
        e = dict(b.get("extra_info", {}))
        e["_test"] = b.get("name", "")
        impls = _impls(b)
        one_impl = isinstance(e.get("median_s"), (int, float)) and "impl" in e and b.get("group")
        if one_impl:
            key = (module, block, b["group"])
            if key in merged:
                rec = merged[key]
                rec.impls.update(impls)
                if e.get("impl") == "fastnorm" or fast_key(rec.impls) == e.get("impl"):
                    rec.extra.update(e)
                # keep fastnorm first
                f = fast_key(rec.impls)
                rec.impls = {f: rec.impls[f], **{k: v for k, v in rec.impls.items() if k != f}}
                continue
            rec = Record(block, module, _label(b, module), impls, e, run, order0 + i)
            merged[key] = rec
        else:
            rec = Record(block, module, _label(b, module), impls, e, run, order0 + i)
        records.append(rec)
    return records


def read_gbench(data, path, order0=0):
    ctx = data.get("context", {})
    exe = os.path.basename(ctx.get("executable", ""))
    family = FAMILY.get(exe)
    if family is None:
        return []
    load = ctx.get("load_avg") or None
    run = {"start": ctx.get("date"), "loadavg_start": [float(ctx["fastnorm_load1"])] if "fastnorm_load1" in ctx
           else load, "cpu_model": urllib.parse.unquote(ctx.get("fastnorm_cpu", "")) or None,
           "cores": ctx.get("num_cpus"), "torch": None, "mode": ctx.get("fastnorm_mode"),
           "command": urllib.parse.unquote(ctx.get("fastnorm_command", "")) or None,
           "threads": ctx.get("omp_threads"), "path": path, "gbench": True,
           "copy": {k: v for k, v in ctx.items() if k.startswith("copy_GB/s")}}
    rows = {}
    for i, b in enumerate(data.get("benchmarks", [])):
        name = b.get("run_name", b["name"])
        if b.get("run_type") == "aggregate" and b.get("aggregate_name") != "median":
            continue
        if b.get("error_occurred"):
            rows[name] = Record(family, exe, name, {}, {"error": b.get("error_message", "error")}, run, order0 + i)
            continue
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
        e = {k: v for k, v in b.items() if k not in ("name", "run_name")}
        e["_time_s"] = b["real_time"] * scale
        # with repetitions the median aggregate replaces the single runs of the same case
        if name in rows and b.get("run_type") != "aggregate":
            continue
        rows[name] = Record(family, exe, name, {"fastnorm": e["_time_s"]}, e, run, order0 + i)
    return list(rows.values())


def read(paths):
    records = []
    for p in paths:
        try:
            with open(p) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            print(f"update_results: skipping {p}: {exc}", file=sys.stderr)
            continue
        if "context" in data and "benchmarks" in data:
            records += read_gbench(data, p, len(records))
        elif "benchmarks" in data:
            records += read_pytest(data, p, len(records))
    return records


# ---- formatting -----------------------------------------------------------------------------------------------
def ms(t):
    if t is None or t != t:
        return "–"
    t *= 1e3
    return f"{t:.3f}" if t < 10 else f"{t:.1f}" if t < 1000 else f"{t:.0f}"


def ratio(x):
    return "–" if x is None or x != x else f"{x:.2f}×"


def mib(b):
    return "–" if b is None else f"{b / 2**20:.2f} MiB" if abs(b) < 10 * 2**20 else f"{b / 2**20:.1f} MiB"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return out


def _fmt_time(ts):
    return (ts or "?").replace("T", " ")[:16] + " UTC"


def header(records):
    """One line: date, machine (CPU model, cores, load average at start), torch, mode, command."""
    runs = []
    for r in records:
        if r.run not in runs:
            runs.append(r.run)
    starts = sorted(_fmt_time(r.get("start")) for r in runs)
    date = starts[0] if len(set(starts)) == 1 else \
        f"{starts[0][:-4]}–{starts[-1][11:]}" if starts[0][:10] == starts[-1][:10] else f"{starts[0]} – {starts[-1]}"
    loads = [r["loadavg_start"][0] for r in runs if r.get("loadavg_start")]
    cpu = next((r["cpu_model"] for r in runs if r.get("cpu_model")), "CPU model not recorded")
    cores = next((r["cores"] for r in runs if r.get("cores")), "?")
    gpu = next((r["cuda_device"] for r in runs if r.get("cuda_device")), None)
    threads = sorted({str(r["threads"]) for r in runs if r.get("threads")})
    if loads:
        lo, hi = min(loads), max(loads)
        load = f"load average {lo:.2f}" if lo == hi else f"load average {lo:.2f}–{hi:.2f}"
        load += " at start"
        if hi > LOADED:
            load += " (**loaded**: absolute times inflated, compare ratios only)"
    else:
        note = next((r["load_note"] for r in runs if r.get("load_note")), None)
        load = f"load average not recorded ({note})" if note else "load average not recorded"
    torch_v = next((r["torch"] for r in runs if r.get("torch")), None)
    modes = sorted({r["mode"] for r in runs if r.get("mode")})
    driver = next((r["driver"] for r in runs if r.get("driver")), None)
    cmds = _commands([r.get("command") for r in runs])
    parts = [f"{date}", f"machine: {cpu}, {cores} cores" + (f", GPU {gpu}" if gpu else "") + f", {load}"]
    if threads:
        parts.append(f"threads: {'/'.join(threads)}")
    if torch_v:
        parts.append(f"torch {torch_v}")
    elif not all(r.get("gbench") for r in runs):
        parts.append("torch version not recorded")
    parts.append(f"mode: {'/'.join(modes) if modes else 'not recorded'}")
    cmd = "; ".join(f"`{c}`" for c in cmds) if cmds else "not recorded"
    parts.append(f"command: `{driver}` → {cmd}" if driver else f"command: {cmd}")
    return "_Generated " + " · ".join(parts) + "_"


def _commands(cmds):
    """Distinct commands; several that differ only in the bench file (one block, several files) become one with the
    files in braces: `pytest bench/python/{bench_a,bench_b}.py ... --benchmark-json=bench/out/<file>.json`."""
    cmds = [c for i, c in enumerate(cmds) if c and c not in cmds[:i]]
    pat = re.compile(r"bench/python/(bench_\w+)\.py")
    stems = [pat.findall(c) for c in cmds]
    if len(cmds) > 1 and all(len(s) == 1 for s in stems):
        generic = {pat.sub("bench/python/FILE.py", c).replace(s[0] + ".json", "<file>.json")
                   for c, s in zip(cmds, stems)}
        if len(generic) == 1:
            return [generic.pop().replace("FILE", "{" + ",".join(s[0] for s in stems) + "}")]
    return cmds


def _baselines(records):
    out = []
    for r in records:
        for k in r.impls:
            if k != r.fast and k not in out:
                out.append(k)
    return out


def _copy_bw(records):
    """Copy bandwidth per device from the `copy` records of the same run (bench_norm, bench_lion)."""
    bw = {}
    for r in records:
        if r.extra.get("op") == "copy" and "GB/s" in r.extra:
            bw[r.extra.get("device", "cpu")] = r.extra["GB/s"]
    return bw


MEMORY_KEYS = {"peak_growth_bytes": "peak RSS growth", "saved_bytes": "saved for backward",
               "peak_bytes": "peak allocated (fwd+bwd)", "peak_bytes_fwd_bwd": "peak allocated (fwd+bwd)"}


def memory_rows(r):
    """[(metric, {impl: bytes})] of the memory fields a bench records (each file names them its own way)."""
    e, out = r.extra, []
    for key, name in MEMORY_KEYS.items():
        if isinstance(e.get(key), dict):
            out.append((name, {k: v for k, v in e[key].items() if isinstance(v, (int, float))}))
    per_impl = {k: v for k, v in e.items() if isinstance(v, dict) and k in ("fastnorm", "reference")
                and ("rss_growth_bytes" in v or "saved_bytes" in v)}
    if per_impl:  # bench_norm_crms / alpha_bn: {impl: {rss_growth_bytes, saved_bytes}}
        out.append(("peak RSS growth", {k: v["rss_growth_bytes"] for k, v in per_impl.items()}))
        out.append(("saved for backward", {k: v["saved_bytes"] for k, v in per_impl.items()}))
    if isinstance(e.get("memory"), dict):
        m = e["memory"]
        if all(isinstance(v, dict) and "peak_MiB" in v for v in m.values()):  # sara finetune
            out.append(("peak step memory (persistent + transient)",
                        {k: v["peak_MiB"] * 2**20 for k, v in m.items()}))
        elif all(isinstance(v, dict) for v in m.values()):  # unified
            out.append(("peak RSS growth", {k: v.get("peak_rss_growth_bytes") for k, v in m.items()}))
            out.append(("saved for backward", {k: v.get("saved_for_backward_bytes") for k, v in m.items()}))
    if "saved_bytes fastnorm" in e:  # mixln
        out.append(("saved for backward", {"fastnorm": e["saved_bytes fastnorm"],
                                           "baseline": e.get("saved_bytes baseline")}))
    if "peak_sddmm" in e:  # sara B1 backward
        out.append(("backward peak", {"fastnorm_sddmm": e["peak_sddmm"], "dense": e.get("peak_dense")}))
    if "persistent_MiB" in e and "transient_MiB" in e:  # sara finetune after PPA
        out.append(("peak step memory after PPA",
                    {"sara": (e["persistent_MiB"] + e["transient_MiB"]) * 2**20}))
    if "alloc_bytes" in e:  # hyper_attention
        out.append(("allocated per call", {"fastnorm": e["alloc_bytes"]}))
    if isinstance(e.get("peak_growth_bytes"), (int, float)):  # sara cuda
        out.append(("peak growth", {"fastnorm": e["peak_growth_bytes"]}))
    if isinstance(e.get("peak_extra_bytes"), (int, float)):  # hyper_attention cuda
        out.append(("peak extra", {"fastnorm": e["peak_extra_bytes"]}))
    return [(n, {k: v for k, v in d.items() if v is not None}) for n, d in out if d]


def _rel(x):
    return f"{x:.2f}" if abs(x) >= 0.01 else f"{x:.1e}"


def memory_table(records):
    rows = []
    for r in records:
        for metric, d in memory_rows(r):
            f = fast_key(d)
            others = [k for k in d if k != f]
            cells = [f"{k} {mib(d[k])}" for k in others]
            rel = [_rel(d[f] / d[k]) if d.get(k) and d.get(f) is not None else "–" for k in others]
            rows.append([r.label, metric, mib(d.get(f)), "; ".join(cells) or "–",
                         " / ".join(rel) if others else "–"])
    if not rows:
        return []
    return ["", "Memory:", ""] + table(["case", "measure", "fastnorm", "baselines", "fastnorm / baseline"], rows)


def _gbps(r):
    g = r.extra.get("GB/s")
    return f"{g:.1f}" if isinstance(g, (int, float)) else "–"


def _pct_copy(r, bw):
    e = r.extra
    if isinstance(e.get("efficiency"), (int, float)):
        return f"{100 * e['efficiency']:.0f}%"
    dev = "cuda" if r.block.endswith("gpu") else "cpu"
    if isinstance(e.get("GB/s"), (int, float)) and bw.get(dev):
        return f"{100 * e['GB/s'] / bw[dev]:.0f}%"
    return "–"


EXTRA_COLUMNS = {  # per bench file: (column, extra_info key, format)
    "bench_hyper_attention": [("effective GFLOP/s", "effective_GFLOP/s", "{:.1f}")],
    "bench_hyper_attention_cuda": [("effective TFLOP/s", "effective_tflops", "{:.1f}"),
                                   ("target", "target", "{}×"), ("result", "result", "{}")],
    "bench_poincare_resnet": [("GEMM TFLOP/s", "gemm_tflops_fastnorm", "{:.3f}")],
    "bench_sara": [("T1", "T1", "{}")],
    "bench_lion": [("launches", "launches", "{}")],
}


def _scaling(records):
    """hyper_attention: time(N) / time(N/2) of fastnorm, within the same pass and causality."""
    by = {}
    for r in records:
        e = r.extra
        if "N" in e and "causal" in e and r.impls:
            by[(e["_test"].split("[")[0], bool(e["causal"]), bool(e.get("backward")), e["N"])] = r.impls[r.fast]
    out = {}
    for (t, c, bw, n), v in by.items():
        prev = by.get((t, c, bw, n // 2))
        if prev:
            out[(t, c, bw, n)] = v / prev
    return out


def _memory_only(r):
    """A peak-memory case: its timing (if any) is a by-product, not a comparison."""
    e = r.extra
    return ("peak memory" in r.label or "peak_memory" in str(e.get("op", "")) or e.get("pass") == "peak_memory"
            or str(e.get("case", "")).endswith("-memory"))


def ratio_block(records):
    """Generic table: case, fastnorm ms, baseline/fastnorm per baseline, GB/s, % of copy, extras; then memory."""
    bw = _copy_bw(records)
    timed = [r for r in records if r.impls and r.extra.get("op") != "copy" and not _memory_only(r)]
    base = _baselines(timed)
    has_gb = any(isinstance(r.extra.get("GB/s"), (int, float)) for r in timed)
    has_copy = has_gb and (bw or any("efficiency" in r.extra for r in timed))
    modules = {r.module for r in records}
    extras = [c for m in sorted(modules) for c in EXTRA_COLUMNS.get(m, [])
              if any(c[1] in r.extra for r in timed)]
    scaling = _scaling(timed) if modules & {"bench_hyper_attention", "bench_hyper_attention_cuda"} else {}
    head = ["case", "fastnorm ms"] + [f"vs {b}" for b in base] + (["GB/s"] if has_gb else []) + \
        (["% of copy"] if has_copy else []) + [c[0] for c in extras] + (["t(N)/t(N/2)"] if scaling else [])
    rows = []
    for r in timed:
        f = r.impls[r.fast]
        cells = [r.label if r.fast in ("fastnorm", None) or r.fast == "sara" else f"{r.label} ({r.fast})", ms(f)]
        cells += [ratio(r.impls[b] / f) if b in r.impls else "–" for b in base]
        if has_gb:
            cells.append(_gbps(r))
        if has_copy:
            cells.append(_pct_copy(r, bw))
        for _, key, fmt in extras:
            v = r.extra.get(key)
            cells.append(fmt.format(v) if v is not None else "–")
        if scaling:
            e = r.extra
            k = (e.get("_test", "").split("[")[0], bool(e.get("causal")), bool(e.get("backward")), e.get("N"))
            cells.append(f"{scaling[k]:.2f}" if k in scaling else "–")
        rows.append(cells)
    out = []
    if bw:
        out.append("Copy bandwidth in the same run (`dst.copy_(src)`): " +
                   ", ".join(f"{d} {v:.1f} GB/s" for d, v in sorted(bw.items())) + ".")
        out.append("")
    if rows:
        out += table(head, rows)
    out += memory_table(records)
    return out


def norm_block(records):
    """bench_norm: op, pass, dtype, M x N, fastnorm ms, vs reference / torch, GB/s, % of copy (summarize.py's table)."""
    bw = _copy_bw(records)
    timed = [r for r in records if r.impls and r.extra.get("op") != "copy" and "pass" in r.extra]
    base = sorted(_baselines(timed))
    head = ["op", "pass", "dtype", "M x N", "fastnorm ms"] + [f"vs {b}" for b in base] + ["GB/s", "% of copy"]
    rows = []
    for r in sorted(timed, key=lambda r: (r.extra["op"], r.extra["pass"], r.extra["dtype"], r.extra["M"],
                                          r.extra["N"])):
        e, f = r.extra, r.impls[r.fast]
        gbs = e["bytes"] / f / 1e9 if "bytes" in e else None
        dev = "cuda" if r.block.endswith("gpu") else "cpu"
        cells = [e["op"], e["pass"], e["dtype"], f"{e['M']}x{e['N']}", ms(f)]
        cells += [ratio(r.impls[b] / f) if b in r.impls else "–" for b in base]
        cells += [f"{gbs:.1f}" if gbs else "–", f"{100 * gbs / bw[dev]:.0f}%" if gbs and bw.get(dev) else "–"]
        rows.append(cells)
    out = []
    if bw:
        out += ["Copy bandwidth in the same run (`dst.copy_(src)`, 256 MiB CPU / 1 GiB GPU): " +
                ", ".join(f"{d} {v:.1f} GB/s" for d, v in sorted(bw.items())) + ".", ""]
    return out + table(head, rows)


def gbench_block(records):
    """Google Benchmark: case, time, GB/s (10^9 B/s), copy_frac (fraction of the binary's own parallel memcpy)."""
    copy = next((r.run.get("copy") for r in records if r.run.get("copy")), {})
    rows = []
    for r in records:
        e = r.extra
        if "error" in e:
            rows.append([r.label, "error: " + e["error"], "–", "–"])
            continue
        bps = e.get("bytes_per_second")
        cf = e.get("copy_frac")
        rows.append([r.label.replace("/real_time", ""), f"{ms(e['_time_s'])} ms",
                     f"{bps / 1e9:.1f}" if bps else "–", f"{cf:.2f}" if isinstance(cf, (int, float)) else "–"])
    out = []
    if copy:
        out += ["Copy baseline of the binary: " + ", ".join(f"{k.replace('copy_GB/s', '').strip()} {v} GB/s"
                                                            for k, v in copy.items()) + ".", ""]
    return out + table(["case", "time", "GB/s", "copy_frac"], rows)


def render(block, records):
    """Markdown of one block (header line + tables), from its records in run order."""
    records = sorted(records, key=lambda r: r.order)
    if block.endswith("-cpp"):
        body = gbench_block(records)
    elif block in ("norm-cpu", "norm-gpu"):
        body = norm_block(records)
    else:
        body = ratio_block(records)
    return "\n".join([header(records), ""] + body) + "\n"


def blocks_from(records):
    """{block name: markdown} for every block the records fill. For a test present in several JSON files (a rerun),
    the newest file's record wins."""
    latest = {}
    for r in records:
        key = (r.block, r.module, r.label, r.extra.get("_test"))
        if key not in latest or (r.run.get("start") or "") >= (latest[key].run.get("start") or ""):
            latest[key] = r
    by = {}
    for r in latest.values():
        by.setdefault(r.block, []).append(r)
    return {b: render(b, rs) for b, rs in sorted(by.items())}


# ---- rewriting ------------------------------------------------------------------------------------------------
FENCE_RE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.S | re.M)


def rewrite(text, blocks):
    """text with the body of every block named in `blocks` replaced; returns (new text, names replaced).
    Markers inside fenced code blocks (examples in the docs) are not blocks."""
    done = []
    fences = [m.span() for m in FENCE_RE.finditer(text)]

    def sub(m):
        name = m.group(2)
        if name not in blocks or any(a <= m.start() < b for a, b in fences):
            return m.group(0)
        done.append(name)
        return m.group(1) + blocks[name] + m.group(4)
    return BLOCK_RE.sub(sub, text), done


def default_targets(root=ROOT):
    return [os.path.join(root, "bench", "RESULTS.md")] + sorted(glob.glob(os.path.join(root, "docs", "*.md")))


def update(paths, targets, dry_run=False, out=sys.stdout):
    blocks = blocks_from(read(paths))
    seen = set()
    for t in targets:
        if not os.path.exists(t):
            continue
        with open(t, encoding="utf-8") as f:
            old = f.read()
        new, done = rewrite(old, blocks)
        seen.update(done)
        if done:
            print(f"update_results: {os.path.relpath(t)}: rewrote {', '.join(sorted(set(done)))}", file=out)
        if new != old and not dry_run:
            with open(t, "w", encoding="utf-8") as f:
                f.write(new)
    for name in sorted(set(blocks) - seen):
        print(f"update_results: no block `<!-- bench:{name} begin -->` in {', '.join(os.path.relpath(t) for t in targets)}"
              f": its table was not written (add the two marker lines to bench/RESULTS.md)", file=out)
    return blocks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="*", help="benchmark JSON files (default: bench/out/*.json)")
    ap.add_argument("--targets", nargs="*", help="Markdown files to rewrite (default: bench/RESULTS.md docs/*.md)")
    ap.add_argument("--print", action="store_true", help="print the tables instead of rewriting files")
    ap.add_argument("--dry-run", action="store_true", help="report which blocks would be rewritten; write nothing")
    a = ap.parse_args(argv)
    paths = a.json or sorted(glob.glob(os.path.join(ROOT, "bench", "out", "*.json")))
    if a.print:
        for name, md in blocks_from(read(paths)).items():
            print(f"<!-- bench:{name} begin -->\n{md}<!-- bench:{name} end -->\n")
        return 0
    update(paths, a.targets if a.targets is not None else default_targets(), a.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
