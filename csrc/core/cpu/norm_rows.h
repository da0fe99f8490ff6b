// Internal: the row machinery of the CPU norm kernels (row I/O with widening/narrowing, blocked sums,
// affine vectors, the deterministic block partition and the weight-gradient partial reduction), shared by
// norm_kernels.cpp (LayerNorm / RMSNorm) and the per-op kernel files (norm_<op>_kernels.cpp).
//
// Include it inside `namespace fastnorm { namespace norm { namespace FASTNORM_ISA { namespace {`: every
// kernel file is built once per ISA, and these functions must be compiled with that file's flags.
// Needs <omp.h>, <immintrin.h> (under __F16C__), <algorithm>, <type_traits>, <vector> and
// fastnorm/detail/dtype.h included before the namespaces are opened.
using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;
using fastnorm::detail::round_to;

// ---- row I/O ---------------------------------------------------------------------------------------
// Returns the row as A values: the row itself when its dtype is A, else `buf` after widening.
template <typename A>
const A* load_row(const void* src, DType t, int64_t n, A* buf) {
  switch (t) {
    case DType::Float32: {
      const float* p = static_cast<const float*>(src);
      if constexpr (std::is_same_v<A, float>) return p;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
      return buf;
    }
    case DType::Float64: {
      const double* p = static_cast<const double*>(src);
      if constexpr (std::is_same_v<A, double>) return p;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
      return buf;
    }
    case DType::BFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(src);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(bf16_to_float(p[i]));
      return buf;
    }
    case DType::Float16: {
      const uint16_t* p = static_cast<const uint16_t*>(src);
      int64_t i = 0;
#if defined(__F16C__)
      // The AVX2 build has F16C: 8 conversions per instruction (exact, like the scalar path).
      if constexpr (std::is_same_v<A, float>) {
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
      }
#endif
      for (; i < n; ++i) buf[i] = static_cast<A>(f16_to_float(p[i]));
      return buf;
    }
    default: return buf;  // unreachable: dtypes are validated
  }
}

// Writes n A values to dst in dtype t, rounding to nearest even.
template <typename A>
void store_row(void* dst, DType t, int64_t n, const A* v) {
  switch (t) {
    case DType::Float32: {
      float* p = static_cast<float*>(dst);
      if (static_cast<const void*>(p) == static_cast<const void*>(v)) return;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(v[i]);
      return;
    }
    case DType::Float64: {
      double* p = static_cast<double*>(dst);
      if (static_cast<const void*>(p) == static_cast<const void*>(v)) return;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(v[i]);
      return;
    }
    case DType::BFloat16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(static_cast<float>(v[i]));
      return;
    }
    case DType::Float16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
      int64_t i = 0;
#if defined(__F16C__)
      if constexpr (std::is_same_v<A, float>) {
        for (; i + 8 <= n; i += 8)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i),
                           _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
#endif
      for (; i < n; ++i) p[i] = float_to_f16(static_cast<float>(v[i]));
      return;
    }
    default: return;
  }
}

// Where the kernel may compute a row straight into the output: when the output dtype is A itself.
template <typename A>
A* direct_out(void* row, DType t, A* tmp) {
  if constexpr (std::is_same_v<A, float>) { if (t == DType::Float32) return static_cast<A*>(row); }
  if constexpr (std::is_same_v<A, double>) { if (t == DType::Float64) return static_cast<A*>(row); }
  return tmp;
}

// Writes f(i), i < n, to a row of dtype t: straight into float/double rows; for bf16 in the same loop
// (the narrowing is a few integer ops that vectorise); otherwise through tmp and store_row.
template <typename A, typename F>
void emit_row(void* dst, DType t, int64_t n, A* tmp, F f) {
  if constexpr (std::is_same_v<A, float>) {
    if (t == DType::BFloat16) {
      uint16_t* p = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(f(i));
      return;
    }
  }
  A* y = direct_out<A>(dst, t, tmp);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = f(i);
  store_row<A>(dst, t, n, y);
}

inline const char* at(const void* base, int64_t row, int64_t stride, DType t) {
  return static_cast<const char*>(base) + row * stride * static_cast<int64_t>(dtype_size(t));
}
inline char* at(void* base, int64_t row, int64_t stride, DType t) {
  return static_cast<char*>(base) + row * stride * static_cast<int64_t>(dtype_size(t));
}

// Blocked summation: each block of kBlock terms is reduced in A over kLanes lanes (16 terms per lane, so
// little rounding), and the lane sums are added in double. As fast as a plain float reduction and, for
// N = 1024, ~30x more accurate (a plain fp32 sum of 1024 terms drifts by ~1e-7 relative).
constexpr int64_t kBlock = 512;

// kLanes independent partial sums: a single vector accumulator would make every reduction wait on the
// add latency (4 cycles per 8 floats); 32 lanes are four AVX2 (or eight SSE) registers in flight.
constexpr int64_t kLanes = 32;

// sum_i f(i) for i < n; f returns A.
template <typename A, typename F>
double blocked_sum(int64_t n, F f) {
  double total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A acc[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += f(i + j);
    }
    for (; i < e; ++i) acc[(i - b) % kLanes] += f(i);
    for (int64_t j = 0; j < kLanes; ++j) total += static_cast<double>(acc[j]);  // lanes meet in double
  }
  return total;
}

// gamma (or 1) and beta (or 0) widened once per call.
template <typename A>
std::vector<A> affine_vector(const void* p, DType t, int64_t n, A fill) {
  std::vector<A> out(static_cast<size_t>(n), fill);
  if (p != nullptr) {
    const A* v = load_row<A>(p, t, n, out.data());
    if (v != out.data()) std::copy(v, v + n, out.begin());
  }
  return out;
}

// Below this many elements a fork/join costs more than it saves: run on the calling thread.
constexpr int64_t kParallelMin = 1 << 15;

// Block b of nb covers rows [b*M/nb, (b+1)*M/nb): a partition that depends on (M, N) only.
inline int64_t block_begin(int64_t b, int64_t nb, int64_t m) { return b * m / nb; }

// Second pass of the weight gradients: partial[b][j] summed in block order, rounded once to t. Both
// outputs (dweight, dbias; either may be null) are reduced in one parallel region: one fork/join.
template <typename A>
void reduce_partials(const A* part_w, void* dweight, const A* part_b, void* dbias, int64_t nb, int64_t n, DType t) {
  if (dweight == nullptr && dbias == nullptr) return;
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const A* parts[2] = {part_w, part_b};
  void* outs[2] = {dweight, dbias};
#pragma omp parallel if (nb * n > kParallelMin)
  {
    std::vector<A> acc(kChunk);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < 2 * chunks; ++task) {
      const int which = static_cast<int>(task / chunks);
      if (outs[which] == nullptr) continue;
      const int64_t j0 = (task % chunks) * kChunk, len = std::min(kChunk, n - j0);
      std::fill(acc.begin(), acc.begin() + len, A(0));
      for (int64_t b = 0; b < nb; ++b) {
        const A* row = parts[which] + b * n + j0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] += row[j];
      }
      store_row<A>(static_cast<char*>(outs[which]) + j0 * static_cast<int64_t>(dtype_size(t)), t, len, acc.data());
    }
  }
}

// With no rows the weight gradients are zero (and no workspace is needed).
template <typename A, typename P>
bool zero_grads_if_no_rows(const P& p) {
  if (p.rows != 0) return false;
  const std::vector<A> zeros(static_cast<size_t>(p.cols), A(0));
  if (p.dweight != nullptr) store_row<A>(p.dweight, p.w_dtype, p.cols, zeros.data());
  if (p.dbias != nullptr) store_row<A>(p.dbias, p.w_dtype, p.cols, zeros.data());
  return true;
}

// K sums at once in one pass (blocked as blocked_sum): f(i, t) writes the K terms of element i into t.
// Fusing the sums keeps a pass over the row at one read of each element.
template <int K, typename A, typename F>
void blocked_sums(int64_t n, F f, double (&out)[K]) {
  for (int k = 0; k < K; ++k) out[k] = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A acc[K][kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        A t[K];
        f(i + j, t);
        for (int k = 0; k < K; ++k) acc[k][j] += t[k];
      }
    }
    for (; i < e; ++i) {
      A t[K];
      f(i, t);
      for (int k = 0; k < K; ++k) acc[k][(i - b) % kLanes] += t[k];
    }
    for (int k = 0; k < K; ++k)
      for (int64_t j = 0; j < kLanes; ++j) out[k] += static_cast<double>(acc[k][j]);  // lanes meet in double
  }
}
