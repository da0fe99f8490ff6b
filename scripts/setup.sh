#!/usr/bin/env bash
# Sets up everything `make demo` / `make test` / `make bench` need on a fresh machine, idempotently:
#   - a virtual environment in .venv (or the interpreter in $PY, or the active $VIRTUAL_ENV);
#   - torch: kept if importable, else `pip install $FASTNORM_TORCH_SPEC` (default torch==2.13.0: on this
#     machine kind pip takes the CPU build from local disk; elsewhere pick your build, e.g. a CUDA one);
#   - the Python test/bench tools, peer packages the parity tests use (lion-pytorch, geoopt, hypll, peft,
#     scikit-learn, safetensors), and (as root, via apt)
#     GoogleTest and Google Benchmark for the C++ tests.
set -euo pipefail
cd "$(dirname "$0")/.."

# PY: the interpreter to set up (the Makefile passes it); default: the active venv, else .venv.
PY=${PY:-}
if [ -z "$PY" ]; then
  PY=${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}
  PY=${PY:-.venv/bin/python}
fi
if [ "$PY" = .venv/bin/python ] && [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi

pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing ${FASTNORM_TORCH_SPEC:-torch==2.13.0}"
  pip_install "${FASTNORM_TORCH_SPEC:-torch==2.13.0}"
fi
"$PY" -c "import numpy, pytest, pytest_benchmark, hypothesis, expecttest, scikit_build_core" >/dev/null 2>&1 || {
  echo "setup: installing build and test tools"
  pip_install numpy "scikit-build-core>=0.10" pytest pytest-benchmark hypothesis expecttest ninja
}
# Peer packages the parity tests and benchmarks compare with (tests import them with importorskip).
"$PY" -c "import lion_pytorch" >/dev/null 2>&1 || pip_install --no-deps lion-pytorch >/dev/null 2>&1 || \
  echo "setup: lion-pytorch not installable here (the Lion peer-parity tests will skip)"
# Poincaré / SaRA / HyperAttention peers and the examples' data (scikit-learn's bundled datasets). Torch is pinned
# to the installed one so no resolver step replaces the CPU build with a multi-GB CUDA one.
torch_pin="torch==$("$PY" -c 'import torch; print(torch.__version__)')"
"$PY" -c "import geoopt, sklearn, safetensors" >/dev/null 2>&1 || \
  pip_install geoopt scikit-learn safetensors "$torch_pin" >/dev/null 2>&1 || \
  echo "setup: geoopt/scikit-learn/safetensors not installable here (their parity tests and examples will skip)"
"$PY" -c "import peft, hypll" >/dev/null 2>&1 || pip_install peft hypll "$torch_pin" >/dev/null 2>&1 || \
  echo "setup: peft/hypll not installable here (their parity tests will skip)"
"$PY" -c "import torch_abi_audit" >/dev/null 2>&1 || pip_install torch-abi-audit >/dev/null 2>&1 || \
  echo "setup: torch-abi-audit not installable here (the ABI audit step will be skipped)"

need_apt=()
[ -f /usr/include/gtest/gtest.h ] || need_apt+=(libgtest-dev)
[ -f /usr/include/benchmark/benchmark.h ] || need_apt+=(libbenchmark-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: apt-get install ${need_apt[*]}"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}") >/dev/null
  else
    echo "setup: please install ${need_apt[*]} (Debian packages) for the C++ tests and benchmarks" >&2
    exit 1
  fi
fi
