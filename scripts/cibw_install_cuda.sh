#!/usr/bin/env bash
# cibuildwheel before-all (runs once per manylinux_2_28 container, as root): installs the CUDA toolkit of the
# variant FASTNORM_CUDA_MAJOR selects (scripts/cuda_variant.sh) from NVIDIA's RHEL 8 repository (the
# manylinux_2_28 images are AlmaLinux 8), only the parts the build needs: nvcc, the runtime headers and
# library (CUDA::cudart) and CCCL (cub, used by the HyperAttention kernels). /usr/local/cuda points at it.
set -euo pipefail
cd "$(dirname "$0")/.."
toolkit=$(sh scripts/cuda_variant.sh toolkit)
ver=${toolkit/./-}                           # 13.0 -> 13-0 (the package suffix)
case "$(uname -m)" in
  x86_64) repo_arch=x86_64 ;;
  aarch64) repo_arch=sbsa ;;                 # server ARM (GH200/GB200); Jetson is not a wheel target
  *) echo "cibw_install_cuda.sh: no CUDA repository for $(uname -m)" >&2; exit 1 ;;
esac
echo "cibw_install_cuda.sh: CUDA $toolkit ($repo_arch) for FASTNORM_CUDA_MAJOR=${FASTNORM_CUDA_MAJOR:-13}"
curl -fsSL -o /etc/yum.repos.d/cuda-rhel8.repo \
  "https://developer.download.nvidia.com/compute/cuda/repos/rhel8/$repo_arch/cuda-rhel8.repo"
dnf install -y -q "cuda-nvcc-$ver" "cuda-cudart-devel-$ver" "cuda-cccl-$ver"
# nvcc 12.x accepts gcc <= 13; the image's default is gcc-toolset-14 (cuda_variant.sh hostcxx).
case "$toolkit" in 12.*) dnf install -y -q gcc-toolset-13-gcc-c++ ;; esac
ln -sfn "/usr/local/cuda-$toolkit" /usr/local/cuda
/usr/local/cuda/bin/nvcc --version | tail -n 2
