# fastnorm — the two commands a new user needs:
#   make demo   set everything up, build, run the main job (python -m fastnorm)
#   make test   set everything up, build, run every test (C++ GoogleTest + pytest)
# Also: make bench (every benchmark this machine can run, quick mode, then rewrites the tables in
# bench/RESULTS.md and docs/*.md), make bench-full (the spec's sizes), make cuda-build (compile + link the
# CUDA module), make clean. docs/benchmarks.md explains the benchmarks.
SHELL := /bin/bash
JOBS ?= 2
# The interpreter: the active virtual environment, else .venv (created by scripts/setup.sh).
PY ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,.venv/bin/python)
export PY
# CUDA kernels are built by `pip install` only when torch has CUDA (they cannot load otherwise);
# `make cuda-build` compiles them regardless. Override with FASTNORM_CUDA=ON|OFF|AUTO.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(JOBS)

.PHONY: setup install demo test test-cpp test-python bench bench-full bench-build bench-run bench-results cuda-build clean

setup:
	@scripts/setup.sh

install: setup
	@py=$(PY); cuda=$${FASTNORM_CUDA:-$$($$py -c "import torch; print('AUTO' if torch.version.cuda else 'OFF')")}; \
	echo "install: pip install . (FASTNORM_CUDA=$$cuda)"; \
	FASTNORM_CUDA=$$cuda $$py -m pip install -q --disable-pip-version-check --no-build-isolation --no-deps \
	  -Cbuild-dir=build/py . 

demo: install
	@$(PY) -m fastnorm

test-cpp: setup
	cmake -S . -B build/cpp -DFASTNORM_BUILD_PYTHON=OFF -DFASTNORM_CUDA=OFF -DFASTNORM_BUILD_TESTS=ON \
	  -DFASTNORM_BUILD_BENCH=ON -DCMAKE_BUILD_TYPE=Release >/dev/null
	cmake --build build/cpp -j $(JOBS)
	ctest --test-dir build/cpp --output-on-failure -j $(JOBS)

test-python: install
	@$(PY) -m pytest tests/python -q -p no:randomly

test: test-cpp test-python

# Benchmarks (docs/benchmarks.md). BENCH_MODE=quick (default: fewer rounds, smaller or fewer cases, ~10 min on
# 2 idle cores) or full (the spec's sizes); BENCH_ONLY=norm,lion runs a subset. bench/run.py runs the pytest-benchmark
# files (CUDA cases too when a GPU is usable) and the Google Benchmark binaries that exist, writes bench/out/*.json,
# then bench/update_results.py rewrites the <!-- bench:NAME --> blocks those runs produced (others stay as they are).
BENCH_MODE ?= quick
export BENCH_MODE

bench: install bench-build
	@BENCH_DRIVER="make bench$(if $(filter full,$(BENCH_MODE)),-full)" $(PY) bench/run.py --mode $(BENCH_MODE)

bench-full:
	@$(MAKE) --no-print-directory bench BENCH_MODE=full

# The C++ benchmark binaries only (no tests); a missing Google Benchmark skips them instead of failing.
bench-build: setup
	@mkdir -p build; { cmake -S . -B build/cpp -DFASTNORM_BUILD_PYTHON=OFF -DFASTNORM_CUDA=OFF -DFASTNORM_BUILD_BENCH=ON \
	    -DCMAKE_BUILD_TYPE=Release >build/bench-build.log 2>&1 && \
	  cmake --build build/cpp -j $(JOBS) --target fastnorm_bench_norm fastnorm_bench_lion >>build/bench-build.log 2>&1; } \
	  || echo "bench-build: C++ benchmarks not built (see build/bench-build.log): skipped"

# Runs the benchmarks against what is already installed/built (no install, no build step).
bench-run:
	@BENCH_DRIVER="make bench-run BENCH_MODE=$(BENCH_MODE)" $(PY) bench/run.py --mode $(BENCH_MODE)

# Re-renders the tables from the JSON files already in bench/out (or JSON=...: e.g. a GPU run's bench.json).
bench-results:
	@$(PY) bench/update_results.py $(or $(JSON),$(wildcard bench/out/*.json))

# Builds the wheel with the CUDA kernels (scikit-build-core, abi3) into build/cuda-wheel; the kernels
# compile and link here even without a GPU (they only run on one: scripts/gpu_check.sh).
cuda-build: setup
	FASTNORM_CUDA=ON FASTNORM_CUDA_ARCHS="$${FASTNORM_CUDA_ARCHS:-90a-real}" $(PY) -m pip wheel -q \
	  --disable-pip-version-check --no-build-isolation --no-deps -Cbuild-dir=build/cuda -w build/cuda-wheel .

wheels: setup ; @PY=$(PY) scripts/build_wheels.sh $(WHEELS_ARGS)

clean:
	rm -rf build bench/out
