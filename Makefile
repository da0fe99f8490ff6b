# fastnorm — the two commands a new user needs:
#   make demo   set everything up, build, run the main job (python -m fastnorm)
#   make test   set everything up, build, run every test (C++ GoogleTest + pytest)
# Also: make bench (benchmarks), make cuda-build (compile + link the CUDA module), make clean.
SHELL := /bin/bash
JOBS ?= 2
# The interpreter: the active virtual environment, else .venv (created by scripts/setup.sh).
PY ?= $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV)/bin/python,.venv/bin/python)
export PY
# CUDA kernels are built by `pip install` only when torch has CUDA (they cannot load otherwise);
# `make cuda-build` compiles them regardless. Override with FASTNORM_CUDA=ON|OFF|AUTO.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(JOBS)

.PHONY: setup install demo test test-cpp test-python bench cuda-build clean

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

bench: install test-cpp
	@mkdir -p bench/out
	$(PY) -m pytest bench/python -q --benchmark-json=bench/out/bench_python.json
	build/cpp/bench/cpp/fastnorm_bench_norm --benchmark_min_time=0.2 --benchmark_out=bench/out/bench_cpp.json \
	  --benchmark_out_format=json
	OMP_NUM_THREADS=2 build/cpp/bench/cpp/fastnorm_bench_lion --benchmark_min_time=0.2 --benchmark_repetitions=3 \
	  --benchmark_out=bench/out/bench_cpp_lion.json --benchmark_out_format=json

# Builds the wheel with the CUDA kernels (scikit-build-core, abi3) into build/cuda-wheel; the kernels
# compile and link here even without a GPU (they only run on one: scripts/gpu_check.sh).
cuda-build: setup
	FASTNORM_CUDA=ON FASTNORM_CUDA_ARCHS="$${FASTNORM_CUDA_ARCHS:-90a-real}" $(PY) -m pip wheel -q \
	  --disable-pip-version-check --no-build-isolation --no-deps -Cbuild-dir=build/cuda -w build/cuda-wheel .

clean:
	rm -rf build bench/out
