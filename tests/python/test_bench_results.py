"""bench/update_results.py: synthetic benchmark JSON in, generated Markdown blocks rewritten (docs/benchmarks.md).

Checks the contract between `make bench` and the Markdown files: only the blocks a run produced are replaced, text
outside the markers is preserved byte for byte, blocks of benchmarks that did not run (GPU blocks on a CPU run, CPU
blocks on a GPU run) are left alone, and each block carries its header line and the right ratios.
"""
import importlib.util
import json
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_spec = importlib.util.spec_from_file_location("update_results", os.path.join(ROOT, "bench", "update_results.py"))
ur = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ur)

RUN = {"mode": "quick", "start": "2026-11-27T07:50:00Z", "loadavg_start": [1.25, 1.0, 0.9],
       "cpu_model": "Test CPU 9000", "cores": 2, "threads": 2, "torch": "2.13.0+cpu", "cuda_device": None,
       "command": "pytest bench/python/bench_norm.py --bench-mode=quick", "driver": "make bench"}


def _norm_cpu(op, pas, n, fast, torch_, ref):
    return {"group": f"{op} {pas} float32 cpu 4096x{n}", "name": f"test_cpu[4096x{n}-float32-{op}-{pas}]",
            "fullname": f"bench/python/bench_norm.py::test_cpu[4096x{n}-float32-{op}-{pas}]",
            "stats": {"median": fast},
            "extra_info": {"op": op, "pass": pas, "dtype": "float32", "device": "cpu", "M": 4096, "N": n,
                           "bytes": 2 * 4096 * n * 4,
                           "median_s": {"fastnorm": fast, "torch": torch_, "reference": ref}}}


def _copy(device, gbs):
    return {"group": f"copy {device}", "name": f"test_copy_bandwidth[{device}]",
            "fullname": f"bench/python/bench_norm.py::test_copy_bandwidth[{device}]", "stats": {"median": 0.01},
            "extra_info": {"op": "copy", "impl": "torch", "pass": "copy", "device": device, "bytes": 1,
                           "median_s": 0.01, "GB/s": gbs}}


def _norm_cuda(impl, t):
    return {"group": "rms_norm forward bfloat16 cuda 4096x1024",
            "name": f"test_cuda[4096x1024-rms_norm-forward-{impl}]",
            "fullname": f"bench/python/bench_norm.py::test_cuda[4096x1024-rms_norm-forward-{impl}]",
            "stats": {"median": t},
            "extra_info": {"op": "rms_norm", "pass": "forward", "dtype": "bfloat16", "device": "cuda", "M": 4096,
                           "N": 1024, "impl": impl, "bytes": 2 * 4096 * 1024 * 2, "median_s": t}}


def _write(tmp_path, name, benchmarks, run=RUN):
    p = tmp_path / name
    p.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "x", "count": 2}}, "datetime": run["start"],
                             "benchmarks": benchmarks, "fastnorm_run": run}))
    return str(p)


DOC = """# Results

Hand-written analysis: fastnorm 3.2× torch (run of 2026-11-27). <!-- not a block -->

<!-- bench:norm-cpu begin -->
old cpu table
<!-- bench:norm-cpu end -->

Between blocks, kept exactly.   Trailing spaces too.   

<!-- bench:norm-gpu begin -->
| old | gpu | table |
<!-- bench:norm-gpu end -->

<!-- bench:lion-cpu begin -->
old lion table
<!-- bench:lion-cpu end -->
Tail text without a final newline"""


def _outside(text):
    """Everything outside the generated blocks (the markers included)."""
    return ur.BLOCK_RE.sub(lambda m: m.group(1) + "<BODY>" + m.group(4), text)


def _body(text, name):
    for m in ur.BLOCK_RE.finditer(text):
        if m.group(2) == name:
            return m.group(3)
    raise KeyError(name)


def test_cpu_run_rewrites_its_block_only(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text(DOC)
    js = _write(tmp_path, "bench_norm.json", [_copy("cpu", 16.0), _norm_cpu("rms_norm", "forward", 1024, 0.001,
                                                                             0.002, 0.004)])
    blocks = ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    assert set(blocks) == {"norm-cpu"}
    new = doc.read_text()
    assert _outside(new) == _outside(DOC)  # text outside the blocks, byte for byte
    assert _body(new, "norm-gpu") == "| old | gpu | table |\n"  # GPU block survives a CPU run
    assert _body(new, "lion-cpu") == "old lion table\n"  # a benchmark that did not run keeps its block
    body = _body(new, "norm-cpu")
    assert "old cpu table" not in body
    row = next(ln for ln in body.splitlines() if ln.startswith("| rms_norm"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # op, pass, dtype, M x N, fastnorm ms, vs reference, vs torch, GB/s, % of copy
    assert cells[:5] == ["rms_norm", "forward", "float32", "4096x1024", "1.000"]
    assert cells[5:7] == ["4.00×", "2.00×"]
    gbs = 2 * 4096 * 1024 * 4 / 0.001 / 1e9
    assert cells[7] == f"{gbs:.1f}" and cells[8] == f"{100 * gbs / 16.0:.0f}%"
    assert "cpu 16.0 GB/s" in body


def test_header_line(tmp_path):
    js = _write(tmp_path, "a.json", [_norm_cpu("layer_norm", "forward", 768, 0.001, 0.001, 0.003)])
    head = ur.blocks_from(ur.read([js]))["norm-cpu"].splitlines()[0]
    for part in ("2026-11-27 07:50 UTC", "Test CPU 9000", "2 cores", "load average 1.25 at start", "torch 2.13.0+cpu",
                 "mode: quick", "make bench", "pytest bench/python/bench_norm.py --bench-mode=quick"):
        assert part in head, part
    assert "loaded" not in head
    loaded = dict(RUN, loadavg_start=[7.5, 6.0, 5.0])
    js2 = _write(tmp_path, "b.json", [_norm_cpu("layer_norm", "forward", 768, 0.001, 0.001, 0.003)], loaded)
    head2 = ur.blocks_from(ur.read([js2]))["norm-cpu"].splitlines()[0]
    assert "load average 7.50 at start" in head2 and "**loaded**" in head2


def test_gpu_run_leaves_cpu_blocks(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text(DOC)
    gpu_run = dict(RUN, cuda_device="NVIDIA H100 80GB HBM3")
    js = _write(tmp_path, "bench.json", [_copy("cuda", 3000.0), _norm_cuda("fastnorm", 0.0001),
                                         _norm_cuda("torch", 0.0003)], gpu_run)
    ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    new = doc.read_text()
    assert _outside(new) == _outside(DOC)
    assert _body(new, "norm-cpu") == "old cpu table\n"
    assert _body(new, "lion-cpu") == "old lion table\n"
    body = _body(new, "norm-gpu")
    assert "NVIDIA H100" in body.splitlines()[0]
    row = next(ln for ln in body.splitlines() if ln.startswith("| rms_norm"))
    assert "| 3.00× |" in row  # one record per implementation, merged into one row: torch / fastnorm


def test_docs_pages_get_the_same_block(tmp_path):
    res, page = tmp_path / "RESULTS.md", tmp_path / "norm.md"
    res.write_text(DOC)
    page.write_text("# Norms\n\nprose\n\n<!-- bench:norm-cpu begin -->\ncopied\n<!-- bench:norm-cpu end -->\n\nmore\n")
    js = _write(tmp_path, "n.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.002, 0.004)])
    ur.update([js], [str(res), str(page)], out=open(os.devnull, "w"))
    assert _body(res.read_text(), "norm-cpu") == _body(page.read_text(), "norm-cpu")
    assert page.read_text().startswith("# Norms\n\nprose\n\n") and page.read_text().endswith("\n\nmore\n")


def test_idempotent_and_dry_run(tmp_path):
    doc = tmp_path / "RESULTS.md"
    doc.write_text(DOC)
    js = _write(tmp_path, "n.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.002, 0.004)])
    ur.update([js], [str(doc)], dry_run=True, out=open(os.devnull, "w"))
    assert doc.read_text() == DOC
    ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    once = doc.read_text()
    ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    assert doc.read_text() == once


def test_google_benchmark_and_memory_tables(tmp_path):
    gb = tmp_path / "fastnorm_bench_lion.json"
    gb.write_text(json.dumps({
        "context": {"date": "2026-11-27T07:55:00+00:00", "executable": "build/cpp/bench/cpp/fastnorm_bench_lion",
                    "num_cpus": 2, "load_avg": [3.5, 2, 1], "fastnorm_mode": "full", "fastnorm_cpu": "Test%20CPU",
                    "fastnorm_command": "make%20bench%20%E2%86%92%20fastnorm_bench_lion%20--benchmark_min_time%3D0.2"},
        "benchmarks": [
            {"name": "lion_step/tensors:4/real_time", "run_name": "lion_step/tensors:4/real_time",
             "run_type": "iteration", "real_time": 36.0, "time_unit": "ms", "bytes_per_second": 2.75e10,
             "copy_frac": 0.99},
            {"name": "lion_step/tensors:4/real_time_median", "run_name": "lion_step/tensors:4/real_time",
             "run_type": "aggregate", "aggregate_name": "median", "real_time": 35.0, "time_unit": "ms",
             "bytes_per_second": 2.8e10, "copy_frac": 1.01},
            {"name": "lion_step/tensors:4/real_time_mean", "run_name": "lion_step/tensors:4/real_time",
             "run_type": "aggregate", "aggregate_name": "mean", "real_time": 99.0, "time_unit": "ms"}]}))
    mem = {"group": "lion peak memory cpu 4x5000x2500", "name": "test_cpu_peak_memory[4x5000x2500]",
           "fullname": "bench/python/bench_lion.py::test_cpu_peak_memory[4x5000x2500]", "stats": {"median": 0.04},
           "extra_info": {"op": "lion_peak_memory", "device": "cpu", "median_s": {"fastnorm": 0.04},
                          "peak_growth_bytes": {"fastnorm": 2**20, "lion_pytorch": 100 * 2**20}}}
    blocks = ur.blocks_from(ur.read([str(gb), _write(tmp_path, "lion.json", [mem])]))
    cpp = blocks["lion-cpp"]
    assert "Test CPU" in cpp.splitlines()[0] and "mode: full" in cpp and "load average 3.50" in cpp
    assert "make bench → fastnorm_bench_lion --benchmark_min_time=0.2" in cpp
    rows = [ln for ln in cpp.splitlines() if ln.startswith("| lion_step")]
    assert rows == ["| lion_step/tensors:4 | 35.0 ms | 28.0 | 1.01 |"]  # the median aggregate, not mean or iteration
    lion = blocks["lion-cpu"]
    assert "| lion peak memory cpu 4x5000x2500 | peak RSS growth | 1.00 MiB | lion_pytorch 100.0 MiB | 0.01 |" in lion
    assert "| case | fastnorm ms" not in lion  # a memory-only case gets no timing row


def test_newest_file_wins_and_unknown_block_is_reported(tmp_path):
    old = _write(tmp_path, "old.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.009, 0.009)],
                 dict(RUN, start="2026-11-26T00:00:00Z"))
    new = _write(tmp_path, "new.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.002, 0.004)])
    body = ur.blocks_from(ur.read([new, old]))["norm-cpu"]
    assert "2.00×" in body and "9.00×" not in body
    doc = tmp_path / "R.md"
    doc.write_text("no blocks here\n")

    class Sink:
        text = ""

        def write(self, s):
            Sink.text += s
    ur.update([new], [str(doc)], out=Sink())
    assert doc.read_text() == "no blocks here\n"
    assert "no block `<!-- bench:norm-cpu begin -->`" in Sink.text


@pytest.mark.parametrize("bad", ["<!-- bench:norm-cpu begin -->\nx\n<!-- bench:norm-gpu end -->\n",
                                 "<!-- bench:norm-cpu begin -->\nx\n"])
def test_unmatched_markers_are_left_alone(tmp_path, bad):
    doc = tmp_path / "R.md"
    doc.write_text(bad)
    js = _write(tmp_path, "n.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.002, 0.004)])
    ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    assert doc.read_text() == bad


def test_generic_ratio_table_and_cuda_ms_records(tmp_path):
    core = {"group": None, "name": "test_core_op_fwd_bwd[mobius_add-64-262144-float32]",
            "fullname": "bench/python/bench_poincare.py::test_core_op_fwd_bwd[mobius_add-64-262144-float32]",
            "stats": {"median": 0.01},
            "extra_info": {"op": "mobius_add", "pass": "fwd+bwd", "D": 64, "N": 262144, "dtype": "float32",
                           "bytes": 10**9, "GB/s": 100.0,
                           "median_s": {"fastnorm": 0.01, "geoopt": 0.05, "reference": 0.04}}}
    ha = {"group": None, "name": "test_forward_131072[G1-causal]",
          "fullname": "bench/python/bench_hyper_attention_cuda.py::test_forward_131072[G1-causal]",
          "stats": {"median": 0.1},
          "extra_info": {"card": "NVIDIA H100", "N": 131072, "causal": True, "backward": False,
                         "ms": {"fastnorm": 2.0, "sdpa-flash": 10.0, "sdpa-cudnn": float("nan")},
                         "target": 5.0, "result": "PASS", "peak_extra_bytes": 3 * 2**20}}
    blocks = ur.blocks_from(ur.read([_write(tmp_path, "p.json", [core, ha])]))
    assert set(blocks) == {"poincare-cpu", "hyper_attention-gpu"}
    assert "| mobius_add fwd+bwd D=64 N=262144 float32 | 10.0 | 5.00× | 4.00× | 100.0 |" in blocks["poincare-cpu"]
    gpu = blocks["hyper_attention-gpu"]
    row = next(ln for ln in gpu.splitlines() if ln.startswith("| forward causal N=131072"))
    assert "| 2.000 | 5.00× |" in row and "PASS" in row  # NaN (backend unavailable) dropped, not a column
    assert "sdpa-cudnn" not in gpu
    assert "| forward causal N=131072 | peak extra | 3.00 MiB |" in gpu


def test_markers_in_code_fences_are_examples(tmp_path):
    doc = tmp_path / "benchmarks.md"
    text = ("How it looks:\n\n```markdown\n<!-- bench:norm-cpu begin -->\n(example)\n<!-- bench:norm-cpu end -->\n```\n\n"
            "<!-- bench:norm-cpu begin -->\nreal\n<!-- bench:norm-cpu end -->\n")
    doc.write_text(text)
    js = _write(tmp_path, "n.json", [_norm_cpu("rms_norm", "forward", 1024, 0.001, 0.002, 0.004)])
    ur.update([js], [str(doc)], out=open(os.devnull, "w"))
    new = doc.read_text()
    assert new.startswith(text[:text.index("```\n\n") + 5])  # the fenced example is untouched
    assert "real" not in new and new.count("| rms_norm |") == 1
