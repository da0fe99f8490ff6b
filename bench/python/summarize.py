"""Turns a pytest-benchmark JSON (from bench/python) into a Markdown table of ratios.

    python bench/python/summarize.py out.json

For every case: fastnorm's median time, each baseline's ratio (baseline time / fastnorm time; > 1 means
fastnorm is faster), fastnorm's GB/s and its fraction of the copy bandwidth measured in the same run.
"""
import collections
import json
import sys


def main(path):
    with open(path) as f:
        data = json.load(f)
    cases = collections.defaultdict(dict)
    copy_bw = {}
    for b in data["benchmarks"]:
        e = b["extra_info"]
        if e.get("op") == "copy":
            copy_bw[e["device"]] = e["GB/s"]
            continue
        key = (e["op"], e["pass"], e["dtype"], e["device"], e["M"], e["N"])
        if isinstance(e["median_s"], dict):  # interleaved CPU case: every implementation in one record
            for impl, t in e["median_s"].items():
                cases[key][impl] = {"median_s": t, "GB/s": e["bytes"] / t / 1e9}
        else:
            cases[key][e["impl"]] = e
    machine = data.get("machine_info", {})
    print(f"machine: {machine.get('node', '?')} {machine.get('cpu', {}).get('brand_raw', '')}; "
          f"date: {data.get('datetime', '?')[:10]}")
    for dev, bw in copy_bw.items():
        print(f"copy bandwidth ({dev}): {bw:.1f} GB/s")
    print()
    baselines = sorted({impl for v in cases.values() for impl in v} - {"fastnorm"})
    head = ["op", "pass", "dtype", "device", "M x N", "fastnorm ms"] + [f"vs {b}" for b in baselines] + \
        ["GB/s", "% copy BW"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key in sorted(cases):
        impls = cases[key]
        if "fastnorm" not in impls:
            continue
        fast = impls["fastnorm"]
        cells = list(key[:4]) + [f"{key[4]}x{key[5]}", f"{fast['median_s'] * 1e3:.3f}"]
        for bname in baselines:
            cells.append(f"{impls[bname]['median_s'] / fast['median_s']:.2f}x" if bname in impls else "-")
        bw = copy_bw.get(key[3])
        cells += [f"{fast['GB/s']:.1f}", f"{100 * fast['GB/s'] / bw:.0f}%" if bw else "-"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
