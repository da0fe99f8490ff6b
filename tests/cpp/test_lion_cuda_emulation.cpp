// Host emulation of the Lion CUDA kernels (csrc/core/cuda/lion_kernel.cuh): the per-block and per-thread code the
// kernels run is FASTNORM_HD, so g++ runs it here for every block and thread index of every launch the planner
// makes, and the result must equal the CPU step (fastnorm::lion::step) bitwise (NaN payloads aside). This
// checks, without a GPU, the launch plan and argument filling, the block -> (tensor, chunk) search, the vector
// and scalar paths (aligned and unaligned tensors, chunk tails), master weights, stochastic rounding (Philox
// per 8-element vector), cautious counting (pass 1 summed over threads on the host) and the device-read
// scalars (lr, grad_scale, found_inf, sr_step; host pointers here). What it cannot check: the warp-ballot
// reduction, the atomics, the memset and anything the hardware does (run the CUDA tests for that).
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "../../csrc/core/cuda/lion_kernel.cuh"
#include "fastnorm/detail/dtype.h"
#include "fastnorm/lion.h"

namespace {

namespace fl = fastnorm::lion;
namespace fk = fastnorm::lion::cuda::kern;
using fastnorm::bf16_t;
using fastnorm::DType;
using fastnorm::f16_t;
using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;

// ---- storage ---------------------------------------------------------------------------------------------
// A buffer of n elements of dtype t whose data pointer is 16-byte aligned plus `misalign` elements.
struct Buf {
  DType t = DType::Float32;
  int64_t n = 0;
  std::vector<unsigned char> raw;
  size_t off = 0;
  void init(DType dt, int64_t numel, int misalign) {
    t = dt;
    n = numel;
    raw.assign(static_cast<size_t>(numel + 8) * fastnorm::dtype_size(dt) + 32, 0);
    const uintptr_t base = reinterpret_cast<uintptr_t>(raw.data());
    off = static_cast<size_t>(((base + 15) & ~uintptr_t(15)) - base) + static_cast<size_t>(misalign) * fastnorm::dtype_size(dt);
  }
  void* data() { return n > 0 ? raw.data() + off : nullptr; }
  size_t bytes() const { return static_cast<size_t>(n) * fastnorm::dtype_size(t); }
  void set(int64_t i, double v) {
    unsigned char* p = raw.data() + off + static_cast<size_t>(i) * fastnorm::dtype_size(t);
    switch (t) {
      case DType::Float64: std::memcpy(p, &v, 8); break;
      case DType::BFloat16: { const uint16_t b = float_to_bf16(static_cast<float>(v)); std::memcpy(p, &b, 2); break; }
      case DType::Float16: { const uint16_t b = float_to_f16(static_cast<float>(v)); std::memcpy(p, &b, 2); break; }
      default: { const float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
    }
  }
  double get(int64_t i) const {
    const unsigned char* p = raw.data() + off + static_cast<size_t>(i) * fastnorm::dtype_size(t);
    switch (t) {
      case DType::Float64: { double d; std::memcpy(&d, p, 8); return d; }
      case DType::BFloat16: { uint16_t b; std::memcpy(&b, p, 2); return bf16_to_float(b); }
      case DType::Float16: { uint16_t b; std::memcpy(&b, p, 2); return f16_to_float(b); }
      default: { float f; std::memcpy(&f, p, 4); return f; }
    }
  }
  bool same(const Buf& o, int64_t i) const {  // bitwise, or both NaN
    const size_t es = fastnorm::dtype_size(t);
    if (std::memcmp(raw.data() + off + i * es, o.raw.data() + o.off + i * es, es) == 0) return true;
    return std::isnan(get(i)) && std::isnan(o.get(i));
  }
  void copy_from(const Buf& o) { std::memcpy(raw.data() + off, o.raw.data() + o.off, bytes()); }
};

// misalign bits: 1 param, 2 grad, 4 exp_avg, 8 master (by one element).
struct Spec {
  int64_t numel;
  int misalign;
};

struct Config {
  std::string name;
  DType P = DType::Float32, S = DType::Float32;
  bool master = false, sr = false, cautious = false, maximize = false;
  bool grad_scale = false, lr_device = false, sr_step_device = false, found_inf = false;
  DType lr_dtype = DType::Float32;
  fl::NanPolicy nan = fl::NanPolicy::Propagate;
  int32_t k = 1;
  double decay_ref = 1.0;
  double lr = 1e-2, wd = 0.1;
  double min_frac = 1e-3;
  bool specials = false;  // NaN / Inf / zeros sprinkled into the inputs
};

struct Tensors {
  std::vector<Buf> p, g, m, w;
};

void alloc_like(Tensors& dst, const Tensors& src, const std::vector<Spec>& specs) {
  const size_t n = specs.size();
  dst.p.resize(n); dst.g.resize(n); dst.m.resize(n); dst.w.resize(n);
  for (size_t i = 0; i < n; ++i) {
    dst.p[i].init(src.p[i].t, specs[i].numel, specs[i].misalign & 1);
    dst.g[i].init(src.g[i].t, specs[i].numel, (specs[i].misalign >> 1) & 1);
    dst.m[i].init(src.m[i].t, specs[i].numel, (specs[i].misalign >> 2) & 1);
    dst.w[i].init(src.w[i].t, src.w[i].n, (specs[i].misalign >> 3) & 1);
    dst.p[i].copy_from(src.p[i]);
    dst.g[i].copy_from(src.g[i]);
    dst.m[i].copy_from(src.m[i]);
    dst.w[i].copy_from(src.w[i]);
  }
}

Tensors make_inputs(const Config& c, const std::vector<Spec>& specs, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nrm(0.0, 1.0);
  std::uniform_real_distribution<double> uni(-2.0, 2.0);
  std::uniform_int_distribution<int> pick(0, 99);
  Tensors t;
  const size_t n = specs.size();
  t.p.resize(n); t.g.resize(n); t.m.resize(n); t.w.resize(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t ne = specs[i].numel;
    t.p[i].init(c.P, ne, specs[i].misalign & 1);
    t.g[i].init(c.P, ne, (specs[i].misalign >> 1) & 1);
    t.m[i].init(c.S, ne, (specs[i].misalign >> 2) & 1);
    t.w[i].init(DType::Float32, c.master ? ne : 0, (specs[i].misalign >> 3) & 1);
    for (int64_t e = 0; e < ne; ++e) {
      double x = uni(rng), g = nrm(rng), m = 0.1 * nrm(rng);
      const int r = pick(rng);
      if (r < 3) g = 0.0;                 // c = b1*0 + a1*m
      if (r < 2) m = 0.0;                 // c = 0: sign 0
      if (r == 4) m = -m;
      if (c.specials) {
        if (r == 10) g = NAN;
        if (r == 11) m = NAN;
        if (r == 12) x = NAN;
        if (r == 13) g = -INFINITY;
        if (r == 14) x = INFINITY;
        if (r == 15) m = 1e-40;           // subnormal state
      }
      if (c.grad_scale) g *= 1024.0;
      t.p[i].set(e, x);
      t.g[i].set(e, g);
      t.m[i].set(e, m);
      if (c.master) t.w[i].set(e, x + 1e-4 * nrm(rng));  // a master that rounds to p, but is not p
    }
  }
  return t;
}

// The call's parameters over `t` (device pointers are host pointers here).
struct Scalars {
  float grad_scale = 1024.0f, found_inf = 0.0f;
  double lr_d;
  float lr_f;
  uint16_t lr_h;
  int64_t sr_step = 7;
};

fl::LionStepParams make_params(const Config& c, Tensors& t, const std::vector<Spec>& specs,
                               std::vector<fl::LionTensor>& lt, Scalars& sc) {
  lt.assign(specs.size(), fl::LionTensor{});
  for (size_t i = 0; i < specs.size(); ++i) {
    lt[i].param = t.p[i].data();
    lt[i].grad = t.g[i].data();
    lt[i].exp_avg = t.m[i].data();
    lt[i].master = c.master ? t.w[i].data() : nullptr;
    lt[i].numel = specs[i].numel;
    lt[i].slot = static_cast<uint32_t>(3 * i + 1);  // slots need not be the list positions
  }
  fl::LionStepParams p;
  p.tensors = lt.data();
  p.n_tensors = static_cast<int64_t>(lt.size());
  p.param_dtype = c.P;
  p.state_dtype = c.S;
  p.has_master = c.master;
  p.lr = c.lr;
  if (c.lr_device) {
    p.lr = 123.0;  // must be ignored
    p.lr_dtype = c.lr_dtype;
    sc.lr_d = c.lr;
    sc.lr_f = static_cast<float>(c.lr);
    sc.lr_h = c.lr_dtype == DType::BFloat16 ? float_to_bf16(sc.lr_f) : float_to_f16(sc.lr_f);
    p.lr_device = c.lr_dtype == DType::Float64 ? static_cast<const void*>(&sc.lr_d)
                  : c.lr_dtype == DType::Float32 ? static_cast<const void*>(&sc.lr_f)
                                                 : static_cast<const void*>(&sc.lr_h);
  }
  p.beta1 = 0.9;
  p.beta2 = 0.99;
  p.weight_decay = c.wd;
  p.decay_lr_power = c.k;
  p.decay_ref = c.decay_ref;
  p.grad_scale = c.grad_scale ? &sc.grad_scale : nullptr;
  sc.found_inf = c.found_inf ? 1.0f : 0.0f;
  p.found_inf = &sc.found_inf;
  p.maximize = c.maximize;
  p.cautious = c.cautious;
  p.cautious_min_frac = c.min_frac;
  p.stochastic_rounding = c.sr;
  p.sr_seed = 0x0123456789abcdefull;
  p.sr_step = c.sr_step_device ? -1 : 5;
  p.sr_step_device = c.sr_step_device ? &sc.sr_step : nullptr;
  p.nan_policy = c.nan;
  p.num_threads = 1;
  return p;
}

// ---- the emulated launches -------------------------------------------------------------------------------
// Runs the CUDA step's launches on the host: the planner with `space` bytes of arguments, each launch's
// arguments filled as lion.cu fills them, then (cautious) pass 1 for every block and thread, summing the
// per-thread counts into the workspace, then pass 2 for every block and thread. Returns the launch count.
template <typename P, typename S, bool kMaster, bool kSR>
int64_t emulate(const fl::LionStepParams& p, size_t space) {
  using T = typename fl::detail::OpmathOf<P>::type;
  constexpr int Depth = kMaster ? 4 : 3;
  std::vector<int64_t> numels;
  for (int64_t i = 0; i < p.n_tensors; ++i) numels.push_back(p.tensors[i].numel);
  const int64_t nl = fl::cuda::plan_launches(numels.data(), p.n_tensors, Depth, space, nullptr, 0);
  std::vector<fl::cuda::LaunchRange> ranges(static_cast<size_t>(nl));
  fl::cuda::plan_launches(numels.data(), p.n_tensors, Depth, space, ranges.data(), nl);
  if (p.cautious) std::memset(p.workspace, 0, fl::workspace_bytes(p));
  const fk::LionHeader<T> h = fk::make_header<T>(p);
  for (const auto& r : ranges) {
    const bool fits = fk::with_capacity<Depth>(r.n_tensors, space > fl::cuda::kArgSpaceSmall, [&](auto cap) {
      constexpr int Cap = decltype(cap)::value;
      auto a = std::make_unique<fk::LionArgs<T, Depth, Cap>>();
      EXPECT_TRUE(fk::fill_launch(*a, p, h, r));
      if (p.cautious) {
        for (int64_t b = 0; b < r.n_chunks; ++b) {
          uint64_t block_sum = 0;
          fk::BlockLoc loc{-1, -1};
          for (int tid = 0; tid < fk::kThreads; ++tid) {
            uint32_t n = 0;
            if (!fk::block_count<P, S, Depth, Cap>(*a, b, tid, loc, n)) break;
            EXPECT_LT(n, 256u);  // the kernel's 8-bit ballot slices
            block_sum += n;
          }
          if (loc.tensor >= 0) a->h.counts[loc.tensor] += block_sum;
        }
      }
      for (int64_t b = 0; b < r.n_chunks; ++b)
        for (int tid = 0; tid < fk::kThreads; ++tid) fk::block_update<P, S, kMaster, kSR, Depth, Cap>(*a, b, tid);
    });
    EXPECT_TRUE(fits) << r.n_tensors << " tensors in one launch";
  }
  return nl;
}

int64_t emulate_any(const Config& c, const fl::LionStepParams& p, size_t space) {
  if (c.P == DType::Float32) return emulate<float, float, false, false>(p, space);
  if (c.P == DType::Float64) return emulate<double, double, false, false>(p, space);
  if (c.P == DType::BFloat16) {
    if (c.S == DType::BFloat16) return c.sr ? emulate<bf16_t, bf16_t, false, true>(p, space) : emulate<bf16_t, bf16_t, false, false>(p, space);
    if (c.master) return emulate<bf16_t, float, true, false>(p, space);
    return c.sr ? emulate<bf16_t, float, false, true>(p, space) : emulate<bf16_t, float, false, false>(p, space);
  }
  if (c.S == DType::Float16) return emulate<f16_t, f16_t, false, false>(p, space);
  return c.master ? emulate<f16_t, float, true, false>(p, space) : emulate<f16_t, float, false, false>(p, space);
}

// A tensor list with empty tensors, single elements, chunk boundaries, multi-chunk tensors with tails,
// and unaligned pointers (each operand in turn).
std::vector<Spec> default_specs() {
  return {{37, 0},      {0, 0},     {32768, 0}, {1, 0},     {70001, 0}, {40000, 1}, {8, 0},   {15, 0},
          {65541, 4},   {1000, 2},  {0, 0},     {3, 0},     {4096, 8},  {33, 0},    {9, 15},  {32769, 0},
          {24, 0},      {100, 0},   {7, 0}};
}

int depth_of(const Config& c) { return c.master ? 4 : 3; }

void check_config(const Config& c, const std::vector<Spec>& specs) {
  SCOPED_TRACE(c.name);
  const Tensors init = make_inputs(c, specs, 1234u);
  int64_t total = 0;
  for (const auto& s : specs) total += s.numel;

  // The CPU step.
  Tensors cpu;
  alloc_like(cpu, init, specs);
  std::vector<fl::LionTensor> lt_cpu;
  Scalars sc_cpu;
  fl::LionStepParams pc = make_params(c, cpu, specs, lt_cpu, sc_cpu);
  std::vector<uint64_t> ws_cpu(specs.size());
  pc.workspace = ws_cpu.data();
  pc.workspace_size = ws_cpu.size() * 8;
  const fastnorm::Status st = fl::step(pc);
  ASSERT_TRUE(st.ok()) << st.message();

  // The emulated CUDA step, with a tiny argument space (2 tensors per launch), 4 KB and 32 KB.
  const int depth = depth_of(c);
  const size_t tiny = fl::cuda::kArgHeaderBytes + 2 * (static_cast<size_t>(depth) * 8 + 16);
  for (size_t space : {tiny, fl::cuda::kArgSpaceSmall, fl::cuda::kArgSpaceLarge}) {
    SCOPED_TRACE("arg space " + std::to_string(space));
    Tensors emu;
    alloc_like(emu, init, specs);
    std::vector<fl::LionTensor> lt;
    Scalars sc;
    fl::LionStepParams pe = make_params(c, emu, specs, lt, sc);
    std::vector<uint64_t> ws(specs.size(), 0xdeadbeefull);
    pe.workspace = ws.data();
    pe.workspace_size = ws.size() * 8;
    ASSERT_TRUE(fl::validate(pe).ok());
    const int64_t nl = emulate_any(c, pe, space);
    if (space == tiny) EXPECT_GE(nl, 8);
    else EXPECT_EQ(nl, 1);

    int64_t bad_p = 0, bad_m = 0, bad_w = 0, changed = 0;
    for (size_t i = 0; i < specs.size(); ++i) {
      for (int64_t e = 0; e < specs[i].numel; ++e) {
        if (!emu.p[i].same(cpu.p[i], e)) {
          if (bad_p++ < 5)
            ADD_FAILURE() << "param[" << i << "][" << e << "]: emulated " << emu.p[i].get(e) << ", cpu " << cpu.p[i].get(e);
        }
        if (!emu.m[i].same(cpu.m[i], e)) {
          if (bad_m++ < 5)
            ADD_FAILURE() << "exp_avg[" << i << "][" << e << "]: emulated " << emu.m[i].get(e) << ", cpu " << cpu.m[i].get(e);
        }
        if (c.master && !emu.w[i].same(cpu.w[i], e)) {
          if (bad_w++ < 5)
            ADD_FAILURE() << "master[" << i << "][" << e << "]: emulated " << emu.w[i].get(e) << ", cpu " << cpu.w[i].get(e);
        }
        if (!emu.m[i].same(init.m[i], e)) ++changed;
      }
    }
    EXPECT_EQ(bad_p, 0);
    EXPECT_EQ(bad_m, 0);
    EXPECT_EQ(bad_w, 0);
    // The step did something (or, under found_inf, nothing at all).
    if (c.found_inf) EXPECT_EQ(changed, 0);
    else EXPECT_GT(changed, total / 2);
  }
}

Config cfg(const std::string& name, DType P, DType S) {
  Config c;
  c.name = name;
  c.P = P;
  c.S = S;
  return c;
}

TEST(LionCudaEmulation, Float32) { check_config(cfg("f32", DType::Float32, DType::Float32), default_specs()); }

TEST(LionCudaEmulation, Float32SpecialsTorchNan) {
  Config c = cfg("f32 specials torch-nan", DType::Float32, DType::Float32);
  c.specials = true;
  c.nan = fl::NanPolicy::Torch;
  check_config(c, default_specs());
  c.name = "f32 specials propagate";
  c.nan = fl::NanPolicy::Propagate;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, Float64GradScaleMaximize) {
  Config c = cfg("f64 grad_scale maximize", DType::Float64, DType::Float64);
  c.grad_scale = true;
  c.maximize = true;
  c.k = 2;
  c.decay_ref = 3e-2;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, Bf16) {
  Config c = cfg("bf16/bf16 k=0", DType::BFloat16, DType::BFloat16);
  c.k = 0;
  c.wd = 1e-3;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, Bf16Float32StateCautious) {
  Config c = cfg("bf16/f32 cautious", DType::BFloat16, DType::Float32);
  c.cautious = true;
  check_config(c, default_specs());
  c.name = "bf16/f32 cautious min_frac 0.9 specials";
  c.min_frac = 0.9;
  c.specials = true;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, Float16DeviceLr) {
  Config c = cfg("f16/f16 bf16 lr tensor", DType::Float16, DType::Float16);
  c.lr_device = true;
  c.lr_dtype = DType::BFloat16;
  check_config(c, default_specs());
  c = cfg("f16/f32 f16 lr tensor maximize", DType::Float16, DType::Float32);
  c.lr_device = true;
  c.lr_dtype = DType::Float16;
  c.maximize = true;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, MasterWeights) {
  Config c = cfg("bf16/f32 master cautious grad_scale", DType::BFloat16, DType::Float32);
  c.master = true;
  c.cautious = true;
  c.grad_scale = true;
  check_config(c, default_specs());
  c = cfg("f16/f32 master f64 lr tensor", DType::Float16, DType::Float32);
  c.master = true;
  c.lr_device = true;
  c.lr_dtype = DType::Float64;
  c.lr = 3e-3;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, StochasticRounding) {
  Config c = cfg("bf16/bf16 sr", DType::BFloat16, DType::BFloat16);
  c.sr = true;
  c.lr = 1e-4;  // steps below half an ulp for most weights: only SR moves them
  check_config(c, default_specs());
  c = cfg("bf16/f32 sr sr_step tensor cautious maximize", DType::BFloat16, DType::Float32);
  c.sr = true;
  c.sr_step_device = true;
  c.cautious = true;
  c.maximize = true;
  c.grad_scale = true;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, Float32CautiousDeviceLr) {
  Config c = cfg("f32 cautious f32 lr tensor k=2", DType::Float32, DType::Float32);
  c.cautious = true;
  c.lr_device = true;
  c.k = 2;
  c.decay_ref = 1e-2;
  check_config(c, default_specs());
}

TEST(LionCudaEmulation, FoundInfWritesNothing) {
  Config c = cfg("bf16/f32 master found_inf", DType::BFloat16, DType::Float32);
  c.master = true;
  c.found_inf = true;
  c.cautious = true;
  check_config(c, default_specs());
}

// Many small tensors: several launches at 4 KB and the capacity choice (16, 4 KB max, 32 KB max).
TEST(LionCudaEmulation, ManyTensors) {
  std::vector<Spec> specs;
  for (int i = 0; i < 200; ++i) specs.push_back({(i * 37) % 300, i % 7 == 3 ? 1 : 0});
  Config c = cfg("f32 200 tensors", DType::Float32, DType::Float32);
  const Tensors init = make_inputs(c, specs, 99u);
  Tensors cpu;
  alloc_like(cpu, init, specs);
  std::vector<fl::LionTensor> lt_cpu;
  Scalars sc_cpu;
  fl::LionStepParams pc = make_params(c, cpu, specs, lt_cpu, sc_cpu);
  ASSERT_TRUE(fl::step(pc).ok());
  for (size_t space : {fl::cuda::kArgSpaceSmall, fl::cuda::kArgSpaceLarge}) {
    Tensors emu;
    alloc_like(emu, init, specs);
    std::vector<fl::LionTensor> lt;
    Scalars sc;
    fl::LionStepParams pe = make_params(c, emu, specs, lt, sc);
    const int64_t nl = emulate_any(c, pe, space);
    EXPECT_EQ(nl, space == fl::cuda::kArgSpaceSmall ? 3 : 1);
    for (size_t i = 0; i < specs.size(); ++i)
      for (int64_t e = 0; e < specs[i].numel; ++e) {
        ASSERT_TRUE(emu.p[i].same(cpu.p[i], e)) << "space " << space << " param[" << i << "][" << e << "]";
        ASSERT_TRUE(emu.m[i].same(cpu.m[i], e)) << "space " << space << " exp_avg[" << i << "][" << e << "]";
      }
  }
}

TEST(LionCudaEmulation, ArgumentStructs) {
  using fk::Caps;
  EXPECT_EQ(Caps<3>::kSmall, fl::cuda::tensors_per_launch(3, fl::cuda::kArgSpaceSmall));
  EXPECT_EQ(Caps<4>::kSmall, fl::cuda::tensors_per_launch(4, fl::cuda::kArgSpaceSmall));
  EXPECT_EQ(Caps<3>::kLarge, fl::cuda::tensors_per_launch(3, fl::cuda::kArgSpaceLarge));
  EXPECT_EQ(Caps<4>::kLarge, fl::cuda::tensors_per_launch(4, fl::cuda::kArgSpaceLarge));
  EXPECT_LE(sizeof(fk::LionArgs<float, 3, Caps<3>::kSmall>), fl::cuda::kArgSpaceSmall);
  EXPECT_LE(sizeof(fk::LionArgs<double, 4, Caps<4>::kSmall>), fl::cuda::kArgSpaceSmall);
  EXPECT_LE(sizeof(fk::LionArgs<double, 3, Caps<3>::kLarge>), fl::cuda::kArgSpaceLarge);
  EXPECT_LE(sizeof(fk::LionArgs<float, 4, Caps<4>::kLarge>), fl::cuda::kArgSpaceLarge);
  using Args = fk::LionArgs<double, 3, 16>;
  EXPECT_EQ(offsetof(Args, ptr), fl::cuda::kArgHeaderBytes);
}

}  // namespace
