// CUDA kernels of the Lion step (specs/lion.md §3.1-3.7).
//
// Numerics are the CPU kernel's (core/cpu/lion_kernels.cpp): both evaluate the FASTNORM_HD element update of
// detail/lion_math.h (mul_rn/fma_rn/div_rn pin every rounding; the build adds -fmad=false), so CPU and CUDA
// agree bitwise.
//
// Plan. The host planner (plan_launches, core/cpu/lion.cpp) cuts the call's tensor list into launches whose
// per-tensor metadata fits the kernel-argument space: 32 KB where large_kernel_params_supported(), else
// 4 KB. Each launch passes one LionArgs struct by value (lion_kernel.cuh): the argument structs come in three
// capacities per depth (16 tensors, the 4 KB maximum, the 32 KB maximum) and each launch takes the smallest
// that holds it, so a small call copies a small argument block. Grid = the launch's chunks of kChunk
// elements, 256 threads per block; block b binary-searches the chunk prefix for its tensor and chunk.
// Per-thread work (lion_kernel.cuh, run on the host by tests/cpp/test_lion_cuda_emulation.cpp): 16-byte
// vectors when every pointer of the tensor is 16-byte aligned, several vectors in flight, else scalar.
//
// Kernels are templated on (P, S, master, SR, capacity): 8 dtype combinations x 3 capacities, plus the SR
// variants of bf16 params. Cautious masking and nan_policy are run-time flags (uniform branches).
// Cautious: cudaMemsetAsync clears the per-tensor counts, then per launch a counting kernel (pass 1:
// per-thread counts, summed by bit-sliced warp ballots and a block reduction, one integer atomicAdd per
// block) runs before the update kernel (pass 2) of the same tensors; integer sums are exact in any order.
//
// Nothing here synchronises, allocates device memory or copies besides that memset; every launch is
// followed by cudaGetLastError.
#include <cuda_runtime.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/lion_math.h"
#include "fastnorm/lion.h"
#include "fastnorm/lion_cuda.h"
#include "lion_kernel.cuh"

namespace fastnorm {
namespace lion {
namespace cuda {
namespace {

using kern::LionArgs;
using kern::kThreads;
using fastnorm::lion::detail::OpmathOf;

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kWarps = kThreads / 32;

using kern::Caps;
static_assert(Caps<3>::kSmall == 96 && Caps<4>::kSmall == 80, "4 KB capacities");
static_assert(Caps<3>::kLarge == 812 && Caps<4>::kLarge == 677, "32 KB capacities");
static_assert(sizeof(LionArgs<float, 3, Caps<3>::kSmall>) <= kArgSpaceSmall, "4 KB argument struct");
static_assert(sizeof(LionArgs<float, 4, Caps<4>::kSmall>) <= kArgSpaceSmall, "4 KB argument struct");
static_assert(sizeof(LionArgs<double, 3, Caps<3>::kSmall>) <= kArgSpaceSmall, "4 KB argument struct");
static_assert(sizeof(LionArgs<float, 3, Caps<3>::kLarge>) <= kArgSpaceLarge, "32 KB argument struct");
static_assert(sizeof(LionArgs<float, 4, Caps<4>::kLarge>) <= kArgSpaceLarge, "32 KB argument struct");
static_assert(sizeof(LionArgs<double, 3, Caps<3>::kLarge>) <= kArgSpaceLarge, "32 KB argument struct");

// ---------------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------------

// The update (pass 2 with cautious): one block per chunk.
template <typename P, typename S, bool kMaster, bool kSR, int Depth, int Cap>
__global__ void __launch_bounds__(kThreads)
    lion_update_kernel(const __grid_constant__ LionArgs<typename OpmathOf<P>::type, Depth, Cap> a) {
  kern::block_update<P, S, kMaster, kSR, Depth, Cap>(a, static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x));
}

// Cautious pass 1: counts[t] += the keep-mask count of the block's chunk.
template <typename P, typename S, int Depth, int Cap>
__global__ void __launch_bounds__(kThreads)
    lion_count_kernel(const __grid_constant__ LionArgs<typename OpmathOf<P>::type, Depth, Cap> a) {
  __shared__ uint32_t warp_sums[kWarps];
  kern::BlockLoc loc;
  uint32_t n = 0;
  if (!kern::block_count<P, S, Depth, Cap>(a, static_cast<int64_t>(blockIdx.x), static_cast<int>(threadIdx.x), loc, n))
    return;  // found_inf: block-uniform, before any barrier
  // Per-thread counts are < 256: sum them over the warp bit by bit, one ballot and popc per bit.
  uint32_t w = 0;
#pragma unroll
  for (int bit = 0; bit < 8; ++bit) w += static_cast<uint32_t>(__popc(__ballot_sync(kFullMask, (n >> bit) & 1u))) << bit;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = w;
  __syncthreads();
  if (threadIdx.x == 0) {
    unsigned long long total = 0;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) total += warp_sums[i];
    if (total != 0) atomicAdd(a.h.counts + loc.tensor, total);
  }
}

// ---------------------------------------------------------------------------------------------------
// Host side
// ---------------------------------------------------------------------------------------------------

Status cuda_error(const std::string& what, cudaError_t e) {
  (void)cudaGetLastError();
  return Status(StatusCode::CudaError, "lion_step_ (cuda): " + what + ": " + cudaGetErrorString(e));
}

Status check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Status::OK() : cuda_error(what, e);
}

// Launches (count kernel with cautious, then) the update kernel of one launch range with capacity Cap.
template <typename P, typename S, bool kMaster, bool kSR, int Cap>
Status launch_cap(const LionStepParams& p, const kern::LionHeader<typename OpmathOf<P>::type>& h, const LaunchRange& r,
                  cudaStream_t stream) {
  using T = typename OpmathOf<P>::type;
  constexpr int Depth = kMaster ? 4 : 3;
  LionArgs<T, Depth, Cap> a;
  if (!kern::fill_launch(a, p, h, r))
    return Status(StatusCode::Internal, "lion_step_ (cuda): launch plan does not match the argument struct");
  const dim3 grid(static_cast<unsigned>(r.n_chunks));
  if (p.cautious) {
    lion_count_kernel<P, S, Depth, Cap><<<grid, kThreads, 0, stream>>>(a);
    Status st = check_launch("lion_count_kernel");
    if (!st.ok()) return st;
  }
  lion_update_kernel<P, S, kMaster, kSR, Depth, Cap><<<grid, kThreads, 0, stream>>>(a);
  return check_launch("lion_update_kernel");
}

template <typename P, typename S, bool kMaster, bool kSR>
Status run(const LionStepParams& p, bool large, cudaStream_t stream) {
  using T = typename OpmathOf<P>::type;
  constexpr int Depth = kMaster ? 4 : 3;
  std::vector<int64_t> numels(static_cast<size_t>(p.n_tensors));
  for (int64_t i = 0; i < p.n_tensors; ++i) numels[static_cast<size_t>(i)] = p.tensors[i].numel;
  const size_t space = large ? kArgSpaceLarge : kArgSpaceSmall;
  const int64_t n_launches = plan_launches(numels.data(), p.n_tensors, Depth, space, nullptr, 0);
  if (n_launches == 0) return Status::OK();  // only empty tensors
  std::vector<LaunchRange> ranges(static_cast<size_t>(n_launches));
  plan_launches(numels.data(), p.n_tensors, Depth, space, ranges.data(), n_launches);

  if (p.cautious) {
    const size_t need = workspace_bytes(p);
    if (p.workspace == nullptr || p.workspace_size < need)
      return invalid_argument("lion_step_: cautious needs a workspace of " + std::to_string(need) + " bytes, got " +
                              std::to_string(p.workspace == nullptr ? 0 : p.workspace_size));
    const cudaError_t e = cudaMemsetAsync(p.workspace, 0, need, stream);
    if (e != cudaSuccess) return cuda_error("cudaMemsetAsync", e);
  }

  const kern::LionHeader<T> h = kern::make_header<T>(p);
  for (const LaunchRange& r : ranges) {
    if (r.n_chunks <= 0) continue;
    Status st;
    const bool fits = kern::with_capacity<Depth>(r.n_tensors, large, [&](auto cap) {
      st = launch_cap<P, S, kMaster, kSR, decltype(cap)::value>(p, h, r, stream);
    });
    if (!fits) return Status(StatusCode::Internal, "lion_step_ (cuda): a launch holds more tensors than its argument space");
    if (!st.ok()) return st;
  }
  return Status::OK();
}

template <typename P, typename S, bool kMaster>
Status run_sr(const LionStepParams& p, bool large, cudaStream_t stream) {
  if constexpr (std::is_same<P, bf16_t>::value && !kMaster) {
    if (p.stochastic_rounding) return run<P, S, false, true>(p, large, stream);
  }
  return run<P, S, kMaster, false>(p, large, stream);
}

constexpr int kMaxCachedDevices = 64;
std::atomic<int> g_large_cache[kMaxCachedDevices];  // 0 unknown, 1 no, 2 yes (zero-initialised)

bool query_large_kernel_params(int device) {
#if FASTNORM_LION_LARGE_ARGS
  int runtime = 0, driver = 0, major = 0;
  if (cudaRuntimeGetVersion(&runtime) != cudaSuccess) { (void)cudaGetLastError(); return false; }
  if (cudaDriverGetVersion(&driver) != cudaSuccess) { (void)cudaGetLastError(); return false; }
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return runtime >= 12010 && driver >= 12010 && major >= 7;
#else
  (void)device;
  return false;
#endif
}

}  // namespace

bool large_kernel_params_supported(int device) {
  if (device < 0) return false;
  if (device >= kMaxCachedDevices) return query_large_kernel_params(device);
  const int cached = g_large_cache[device].load(std::memory_order_relaxed);
  if (cached != 0) return cached == 2;
  const bool ok = query_large_kernel_params(device);
  g_large_cache[device].store(ok ? 2 : 1, std::memory_order_relaxed);
  return ok;
}

Status step(const LionStepParams& p, cudaStream_t stream) {
  Status st = validate(p);
  if (!st.ok() || p.n_tensors == 0) return st;
  int device = 0;
  const cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return cuda_error("cudaGetDevice", e);
  const bool large = large_kernel_params_supported(device);
  const DType P = p.param_dtype, S = p.state_dtype;
  if (P == DType::Float32 && S == DType::Float32 && !p.has_master) return run_sr<float, float, false>(p, large, stream);
  if (P == DType::Float64 && S == DType::Float64 && !p.has_master) return run_sr<double, double, false>(p, large, stream);
  if (P == DType::BFloat16 && S == DType::BFloat16 && !p.has_master) return run_sr<bf16_t, bf16_t, false>(p, large, stream);
  if (P == DType::BFloat16 && S == DType::Float32)
    return p.has_master ? run_sr<bf16_t, float, true>(p, large, stream) : run_sr<bf16_t, float, false>(p, large, stream);
  if (P == DType::Float16 && S == DType::Float16 && !p.has_master) return run_sr<f16_t, f16_t, false>(p, large, stream);
  if (P == DType::Float16 && S == DType::Float32)
    return p.has_master ? run_sr<f16_t, float, true>(p, large, stream) : run_sr<f16_t, float, false>(p, large, stream);
  return unsupported(std::string("lion_step_ (cuda): unsupported dtype combination: params ") + dtype_name(P) +
                     ", exp_avg " + dtype_name(S) + (p.has_master ? ", with master weights" : ""));
}

}  // namespace cuda
}  // namespace lion
}  // namespace fastnorm
