// Google Benchmark of the norm family's CPU core (specs/norm.md §7, CPU cases): LayerNorm and RMSNorm,
// forward and backward, M = 4096 rows, N in {768, 1024, 4096}, float32 and bfloat16, plus a copy
// baseline so that each case can be read as a fraction of the memory bandwidth a copy reaches.
//
// Byte accounting (spec §7, elt = element size of x):
//   forward   2*M*N*elt (read x, write y) + the weight (and bias) once
//   backward  3*M*N*elt (read x and dy, write dx) + the weight + the fp32 partials (written, then read)
// Statistics (4 or 8 bytes a row) are left out, as the spec does.
//
// The copy baseline is an OpenMP-parallel memcpy of 256 MiB (bytes = 2*size: read + write) on the same
// threads the kernels use. Main measures it once before the cases (median of 7) and every case reports
// `copy_frac` = its bytes/s (over the wall time of its timed loop) divided by that copy's bytes/s. All cases use real (wall) time: the kernels
// are multi-threaded and the CPU time of the calling thread would not mean anything.
//
// Run:  fastnorm_bench_norm [--benchmark_filter=rms] [--benchmark_min_time=1]
#include <benchmark/benchmark.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm.h"

namespace {
using fastnorm::DType;
namespace fn = fastnorm::norm;

constexpr int64_t kRows = 4096;
constexpr size_t kCopyBytes = size_t(256) << 20;
double g_copy_bytes_per_s = 0;  // measured in main()

// A byte buffer holding n elements of t, filled with a cheap deterministic pattern in [-1, 1] (an LCG:
// std::mt19937 on 16M elements would dominate the set-up time).
std::vector<unsigned char> filled(DType t, int64_t n, uint32_t seed, float center = 0.0f) {
  std::vector<unsigned char> b(static_cast<size_t>(n) * fastnorm::dtype_size(t));
  uint32_t s = seed * 2654435761u + 1;
  for (int64_t i = 0; i < n; ++i) {
    s = s * 1664525u + 1013904223u;
    const float v = center + static_cast<float>(s >> 8) * 0x1p-23f - 1.0f;
    if (t == DType::Float32) {
      std::memcpy(b.data() + 4 * i, &v, 4);
    } else {
      const uint16_t h = fastnorm::detail::float_to_bf16(v);
      std::memcpy(b.data() + 2 * i, &h, 2);
    }
  }
  return b;
}

// Fails the benchmark with the core's message (instead of timing an early return).
bool check(benchmark::State& state, const fastnorm::Status& s) {
  if (!s.ok()) state.SkipWithError(s.message().c_str());
  return s.ok();
}

// Wall time of the timed loop, for the copy fraction (the State does not expose its own clock).
using Clock = std::chrono::steady_clock;
double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

void report(benchmark::State& state, double bytes_per_iter, double loop_seconds) {
  const double total = bytes_per_iter * static_cast<double>(state.iterations());
  state.SetBytesProcessed(static_cast<int64_t>(total));
  if (g_copy_bytes_per_s > 0 && loop_seconds > 0)
    state.counters["copy_frac"] = total / loop_seconds / g_copy_bytes_per_s;
}

// ---- forward ---------------------------------------------------------------------------------------
void bm_forward(benchmark::State& state, bool layer, DType t, int64_t n) {
  const size_t elt = fastnorm::dtype_size(t);
  const auto x = filled(t, kRows * n, 1, 0.5f), w = filled(t, n, 2, 1.0f), b = filled(t, n, 3);
  std::vector<unsigned char> y(x.size());
  std::vector<float> mean(kRows), rstd(kRows);
  fn::LayerNormParams lp;
  fn::RMSNormParams rp;
  if (layer) {
    lp.rows = kRows; lp.cols = n; lp.x = x.data(); lp.x_stride = n; lp.x_dtype = t;
    lp.weight = w.data(); lp.bias = b.data(); lp.w_dtype = t; lp.y = y.data(); lp.y_dtype = t;
    lp.mean = mean.data(); lp.rstd = rstd.data();
  } else {
    rp.rows = kRows; rp.cols = n; rp.x = x.data(); rp.x_stride = n; rp.x_dtype = t;
    rp.weight = w.data(); rp.w_dtype = t; rp.y = y.data(); rp.y_dtype = t; rp.rstd = rstd.data();
  }
  const auto t0 = Clock::now();
  for (auto _ : state) {
    if (!check(state, layer ? fn::layer_norm_fwd(lp) : fn::rms_norm_fwd(rp))) return;
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  const double affine = static_cast<double>(n * elt) * (layer ? 2 : 1);
  report(state, 2.0 * kRows * n * elt + affine, seconds_since(t0));
}

// ---- backward (dx + dweight + dbias) ---------------------------------------------------------------
void bm_backward(benchmark::State& state, bool layer, DType t, int64_t n) {
  const size_t elt = fastnorm::dtype_size(t);
  const auto x = filled(t, kRows * n, 1, 0.5f), dy = filled(t, kRows * n, 4), w = filled(t, n, 2, 1.0f);
  std::vector<unsigned char> dx(x.size()), dw(n * elt), db(n * elt);
  // Statistics from a real forward, so the backward sees the numbers it would in training.
  std::vector<unsigned char> y(x.size());
  std::vector<float> mean(kRows), rstd(kRows);
  fn::LayerNormBwdParams lp;
  fn::RMSNormBwdParams rp;
  size_t ws_bytes;
  std::vector<unsigned char> ws;
  if (layer) {
    fn::LayerNormParams f;
    f.rows = kRows; f.cols = n; f.x = x.data(); f.x_stride = n; f.x_dtype = t; f.weight = w.data();
    f.w_dtype = t; f.y = y.data(); f.y_dtype = t; f.mean = mean.data(); f.rstd = rstd.data();
    if (!check(state, fn::layer_norm_fwd(f))) return;
    lp.rows = kRows; lp.cols = n; lp.dy = dy.data(); lp.dy_stride = n; lp.dy_dtype = t;
    lp.x = x.data(); lp.x_stride = n; lp.x_dtype = t; lp.mean = mean.data(); lp.rstd = rstd.data();
    lp.weight = w.data(); lp.w_dtype = t; lp.dx = dx.data(); lp.dx_dtype = t;
    lp.dweight = dw.data(); lp.dbias = db.data();
    ws_bytes = fn::layer_norm_bwd_workspace_bytes(lp);
    ws.resize(ws_bytes);
    lp.workspace = ws.data();
  } else {
    fn::RMSNormParams f;
    f.rows = kRows; f.cols = n; f.x = x.data(); f.x_stride = n; f.x_dtype = t; f.weight = w.data();
    f.w_dtype = t; f.y = y.data(); f.y_dtype = t; f.rstd = rstd.data();
    if (!check(state, fn::rms_norm_fwd(f))) return;
    rp.rows = kRows; rp.cols = n; rp.dy = dy.data(); rp.dy_stride = n; rp.dy_dtype = t;
    rp.x = x.data(); rp.x_stride = n; rp.x_dtype = t; rp.rstd = rstd.data();
    rp.weight = w.data(); rp.w_dtype = t; rp.y_dtype = t; rp.dx = dx.data(); rp.dx_dtype = t;
    rp.dweight = dw.data(); rp.dbias = db.data();
    ws_bytes = fn::rms_norm_bwd_workspace_bytes(rp);
    ws.resize(ws_bytes);
    rp.workspace = ws.data();
  }
  const auto t0 = Clock::now();
  for (auto _ : state) {
    if (!check(state, layer ? fn::layer_norm_bwd(lp) : fn::rms_norm_bwd(rp))) return;
    benchmark::DoNotOptimize(dx.data());
    benchmark::ClobberMemory();
  }
  report(state, 3.0 * kRows * n * elt + static_cast<double>(n * elt) + 2.0 * static_cast<double>(ws_bytes),
         seconds_since(t0));
}

// ---- copy baseline ---------------------------------------------------------------------------------
// memcpy split into one contiguous chunk per OpenMP thread, like the kernels' static row partition.
void parallel_copy(unsigned char* dst, const unsigned char* src, size_t bytes) {
#pragma omp parallel
  {
    const size_t nt = static_cast<size_t>(omp_get_num_threads()), id = static_cast<size_t>(omp_get_thread_num());
    const size_t chunk = (bytes + nt - 1) / nt, b = std::min(bytes, id * chunk), e = std::min(bytes, b + chunk);
    std::memcpy(dst + b, src + b, e - b);
  }
}

struct CopyBuffers {
  std::vector<unsigned char> src = std::vector<unsigned char>(kCopyBytes, 1), dst = std::vector<unsigned char>(kCopyBytes);
};
CopyBuffers& copy_buffers() {
  static CopyBuffers b;
  return b;
}

void bm_copy(benchmark::State& state) {
  CopyBuffers& c = copy_buffers();
  const auto t0 = Clock::now();
  for (auto _ : state) {
    parallel_copy(c.dst.data(), c.src.data(), kCopyBytes);
    benchmark::ClobberMemory();
  }
  report(state, 2.0 * kCopyBytes, seconds_since(t0));
}

// Median rate of a few copies after a warm-up; the reference for every copy_frac counter.
double measure_copy_bytes_per_s() {
  CopyBuffers& c = copy_buffers();
  parallel_copy(c.dst.data(), c.src.data(), kCopyBytes);
  std::vector<double> rates;
  for (int i = 0; i < 7; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_copy(c.dst.data(), c.src.data(), kCopyBytes);
    const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
    rates.push_back(2.0 * kCopyBytes / dt.count());
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  g_copy_bytes_per_s = measure_copy_bytes_per_s();
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f", g_copy_bytes_per_s / 1e9);
  benchmark::AddCustomContext("copy_GB/s (256 MiB, parallel memcpy)", buf);
  benchmark::AddCustomContext("omp_threads", std::to_string(omp_get_max_threads()));

  benchmark::RegisterBenchmark("copy/256MiB", bm_copy)->UseRealTime()->Unit(benchmark::kMillisecond);
  for (const bool layer : {true, false}) {
    for (const bool fwd : {true, false}) {
      for (const DType t : {DType::Float32, DType::BFloat16}) {
        for (const int64_t n : {768, 1024, 4096}) {
          const std::string name = std::string(layer ? "layer_norm" : "rms_norm") + (fwd ? "_fwd/" : "_bwd/") +
                                   fastnorm::dtype_name(t) + "/M:4096/N:" + std::to_string(n);
          auto* b = fwd ? benchmark::RegisterBenchmark(name.c_str(), bm_forward, layer, t, n)
                        : benchmark::RegisterBenchmark(name.c_str(), bm_backward, layer, t, n);
          b->UseRealTime()->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
