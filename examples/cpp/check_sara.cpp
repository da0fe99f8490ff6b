// sara family: the masked Linear weight gradient. A SaRA layer trains k entries of a frozen weight W
// [rows x cols], named by sorted flat indices idx_j = r_j * cols + c_j; with y = x W^T, the gradient of those
// entries is out_j = sum_n dY[n, r_j] * X[n, c_j] (an SDDMM: the dense dW = dY^T X, only at the indices).
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "fastnorm/sara.h"

namespace example {

bool check_sara() {
  constexpr int64_t N = 5, kRowsW = 4, kColsW = 6;  // N tokens, W [4 x 6]
  std::vector<float> dy(N * kRowsW), x(N * kColsW);  // dY [N, rows], X [N, cols], row-major
  for (size_t i = 0; i < dy.size(); ++i) dy[i] = static_cast<float>(std::sin(0.5 * i + 0.3));
  for (size_t i = 0; i < x.size(); ++i) x[i] = static_cast<float>(std::cos(0.29 * i - 0.4));
  const std::vector<int32_t> idx = {0, 5, 7, 8, 13, 20, 23};  // strictly increasing, < rows * cols

  fastnorm::sara::SaraSddmmParams p;
  p.grad_out = dy.data();
  p.input = x.data();
  p.dtype = fastnorm::DType::Float32;
  p.n = N;
  p.rows = kRowsW;
  p.cols = kColsW;
  p.go_s0 = kRowsW;  // element strides of dY's two dims
  p.go_s1 = 1;
  p.in_s0 = kColsW;  // ... and of X's
  p.in_s1 = 1;
  p.indices = idx.data();
  p.index_dtype = fastnorm::DType::Int32;
  p.k = static_cast<int64_t>(idx.size());
  std::vector<float> out(idx.size());  // float32 for float32 inputs
  p.out = out.data();
  std::vector<unsigned char> ws(fastnorm::sara::sara_sddmm_workspace_bytes(p));
  p.workspace = ws.data();
  p.workspace_size = ws.size();
  if (!call_ok("sara::sara_sddmm", fastnorm::sara::sara_sddmm(p))) return false;

  // The dense product dW = dY^T X in double, gathered at the indices.
  std::vector<double> want;
  for (int32_t flat : idx) {
    const int64_t r = flat / kColsW, c = flat % kColsW;
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += double(dy[n * kRowsW + r]) * x[n * kColsW + c];
    want.push_back(s);
  }
  std::printf("sara: %lld of %lld weight entries, %lld tokens\n", (long long)idx.size(),
              (long long)(kRowsW * kColsW), (long long)N);
  return report("sara::sara_sddmm", max_error(out, want));
}

}  // namespace example
