// fastnorm hyper_attention family, public torch-free C++ API (specs/hyper_attention.md §2.4).
//
// HyperAttention (Han et al., ICLR 2024, as the authors' released code computes it, with the defects of
// spec §8 fixed): per (batch, query head) an estimator made of exact attention inside key blocks that an
// angular LSH places near each query block, plus a uniformly sampled, n/m-reweighted residual; causal
// attention by recursive halving; everything at or below `min_seq_len` keys exact.
//
// Tensors are logical [B, H, N, D] views addressed by a base pointer and four int64 element strides
// (any strides, including 0 for expanded dims). Query head h reads kv head h / (Hq / Hkv) (GQA).
// Statistics: lse is float32 [B, Hq, Nq] contiguous, except for Float64 inputs, where it is float64 so the
// float64 gradient is exact to ~1e-12 (DESIGN.md §4; the CUDA build has no Float64 inputs).
// Plans: q_perm int32 [B, Hq, Pq], k_perm int32 [B, Hkv, Pk], samples int32 [B, Hkv, S], all contiguous;
// Pq, Pk, S come from the schedule (plan_sizes) and are 0 when nothing is approximated.
//
// Entry points: CPU in fastnorm::hyper_attention, CUDA twins in fastnorm::hyper_attention::cuda (same
// params, a trailing cudaStream_t, device pointers; implemented in csrc/core/cuda/hyper_attention.cu).
// All return Status and never throw. The core never allocates device memory: callers pass workspace of
// the *_workspace_size() of the device they run on (CPU kernels may keep small thread-local buffers).
//
// Status: Ok (also for empty problems: B, Hq or Nq == 0); InvalidArgument for everything validate() checks
// (a bad config, negative sizes, head_dim outside [1, 256], Hq not a multiple of Hkv, a non-float dtype,
// causal with Nq != Nk, a non-finite scale, sequence lengths >= 2^31, null q / k), and per op for a plan whose
// sizes differ from plan_sizes() or whose pointers are null, null outputs / v / grads, or a workspace smaller
// than the *_workspace_size(). CUDA adds Unsupported (Float64, a grid or shared-memory limit) and CudaError.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

// cudaStream_t without including the CUDA runtime: this is exactly how driver_types.h defines it, so the
// declarations below are the same functions under nvcc and under a host-only compiler.
struct CUstream_st;

namespace fastnorm {
namespace hyper_attention {

// Hyper-parameters shared by plan, forward and backward (spec §3.11 defaults).
struct HyperAttnConfig {  // checked by schedule(), plan_sizes() and validate()
  int64_t block_size = 256;   // b >= 1: keys per LSH block (balanced partition, §3.3)
  int64_t sample_size = 256;  // m >= 0: residual samples per approximated sub-problem (§3.4)
  int64_t min_seq_len = 4096; // >= 1: a (sub-)problem with Nk' <= min_seq_len is exact (§3.6)
};

// Element strides of one [B, H, N, D] view.
struct HyperAttnStrides {
  int64_t b = 0, h = 0, n = 0, d = 0;
};

// Kinds of sub-problem in the schedule (§3.6).
enum class HyperAttnKind : int32_t {
  ExactFull = 0,    // rows x keys, every pair, weight 1
  ExactCausal = 1,  // square segment, pairs j <= i (q_begin == k_begin, nq == nk)
  Approx = 2,       // LSH block-diagonal + masked, reweighted samples (§3.5)
};

// One row of the per-(b, h) schedule (identical for all batches and heads). Rows [q_begin, q_begin + nq)
// meet keys [k_begin, k_begin + nk). For Approx pieces the offsets locate the piece's slice of the plan:
// q_perm[b, h, q_perm_offset : q_perm_offset + nq], k_perm[b, g, k_perm_offset : k_perm_offset + nk],
// samples[b, g, sample_offset : sample_offset + sample_size]; num_blocks = ceil(nk / block_size) >= 2.
// For exact pieces the offsets are -1 and num_blocks is 0.
struct HyperAttnSubproblem {
  HyperAttnKind kind = HyperAttnKind::ExactFull;
  int32_t depth = 0;  // recursion depth (0 = whole problem); causal merges go deepest level first
  int64_t q_begin = 0, nq = 0;
  int64_t k_begin = 0, nk = 0;
  int64_t q_perm_offset = -1, k_perm_offset = -1, sample_offset = -1;
  int64_t num_blocks = 0;
};

// Totals of a schedule.
struct HyperAttnPlanSizes {
  int64_t count = 0;     // sub-problems
  int64_t num_approx = 0;
  int64_t pq = 0;        // sum of Approx nq
  int64_t pk = 0;        // sum of Approx nk
  int64_t s = 0;         // sample_size * num_approx
  int32_t max_depth = 0;
};

// The problem: q [B, Hq, Nq, D], k and v [B, Hkv, Nk, D], one dtype (Float32/Float16/BFloat16, Float64 on
// CPU only). scale is any finite value (the caller resolves "None" to 1/sqrt(D)).
struct HyperAttnProblem {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, nq = 0, nk = 0, head_dim = 0;
  DType dtype = DType::Float32;
  const void* q = nullptr; HyperAttnStrides q_strides;
  const void* k = nullptr; HyperAttnStrides k_strides;
  const void* v = nullptr; HyperAttnStrides v_strides;  // unused by lsh_hash / plan (may be null there)
  bool causal = false;  // requires nq == nk
  double scale = 1.0;
  HyperAttnConfig config;
  int num_threads = 0;  // CPU only; 0 = the OpenMP default. Results never depend on it.
};

// A plan (output of plan(), input of forward/backward). Sizes must equal plan_sizes() of the problem.
struct HyperAttnPlan {
  int64_t pq = 0, pk = 0, s = 0;
  int32_t* q_perm = nullptr;   // [B, Hq, pq]: absolute query row indices, stably sorted per Approx piece
  int32_t* k_perm = nullptr;   // [B, Hkv, pk]: absolute key indices, stably sorted per Approx piece
  int32_t* samples = nullptr;  // [B, Hkv, s]: sample ranks c_t in [0, nk') of each Approx piece's sorted keys
};

// LSH hashing of one tensor: keys[b, h, n] = inverse_gray(bin(x[b, h, n, :])) with bit t set iff
// float32(<x, proj[:, t]>) > 0 (§3.1); NaN rows give bin 0.
struct HyperAttnHashParams {
  int64_t batch = 0, heads = 0, n = 0, head_dim = 0;
  DType dtype = DType::Float32;
  const void* x = nullptr; HyperAttnStrides x_strides;
  const float* proj = nullptr;  // [head_dim, num_projs] contiguous float32
  int32_t num_projs = 0;        // r in [0, 16]
  int32_t* keys = nullptr;      // [batch, heads, n] contiguous
  int num_threads = 0;
};

// Inputs of plan() besides the problem (q, k, sizes, causal, config).
struct HyperAttnPlanInputs {
  const float* proj = nullptr;          // [head_dim, num_projs] float32
  int32_t num_projs = 0;
  const int32_t* sample_words = nullptr; // [B, Hkv, S] values in [0, 2^31); S = plan_sizes().s
};

// Output of forward: out has the problem's dtype and its own strides; lse is [B, Hq, Nq] contiguous,
// float32 (float64 for Float64 inputs).
struct HyperAttnOutput {
  void* out = nullptr; HyperAttnStrides out_strides;
  void* lse = nullptr;
};

// Inputs and outputs of backward. dout/out have the problem dtype; dlse/lse as HyperAttnOutput::lse
// (dlse == nullptr means zero). dq [B,Hq,Nq,D], dk/dv [B,Hkv,Nk,D] in the problem dtype, own strides.
struct HyperAttnGrads {
  const void* dout = nullptr; HyperAttnStrides dout_strides;
  const void* dlse = nullptr;
  const void* out = nullptr; HyperAttnStrides out_strides;
  const void* lse = nullptr;
  void* dq = nullptr; HyperAttnStrides dq_strides;
  void* dk = nullptr; HyperAttnStrides dk_strides;
  void* dv = nullptr; HyperAttnStrides dv_strides;
};

// LSE merge of two partial attentions (§3.7): out/lse = merge((out1, lse1), (out2, lse2)) row by row.
// outX have `dtype` and their own strides; lseX are [B, H, N] contiguous float32 (float64 for Float64).
struct HyperAttnMergeParams {
  int64_t batch = 0, heads = 0, n = 0, head_dim = 0;
  DType dtype = DType::Float32;
  const void* out1 = nullptr; HyperAttnStrides out1_strides; const void* lse1 = nullptr;
  const void* out2 = nullptr; HyperAttnStrides out2_strides; const void* lse2 = nullptr;
  void* out = nullptr; HyperAttnStrides out_strides; void* lse = nullptr;
  int num_threads = 0;
};

// ---- host-only, shared by CPU and CUDA -------------------------------------------------------------

// The sub-problem table of §3.6 in emission (post-)order. Writes min(count, capacity) rows to `out`
// (nullable when capacity is 0) and the full count to *out_count. InvalidArgument for negative sizes,
// causal with nq != nk, or a bad config.
FASTNORM_API Status schedule(const HyperAttnConfig& config, int64_t nq, int64_t nk, bool causal,
                             HyperAttnSubproblem* out, int64_t capacity, int64_t* out_count);

// Totals of schedule(config, nq, nk, causal) (Pq, Pk, S of the plan tensors; all 0 when no piece is
// approximated, e.g. nk <= min_seq_len). InvalidArgument as schedule(); a null `sizes` is allowed.
FASTNORM_API Status plan_sizes(const HyperAttnConfig& config, int64_t nq, int64_t nk, bool causal,
                               HyperAttnPlanSizes* sizes);

// Checks sizes, dtype, pointer presence, scale and config of a problem without running anything (both devices'
// entry points call it first). Ok or InvalidArgument.
FASTNORM_API Status validate(const HyperAttnProblem& p);

// ---- CPU -------------------------------------------------------------------------------------------

// LSH sort keys of every row of one tensor (§3.1): keys [batch, heads, n] int32 from x [batch, heads, n, D]
// (any float dtype) and proj [D, num_projs] float32. InvalidArgument for bad sizes, num_projs outside [0, 16],
// a non-float dtype or a null pointer.
FASTNORM_API Status lsh_hash(const HyperAttnHashParams& p);

// Bytes of workspace plan() needs (hash keys of q and k, sort scratch). Never fails.
FASTNORM_API size_t plan_workspace_size(const HyperAttnProblem& p, int32_t num_projs);

// Builds the plan (§3.2-§3.4): hashes q and k, stable-sorts every Approx piece's rows and keys by
// (key, index), and turns sample words into ranks floor(w * nk' / 2^31). plan's pointers are outputs
// (q_perm [B, Hq, pq], k_perm [B, Hkv, pk], samples [B, Hkv, s] int32). A no-op when pq == 0. InvalidArgument
// as validate(), for plan sizes other than plan_sizes(), num_projs outside [0, 16], null proj / sample_words
// / plan pointers, or a small workspace.
FASTNORM_API Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& plan,
                         void* workspace, size_t workspace_size);

// Bytes of workspace forward() needs (the fp32/fp64 accumulator of causal merges, gathered samples). Never fails.
FASTNORM_API size_t forward_workspace_size(const HyperAttnProblem& p);

// Forward (§3.5-§3.7, §3.10): out and lse of the estimator, exact sub-problems tiled, pieces merged in
// schedule order: out [B, Hq, Nq, D] (own strides), lse [B, Hq, Nq]. Nk == 0 gives out = 0, lse = -inf. Bitwise
// independent of the thread count. InvalidArgument as validate(), for a plan that does not match plan_sizes(),
// a null out / lse / v, or a small workspace.
FASTNORM_API Status forward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnOutput& o,
                            void* workspace, size_t workspace_size);

// Bytes of workspace backward() needs (fp32/fp64 dq/dk/dv accumulators, D_i, per-block sample partials).
// Never fails.
FASTNORM_API size_t backward_workspace_size(const HyperAttnProblem& p);

// Backward (§3.9): the exact gradient of the computed estimator with the final merged LSE, dlse included.
// No atomics; every accumulator has one owner and a fixed order. Writes dq [B, Hq, Nq, D] and dk, dv
// [B, Hkv, Nk, D]. InvalidArgument as validate(), for a mismatched plan, a null dq / dout / out / lse / dk / dv
// where the shape needs it, or a small workspace.
FASTNORM_API Status backward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnGrads& g,
                             void* workspace, size_t workspace_size);

// LSE merge of two partial results (§3.7), HyperAttnMergeParams. InvalidArgument for negative sizes, a
// non-float dtype or a null pointer.
FASTNORM_API Status merge(const HyperAttnMergeParams& p);

// ---- CUDA twins (csrc/core/cuda/hyper_attention.cu; only in builds with CUDA) ----------------------
namespace cuda {

// As the CPU functions, on `stream`, with device pointers (the params structs themselves are host
// memory). They launch asynchronously, never synchronise and never allocate; CudaError carries
// cudaGetErrorString of a failed launch. Float64 is Unsupported, and so are launches past a grid or shared-
// memory limit (e.g. head_dim too large for the tile); argument errors are the CPU functions' InvalidArgument.

// LSH sort keys (one launch).
FASTNORM_API Status lsh_hash(const HyperAttnHashParams& p, CUstream_st* stream);

// Workspace bytes of the CUDA plan (its sort scratch differs from the CPU's).
FASTNORM_API size_t plan_workspace_size(const HyperAttnProblem& p, int32_t num_projs);

// The plan, bitwise equal to the CPU plan wherever no <x, P_t> lies within rounding of 0.
FASTNORM_API Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& plan,
                         void* workspace, size_t workspace_size, CUstream_st* stream);

// Workspace bytes of the CUDA forward.
FASTNORM_API size_t forward_workspace_size(const HyperAttnProblem& p);

// The forward.
FASTNORM_API Status forward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnOutput& o,
                            void* workspace, size_t workspace_size, CUstream_st* stream);

// Workspace bytes of the CUDA backward.
FASTNORM_API size_t backward_workspace_size(const HyperAttnProblem& p);

// The backward.
FASTNORM_API Status backward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnGrads& g,
                             void* workspace, size_t workspace_size, CUstream_st* stream);

// The LSE merge.
FASTNORM_API Status merge(const HyperAttnMergeParams& p, CUstream_st* stream);

}  // namespace cuda

}  // namespace hyper_attention
}  // namespace fastnorm
