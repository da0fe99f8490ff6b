"""Runs every benchmark available on this machine and rewrites the generated tables (what `make bench` calls).

    python bench/run.py [--mode quick|full] [--only norm,lion,...] [--no-update] [--timeout SECONDS]

1. pytest-benchmark: every bench/python/bench_*.py, one pytest process per file, writing
   bench/out/<file>.json (`--benchmark-json`) with `--bench-mode=<mode>`. Without a usable GPU the CUDA cases are
   deselected (`-m "not cuda"`); with one (torch.cuda.is_available() and fastnorm._C_cuda) they run too.
2. Google Benchmark: every fastnorm_bench_* binary found in $BENCH_CPP_DIR (default build/cpp/bench/cpp), writing
   bench/out/<binary>.json (`--benchmark_out`), the run's metadata passed as `--benchmark_context`.
3. bench/update_results.py on exactly the JSON files this run wrote: the blocks they fill are rewritten in
   bench/RESULTS.md and docs/*.md; every other block (GPU ones on a CPU machine, benchmarks that were skipped,
   failed or timed out) is left as it was.
Whatever is unavailable (a peer library, the C++ binaries, a GPU) is skipped with a line saying so. The exit status
is 0 when every benchmark that ran succeeded.
"""
import argparse
import glob
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import update_results  # noqa: E402

# optional peers the bench files compare against (module -> what uses it)
PEERS = {"geoopt": "Poincaré core ops baseline", "lion_pytorch": "Lion baselines", "timm": "EvoNorm / Lion baselines",
         "peft": "SaRA fine-tuning LoRA baseline (the in-repo LoRA still runs)",
         "sklearn": "SaRA fine-tuning benchmark (digits data)"}
# per-file timeout in quick mode (a file that runs past it is stopped; its block is left as it was)
QUICK_TIMEOUT = 420


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def load1():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def probe(py):
    """torch version, CUDA usability and installed peers, as seen by the interpreter that runs the benchmarks."""
    code = ("import importlib.util, json, torch\n"
            "try:\n import fastnorm; cuda_mod = fastnorm._build.loaded.get('_C_cuda', False)\n"
            "except Exception as e:\n cuda_mod = False; print(json.dumps({'error': repr(e)})); raise SystemExit(0)\n"
            f"peers = {{p: importlib.util.find_spec(p) is not None for p in {sorted(PEERS)!r}}}\n"
            "print(json.dumps({'torch': torch.__version__, 'cuda': torch.cuda.is_available(), 'cuda_mod': cuda_mod,"
            " 'device': torch.cuda.get_device_name() if torch.cuda.is_available() else None, 'peers': peers}))\n")
    out = subprocess.run([py, "-c", code], capture_output=True, text=True, cwd=ROOT)
    try:
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (out.stderr or out.stdout).strip().splitlines()[-1:] or "no output"}


def run_proc(cmd, env, timeout, log):
    """Runs cmd in its own process group, streaming its output to log; returns (exit code, seconds, timed out)."""
    t0 = time.time()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "w") as f:
        f.write("$ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        f.flush()
        p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
            ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            run_proc.cpu = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
            return rc, time.time() - t0, False
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
            run_proc.cpu = float("nan")
            return p.returncode, time.time() - t0, True


def tail(log, n=3):
    try:
        with open(log) as f:
            lines = [ln.rstrip() for ln in f if ln.strip()]
        return lines[-n:]
    except OSError:
        return []


def count_benchmarks(path):
    try:
        with open(path) as f:
            return len(json.load(f).get("benchmarks", []))
    except (OSError, ValueError):
        return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["quick", "full"],
                    default=os.environ.get("BENCH_MODE") or os.environ.get("FASTNORM_BENCH_MODE") or "quick")
    ap.add_argument("--only", default=os.environ.get("BENCH_ONLY", ""),
                    help="comma list of substrings of bench file / binary names to run (default: all)")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "out"))
    ap.add_argument("--cpp-dir", default=os.environ.get("BENCH_CPP_DIR", os.path.join(ROOT, "build", "cpp", "bench",
                                                                                      "cpp")))
    ap.add_argument("--timeout", type=float, default=float(os.environ["BENCH_TIMEOUT"]) if os.environ.get(
        "BENCH_TIMEOUT") else None, help=f"seconds per benchmark file, 0 = none (default: $BENCH_TIMEOUT, else "
                    f"{QUICK_TIMEOUT} in quick mode and none in full mode)")
    ap.add_argument("--no-update", action="store_true", help="write the JSON files only; leave the Markdown alone")
    ap.add_argument("--gpu-only", action="store_true", help="only the CUDA cases (-m cuda); no C++ binaries")
    a = ap.parse_args(argv)
    py = os.environ.get("PY") or sys.executable
    if not os.path.isabs(py) and os.sep in py:
        py = os.path.join(ROOT, py)
    timeout = a.timeout if a.timeout is not None else (QUICK_TIMEOUT if a.mode == "quick" else None)
    timeout = timeout or None  # 0: no limit
    only = [s for s in a.only.split(",") if s]
    os.makedirs(a.out, exist_ok=True)
    driver = os.environ.get("BENCH_DRIVER") or "python bench/run.py --mode " + a.mode  # the Makefile names itself
    t_start = time.time()
    print(f"== fastnorm benchmarks, mode {a.mode}: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, "
          f"{cpu_model()}, {os.cpu_count()} cores, load average {load1():.2f}")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")  # the spec's CPU cases run on 2 threads
    env["FASTNORM_BENCH_MODE"] = a.mode
    env["FASTNORM_BENCH_DRIVER"] = driver
    env["PYTHONPATH"] = os.pathsep.join(p for p in (env.get("PYTHONPATH"), os.path.join(ROOT, "bench", "python")) if p)
    info = probe(py)
    if "error" in info:
        print(f"cannot import torch/fastnorm with {py}: {info['error']}\n(install first: `make install`)")
        return 2
    gpu = bool(info["cuda"] and info["cuda_mod"])
    print(f"torch {info['torch']}; OMP_NUM_THREADS={env['OMP_NUM_THREADS']}; "
          + (f"GPU: {info['device']} (CUDA benchmarks run)" if gpu else
             "GPU: none usable (torch.cuda.is_available() is False or fastnorm._C_cuda not built): CUDA benchmarks "
             "skipped, the *-gpu blocks keep their tables"))
    for p, what in sorted(PEERS.items()):
        if not info["peers"].get(p):
            print(f"peer {p} not installed: {what} skipped")
    results, written, cpu_total = [], [], []
    files = sorted(glob.glob(os.path.join(HERE, "python", "bench_*.py")))
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        if only and not any(s in stem for s in only):
            continue
        out = os.path.join(a.out, stem + ".json")
        if os.path.exists(out):
            os.remove(out)
        rel = os.path.relpath(path, ROOT)
        marker = "cuda" if a.gpu_only else (None if gpu else "not cuda")
        cmd = [py, "-m", "pytest", rel, "-q", "-rs", "-p", "no:randomly",
               f"--bench-mode={a.mode}", f"--benchmark-json={os.path.relpath(out, ROOT)}"]
        if marker:
            cmd += ["-m", marker]
        shown = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} pytest {rel} --bench-mode={a.mode}" + \
            (f" -m '{marker}'" if marker else "") + f" --benchmark-json={os.path.relpath(out, ROOT)}"
        env["FASTNORM_BENCH_COMMAND"] = shown
        log = os.path.join(a.out, stem + ".log")
        print(f"-- {rel} ...", end="", flush=True)
        load = load1()
        rc, secs, to = run_proc(cmd, env, timeout, log)
        n = count_benchmarks(out)
        if to:
            status = f"TIMEOUT after {secs:.0f} s (limit {timeout:.0f} s): block left as it was"
            if os.path.exists(out):
                os.remove(out)
            n = 0
        elif rc == 5:
            status = "skipped: nothing to run here" + (" (CUDA only)" if not gpu else "")
        elif n == 0:
            status = f"no results (exit {rc}); see {os.path.relpath(log, ROOT)}"
        else:
            status = f"{n} cases" + ("" if rc == 0 else f", some tests FAILED (exit {rc}, see "
                                     f"{os.path.relpath(log, ROOT)})")
            written.append(out)
        skipped = [ln for ln in tail(log, 400) if ln.startswith("SKIPPED")]
        print(f" {secs:.0f} s ({run_proc.cpu:.0f} s CPU), load {load:.1f} at start: {status}")
        for ln in skipped[:6]:
            print("     " + ln[:160])
        results.append((rel, status, secs, rc if not to else 124))
        cpu_total.append(run_proc.cpu)
    # Google Benchmark binaries
    if not a.gpu_only:
        bins = sorted(glob.glob(os.path.join(a.cpp_dir, "fastnorm_bench_*")))
        bins = [b for b in bins if os.access(b, os.X_OK) and not b.endswith(".json")]
        if not bins:
            print(f"-- C++ benchmarks: none built in {os.path.relpath(a.cpp_dir, ROOT)} (`make bench-build` builds "
                  "them; needs Google Benchmark): skipped, the *-cpp blocks keep their tables")
        quick = a.mode == "quick"
        for b in bins:
            stem = os.path.basename(b)
            if only and not any(s in stem for s in only):
                continue
            out = os.path.join(a.out, stem + ".json")
            if os.path.exists(out):
                os.remove(out)
            flags = ["--benchmark_min_time=" + ("0.05" if quick else "0.2")]
            if stem == "fastnorm_bench_lion":
                flags.append("--benchmark_repetitions=" + ("1" if quick else "3"))
            shown = f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']} {os.path.relpath(b, ROOT)} " + " ".join(flags)
            # the flag is key=value,key=value: values are percent-encoded (update_results.py decodes them)
            ctx = {"fastnorm_mode": a.mode, "fastnorm_load1": f"{load1():.2f}",
                   "fastnorm_cpu": urllib.parse.quote(cpu_model(), safe=""),
                   "fastnorm_command": urllib.parse.quote(driver + " → " + shown, safe="")}
            cmd = [b] + flags + [f"--benchmark_out={out}", "--benchmark_out_format=json",
                                 "--benchmark_context=" + ",".join(f"{k}={v}" for k, v in ctx.items())]
            log = os.path.join(a.out, stem + ".log")
            print(f"-- {os.path.relpath(b, ROOT)} ...", end="", flush=True)
            load = load1()
            rc, secs, to = run_proc(cmd, env, timeout, log)
            ok = rc == 0 and not to and os.path.exists(out)
            status = f"{count_benchmarks(out)} cases" if ok else \
                f"FAILED (exit {rc}{', timeout' if to else ''}; see {os.path.relpath(log, ROOT)})"
            if ok:
                written.append(out)
            print(f" {secs:.0f} s ({run_proc.cpu:.0f} s CPU), load {load:.1f} at start: {status}")
            results.append((os.path.relpath(b, ROOT), status, secs, 0 if ok else 1))
            cpu_total.append(run_proc.cpu)
    total = time.time() - t_start
    print(f"\n== {len(written)} result files in {os.path.relpath(a.out, ROOT)}; wall time {total:.0f} s "
          f"({total / 60:.1f} min; {sum(c for c in cpu_total if c == c):.0f} s CPU in the benchmark processes), mode {a.mode}; "
          f"load average now {load1():.2f}")
    if not a.no_update and written:
        update_results.update(written, update_results.default_targets(ROOT))
    bad = [r for r in results if r[3] not in (0, 5)]
    for r in bad:
        print(f"!! {r[0]}: {r[1]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
