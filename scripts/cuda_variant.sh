#!/bin/sh
# The one table of the CUDA wheel variants (docs/install.md, "Versions"). Prints one field of the variant
# that FASTNORM_CUDA_MAJOR selects (default 13):
#   sh scripts/cuda_variant.sh toolkit|archs|local|index|tag|hostcxx
# Used by [tool.cibuildwheel] in pyproject.toml (environment, before-all) and by scripts/build_wheels.sh.
#
#   major  toolkit  torch index  wheel version   CUDA_ARCHITECTURES
#   13     13.0     cu130        0.1.0 (plain)   80-real;90a-real;100f-real;120f-real;90-virtual
#   12     12.6     cu126        0.1.0+cu126     80-real;90a-real;90-virtual
#
# Why these:
# - 13 is the CUDA major of the torch wheels on PyPI (torch >= 2.11 publishes its CUDA 13 build there), so
#   its wheel carries the plain version and is the one `pip install fastnorm` gets. It is built with the
#   lowest 13.x toolkit (13.0): a module built with 13.0 runs under the 13.x runtime any torch 2.11+ ships
#   (libcudart.so.13), while one built with 13.2 could call runtime entry points a 13.0 torch lacks.
#   nvcc 13.0 accepts the whole release list of DESIGN.md §8: sm_80, sm_90a, the family targets sm_100f
#   (B200/GB200 and B300, sm_100/sm_103) and sm_120f (RTX 50xx/RTX PRO, sm_120/sm_121), and compute_90 PTX
#   for anything newer.
# - 12 serves torch's legacy CUDA 12 builds (cu126 for torch 2.12+; torch 2.10/2.11 also had cu128). Those
#   torch builds stop at Hopper, so the variant does too: 12.6 has no sm_100/sm_120 (12.8+) and no 'f'
#   family targets (12.9+), and building with a newer 12.x than the torch runtime it loads next to
#   (libcudart.so.12 from 12.6) is what minor-version compatibility does not promise. Blackwell users take
#   the CUDA 13 wheel (with a CUDA 13 torch); compute_90 PTX still lets a 12.x driver JIT for newer GPUs.
# - hostcxx: nvcc 12.6 rejects gcc > 13 and the manylinux_2_28 image's compiler is gcc-toolset-14, so the
#   CUDA 12 variant compiles its host code with gcc-toolset-13 (cibw_install_cuda.sh installs it); nvcc 13.0
#   takes the image's g++.
set -eu
major=${FASTNORM_CUDA_MAJOR:-13}
case "$major" in
  13) toolkit=13.0; archs='80-real;90a-real;100f-real;120f-real;90-virtual'; local=''; tag=cu130 ;;
  12) toolkit=12.6; archs='80-real;90a-real;90-virtual'; local=cu126; tag=cu126 ;;
  *) echo "cuda_variant.sh: FASTNORM_CUDA_MAJOR must be 12 or 13, got '$major'" >&2; exit 2 ;;
esac
case "${1:-}" in
  toolkit) echo "$toolkit" ;;
  archs) echo "$archs" ;;
  local) echo "$local" ;;
  tag) echo "$tag" ;;
  index) echo "https://download.pytorch.org/whl/$tag" ;;
  hostcxx) if [ "$major" = 12 ]; then echo /opt/rh/gcc-toolset-13/root/usr/bin/g++; else command -v g++; fi ;;
  *) echo "usage: FASTNORM_CUDA_MAJOR=12|13 sh scripts/cuda_variant.sh toolkit|archs|local|index|tag|hostcxx" >&2; exit 2 ;;
esac
