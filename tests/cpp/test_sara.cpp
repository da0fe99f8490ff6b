// GoogleTest of the SaRA core (specs/sara.md §6 item 19): every CPU entry point against a naive scalar loop, the
// FASTNORM_HD element math, and the Status codes of bad arguments (null pointers, negative sizes, k > 0 with an
// empty weight, a too-small workspace, unsorted / out-of-range indices).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "fastnorm/detail/sara_math.h"
#include "fastnorm/sara.h"

namespace {

namespace fs = fastnorm::sara;
using fastnorm::DType;
using fastnorm::StatusCode;

std::vector<int32_t> rand_idx(int64_t numel, int64_t k, uint32_t seed) {
  std::vector<int32_t> all(static_cast<size_t>(numel));
  for (int64_t i = 0; i < numel; ++i) all[i] = static_cast<int32_t>(i);
  std::mt19937 g(seed);
  std::shuffle(all.begin(), all.end(), g);
  all.resize(static_cast<size_t>(std::min(k, numel)));
  std::sort(all.begin(), all.end());
  return all;
}

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(g);
  return v;
}

uint32_t key32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u & 0x7FFFFFFFu;
}

TEST(Sara, HistogramMatchesNaive) {
  auto w = randn(5000, 1, 0.01f);
  w[7] = std::nanf("");
  std::vector<int64_t> h(256, 1);
  fs::SaraHistogramParams p;
  p.weight = w.data();
  p.numel = 5000;
  p.hist = h.data();
  p.shift = 16;
  p.prefix_mask = 0xFF000000u;
  p.prefix = key32(w[0]) & 0xFF000000u;
  ASSERT_TRUE(fs::sara_abs_histogram(p).ok());
  std::vector<int64_t> ref(256, 1);
  for (float x : w) {
    const uint32_t k = key32(x);
    if (k > 0x7F800000u || (k & 0xFF000000u) != p.prefix) continue;
    ++ref[(k >> 16) & 255];
  }
  EXPECT_EQ(h, ref);
}

TEST(Sara, SelectTwoPhaseMatchesNaive) {
  // More than one compaction block (65536 elements) so the block prefixes matter.
  const int64_t n = 200003;
  auto w = randn(static_cast<size_t>(n), 2, 0.01f);
  for (int64_t i = 0; i < n; i += 97) w[i] = 0.004f;  // equal keys across blocks
  w[5] = std::nanf("");
  const uint64_t klt = key32(0.004f), keq = key32(0.004f);
  const int64_t quota = 1000;
  fs::SaraSelectParams p;
  p.weight = w.data();
  p.numel = n;
  p.key_lt = klt;
  p.key_eq = keq;
  p.eq_quota = quota;
  std::vector<int64_t> blocks(static_cast<size_t>(2 * fs::sara_select_blocks(n)));
  p.block_counts = blocks.data();
  int64_t count = -1;
  ASSERT_TRUE(fs::sara_select_count(p, &count).ok());
  std::vector<int32_t> ref;
  int64_t eq = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t k = key32(w[i]);
    if (k > 0x7F800000u) continue;
    if (k < klt || (k == keq && eq++ < quota)) ref.push_back(static_cast<int32_t>(i));
  }
  ASSERT_EQ(count, static_cast<int64_t>(ref.size()));
  std::vector<int32_t> idx(static_cast<size_t>(count));
  std::vector<float> base(static_cast<size_t>(count));
  p.indices = idx.data();
  p.base = base.data();
  ASSERT_TRUE(fs::sara_select_write(p).ok());
  EXPECT_EQ(idx, ref);
  for (size_t j = 0; j < idx.size(); ++j) EXPECT_EQ(base[j], w[idx[j]]);
}

TEST(Sara, RowPtrAndScatter) {
  const int64_t rows = 13, cols = 17;
  auto idx = rand_idx(rows * cols, 50, 3);
  std::vector<int32_t> rp(rows + 1);
  fs::SaraRowPtrParams r;
  r.indices = idx.data();
  r.k = 50;
  r.rows = rows;
  r.cols = cols;
  r.row_ptr = rp.data();
  ASSERT_TRUE(fs::sara_row_ptr(r).ok());
  for (int64_t i = 0; i <= rows; ++i) {
    int64_t c = 0;
    for (int32_t v : idx) c += v < i * cols;
    EXPECT_EQ(rp[i], c);
  }
  auto w = randn(rows * cols, 4);
  auto delta = randn(50, 5);
  std::vector<float> base(50);
  for (int j = 0; j < 50; ++j) base[j] = w[idx[j]];
  auto w2 = w;
  fs::SaraScatterParams s;
  s.weight = w2.data();
  s.weight_numel = rows * cols;
  s.indices = idx.data();
  s.k = 50;
  s.base = base.data();
  s.delta = delta.data();
  s.alpha = 0.25;
  ASSERT_TRUE(fs::sara_scatter(s).ok());
  for (int64_t i = 0, j = 0; i < rows * cols; ++i) {
    if (j < 50 && idx[j] == i) {
      EXPECT_EQ(w2[i], base[j] + 0.25f * delta[j]);
      ++j;
    } else {
      EXPECT_EQ(w2[i], w[i]);
    }
  }
}

TEST(Sara, SddmmMatchesNaiveAndIsThreadInvariant) {
  for (int64_t n : {0, 1, 5, 300, 1000}) {
    const int64_t rows = 37, cols = 53;
    auto go = randn(n * rows, 6), x = randn(n * cols, 7);
    auto idx = rand_idx(rows * cols, 400, 8);
    std::vector<float> out(400, -1.f), out1(400, -2.f);
    fs::SaraSddmmParams p;
    p.grad_out = go.data();
    p.input = x.data();
    p.n = n;
    p.rows = rows;
    p.cols = cols;
    p.go_s0 = rows;
    p.in_s0 = cols;
    p.indices = idx.data();
    p.k = 400;
    p.out = out.data();
    std::vector<unsigned char> ws(fs::sara_sddmm_workspace_bytes(p) + 1);
    p.workspace = ws.data();
    p.workspace_size = ws.size();
    ASSERT_TRUE(fs::sara_sddmm(p).ok());
    for (int j = 0; j < 400; ++j) {
      const int64_t r = idx[j] / cols, c = idx[j] % cols;
      double ref = 0, bound = 0;
      for (int64_t i = 0; i < n; ++i) {
        ref += double(go[i * rows + r]) * x[i * cols + c];
        bound += std::fabs(double(go[i * rows + r]) * x[i * cols + c]);
      }
      EXPECT_LE(std::fabs(out[j] - ref), 1e-5 * bound + 1e-30) << "n=" << n << " j=" << j;
    }
    p.num_threads = 1;
    p.out = out1.data();
    std::vector<unsigned char> ws1(fs::sara_sddmm_workspace_bytes(p) + 1);
    p.workspace = ws1.data();
    p.workspace_size = ws1.size();
    ASSERT_TRUE(fs::sara_sddmm(p).ok());
    EXPECT_EQ(0, std::memcmp(out.data(), out1.data(), out.size() * 4));
  }
}

TEST(Sara, Conv2dSddmmMatchesNaive) {
  const int64_t B = 2, C = 4, O = 6, H = 7, W = 6, kh = 3, kw = 2, G = 2, sh = 2, sw = 1, ph = 1, pw = 1, dh = 1, dw = 2;
  const int64_t Ho = (H + 2 * ph - dh * (kh - 1) - 1) / sh + 1, Wo = (W + 2 * pw - dw * (kw - 1) - 1) / sw + 1;
  auto x = randn(B * C * H * W, 9), go = randn(B * O * Ho * Wo, 10);
  const int64_t cols = C / G * kh * kw;
  auto idx = rand_idx(O * cols, 40, 11);
  std::vector<float> out(40);
  fs::SaraConv2dSddmmParams p;
  p.grad_out = go.data();
  p.input = x.data();
  p.batch = B; p.in_channels = C; p.height = H; p.width = W;
  p.out_channels = O; p.out_height = Ho; p.out_width = Wo;
  const int64_t gs[4] = {O * Ho * Wo, Ho * Wo, Wo, 1}, xs[4] = {C * H * W, H * W, W, 1};
  std::copy(gs, gs + 4, p.go_s);
  std::copy(xs, xs + 4, p.in_s);
  p.kh = kh; p.kw = kw; p.stride_h = sh; p.stride_w = sw; p.pad_h = ph; p.pad_w = pw; p.dil_h = dh; p.dil_w = dw;
  p.groups = G;
  p.indices = idx.data();
  p.k = 40;
  p.out = out.data();
  ASSERT_TRUE(fs::sara_conv2d_sddmm(p).ok());
  for (int j = 0; j < 40; ++j) {
    const int64_t o = idx[j] / cols, col = idx[j] % cols;
    const int64_t c = col / (kh * kw), pp = (col / kw) % kh, q = col % kw;
    const int64_t ci = (o / (O / G)) * (C / G) + c;
    double ref = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t y = 0; y < Ho; ++y)
        for (int64_t xx = 0; xx < Wo; ++xx) {
          const int64_t iy = y * sh + pp * dh - ph, ix = xx * sw + q * dw - pw;
          if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
          ref += double(go[((b * O + o) * Ho + y) * Wo + xx]) * x[((b * C + ci) * H + iy) * W + ix];
        }
    EXPECT_NEAR(out[j], ref, 1e-4) << j;
  }
}

TEST(Sara, SpmmMatchesNaive) {
  const int64_t rows = 11, cols = 9, l = 3;
  auto idx = rand_idx(rows * cols, 30, 12);
  auto v = randn(30, 13);
  for (bool tr : {false, true}) {
    auto d = randn((tr ? rows : cols) * l, 14);
    std::vector<float> out((tr ? cols : rows) * l);
    fs::SaraSpmmParams p;
    p.indices = idx.data();
    p.k = 30;
    p.values = v.data();
    p.rows = rows;
    p.cols = cols;
    p.l = l;
    p.dense = d.data();
    p.out = out.data();
    p.transpose = tr;
    ASSERT_TRUE(fs::sara_spmm(p).ok());
    std::vector<double> ref(out.size(), 0.0);
    for (int j = 0; j < 30; ++j) {
      const int64_t r = idx[j] / cols, c = idx[j] % cols;
      for (int64_t e = 0; e < l; ++e) {
        if (tr) ref[c * l + e] += double(v[j]) * d[r * l + e];
        else ref[r * l + e] += double(v[j]) * d[c * l + e];
      }
    }
    for (size_t i = 0; i < out.size(); ++i) EXPECT_NEAR(out[i], ref[i], 1e-5);
  }
}

TEST(Sara, AdamWElementFollowsTorchOrder) {
  // One element by hand, in torch's _single_tensor_adamw order (fp32, no FMA).
  const double lr = 1e-2, b1 = 0.9, b2 = 0.999, eps = 1e-8, wd = 0.1, bc1 = 1 - 0.9, bc2 = 1 - 0.999;
  const auto s = fs::detail::adamw_scalars<float>(lr, b1, b2, eps, wd, bc1, bc2, 1.0);
  float d = 0.3f, m = 0.01f, v = 0.002f;
  const float g = -0.7f;
  const auto r = fs::detail::adamw_element<float>(d, m, v, g, 0.f, s, false);
  float dd = d * static_cast<float>(1 - lr * wd);
  const float mm = std::fma(static_cast<float>(1 - b1), g - m, m);  // torch's vectorised lerp: one FMA
  float vv = v * static_cast<float>(b2);
  vv = vv + (static_cast<float>(1 - b2) * g) * g;
  const float denom = std::sqrt(vv) / static_cast<float>(std::pow(bc2, 0.5)) + static_cast<float>(eps);
  dd = dd + (static_cast<float>(-(lr / bc1)) * mm) / denom;
  EXPECT_EQ(r.d, dd);
  EXPECT_EQ(r.m, mm);
  EXPECT_EQ(r.v, vv);

  // The core step over one tensor writes delta, moments and the weight.
  std::vector<float> w = {1.f, 2.f, 3.f, 4.f}, base = {2.f, 4.f};
  std::vector<int32_t> idx = {1, 3};
  std::vector<float> dv = {0.3f, 0.3f}, mv = {0.01f, 0.01f}, vv2 = {0.002f, 0.002f}, gv = {-0.7f, -0.7f};
  fs::SaraAdamWTensor t;
  t.delta = {dv.data(), 2, DType::Float32};
  t.exp_avg = {mv.data(), 2, DType::Float32};
  t.exp_avg_sq = {vv2.data(), 2, DType::Float32};
  t.grad = {gv.data(), 2, DType::Float32};
  t.weight = {w.data(), 4, DType::Float32};
  t.indices = {idx.data(), 2, DType::Int32};
  t.base = {base.data(), 2, DType::Float32};
  fs::SaraAdamWParams p;
  p.tensors = &t;
  p.n_tensors = 1;
  p.lr = lr; p.beta1 = b1; p.beta2 = b2; p.eps = eps; p.weight_decay = wd;
  p.bias_correction1 = bc1; p.bias_correction2 = bc2;
  ASSERT_TRUE(fs::sara_adamw_step(p).ok());
  EXPECT_EQ(dv[0], dd);
  EXPECT_EQ(w[1], 2.f + dd);
  EXPECT_EQ(w[3], 4.f + dd);
  EXPECT_EQ(w[0], 1.f);
}

TEST(Sara, MergedValueRoundsOnce) {
  using fastnorm::bf16_t;
  const bf16_t b{fastnorm::detail::float_to_bf16(1.0f)};
  const bf16_t r = fs::detail::merged_value<bf16_t, float>(b, 1.0f, 0.00390625f * 0.5f + 1e-7f);
  EXPECT_EQ(r.bits, fastnorm::detail::float_to_bf16(1.0f + (0.00390625f * 0.5f + 1e-7f)));
}

TEST(Sara, StatusCodes) {
  std::vector<float> w(12, 0.f), out(4);
  std::vector<int32_t> idx = {0, 3, 5};
  fs::SaraScatterParams s;
  s.weight = w.data();
  s.weight_numel = 12;
  s.indices = idx.data();
  s.k = 3;
  s.delta = nullptr;  // null delta with k > 0
  EXPECT_EQ(fs::sara_scatter(s).code(), StatusCode::InvalidArgument);
  std::vector<float> d(3, 0.f);
  s.delta = d.data();
  EXPECT_TRUE(fs::sara_scatter(s).ok());
  std::vector<int32_t> bad = {0, 5, 3};
  s.indices = bad.data();
  const auto st = fs::sara_scatter(s);
  EXPECT_EQ(st.code(), StatusCode::InvalidArgument);
  EXPECT_NE(st.message().find("argument 'indices' must be sorted and unique"), std::string::npos) << st.message();
  bad = {0, 5, 12};
  EXPECT_NE(fs::sara_scatter(s).message().find("must be flat indices in [0, 12)"), std::string::npos);

  fs::SaraSddmmParams p;
  p.n = -1;
  EXPECT_EQ(fs::sara_sddmm(p).code(), StatusCode::InvalidArgument);
  p.n = 4;
  p.rows = 0;  // k > 0 with an empty weight
  p.cols = 3;
  p.indices = idx.data();
  p.k = 3;
  p.out = out.data();
  std::vector<float> go(16), x(12);
  p.grad_out = go.data();
  p.input = x.data();
  EXPECT_EQ(fs::sara_sddmm(p).code(), StatusCode::InvalidArgument);
  std::vector<float> go2(64 * 64), x2(64 * 64);
  p.grad_out = go2.data();
  p.input = x2.data();
  p.n = 64;
  p.rows = 64;
  p.cols = 64;
  p.go_s0 = 64;
  p.in_s0 = 64;
  ASSERT_GT(fs::sara_sddmm_workspace_bytes(p), 0u);
  p.workspace = nullptr;  // too small
  const auto ws = fs::sara_sddmm(p);
  EXPECT_EQ(ws.code(), StatusCode::InvalidArgument);
  EXPECT_NE(ws.message().find("workspace"), std::string::npos);
  p.dtype = DType::Int32;
  EXPECT_EQ(fs::sara_sddmm(p).code(), StatusCode::Unsupported);

  fs::SaraHistogramParams h;
  h.weight = w.data();
  h.numel = 12;
  EXPECT_EQ(fs::sara_abs_histogram(h).code(), StatusCode::InvalidArgument);  // null hist
  std::vector<int64_t> hist(256);
  h.hist = hist.data();
  h.shift = 4;
  EXPECT_EQ(fs::sara_abs_histogram(h).code(), StatusCode::InvalidArgument);  // shift not a multiple of 8

  fs::SaraConv2dSddmmParams c;
  c.batch = 1; c.in_channels = 3; c.height = 4; c.width = 4; c.out_channels = 2; c.out_height = 2; c.out_width = 2;
  c.kh = c.kw = 3;
  c.groups = 2;
  EXPECT_EQ(fs::sara_conv2d_sddmm(c).code(), StatusCode::InvalidArgument);  // groups must divide C
  c.groups = 1;
  c.out_height = 3;
  EXPECT_EQ(fs::sara_conv2d_sddmm(c).code(), StatusCode::InvalidArgument);  // output size mismatch

  fs::SaraAdamWParams a;
  a.n_tensors = 1;
  EXPECT_EQ(fs::sara_adamw_step(a).code(), StatusCode::InvalidArgument);  // null tensor list
  a.n_tensors = 0;
  a.beta2 = 1.0;
  EXPECT_EQ(fs::sara_adamw_step(a).code(), StatusCode::InvalidArgument);
}

}  // namespace

namespace {

// The FASTNORM_HD helpers the CUDA kernels use (csrc/core/cuda/sara.cu), run on the host: the tile loader's row
// window search, strided addressing of the write-through, NaN handling of the selection predicate, conv decoding.
TEST(SaraHD, LowerBoundIndexFindsRowWindows) {
  const std::vector<int32_t> idx = {2, 5, 9, 64, 70, 127, 128, 200};
  const int64_t cols = 64;
  // Row 1 ([64, 128)) column window [0, 64): entries 3..5; window [6, 63]: entries 4..5.
  EXPECT_EQ(fastnorm::sara::detail::lower_bound_index(idx.data(), 0, 8, 1 * cols + 0), 3);
  EXPECT_EQ(fastnorm::sara::detail::lower_bound_index(idx.data(), 0, 8, 2 * cols), 6);
  EXPECT_EQ(fastnorm::sara::detail::lower_bound_index(idx.data(), 3, 6, 1 * cols + 6), 4);
  EXPECT_EQ(fastnorm::sara::detail::lower_bound_index(idx.data(), 0, 8, 1000), 8);
  EXPECT_EQ(fastnorm::sara::detail::lower_bound_index(idx.data(), 0, 0, 5), 0);
}

TEST(SaraHD, StridedOffsetAndConvDecode) {
  fastnorm::sara::SaraLayout L;  // a [2, 3, 4] tensor with strides (1, 2, 6) (column-major-ish)
  L.ndim = 3;
  L.sizes[0] = 2; L.sizes[1] = 3; L.sizes[2] = 4;
  L.strides[0] = 1; L.strides[1] = 2; L.strides[2] = 6;
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t b = 0; b < 3; ++b)
      for (int64_t c = 0; c < 4; ++c)
        EXPECT_EQ(fastnorm::sara::detail::strided_offset((a * 3 + b) * 4 + c, L), a + 2 * b + 6 * c);
  fastnorm::sara::SaraLayout C;  // contiguous
  EXPECT_EQ(fastnorm::sara::detail::strided_offset(17, C), 17);
  const auto cc = fastnorm::sara::detail::decode_conv_col(2 * 9 + 1 * 3 + 2, 3, 3);
  EXPECT_EQ(cc.c, 2);
  EXPECT_EQ(cc.p, 1);
  EXPECT_EQ(cc.q, 2);
}

TEST(SaraHD, SelectClassNeverTakesNaN) {
  namespace d = fastnorm::sara::detail;
  const float nan = std::nanf(""), inf = INFINITY;
  EXPECT_EQ(d::select_class(nan, ~0ull, 0, false), 2);
  EXPECT_EQ(d::select_class(-nan, ~0ull, d::KeyTraits<float>::key(nan), true), 2);
  EXPECT_EQ(d::select_class(inf, ~0ull, 0, false), 0);  // +inf is a value: selected below a larger key
  EXPECT_EQ(d::select_class(-0.0f, 1, 0, false), 0);
  EXPECT_EQ(d::select_class(1.0f, key32(1.0f), key32(1.0f), true), 1);
  EXPECT_EQ(d::select_class(1.0f, key32(1.0f), key32(1.0f), false), 2);
}

}  // namespace
