"""Prints the Markdown tables of benchmark JSON files (pytest-benchmark from bench/python, Google Benchmark from
the fastnorm_bench_* binaries):

    python bench/python/summarize.py out.json [more.json ...]

The tables are the ones bench/update_results.py writes into the generated blocks of bench/RESULTS.md and docs/*.md
(this script is `python bench/update_results.py --print`, kept for scripts/gpu_check.sh and older instructions):
per case fastnorm's median time, each baseline's ratio (baseline time / fastnorm time; > 1 means fastnorm is
faster), GB/s and the fraction of the copy bandwidth measured in the same run where the bench records them, and
peak memory where it records it.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import update_results  # noqa: E402


def main(*paths):
    return update_results.main(["--print", *paths])


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
