// GoogleTest tests of the norm family's CPU core (specs/norm.md §2.5, §3.1-3.3, §5, §6 item 17).
//
// Every kernel result is compared with a naive double-precision loop written here from the spec, on
// the very values the kernel reads (16-bit inputs are generated already rounded). Tolerances model the
// kernel's fp32 (or fp64) arithmetic: element error <= K * eps * (sum of the magnitudes that enter the
// element), so a wrong formula, a wrong rounding point or a missed row fails by orders of magnitude.
// 16-bit outputs must lie within 1 ulp of the correctly rounded reference (the fp32 bound only takes
// over where the reference is so small that fp32 noise exceeds a 16-bit ulp).
//
// Outputs are poisoned with NaN and followed by guard bytes, so unwritten elements and writes past the
// end both fail. Gaps between strided rows hold NaN, so reading outside a row fails too.
#include <gtest/gtest.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm.h"

namespace fastnorm_test {
// Independent IEEE reference for the 16-bit formats; defined and tested in test_dtype.cpp.
double round_ref(double v, fastnorm::DType t);
double decode_ref(uint16_t bits, fastnorm::DType t);
uint16_t encode_ref(double exact, fastnorm::DType t);

namespace {
using fastnorm::DType;
using fastnorm::Status;
using fastnorm::StatusCode;
using fastnorm::norm::Casting;
using fastnorm::norm::LayerNormBwdParams;
using fastnorm::norm::LayerNormParams;
using fastnorm::norm::RMSNormBwdParams;
using fastnorm::norm::RMSNormParams;
namespace fn = fastnorm::norm;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

bool is16(DType t) { return t == DType::BFloat16 || t == DType::Float16; }
DType stat_dtype(DType x) { return x == DType::Float64 ? DType::Float64 : DType::Float32; }
// Unit of the kernel's arithmetic: fp32 everywhere except float64 inputs.
double acc_eps(DType x) { return x == DType::Float64 ? 0x1p-52 : 0x1p-23; }
// Error-bound multiplier: covers sums of a few thousand terms in SIMD order with room to spare, while a
// wrong formula is off by a factor of ~1e4 (fp32) or ~1e12 (fp64) more.
constexpr double kK = 32;
std::string name(DType t) { return fastnorm::dtype_name(t); }

// ---- a typed host buffer --------------------------------------------------------------------------
// Elements are poisoned with NaN on creation; kGuard bytes after the end hold a pattern that must
// survive. `misalign` shifts the data by one element from the allocation's alignment.
class Buf {
 public:
  static constexpr size_t kGuard = 64;
  Buf() = default;
  Buf(DType t, int64_t n, int misalign = 0)
      : t_(t), n_(n), off_(static_cast<size_t>(misalign) * elt()),
        bytes_(static_cast<size_t>(n) * elt() + off_ + kGuard, 0xA5) {
    for (int64_t i = 0; i < n; ++i) set(i, kNaN);
  }
  DType dtype() const { return t_; }
  int64_t size() const { return n_; }
  size_t elt() const { return fastnorm::dtype_size(t_); }
  void* data() { return bytes_.data() + off_; }
  const void* data() const { return bytes_.data() + off_; }
  // The exact value of element i.
  double get(int64_t i) const {
    const unsigned char* p = bytes_.data() + off_ + static_cast<size_t>(i) * elt();
    switch (t_) {
      case DType::Float32: { float f; std::memcpy(&f, p, 4); return f; }
      case DType::Float64: { double d; std::memcpy(&d, p, 8); return d; }
      default: { uint16_t b; std::memcpy(&b, p, 2); return decode_ref(b, t_); }
    }
  }
  uint16_t bits16(int64_t i) const {
    uint16_t b;
    std::memcpy(&b, bytes_.data() + off_ + static_cast<size_t>(i) * elt(), 2);
    return b;
  }
  // Stores v correctly rounded to the buffer's dtype.
  void set(int64_t i, double v) {
    unsigned char* p = bytes_.data() + off_ + static_cast<size_t>(i) * elt();
    switch (t_) {
      case DType::Float32: { const float f = static_cast<float>(v); std::memcpy(p, &f, 4); break; }
      case DType::Float64: std::memcpy(p, &v, 8); break;
      default: { const uint16_t b = encode_ref(round_ref(v, t_), t_); std::memcpy(p, &b, 2); break; }
    }
  }
  bool guard_intact() const {
    return std::all_of(bytes_.end() - kGuard, bytes_.end(), [](unsigned char c) { return c == 0xA5; });
  }
  bool same_bytes(const Buf& o) const { return bytes_ == o.bytes_; }

 private:
  DType t_ = DType::Float32;
  int64_t n_ = 0;
  size_t off_ = 0;
  std::vector<unsigned char> bytes_;
};

using Rng = std::mt19937_64;
double uniform(Rng& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

// rows x cols values center + spread*U(-1,1), rows `stride` apart; the gaps between rows hold NaN.
Buf random_rows(DType t, int64_t rows, int64_t cols, int64_t stride, Rng& rng, double center, double spread,
                int misalign = 0) {
  Buf b(t, rows == 0 ? 0 : (rows - 1) * stride + cols, misalign);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) b.set(r * stride + i, center + spread * uniform(rng, -1, 1));
  return b;
}
Buf random_vec(DType t, int64_t n, Rng& rng, double center, double spread) {
  return random_rows(t, 1, n, n, rng, center, spread);
}

// Element i of an optional vector as a double, with the given default when absent.
double opt(const Buf* b, int64_t i, double dflt) { return b ? b->get(i) : dflt; }

// ---- comparison -----------------------------------------------------------------------------------
// Position of a 16-bit pattern on the number line, so that neighbours differ by 1 (+0 and -0 coincide).
int32_t ordinal16(uint16_t b) { return (b & 0x8000u) ? -static_cast<int32_t>(b & 0x7FFFu) : static_cast<int32_t>(b); }

struct Compare {
  int64_t exact = 0, total = 0;
  double exact_fraction() const { return total ? static_cast<double>(exact) / total : 1.0; }
};

// got[i] against ref[i] for i < ref.size(), with the computation's error bound tol[i]:
//   f32/f64 outputs: |got - ref| <= tol + half an ulp of the output;
//   16-bit outputs:  got within 1 ulp of round(ref), or |got - ref| <= tol (only matters near zero).
// NaN and infinite references must be matched exactly. `exact` counts got == round(ref).
::testing::AssertionResult close(const char* what, const Buf& got, const std::vector<double>& ref,
                                 const std::vector<double>& tol, Compare* stats = nullptr) {
  Compare c;
  std::ostringstream err;
  int bad = 0;
  const DType t = got.dtype();
  const double half_ulp = t == DType::Float64 ? 0x1p-53 : 0x1p-24;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got.get(static_cast<int64_t>(i)), r = ref[i];
    const double rr = round_ref(r, t);
    bool ok;
    if (std::isnan(r) || std::isinf(rr)) {
      ok = std::isnan(r) ? std::isnan(g) : g == rr;
    } else if (is16(t)) {
      const bool within_ulp = !std::isnan(g) &&
          std::abs(ordinal16(got.bits16(static_cast<int64_t>(i))) - ordinal16(encode_ref(rr, t))) <= 1;
      ok = within_ulp || std::fabs(g - r) <= tol[i];
    } else {
      ok = std::fabs(g - r) <= tol[i] + std::fabs(r) * half_ulp;
    }
    c.total++;
    if (g == rr || (std::isnan(g) && std::isnan(rr))) c.exact++;
    if (!ok && bad++ < 5)
      err << "\n  " << what << "[" << i << "] = " << g << ", reference " << r << " (rounded " << rr
          << "), tolerance " << tol[i];
  }
  if (stats) *stats = c;
  if (!got.guard_intact()) return ::testing::AssertionFailure() << what << ": write past the end of the buffer";
  if (bad) return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size() << " elements off" << err.str();
  return ::testing::AssertionSuccess();
}

// got[i] == ref[i] exactly (NaN matches NaN): for results the spec fixes to the bit, where ref holds
// values already representable in got's dtype.
::testing::AssertionResult identical(const char* what, const Buf& got, const std::vector<double>& ref) {
  std::ostringstream err;
  int bad = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double g = got.get(static_cast<int64_t>(i));
    const bool ok = g == ref[i] || (std::isnan(g) && std::isnan(ref[i]));
    if (!ok && bad++ < 5) err << "\n  " << what << "[" << i << "] = " << g << ", expected exactly " << ref[i];
  }
  if (!got.guard_intact()) return ::testing::AssertionFailure() << what << ": write past the end of the buffer";
  if (bad) return ::testing::AssertionFailure() << what << ": " << bad << " of " << ref.size() << " elements differ" << err.str();
  return ::testing::AssertionSuccess();
}

// ---- naive double-precision references ------------------------------------------------------------
// The rows a norm sees: x itself, or in add & norm the sum s = x + residual formed in the accumulation
// type and rounded to the residual_out dtype (spec §3.3). Returned contiguous.
std::vector<double> norm_input(const Buf& x, int64_t xs, const Buf* res, int64_t rs, bool add, DType res_out,
                               int64_t rows, int64_t cols) {
  std::vector<double> s(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) {
      const double xv = x.get(r * xs + i);
      double v = xv;
      if (add) {
        const double rv = res ? res->get(r * rs + i) : 0.0;
        // fp32 sum of the two stored values (f64 for f64 x), then the one rounding to residual_out's dtype.
        v = x.dtype() == DType::Float64 ? xv + rv
                                        : static_cast<double>(static_cast<float>(xv) + static_cast<float>(rv));
        v = round_ref(v, res_out);
      }
      s[static_cast<size_t>(r * cols + i)] = v;
    }
  return s;
}

struct FwdRef {
  std::vector<double> y, ytol, mean, mean_tol, rstd, rstd_tol;
};

// LayerNorm (spec §3.1): two-pass moments in double.
FwdRef ln_fwd_ref(const std::vector<double>& x, int64_t rows, int64_t cols, const Buf* w, const Buf* b,
                  double eps, double unit) {
  FwdRef o;
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[static_cast<size_t>(r * cols)];
    double mu = 0, mabs = 0, var = 0;
    for (int64_t i = 0; i < cols; ++i) { mu += xr[i]; mabs += std::fabs(xr[i]); }
    mu /= cols;
    mabs /= cols;
    for (int64_t i = 0; i < cols; ++i) var += (xr[i] - mu) * (xr[i] - mu);
    var /= cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    o.mean.push_back(mu);
    // x2: for f64 the double reference's own sum carries an error of the same order.
    o.mean_tol.push_back(2 * kK * unit * mabs);
    o.rstd.push_back(rs);
    o.rstd_tol.push_back(kK * unit * rs * (1 + mabs * rs));  // the fp32 mean's error, amplified by 1/sigma
    for (int64_t i = 0; i < cols; ++i) {
      const double g = opt(w, i, 1), be = opt(b, i, 0);
      const double y = (xr[i] - mu) * rs * g + be;
      o.y.push_back(y);
      o.ytol.push_back(kK * unit * ((std::fabs(xr[i]) + mabs) * rs * std::fabs(g) + std::fabs(be) + std::fabs(y)));
    }
  }
  return o;
}

// RMSNorm in exact arithmetic (spec §3.2; the `gemma` rule and every rule for f32/f64 inputs).
FwdRef rms_fwd_ref(const std::vector<double>& x, int64_t rows, int64_t cols, const Buf* w, const Buf* b,
                   double eps, double offset, double unit) {
  FwdRef o;
  for (int64_t r = 0; r < rows; ++r) {
    const double* xr = &x[static_cast<size_t>(r * cols)];
    double ss = 0;
    for (int64_t i = 0; i < cols; ++i) ss += xr[i] * xr[i];
    const double rs = 1.0 / std::sqrt(ss / cols + eps);
    o.rstd.push_back(rs);
    o.rstd_tol.push_back(kK * unit * rs);
    for (int64_t i = 0; i < cols; ++i) {
      const double ge = (w ? w->get(i) + offset : 1.0), be = opt(b, i, 0);
      const double y = xr[i] * rs * ge + be;
      o.y.push_back(y);
      o.ytol.push_back(kK * unit * (std::fabs(xr[i]) * rs * std::fabs(ge) + std::fabs(be) + std::fabs(y)));
    }
  }
  return o;
}

struct BwdRef {
  std::vector<double> dx, dxtol, dw, dwtol, db, dbtol;
};

// Backward of LN (has_mean) or RMS from the given statistics (spec §3.1, §3.2), plus dresidual_out
// added after the norm backward (spec §3.3).
BwdRef norm_bwd_ref(bool layer, const Buf& dy, int64_t dys, const std::vector<double>& x, const Buf* mean,
                    const Buf& rstd, const Buf* w, double offset, const Buf* dres, int64_t drs, int64_t rows,
                    int64_t cols, double unit) {
  BwdRef o;
  o.dw.assign(static_cast<size_t>(cols), 0.0);
  o.dwtol.assign(static_cast<size_t>(cols), 0.0);
  o.db.assign(static_cast<size_t>(cols), 0.0);
  o.dbtol.assign(static_cast<size_t>(cols), 0.0);
  std::vector<double> g(static_cast<size_t>(cols)), xh(static_cast<size_t>(cols)), a(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    const double mu = layer ? mean->get(r) : 0.0, rs = rstd.get(r);
    double sg = 0, sgx = 0, sga = 0, sgabs = 0;
    for (int64_t i = 0; i < cols; ++i) {
      const double xv = x[static_cast<size_t>(r * cols + i)], d = dy.get(r * dys + i);
      g[i] = d * (w ? w->get(i) + offset : 1.0);
      xh[i] = (xv - mu) * rs;
      a[i] = (std::fabs(xv) + std::fabs(mu)) * rs;  // what the fp32 xhat's error scales with
      sg += g[i];
      sgx += g[i] * xh[i];
      sgabs += std::fabs(g[i]);
      sga += std::fabs(g[i]) * a[i];
      o.dw[i] += d * xh[i];
      o.dwtol[i] += kK * unit * std::fabs(d) * a[i];
      o.db[i] += d;
      o.dbtol[i] += kK * unit * std::fabs(d);
    }
    const double mg = layer ? sg / cols : 0.0, mgx = sgx / cols;
    for (int64_t i = 0; i < cols; ++i) {
      const double dr = dres ? dres->get(r * drs + i) : 0.0;
      const double v = rs * (g[i] - mg - xh[i] * mgx) + dr;
      o.dx.push_back(v);
      o.dxtol.push_back(kK * unit * (rs * (std::fabs(g[i]) + (layer ? sgabs / cols : 0.0) + 2 * a[i] * sga / cols) +
                                     std::fabs(dr) + std::fabs(v)));
    }
  }
  return o;
}

// Statistics as the backward receives them: the reference values stored in the stats dtype.
Buf stats_buf(const std::vector<double>& v, DType t) {
  Buf b(t, static_cast<int64_t>(v.size()));
  for (size_t i = 0; i < v.size(); ++i) b.set(static_cast<int64_t>(i), v[i]);
  return b;
}

// ---- forward / backward over dtypes, shapes, strides, affine and add & norm ------------------------
struct Config {
  DType x, w, y;
  int64_t rows, cols, pad;  // pad: extra elements between rows (x_stride = cols + pad)
  bool weight, bias;
  int add;                  // 0 plain, 1 add with residual, 2 add without residual (s = x)
  bool res_out_f32;         // residual_out float32 (residual_in_fp32) instead of x's dtype
  bool res_in_f32 = false;  // the residual input itself is float32 (then residual_out is too)
};

std::string config_name(const Config& c) {
  std::ostringstream s;
  s << name(c.x) << "_w" << name(c.w) << "_y" << name(c.y) << "_M" << c.rows << "_N" << c.cols << "_pad" << c.pad
    << (c.weight ? "_W" : "") << (c.bias ? "_B" : "") << (c.add == 1 ? "_add" : c.add == 2 ? "_addnores" : "")
    << (c.add && c.res_out_f32 ? "_resoutf32" : "") << (c.add && c.res_in_f32 ? "_resinf32" : "");
  return s.str();
}

std::vector<Config> configs() {
  std::vector<Config> v;
  const DType f32 = DType::Float32, f64 = DType::Float64, bf = DType::BFloat16, h = DType::Float16;
  // (x, w, y) combinations the spec allows: same dtype, 16-bit x with f32 weight, an f32 out_dtype.
  const DType combos[][3] = {{f32, f32, f32}, {f64, f64, f64}, {bf, bf, bf}, {h, h, h},
                             {bf, f32, bf},   {h, f32, h},     {bf, bf, f32}, {f32, bf, f32}, {f64, f32, f64}};
  for (const auto& c : combos)
    for (int64_t n : {1, 7, 127, 4095}) v.push_back({c[0], c[1], c[2], n == 4095 ? 5 : 70, n, 3, true, true, 0, false});
  // Affine variations and add & norm on a mid-size shape, strided.
  for (DType x : {f32, bf, h, f64}) {
    const DType w = x;
    v.push_back({x, w, x, 33, 255, 0, false, false, 0, false});
    v.push_back({x, w, x, 33, 255, 0, true, false, 0, false});
    v.push_back({x, w, x, 33, 255, 17, true, true, 1, false});
    v.push_back({x, w, x, 33, 255, 17, true, true, 2, false});
    if (x != f64) v.push_back({x, w, x, 33, 255, 17, true, true, 1, true});
    if (is16(x)) v.push_back({x, w, x, 33, 255, 17, true, true, 1, true, true});
  }
  return v;
}

class NormCase : public ::testing::TestWithParam<Config> {
 protected:
  void SetUp() override {
    const Config& c = GetParam();
    Rng rng(std::hash<std::string>()(config_name(c)));
    xs = c.cols + c.pad;
    // A mean of 2 with spread 1 makes the two-pass variance matter.
    x = random_rows(c.x, c.rows, c.cols, xs, rng, 2.0, 1.0);
    res_in_dt = c.res_in_f32 ? DType::Float32 : c.x;
    if (c.add == 1) res = random_rows(res_in_dt, c.rows, c.cols, xs + 5, rng, -0.5, 1.0);
    res_dt = c.res_out_f32 ? DType::Float32 : c.x;
    if (c.weight) w = random_vec(c.w, c.cols, rng, 1.0, 0.5);
    if (c.bias) b = random_vec(c.w, c.cols, rng, 0.0, 0.3);
    dy = random_rows(c.y, c.rows, c.cols, xs + 2, rng, 0.0, 1.0);
    if (c.add) dres = random_rows(res_dt, c.rows, c.cols, xs + 1, rng, 0.0, 1.0);
    in = norm_input(x, xs, c.add == 1 ? &res : nullptr, xs + 5, c.add != 0, res_dt, c.rows, c.cols);
  }
  const Buf* wp() const { return GetParam().weight ? &w : nullptr; }
  const Buf* bp() const { return GetParam().bias ? &b : nullptr; }
  double unit() const { return acc_eps(GetParam().x); }
  // The stored s (add mode) or x: the tensor the backward receives.
  Buf saved_input(int64_t* stride, DType* dt) const {
    const Config& c = GetParam();
    *dt = c.add ? res_dt : c.x;
    *stride = c.cols;
    Buf s(*dt, c.rows * c.cols);
    for (size_t i = 0; i < in.size(); ++i) s.set(static_cast<int64_t>(i), in[i]);
    return s;
  }

  int64_t xs = 0;
  Buf x, res, w, b, dy, dres;
  DType res_dt = DType::Float32, res_in_dt = DType::Float32;
  std::vector<double> in;
};

TEST_P(NormCase, LayerNormForward) {
  const Config& c = GetParam();
  const DType st = stat_dtype(c.x);
  Buf y(c.y, c.rows * c.cols), mean(st, c.rows), rstd(st, c.rows), rout(res_dt, c.rows * c.cols);
  const Buf x_before = x;
  LayerNormParams p;
  p.rows = c.rows; p.cols = c.cols;
  p.x = x.data(); p.x_stride = xs; p.x_dtype = c.x;
  if (c.add == 1) { p.residual = res.data(); p.residual_stride = xs + 5; p.residual_dtype = res_in_dt; }
  if (c.add) { p.residual_out = rout.data(); p.residual_out_dtype = res_dt; }
  p.weight = wp() ? w.data() : nullptr; p.bias = bp() ? b.data() : nullptr; p.w_dtype = c.w;
  p.y = y.data(); p.y_dtype = c.y;
  p.mean = mean.data(); p.rstd = rstd.data();
  p.eps = 1e-5;
  const Status s = fn::layer_norm_fwd(p);
  ASSERT_TRUE(s.ok()) << s.message();

  const FwdRef r = ln_fwd_ref(in, c.rows, c.cols, wp(), bp(), p.eps, unit());
  Compare cy;
  EXPECT_TRUE(close("y", y, r.y, r.ytol, &cy));
  EXPECT_TRUE(close("mean", mean, r.mean, r.mean_tol));
  EXPECT_TRUE(close("rstd", rstd, r.rstd, r.rstd_tol));
  // Most 16-bit outputs are exactly the correctly rounded value; the 1-ulp slack is for near-ties.
  if (is16(c.y) && c.cols > 1) { EXPECT_GE(cy.exact_fraction(), 0.99); }
  if (c.add) {
    // residual_out is s rounded once: bitwise.
    EXPECT_TRUE(identical("residual_out", rout, in));
  }
  if (c.cols == 1) {
    // A single element is its own mean: y = beta exactly.
    for (int64_t i = 0; i < c.rows; ++i) EXPECT_EQ(y.get(i), round_ref(opt(bp(), 0, 0), c.y)) << "row " << i;
  }
  EXPECT_TRUE(x.same_bytes(x_before)) << "the forward wrote into x";
}

TEST_P(NormCase, LayerNormBackward) {
  const Config& c = GetParam();
  const DType st = stat_dtype(c.x);
  const FwdRef f = ln_fwd_ref(in, c.rows, c.cols, wp(), bp(), 1e-5, unit());
  const Buf mean = stats_buf(f.mean, st), rstd = stats_buf(f.rstd, st);
  int64_t ss;
  DType sdt;
  const Buf s = saved_input(&ss, &sdt);
  const DType dx_dt = sdt;  // dx (or ds) comes back in the saved input's dtype
  Buf dx(dx_dt, c.rows * c.cols), dw(c.w, c.cols), db(c.w, c.cols);
  const Buf dy_before = dy, dres_before = dres, s_before = s;
  LayerNormBwdParams p;
  p.rows = c.rows; p.cols = c.cols;
  p.dy = dy.data(); p.dy_stride = xs + 2; p.dy_dtype = c.y;
  p.x = s.data(); p.x_stride = ss; p.x_dtype = sdt;
  if (c.add) { p.dresidual_out = dres.data(); p.dresidual_out_stride = xs + 1; p.dresidual_out_dtype = res_dt; }
  p.mean = mean.data(); p.rstd = rstd.data();
  p.weight = wp() ? w.data() : nullptr; p.w_dtype = c.w;
  p.dx = dx.data(); p.dx_dtype = dx_dt;
  if (c.weight) p.dweight = dw.data();
  if (c.bias) p.dbias = db.data();
  std::vector<unsigned char> ws(fn::layer_norm_bwd_workspace_bytes(p) + Buf::kGuard, 0xA5);
  p.workspace = ws.data();
  const Status st_ = fn::layer_norm_bwd(p);
  ASSERT_TRUE(st_.ok()) << st_.message();

  const BwdRef r = norm_bwd_ref(true, dy, xs + 2, in, &mean, rstd, wp(), 0.0, c.add ? &dres : nullptr, xs + 1,
                                c.rows, c.cols, unit());
  EXPECT_TRUE(close("dx", dx, r.dx, r.dxtol));
  if (c.weight) { EXPECT_TRUE(close("dweight", dw, r.dw, r.dwtol)); }
  if (c.bias) { EXPECT_TRUE(close("dbias", db, r.db, r.dbtol)); }
  if (c.cols == 1 && !c.add) {
    for (int64_t i = 0; i < c.rows; ++i) EXPECT_EQ(dx.get(i), 0.0) << "N = 1 gives dx = 0, row " << i;
  }
  EXPECT_TRUE(std::all_of(ws.end() - Buf::kGuard, ws.end(), [](unsigned char v) { return v == 0xA5; }))
      << "the backward wrote past the workspace size it asked for";
  // The kernel never writes into its inputs (Liger #370).
  EXPECT_TRUE(dy.same_bytes(dy_before));
  EXPECT_TRUE(dres.same_bytes(dres_before));
  EXPECT_TRUE(s.same_bytes(s_before));
}

TEST_P(NormCase, RMSNormForward) {
  const Config& c = GetParam();
  const DType st = stat_dtype(c.x);
  Buf y(c.y, c.rows * c.cols), rstd(st, c.rows), rout(res_dt, c.rows * c.cols);
  RMSNormParams p;
  p.rows = c.rows; p.cols = c.cols;
  p.x = x.data(); p.x_stride = xs; p.x_dtype = c.x;
  if (c.add == 1) { p.residual = res.data(); p.residual_stride = xs + 5; p.residual_dtype = res_in_dt; }
  if (c.add) { p.residual_out = rout.data(); p.residual_out_dtype = res_dt; }
  p.weight = wp() ? w.data() : nullptr; p.bias = bp() ? b.data() : nullptr; p.w_dtype = c.w;
  p.y = y.data(); p.y_dtype = c.y;
  p.rstd = rstd.data();
  p.eps = 1e-6;
  p.casting = Casting::Gemma;
  const Status s = fn::rms_norm_fwd(p);
  ASSERT_TRUE(s.ok()) << s.message();

  const FwdRef r = rms_fwd_ref(in, c.rows, c.cols, wp(), bp(), p.eps, 0.0, unit());
  Compare cy;
  EXPECT_TRUE(close("y", y, r.y, r.ytol, &cy));
  EXPECT_TRUE(close("rstd", rstd, r.rstd, r.rstd_tol));
  if (is16(c.y)) { EXPECT_GE(cy.exact_fraction(), 0.99); }
  if (c.add) { EXPECT_TRUE(identical("residual_out", rout, in)); }
}

TEST_P(NormCase, RMSNormBackward) {
  const Config& c = GetParam();
  const DType st = stat_dtype(c.x);
  const FwdRef f = rms_fwd_ref(in, c.rows, c.cols, wp(), bp(), 1e-6, 0.0, unit());
  const Buf rstd = stats_buf(f.rstd, st);
  int64_t ss;
  DType sdt;
  const Buf s = saved_input(&ss, &sdt);
  Buf dx(sdt, c.rows * c.cols), dw(c.w, c.cols), db(c.w, c.cols);
  const Buf dy_before = dy;
  RMSNormBwdParams p;
  p.rows = c.rows; p.cols = c.cols;
  p.dy = dy.data(); p.dy_stride = xs + 2; p.dy_dtype = c.y;
  p.x = s.data(); p.x_stride = ss; p.x_dtype = sdt;
  if (c.add) { p.dresidual_out = dres.data(); p.dresidual_out_stride = xs + 1; p.dresidual_out_dtype = res_dt; }
  p.rstd = rstd.data();
  p.weight = wp() ? w.data() : nullptr; p.w_dtype = c.w;
  p.y_dtype = c.y;
  p.dx = dx.data(); p.dx_dtype = sdt;
  if (c.weight) p.dweight = dw.data();
  if (c.bias) p.dbias = db.data();
  p.casting = Casting::Gemma;
  std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(p) + Buf::kGuard, 0xA5);
  p.workspace = ws.data();
  const Status st_ = fn::rms_norm_bwd(p);
  ASSERT_TRUE(st_.ok()) << st_.message();

  const BwdRef r = norm_bwd_ref(false, dy, xs + 2, in, nullptr, rstd, wp(), 0.0, c.add ? &dres : nullptr, xs + 1,
                                c.rows, c.cols, unit());
  EXPECT_TRUE(close("dx", dx, r.dx, r.dxtol));
  if (c.weight) { EXPECT_TRUE(close("dweight", dw, r.dw, r.dwtol)); }
  if (c.bias) { EXPECT_TRUE(close("dbias", db, r.db, r.dbtol)); }
  EXPECT_TRUE(std::all_of(ws.end() - Buf::kGuard, ws.end(), [](unsigned char v) { return v == 0xA5; }));
  EXPECT_TRUE(dy.same_bytes(dy_before));
}

INSTANTIATE_TEST_SUITE_P(Norm, NormCase, ::testing::ValuesIn(configs()),
                         [](const auto& info) { return config_name(info.param); });

// ---- RMSNorm casting modes on 16-bit inputs (spec §3.2) -------------------------------------------
// A naive implementation of each rule, in float where the spec says fp32 and with round_ref at exactly
// the spec's rounding points. The kernel's saved rstd is checked against the exact value and then fed
// to the naive forward, so the elementwise rounding points can be compared bitwise.
float rho(DType t, double v) { return static_cast<float>(round_ref(v, t)); }

struct CastConfig {
  DType x, w, y;
  Casting casting;
  double offset;
  bool bias;
};

std::string cast_name(const CastConfig& c) {
  const char* m = c.casting == Casting::Llama ? "llama" : c.casting == Casting::Gemma ? "gemma" : "none";
  return std::string(m) + "_x" + name(c.x) + "_w" + name(c.w) + "_y" + name(c.y) + (c.offset != 0 ? "_offset1" : "") +
         (c.bias ? "_bias" : "");
}

std::vector<CastConfig> cast_configs() {
  const DType f32 = DType::Float32, bf = DType::BFloat16, h = DType::Float16;
  std::vector<CastConfig> v;
  for (double off : {0.0, 1.0}) {
    // llama: O = promote(X, W): bf16 with bf16 weight stays bf16, with an f32 weight it is f32.
    v.push_back({bf, bf, bf, Casting::Llama, off, false});
    v.push_back({bf, f32, f32, Casting::Llama, off, false});
    v.push_back({h, f32, f32, Casting::Llama, off, false});
    v.push_back({bf, bf, bf, Casting::Gemma, off, false});
    v.push_back({bf, f32, bf, Casting::Gemma, off, false});
    v.push_back({bf, bf, bf, Casting::None, off, false});
    v.push_back({h, h, h, Casting::None, off, false});
  }
  v.push_back({bf, bf, bf, Casting::None, 0.0, true});
  v.push_back({bf, bf, bf, Casting::Llama, 0.0, true});
  return v;
}

class Casts : public ::testing::TestWithParam<CastConfig> {
 protected:
  static constexpr int64_t kRows = 24, kCols = 777, kStride = 800;
  void SetUp() override {
    const CastConfig& c = GetParam();
    Rng rng(std::hash<std::string>()(cast_name(c)));
    x = random_rows(c.x, kRows, kCols, kStride, rng, 0.3, 2.0);
    // Weights near 0 under offset 1 (Gemma stores w with gamma = 1 + w), near 1 otherwise.
    w = random_vec(c.w, kCols, rng, c.offset != 0 ? 0.0 : 1.0, 0.5);
    if (c.bias) b = random_vec(c.w, kCols, rng, 0.0, 0.2);
    dy = random_rows(c.y, kRows, kCols, kStride, rng, 0.0, 1.0);
  }
  Buf x, w, b, dy;
};

TEST_P(Casts, Forward) {
  const CastConfig& c = GetParam();
  Buf y(c.y, kRows * kCols), rstd(DType::Float32, kRows);
  RMSNormParams p;
  p.rows = kRows; p.cols = kCols;
  p.x = x.data(); p.x_stride = kStride; p.x_dtype = c.x;
  p.weight = w.data(); p.bias = c.bias ? b.data() : nullptr; p.w_dtype = c.w;
  p.y = y.data(); p.y_dtype = c.y;
  p.rstd = rstd.data();
  p.eps = 1e-6; p.offset = c.offset; p.casting = c.casting;
  const Status s = fn::rms_norm_fwd(p);
  ASSERT_TRUE(s.ok()) << s.message();

  const std::vector<double> xin = norm_input(x, kStride, nullptr, 0, false, c.x, kRows, kCols);
  const FwdRef exact = rms_fwd_ref(xin, kRows, kCols, &w, c.bias ? &b : nullptr, p.eps, c.offset, acc_eps(c.x));
  // Saved rstd: the fp32 value, rounded to X under `none`.
  for (int64_t r = 0; r < kRows; ++r) {
    const double got = rstd.get(r), want = exact.rstd[r];
    if (c.casting == Casting::None) {
      EXPECT_EQ(got, round_ref(got, c.x)) << "none saves rho_X(r), row " << r;
      EXPECT_LE(std::fabs(got - round_ref(want, c.x)), std::fabs(round_ref(want, c.x)) * 0x1p-7) << "row " << r;
    } else {
      EXPECT_NEAR(got, want, exact.rstd_tol[r]) << "row " << r;
    }
  }

  std::vector<double> naive;
  int64_t differs_from_gemma = 0;
  for (int64_t r = 0; r < kRows; ++r) {
    const float rs = static_cast<float>(rstd.get(r));
    for (int64_t i = 0; i < kCols; ++i) {
      const float xv = static_cast<float>(x.get(r * kStride + i));
      const float ge = static_cast<float>(w.get(i)) + static_cast<float>(c.offset);  // offset added in fp32
      const float be = c.bias ? static_cast<float>(b.get(i)) : 0.0f;
      double v;
      switch (c.casting) {
        case Casting::Llama: v = rho(c.y, rho(c.x, xv * rs) * ge + be); break;
        case Casting::None: v = rho(c.x, rho(c.x, xv * rs) * rho(c.x, ge) + be); break;
        default: v = rho(c.y, (xv * rs) * ge + be); break;
      }
      naive.push_back(v);
      if (round_ref(exact.y[static_cast<size_t>(r * kCols + i)], c.y) != v) differs_from_gemma++;
    }
  }
  if (c.casting == Casting::Gemma) {
    // One rounding of the fp32 product: within 1 ulp of the correctly rounded exact value.
    Compare cmp;
    EXPECT_TRUE(close("y", y, exact.y, exact.ytol, &cmp));
    EXPECT_GE(cmp.exact_fraction(), 0.99);
  } else {
    // Every llama/none output is one rounding of a product of already-rounded operands: bitwise.
    EXPECT_TRUE(identical("y", y, naive));
    // The data must be able to tell the rules apart, else the test above proves nothing.
    EXPECT_GT(differs_from_gemma, kRows * kCols / 100) << "llama/none rounding indistinguishable from gemma here";
  }
}

TEST_P(Casts, Backward) {
  const CastConfig& c = GetParam();
  // rstd as the forward would save it: exact fp32 r, rounded to X under `none`.
  const std::vector<double> xin = norm_input(x, kStride, nullptr, 0, false, c.x, kRows, kCols);
  const FwdRef exact = rms_fwd_ref(xin, kRows, kCols, &w, nullptr, 1e-6, c.offset, acc_eps(c.x));
  Buf rstd(DType::Float32, kRows);
  for (int64_t r = 0; r < kRows; ++r)
    rstd.set(r, c.casting == Casting::None ? round_ref(static_cast<float>(exact.rstd[r]), c.x) : exact.rstd[r]);
  Buf dx(c.x, kRows * kCols), dw(c.w, kCols), db(c.w, kCols);
  RMSNormBwdParams p;
  p.rows = kRows; p.cols = kCols;
  p.dy = dy.data(); p.dy_stride = kStride; p.dy_dtype = c.y;
  p.x = x.data(); p.x_stride = kStride; p.x_dtype = c.x;
  p.rstd = rstd.data();
  p.weight = w.data(); p.w_dtype = c.w; p.y_dtype = c.y;
  p.dx = dx.data(); p.dx_dtype = c.x;
  p.dweight = dw.data(); p.dbias = db.data();
  p.offset = c.offset; p.casting = c.casting;
  std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(p));
  p.workspace = ws.data();
  const Status s = fn::rms_norm_bwd(p);
  ASSERT_TRUE(s.ok()) << s.message();

  // Naive backward with the spec's rounding points; sums in double.
  const double unit = 0x1p-23;
  std::vector<double> ndx, ndxtol, ndw(kCols, 0.0), ndwtol(kCols, 0.0), ndb(kCols, 0.0), ndbtol(kCols, 0.0);
  std::vector<double> g(kCols), xh(kCols);
  for (int64_t r = 0; r < kRows; ++r) {
    const float rs = static_cast<float>(rstd.get(r));
    double sgx = 0, sgxabs = 0;
    for (int64_t i = 0; i < kCols; ++i) {
      const float xv = static_cast<float>(x.get(r * kStride + i));
      const float d = static_cast<float>(dy.get(r * kStride + i));
      const float ge = static_cast<float>(w.get(i)) + static_cast<float>(c.offset);
      float xdw;  // the xhat multiplying dy in dweight: what the forward multiplied gamma by
      switch (c.casting) {
        case Casting::Llama:
          g[i] = rho(c.x, rho(c.y, d * ge));
          xh[i] = xv * rs;
          xdw = rho(c.x, xv * rs);
          break;
        case Casting::None:
          g[i] = rho(c.x, d * rho(c.x, ge));
          xh[i] = rho(c.x, xv * rs);
          xdw = static_cast<float>(xh[i]);
          break;
        default:
          g[i] = static_cast<double>(d) * ge;
          xh[i] = static_cast<double>(xv) * rs;
          xdw = xv * rs;
          break;
      }
      sgx += g[i] * xh[i];
      sgxabs += std::fabs(g[i] * xh[i]);
      ndw[i] += static_cast<double>(d) * xdw;
      ndwtol[i] += kK * unit * std::fabs(static_cast<double>(d) * xdw);
      ndb[i] += d;
      ndbtol[i] += kK * unit * std::fabs(d);
    }
    for (int64_t i = 0; i < kCols; ++i) {
      const double v = rs * (g[i] - xh[i] * sgx / kCols);
      ndx.push_back(v);
      ndxtol.push_back(kK * unit * (rs * (std::fabs(g[i]) + 2 * std::fabs(xh[i]) * sgxabs / kCols) + std::fabs(v)));
    }
  }
  Compare cdx;
  EXPECT_TRUE(close("dx", dx, ndx, ndxtol, &cdx));
  EXPECT_GE(cdx.exact_fraction(), 0.99);
  EXPECT_TRUE(close("dweight", dw, ndw, ndwtol));
  EXPECT_TRUE(close("dbias", db, ndb, ndbtol));
}

INSTANTIATE_TEST_SUITE_P(Norm, Casts, ::testing::ValuesIn(cast_configs()),
                         [](const auto& info) { return cast_name(info.param); });

// For f32 and f64 inputs the casting modes have nothing to round: all three give identical bits.
TEST(RMSNorm, CastingIsIrrelevantForWideInputs) {
  for (DType t : {DType::Float32, DType::Float64}) {
    Rng rng(5);
    const int64_t m = 9, n = 100;
    const Buf x = random_rows(t, m, n, n, rng, 0.1, 1.0);
    const Buf w = random_vec(t, n, rng, 0.0, 0.5);
    const Buf dy = random_rows(t, m, n, n, rng, 0.0, 1.0);
    std::vector<Buf> ys, dxs, dws;
    for (Casting c : {Casting::Llama, Casting::Gemma, Casting::None}) {
      Buf y(t, m * n), rstd(stat_dtype(t), m), dx(t, m * n), dw(t, n);
      RMSNormParams p;
      p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.x_dtype = t;
      p.weight = w.data(); p.w_dtype = t; p.y = y.data(); p.y_dtype = t; p.rstd = rstd.data();
      p.offset = 1.0; p.casting = c;
      ASSERT_TRUE(fn::rms_norm_fwd(p).ok());
      RMSNormBwdParams q;
      q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = n; q.dy_dtype = t; q.x = x.data(); q.x_stride = n;
      q.x_dtype = t; q.rstd = rstd.data(); q.weight = w.data(); q.w_dtype = t; q.y_dtype = t; q.dx = dx.data();
      q.dx_dtype = t; q.dweight = dw.data(); q.offset = 1.0; q.casting = c;
      std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(q));
      q.workspace = ws.data();
      ASSERT_TRUE(fn::rms_norm_bwd(q).ok());
      ys.push_back(y); dxs.push_back(dx); dws.push_back(dw);
    }
    for (int k = 1; k < 3; ++k) {
      EXPECT_TRUE(ys[k].same_bytes(ys[0])) << name(t) << " casting " << k;
      EXPECT_TRUE(dxs[k].same_bytes(dxs[0])) << name(t) << " casting " << k;
      EXPECT_TRUE(dws[k].same_bytes(dws[0])) << name(t) << " casting " << k;
    }
  }
}

// Gemma's gamma = 1 + w must be formed in fp32 (Liger PR #1462): with bf16 weights where bf16(1 + w) != 1 + w
// and an f32 output, rounding gamma to bf16 would be off by up to 2^-9 relative, far outside f32 tolerance.
TEST(RMSNorm, GemmaOffsetAddedInFp32) {
  const int64_t m = 4, n = 64;
  Rng rng(11);
  Buf x = random_rows(DType::BFloat16, m, n, n, rng, 0.0, 1.0);
  Buf w(DType::BFloat16, n);
  int64_t lossy = 0;
  for (int64_t i = 0; i < n; ++i) {
    w.set(i, 0.01 + 0.003 * i);
    if (round_ref(1.0 + w.get(i), DType::BFloat16) != 1.0 + w.get(i)) lossy++;
  }
  ASSERT_GT(lossy, n / 2);  // the weights do exercise the rounding
  Buf y(DType::Float32, m * n), rstd(DType::Float32, m);
  RMSNormParams p;
  p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.x_dtype = DType::BFloat16;
  p.weight = w.data(); p.w_dtype = DType::BFloat16; p.y = y.data(); p.y_dtype = DType::Float32;
  p.rstd = rstd.data(); p.offset = 1.0; p.casting = Casting::Gemma;
  ASSERT_TRUE(fn::rms_norm_fwd(p).ok());
  const FwdRef r = rms_fwd_ref(norm_input(x, n, nullptr, 0, false, DType::BFloat16, m, n), m, n, &w, nullptr, p.eps,
                               1.0, 0x1p-23);
  EXPECT_TRUE(close("y", y, r.y, r.ytol));
}

// Gemma-style offset (gamma_eff = w + 1) for the wide types and bf16, forward and backward, against the
// exact formulas with gamma_eff in place of gamma (spec §3.2).
TEST(RMSNorm, OffsetOneForwardBackward) {
  for (DType t : {DType::Float32, DType::Float64, DType::BFloat16}) {
    const int64_t m = 13, n = 200, stride = 210;
    Rng rng(17);
    const Buf x = random_rows(t, m, n, stride, rng, 0.2, 1.5), w = random_vec(t, n, rng, 0.0, 0.3),
              dy = random_rows(t, m, n, stride, rng, 0.0, 1.0);
    const DType st = stat_dtype(t);
    const double unit = acc_eps(t);
    Buf y(t, m * n), rstd(st, m), dx(t, m * n), dw(t, n);
    RMSNormParams p;
    p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = stride; p.x_dtype = t; p.weight = w.data(); p.w_dtype = t;
    p.y = y.data(); p.y_dtype = t; p.rstd = rstd.data(); p.offset = 1.0;
    ASSERT_TRUE(fn::rms_norm_fwd(p).ok());
    const std::vector<double> xin = norm_input(x, stride, nullptr, 0, false, t, m, n);
    const FwdRef r = rms_fwd_ref(xin, m, n, &w, nullptr, p.eps, 1.0, unit);
    EXPECT_TRUE(close("y", y, r.y, r.ytol)) << name(t);
    const Buf rs = stats_buf(r.rstd, st);
    RMSNormBwdParams q;
    q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = stride; q.dy_dtype = t; q.x = x.data(); q.x_stride = stride;
    q.x_dtype = t; q.rstd = rs.data(); q.weight = w.data(); q.w_dtype = t; q.y_dtype = t; q.dx = dx.data();
    q.dx_dtype = t; q.dweight = dw.data(); q.offset = 1.0;
    std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(q));
    q.workspace = ws.data();
    ASSERT_TRUE(fn::rms_norm_bwd(q).ok());
    const BwdRef br = norm_bwd_ref(false, dy, stride, xin, nullptr, rs, &w, 1.0, nullptr, 0, m, n, unit);
    EXPECT_TRUE(close("dx", dx, br.dx, br.dxtol)) << name(t);
    EXPECT_TRUE(close("dweight", dw, br.dw, br.dwtol)) << name(t);  // dweight does not depend on the offset
  }
}

// ---- edge cases -----------------------------------------------------------------------------------
TEST(Edge, ZeroRowsIsOkAndZeroesWeightGrads) {
  const int64_t n = 8;
  Buf w(DType::Float32, n), y(DType::Float32, 0);
  for (int64_t i = 0; i < n; ++i) w.set(i, 1.0);
  LayerNormParams p;
  p.rows = 0; p.cols = n; p.x_stride = n; p.weight = w.data();  // x, y, stats null: nothing to read or write
  EXPECT_TRUE(fn::layer_norm_fwd(p).ok());
  RMSNormParams q;
  q.rows = 0; q.cols = n; q.x_stride = n; q.weight = w.data();
  EXPECT_TRUE(fn::rms_norm_fwd(q).ok());

  // Spec §5: M = 0 gives zero dweight/dbias, with the workspace the query asks for.
  Buf dw(DType::Float32, n), db(DType::Float32, n);
  LayerNormBwdParams b;
  b.rows = 0; b.cols = n; b.weight = w.data(); b.dweight = dw.data(); b.dbias = db.data();
  std::vector<unsigned char> ws(fn::layer_norm_bwd_workspace_bytes(b) + 1);
  b.workspace = ws.data();
  ASSERT_TRUE(fn::layer_norm_bwd(b).ok());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(dw.get(i), 0.0);
    EXPECT_EQ(db.get(i), 0.0);
  }
  // The same for RMSNorm with a bf16 weight: zeros in the weight's dtype.
  Buf wb(DType::BFloat16, n), dw2(DType::BFloat16, n);
  RMSNormBwdParams rb;
  rb.rows = 0; rb.cols = n; rb.weight = wb.data(); rb.w_dtype = DType::BFloat16; rb.dweight = dw2.data();
  std::vector<unsigned char> ws2(fn::rms_norm_bwd_workspace_bytes(rb) + 1);
  rb.workspace = ws2.data();
  ASSERT_TRUE(fn::rms_norm_bwd(rb).ok());
  for (int64_t i = 0; i < n; ++i) EXPECT_EQ(dw2.get(i), 0.0);
}

// Validation accepts a null workspace when M = 0 (there is nothing to reduce); the kernel must then
// still produce zero dweight/dbias instead of touching the missing workspace.
TEST(Edge, ZeroRowsWithoutWorkspace) {
  const int64_t n = 8;
  Buf dw(DType::Float32, n), db(DType::Float32, n);
  LayerNormBwdParams b;
  b.rows = 0; b.cols = n; b.dweight = dw.data(); b.dbias = db.data(); b.workspace = nullptr;
  const Status v = fn::validate(b);
  if (!v.ok()) GTEST_SKIP() << "validation now requires the workspace: " << v.message();
  ASSERT_TRUE(fn::layer_norm_bwd(b).ok());
  for (int64_t i = 0; i < n; ++i) {
    EXPECT_EQ(dw.get(i), 0.0);
    EXPECT_EQ(db.get(i), 0.0);
  }
}

// N = 0: empty y, NaN statistics (spec §5), no crash.
TEST(Edge, ZeroColsGivesNaNStats) {
  const int64_t m = 3;
  Buf x(DType::Float32, 1), mean(DType::Float32, m), rstd(DType::Float32, m), y(DType::Float32, 0);
  LayerNormParams p;
  p.rows = m; p.cols = 0; p.x = x.data(); p.x_stride = 0; p.y = y.data(); p.mean = mean.data(); p.rstd = rstd.data();
  ASSERT_TRUE(fn::layer_norm_fwd(p).ok());
  for (int64_t r = 0; r < m; ++r) {
    EXPECT_TRUE(std::isnan(mean.get(r))) << mean.get(r);
    EXPECT_TRUE(std::isnan(rstd.get(r))) << rstd.get(r);
  }
  EXPECT_TRUE(y.guard_intact());
  Buf rr(DType::Float32, m);
  RMSNormParams q;
  q.rows = m; q.cols = 0; q.x = x.data(); q.x_stride = 0; q.y = y.data(); q.rstd = rr.data();
  ASSERT_TRUE(fn::rms_norm_fwd(q).ok());
  for (int64_t r = 0; r < m; ++r) EXPECT_TRUE(std::isnan(rr.get(r))) << rr.get(r);
}

// Statistics are optional in the forward (inference): y alone is computed and matches.
TEST(Edge, ForwardWithoutStats) {
  const int64_t m = 5, n = 33;
  Rng rng(3);
  const Buf x = random_rows(DType::Float32, m, n, n, rng, 1.0, 1.0);
  Buf y(DType::Float32, m * n);
  LayerNormParams p;
  p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.y = y.data();
  ASSERT_TRUE(fn::layer_norm_fwd(p).ok());
  const FwdRef r = ln_fwd_ref(norm_input(x, n, nullptr, 0, false, DType::Float32, m, n), m, n, nullptr, nullptr,
                              p.eps, 0x1p-23);
  EXPECT_TRUE(close("y", y, r.y, r.ytol));
  Buf y2(DType::Float32, m * n);
  RMSNormParams q;
  q.rows = m; q.cols = n; q.x = x.data(); q.x_stride = n; q.y = y2.data();
  ASSERT_TRUE(fn::rms_norm_fwd(q).ok());
  const FwdRef r2 = rms_fwd_ref(norm_input(x, n, nullptr, 0, false, DType::Float32, m, n), m, n, nullptr, nullptr,
                                q.eps, 0.0, 0x1p-23);
  EXPECT_TRUE(close("y", y2, r2.y, r2.ytol));
}

// Pointers one element off any 4/16-byte alignment (a view starting at an odd offset).
TEST(Edge, MisalignedPointers) {
  for (DType t : {DType::BFloat16, DType::Float32}) {
    const int64_t m = 6, n = 37;
    Rng rng(8);
    const Buf x = random_rows(t, m, n, n + 1, rng, 0.5, 1.0, /*misalign=*/1);
    Buf w(t, n, 1), y(t, m * n, 1), mean(DType::Float32, m, 1), rstd(DType::Float32, m, 1);
    for (int64_t i = 0; i < n; ++i) w.set(i, 0.5 + 0.01 * i);
    LayerNormParams p;
    p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n + 1; p.x_dtype = t; p.weight = w.data(); p.w_dtype = t;
    p.y = y.data(); p.y_dtype = t; p.mean = mean.data(); p.rstd = rstd.data();
    ASSERT_TRUE(fn::layer_norm_fwd(p).ok());
    const FwdRef r = ln_fwd_ref(norm_input(x, n + 1, nullptr, 0, false, t, m, n), m, n, &w, nullptr, p.eps, 0x1p-23);
    EXPECT_TRUE(close("y", y, r.y, r.ytol)) << name(t);
  }
}

// NaN and Inf stay in their row, forward and backward (spec §5).
TEST(Edge, NonFiniteStaysInItsRow) {
  const int64_t m = 8, n = 50, bad_nan = 3, bad_inf = 6;
  Rng rng(21);
  Buf x = random_rows(DType::Float32, m, n, n, rng, 0.0, 1.0);
  x.set(bad_nan * n + 7, kNaN);
  x.set(bad_inf * n + 11, std::numeric_limits<double>::infinity());
  const Buf w = random_vec(DType::Float32, n, rng, 1.0, 0.5);
  const Buf dy = random_rows(DType::Float32, m, n, n, rng, 0.0, 1.0);
  for (bool layer : {true, false}) {
    Buf y(DType::Float32, m * n), mean(DType::Float32, m), rstd(DType::Float32, m), dx(DType::Float32, m * n);
    if (layer) {
      LayerNormParams p;
      p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.weight = w.data(); p.y = y.data();
      p.mean = mean.data(); p.rstd = rstd.data();
      ASSERT_TRUE(fn::layer_norm_fwd(p).ok());
      LayerNormBwdParams q;
      q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = n; q.x = x.data(); q.x_stride = n;
      q.mean = mean.data(); q.rstd = rstd.data(); q.weight = w.data(); q.dx = dx.data();
      ASSERT_TRUE(fn::layer_norm_bwd(q).ok());
    } else {
      RMSNormParams p;
      p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.weight = w.data(); p.y = y.data(); p.rstd = rstd.data();
      ASSERT_TRUE(fn::rms_norm_fwd(p).ok());
      RMSNormBwdParams q;
      q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = n; q.x = x.data(); q.x_stride = n;
      q.rstd = rstd.data(); q.weight = w.data(); q.dx = dx.data();
      ASSERT_TRUE(fn::rms_norm_bwd(q).ok());
    }
    for (int64_t r = 0; r < m; ++r) {
      int64_t finite_y = 0, finite_dx = 0;
      for (int64_t i = 0; i < n; ++i) {
        finite_y += std::isfinite(y.get(r * n + i));
        finite_dx += std::isfinite(dx.get(r * n + i));
      }
      if (r == bad_nan || r == bad_inf) {
        // The statistic of the row is non-finite, so the whole row is (inf - inf or 0 * inf give NaN).
        EXPECT_LT(finite_y, n) << (layer ? "LN" : "RMS") << " row " << r;
        EXPECT_EQ(finite_dx, 0) << (layer ? "LN" : "RMS") << " row " << r;
      } else {
        EXPECT_EQ(finite_y, n) << (layer ? "LN" : "RMS") << " row " << r << " caught another row's non-finite";
        EXPECT_EQ(finite_dx, n) << (layer ? "LN" : "RMS") << " row " << r << " caught another row's non-finite";
      }
    }
    EXPECT_TRUE(std::isnan(y.get(bad_nan * n + 7)));
  }
}

// ---- determinism (spec §4): bitwise equal across runs and across thread counts ----------------------
struct GradRun {
  Buf y, dx, dw, db;
};

GradRun run_fwd_bwd(bool layer, DType t, const Buf& x, const Buf& w, const Buf& b, const Buf& dy, int64_t m,
                    int64_t n) {
  GradRun o{Buf(t, m * n), Buf(t, m * n), Buf(t, n), Buf(t, n)};
  Buf mean(DType::Float32, m), rstd(DType::Float32, m);
  if (layer) {
    LayerNormParams p;
    p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.x_dtype = t; p.weight = w.data(); p.bias = b.data();
    p.w_dtype = t; p.y = o.y.data(); p.y_dtype = t; p.mean = mean.data(); p.rstd = rstd.data();
    EXPECT_TRUE(fn::layer_norm_fwd(p).ok());
    LayerNormBwdParams q;
    q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = n; q.dy_dtype = t; q.x = x.data(); q.x_stride = n;
    q.x_dtype = t; q.mean = mean.data(); q.rstd = rstd.data(); q.weight = w.data(); q.w_dtype = t;
    q.dx = o.dx.data(); q.dx_dtype = t; q.dweight = o.dw.data(); q.dbias = o.db.data();
    std::vector<unsigned char> ws(fn::layer_norm_bwd_workspace_bytes(q));
    q.workspace = ws.data();
    EXPECT_TRUE(fn::layer_norm_bwd(q).ok());
  } else {
    RMSNormParams p;
    p.rows = m; p.cols = n; p.x = x.data(); p.x_stride = n; p.x_dtype = t; p.weight = w.data(); p.w_dtype = t;
    p.y = o.y.data(); p.y_dtype = t; p.rstd = rstd.data();
    EXPECT_TRUE(fn::rms_norm_fwd(p).ok());
    RMSNormBwdParams q;
    q.rows = m; q.cols = n; q.dy = dy.data(); q.dy_stride = n; q.dy_dtype = t; q.x = x.data(); q.x_stride = n;
    q.x_dtype = t; q.rstd = rstd.data(); q.weight = w.data(); q.w_dtype = t; q.y_dtype = t; q.dx = o.dx.data();
    q.dx_dtype = t; q.dweight = o.dw.data(); q.dbias = o.db.data();
    std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(q));
    q.workspace = ws.data();
    EXPECT_TRUE(fn::rms_norm_bwd(q).ok());
  }
  return o;
}

TEST(Determinism, BitwiseAcrossRunsAndThreadCounts) {
  const int saved = omp_get_max_threads();
  // 1000 rows: many more rows than blocks, and a row count that does not divide evenly into them.
  const int64_t m = 1000, n = 300;
  for (DType t : {DType::Float32, DType::BFloat16}) {
    Rng rng(77);
    const Buf x = random_rows(t, m, n, n, rng, 1.0, 2.0), w = random_vec(t, n, rng, 1.0, 0.5),
              b = random_vec(t, n, rng, 0.0, 0.5), dy = random_rows(t, m, n, n, rng, 0.0, 1.0);
    for (bool layer : {true, false}) {
      omp_set_num_threads(2);
      const GradRun a = run_fwd_bwd(layer, t, x, w, b, dy, m, n);
      const GradRun a2 = run_fwd_bwd(layer, t, x, w, b, dy, m, n);
      omp_set_num_threads(1);
      const GradRun one = run_fwd_bwd(layer, t, x, w, b, dy, m, n);
      omp_set_num_threads(3);
      const GradRun three = run_fwd_bwd(layer, t, x, w, b, dy, m, n);
      for (const GradRun* o : {&a2, &one, &three}) {
        const std::string what = std::string(layer ? "LN " : "RMS ") + name(t);
        EXPECT_TRUE(o->y.same_bytes(a.y)) << what;
        EXPECT_TRUE(o->dx.same_bytes(a.dx)) << what;
        EXPECT_TRUE(o->dw.same_bytes(a.dw)) << what;
        EXPECT_TRUE(o->db.same_bytes(a.db)) << what;
      }
      // Sanity: the runs produced numbers, not untouched poison.
      EXPECT_TRUE(std::isfinite(a.dw.get(0)) && std::isfinite(a.dx.get(m * n - 1)));
    }
  }
  omp_set_num_threads(saved);
}

// ---- workspace sizing and the row-block partition (int64) ------------------------------------------
TEST(Workspace, SizeQueries) {
  for (int64_t m : {1, 63, 64, 1000}) {
    for (int64_t n : {1, 768, 4096}) {
      const int64_t nb = fn::bwd_num_blocks(m, n);
      LayerNormBwdParams p;
      p.rows = m; p.cols = n;
      EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), 0u) << "no dweight/dbias, no workspace";
      int dummy;
      p.dweight = &dummy;
      EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), static_cast<size_t>(nb * n * 4));
      p.dbias = &dummy;
      EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), static_cast<size_t>(2 * nb * n * 4));
      p.w_dtype = DType::BFloat16;  // partials are fp32 whatever the weight dtype
      EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), static_cast<size_t>(2 * nb * n * 4));
      p.x_dtype = DType::Float64;   // ... and fp64 for fp64 inputs
      p.w_dtype = DType::Float64;
      EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), static_cast<size_t>(2 * nb * n * 8));

      RMSNormBwdParams q;
      q.rows = m; q.cols = n;
      EXPECT_EQ(fn::rms_norm_bwd_workspace_bytes(q), 0u);
      q.dbias = &dummy;
      EXPECT_EQ(fn::rms_norm_bwd_workspace_bytes(q), static_cast<size_t>(nb * n * 4));
      q.dweight = &dummy;
      EXPECT_EQ(fn::rms_norm_bwd_workspace_bytes(q), static_cast<size_t>(2 * nb * n * 4));
    }
  }
}

TEST(Workspace, BlockCountDependsOnShapeOnly) {
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const int64_t a = fn::bwd_num_blocks(5000, 1024);
  omp_set_num_threads(3);
  EXPECT_EQ(fn::bwd_num_blocks(5000, 1024), a);
  omp_set_num_threads(saved);
  for (int64_t m : {int64_t(1), int64_t(2), int64_t(63), int64_t(64), int64_t(65), int64_t(100000)}) {
    for (int64_t n : {int64_t(1), int64_t(4096), int64_t(1) << 20, (int64_t(1) << 20) + 1}) {
      const int64_t nb = fn::bwd_num_blocks(m, n);
      EXPECT_GE(nb, 1) << m << "x" << n;
      EXPECT_LE(nb, m) << "never more blocks than rows: " << m << "x" << n;
    }
  }
}

// Sizes past 2^31 elements (spec §5: all offsets int64). No allocation: only the pure size functions.
TEST(Workspace, Int64Sizes) {
  const int64_t big_m = 3000000000LL;
  const int64_t nb = fn::bwd_num_blocks(big_m, 4096);
  EXPECT_GE(nb, 1);
  EXPECT_LE(nb, 1024) << "the partials must stay small next to a 3e9-row input";
  LayerNormBwdParams p;
  p.rows = big_m; p.cols = 4096;
  int dummy;
  p.dweight = &dummy; p.dbias = &dummy;
  EXPECT_EQ(fn::layer_norm_bwd_workspace_bytes(p), static_cast<size_t>(2) * nb * 4096 * 4);
  // Wide rows: the byte count itself passes 2^32 and must not wrap.
  const int64_t big_n = 3000000000LL;
  RMSNormBwdParams q;
  q.rows = 10; q.cols = big_n; q.dweight = &dummy; q.dbias = &dummy;
  const int64_t nbw = fn::bwd_num_blocks(10, big_n);
  EXPECT_GE(nbw, 1);
  EXPECT_EQ(fn::rms_norm_bwd_workspace_bytes(q), static_cast<size_t>(2) * nbw * big_n * 4);
  EXPECT_GT(fn::rms_norm_bwd_workspace_bytes(q), size_t(1) << 32);
  // Validation takes sizes past 2^31 as they are.
  LayerNormParams f;
  f.rows = big_m; f.cols = 4096; f.x = &dummy; f.x_stride = 4096; f.y = &dummy;
  EXPECT_TRUE(fn::validate(f).ok()) << fn::validate(f).message();
}

// Row addressing past 2^31 and 2^32 elements: three bf16 rows 2^31 + 5 elements apart, in a reserved
// (MAP_NORESERVE) address range of which only the pages holding the rows are ever touched. 32-bit row
// offset arithmetic would read the wrong memory and the results would not match.
TEST(Int64, HugeRowStrideWithoutAllocation) {
  const int64_t rows = 3, cols = 256, stride = (int64_t(1) << 31) + 5;
  const size_t bytes = static_cast<size_t>((rows - 1) * stride + cols) * 2 * 2;  // x and dy, side by side
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) GTEST_SKIP() << "cannot reserve " << bytes << " bytes of address space";
  uint16_t* x = static_cast<uint16_t*>(base);
  uint16_t* dy = x + (rows - 1) * stride + cols;  // dy rows at the same huge stride, after x
  Rng rng(31);
  std::vector<double> xin(static_cast<size_t>(rows * cols));
  Buf dyv(DType::BFloat16, rows * cols);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < cols; ++i) {
      // Each row gets its own mean, so a row read from the wrong place shows.
      const double v = round_ref(3.0 * r + uniform(rng, -1, 1), DType::BFloat16);
      x[r * stride + i] = encode_ref(v, DType::BFloat16);
      xin[static_cast<size_t>(r * cols + i)] = v;
      const double d = round_ref(uniform(rng, -1, 1), DType::BFloat16);
      dy[r * stride + i] = encode_ref(d, DType::BFloat16);
      dyv.set(r * cols + i, d);
    }
  Buf y(DType::Float32, rows * cols), mean(DType::Float32, rows), rstd(DType::Float32, rows);
  LayerNormParams p;
  p.rows = rows; p.cols = cols; p.x = x; p.x_stride = stride; p.x_dtype = DType::BFloat16;
  p.y = y.data(); p.y_dtype = DType::Float32; p.mean = mean.data(); p.rstd = rstd.data();
  const Status s = fn::layer_norm_fwd(p);
  const FwdRef r = ln_fwd_ref(xin, rows, cols, nullptr, nullptr, p.eps, 0x1p-23);
  Buf dx(DType::Float32, rows * cols), dw(DType::Float32, cols);
  RMSNormBwdParams q;
  q.rows = rows; q.cols = cols; q.dy = dy; q.dy_stride = stride; q.dy_dtype = DType::BFloat16;
  q.x = x; q.x_stride = stride; q.x_dtype = DType::BFloat16;
  const FwdRef rr = rms_fwd_ref(xin, rows, cols, nullptr, nullptr, 1e-6, 0.0, 0x1p-23);
  const Buf rms_rstd = stats_buf(rr.rstd, DType::Float32);
  q.rstd = rms_rstd.data(); q.dx = dx.data(); q.dx_dtype = DType::Float32; q.dweight = dw.data();
  std::vector<unsigned char> ws(fn::rms_norm_bwd_workspace_bytes(q));
  q.workspace = ws.data();
  const Status s2 = fn::rms_norm_bwd(q);
  munmap(base, bytes);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_TRUE(s2.ok()) << s2.message();
  EXPECT_TRUE(close("y", y, r.y, r.ytol));
  EXPECT_TRUE(close("mean", mean, r.mean, r.mean_tol));
  // The backward reads x and dy through the same huge stride.
  const BwdRef br = norm_bwd_ref(false, dyv, cols, xin, nullptr, rms_rstd, nullptr, 0.0, nullptr, 0, rows, cols, 0x1p-23);
  EXPECT_TRUE(close("dx", dx, br.dx, br.dxtol));
  EXPECT_TRUE(close("dweight", dw, br.dw, br.dwtol));
}

// ---- argument validation: Status codes ------------------------------------------------------------
// Each case starts from a valid call, breaks one thing, and expects the code and the op's name in the message.
struct Bufs {
  std::vector<float> x = std::vector<float>(64, 1.0f), y = std::vector<float>(64), stat = std::vector<float>(4),
                     w = std::vector<float>(16, 1.0f), ws = std::vector<float>(4096);
};

LayerNormParams valid_ln(Bufs& b) {
  LayerNormParams p;
  p.rows = 4; p.cols = 16; p.x = b.x.data(); p.x_stride = 16; p.weight = b.w.data(); p.bias = b.w.data();
  p.y = b.y.data(); p.mean = b.stat.data(); p.rstd = b.stat.data();
  return p;
}
RMSNormParams valid_rms(Bufs& b) {
  RMSNormParams p;
  p.rows = 4; p.cols = 16; p.x = b.x.data(); p.x_stride = 16; p.weight = b.w.data(); p.y = b.y.data();
  p.rstd = b.stat.data();
  return p;
}
LayerNormBwdParams valid_ln_bwd(Bufs& b) {
  LayerNormBwdParams p;
  p.rows = 4; p.cols = 16; p.dy = b.x.data(); p.dy_stride = 16; p.x = b.x.data(); p.x_stride = 16;
  p.mean = b.stat.data(); p.rstd = b.stat.data(); p.weight = b.w.data(); p.dx = b.y.data();
  p.dweight = b.w.data(); p.workspace = b.ws.data();
  return p;
}
RMSNormBwdParams valid_rms_bwd(Bufs& b) {
  RMSNormBwdParams p;
  p.rows = 4; p.cols = 16; p.dy = b.x.data(); p.dy_stride = 16; p.x = b.x.data(); p.x_stride = 16;
  p.rstd = b.stat.data(); p.weight = b.w.data(); p.dx = b.y.data(); p.dweight = b.w.data();
  p.workspace = b.ws.data();
  return p;
}

template <typename P, typename F>
void expect_status(const char* what, P p, Status (*op)(const P&), F&& mutate, StatusCode want, const char* opname) {
  mutate(p);
  const Status s = op(p);
  EXPECT_EQ(static_cast<int>(s.code()), static_cast<int>(want)) << what << ": " << s.message();
  if (!s.ok()) { EXPECT_NE(s.message().find(opname), std::string::npos) << what << ": '" << s.message() << "'"; }
  // validate() is the same check the entry point runs.
  EXPECT_EQ(static_cast<int>(fn::validate(p).code()), static_cast<int>(want)) << what;
}

TEST(Validate, ValidCallsAreOk) {
  Bufs b;
  EXPECT_TRUE(fn::layer_norm_fwd(valid_ln(b)).ok());
  EXPECT_TRUE(fn::rms_norm_fwd(valid_rms(b)).ok());
  EXPECT_TRUE(fn::layer_norm_bwd(valid_ln_bwd(b)).ok());
  EXPECT_TRUE(fn::rms_norm_bwd(valid_rms_bwd(b)).ok());
}

TEST(Validate, LayerNormForward) {
  Bufs b;
  const LayerNormParams p = valid_ln(b);
  auto op = static_cast<Status (*)(const LayerNormParams&)>(&fn::layer_norm_fwd);
  const auto IA = StatusCode::InvalidArgument, UN = StatusCode::Unsupported;
  expect_status("null x", p, op, [](auto& q) { q.x = nullptr; }, IA, "layer_norm");
  expect_status("null y", p, op, [](auto& q) { q.y = nullptr; }, IA, "layer_norm");
  expect_status("negative rows", p, op, [](auto& q) { q.rows = -1; }, IA, "layer_norm");
  expect_status("negative cols", p, op, [](auto& q) { q.cols = -3; }, IA, "layer_norm");
  expect_status("eps 0", p, op, [](auto& q) { q.eps = 0; }, IA, "layer_norm");
  expect_status("eps < 0", p, op, [](auto& q) { q.eps = -1e-5; }, IA, "layer_norm");
  expect_status("eps NaN", p, op, [](auto& q) { q.eps = kNaN; }, IA, "layer_norm");
  expect_status("eps inf", p, op, [](auto& q) { q.eps = std::numeric_limits<double>::infinity(); }, IA, "layer_norm");
  expect_status("x int32", p, op, [](auto& q) { q.x_dtype = DType::Int32; }, UN, "layer_norm");
  expect_status("x bool", p, op, [](auto& q) { q.x_dtype = DType::Bool; }, UN, "layer_norm");
  expect_status("weight int32", p, op, [](auto& q) { q.w_dtype = DType::Int32; }, UN, "layer_norm");
  expect_status("f64 weight with f32 x", p, op, [](auto& q) { q.w_dtype = DType::Float64; }, UN, "layer_norm");
  expect_status("y int64", p, op, [](auto& q) { q.y_dtype = DType::Int64; }, UN, "layer_norm");
  expect_status("row stride < cols", p, op, [](auto& q) { q.x_stride = 15; }, IA, "layer_norm");
  expect_status("mean without rstd", p, op, [](auto& q) { q.rstd = nullptr; }, IA, "layer_norm");
  expect_status("residual without residual_out", p, op, [&](auto& q) { q.residual = b.x.data(); }, IA, "layer_norm");
  expect_status("residual_out int32", p, op,
                [&](auto& q) { q.residual_out = b.y.data(); q.residual_out_dtype = DType::Int32; }, UN, "layer_norm");
  expect_status("bf16 residual_out for f16 x", p, op,
                [&](auto& q) { q.x_dtype = DType::Float16; q.residual_out = b.y.data(); q.residual_out_dtype = DType::BFloat16; },
                UN, "layer_norm");
  expect_status("f16 residual for bf16 x", p, op,
                [&](auto& q) {
                  q.x_dtype = DType::BFloat16; q.residual = b.x.data(); q.residual_dtype = DType::Float16;
                  q.residual_out = b.y.data(); q.residual_out_dtype = DType::BFloat16;
                }, UN, "layer_norm");
  expect_status("f32 residual_out for f64 x", p, op,
                [&](auto& q) { q.x_dtype = DType::Float64; q.w_dtype = DType::Float64; q.residual_out = b.y.data(); },
                UN, "layer_norm");
  // Empty inputs need no pointers.
  expect_status("rows 0, null x", p, op, [](auto& q) { q.rows = 0; q.x = nullptr; q.y = nullptr; }, StatusCode::Ok, "");
  // A single row needs no stride.
  expect_status("rows 1, stride 0", p, op, [](auto& q) { q.rows = 1; q.x_stride = 0; }, StatusCode::Ok, "");
}

TEST(Validate, RMSNormForward) {
  Bufs b;
  const RMSNormParams p = valid_rms(b);
  auto op = static_cast<Status (*)(const RMSNormParams&)>(&fn::rms_norm_fwd);
  const auto IA = StatusCode::InvalidArgument, UN = StatusCode::Unsupported;
  expect_status("null x", p, op, [](auto& q) { q.x = nullptr; }, IA, "rms_norm");
  expect_status("null y", p, op, [](auto& q) { q.y = nullptr; }, IA, "rms_norm");
  expect_status("negative rows", p, op, [](auto& q) { q.rows = -5; }, IA, "rms_norm");
  expect_status("negative cols", p, op, [](auto& q) { q.cols = -1; }, IA, "rms_norm");
  expect_status("eps 0", p, op, [](auto& q) { q.eps = 0; }, IA, "rms_norm");
  expect_status("eps < 0", p, op, [](auto& q) { q.eps = -1; }, IA, "rms_norm");
  expect_status("x int32", p, op, [](auto& q) { q.x_dtype = DType::Int32; }, UN, "rms_norm");
  expect_status("x uint8", p, op, [](auto& q) { q.x_dtype = DType::UInt8; }, UN, "rms_norm");
  expect_status("weight int32", p, op, [](auto& q) { q.w_dtype = DType::Int32; }, UN, "rms_norm");
  expect_status("y int32", p, op, [](auto& q) { q.y_dtype = DType::Int32; }, UN, "rms_norm");
  expect_status("offset without weight", p, op, [](auto& q) { q.weight = nullptr; q.offset = 1.0; }, IA, "rms_norm");
  expect_status("offset inf", p, op, [](auto& q) { q.offset = std::numeric_limits<double>::infinity(); }, IA, "rms_norm");
  expect_status("offset NaN", p, op, [](auto& q) { q.offset = kNaN; }, IA, "rms_norm");
  expect_status("unknown casting", p, op, [](auto& q) { q.casting = static_cast<Casting>(7); }, IA, "rms_norm");
  expect_status("row stride < cols", p, op, [](auto& q) { q.x_stride = 3; }, IA, "rms_norm");
  expect_status("residual without residual_out", p, op, [&](auto& q) { q.residual = b.x.data(); }, IA, "rms_norm");
  expect_status("offset 0 without weight", p, op, [](auto& q) { q.weight = nullptr; }, StatusCode::Ok, "");
}

TEST(Validate, Backward) {
  Bufs b;
  const auto IA = StatusCode::InvalidArgument, UN = StatusCode::Unsupported;
  const LayerNormBwdParams p = valid_ln_bwd(b);
  auto op = static_cast<Status (*)(const LayerNormBwdParams&)>(&fn::layer_norm_bwd);
  expect_status("null dy", p, op, [](auto& q) { q.dy = nullptr; }, IA, "layer_norm_backward");
  expect_status("null x", p, op, [](auto& q) { q.x = nullptr; }, IA, "layer_norm_backward");
  expect_status("null rstd", p, op, [](auto& q) { q.rstd = nullptr; }, IA, "layer_norm_backward");
  expect_status("null mean", p, op, [](auto& q) { q.mean = nullptr; }, IA, "layer_norm_backward");
  expect_status("dweight without workspace", p, op, [](auto& q) { q.workspace = nullptr; }, IA, "layer_norm_backward");
  expect_status("negative rows", p, op, [](auto& q) { q.rows = -1; }, IA, "layer_norm_backward");
  expect_status("negative cols", p, op, [](auto& q) { q.cols = -1; }, IA, "layer_norm_backward");
  expect_status("dy stride < cols", p, op, [](auto& q) { q.dy_stride = 2; }, IA, "layer_norm_backward");
  expect_status("x int32", p, op, [](auto& q) { q.x_dtype = DType::Int32; }, UN, "layer_norm_backward");
  expect_status("dy int32", p, op, [](auto& q) { q.dy_dtype = DType::Int32; }, UN, "layer_norm_backward");
  expect_status("dx int32", p, op, [](auto& q) { q.dx_dtype = DType::Int32; }, UN, "layer_norm_backward");
  expect_status("weight int32", p, op, [](auto& q) { q.w_dtype = DType::Int32; }, UN, "layer_norm_backward");
  expect_status("no weight grads, no workspace", p, op,
                [](auto& q) { q.dweight = nullptr; q.workspace = nullptr; }, StatusCode::Ok, "");

  const RMSNormBwdParams r = valid_rms_bwd(b);
  auto rop = static_cast<Status (*)(const RMSNormBwdParams&)>(&fn::rms_norm_bwd);
  expect_status("null dy", r, rop, [](auto& q) { q.dy = nullptr; }, IA, "rms_norm_backward");
  expect_status("null x", r, rop, [](auto& q) { q.x = nullptr; }, IA, "rms_norm_backward");
  expect_status("null rstd", r, rop, [](auto& q) { q.rstd = nullptr; }, IA, "rms_norm_backward");
  expect_status("dbias without workspace", r, rop,
                [&](auto& q) { q.dweight = nullptr; q.dbias = b.w.data(); q.workspace = nullptr; }, IA,
                "rms_norm_backward");
  expect_status("negative rows", r, rop, [](auto& q) { q.rows = -2; }, IA, "rms_norm_backward");
  expect_status("x int32", r, rop, [](auto& q) { q.x_dtype = DType::Int32; }, UN, "rms_norm_backward");
  expect_status("y int32", r, rop, [](auto& q) { q.y_dtype = DType::Int32; }, UN, "rms_norm_backward");
  expect_status("unknown casting", r, rop, [](auto& q) { q.casting = static_cast<Casting>(-1); }, IA, "rms_norm_backward");
  expect_status("x stride < cols", r, rop, [](auto& q) { q.x_stride = 1; }, IA, "rms_norm_backward");
}

}  // namespace
}  // namespace fastnorm_test
