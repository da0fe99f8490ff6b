// The torch side of the SaRA ops (specs/sara.md §2.4, §5), shared by the CPU (sara.cpp) and CUDA (sara_cuda.cpp)
// registrations: argument checks whose messages read "fastnorm.<op>: argument '<name>' <expected>, got <actual>",
// output allocation, and the call into the core through a Backend (CPU or CUDA) that supplies the entry points.
#pragma once
#include <cstring>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "binding.h"
#include "fastnorm/sara.h"

namespace fastnorm {
namespace binding {
namespace sara_ops {

using namespace fastnorm::sara;

inline std::string dev_str(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(int(t.get_device_index())) : std::string("cpu");
}
inline const char* dt_str(const Tensor& t) { return scalar_name(t.scalar_type()); }

template <typename... Ts>
[[noreturn]] void bad(const char* op, const char* arg, const Ts&... parts) {
  fail(op, "argument '", arg, "' ", parts...);
}

// A core Status: its message already reads "<op>: argument ..."; the binding adds "fastnorm.".
inline void check_core(const Status& s, const char* op) {
  if (s.ok()) return;
  const std::string& m = s.message();
  const std::string pre = std::string(op) + ": ";
  throw std::runtime_error("fastnorm." + (m.rfind(pre, 0) == 0 ? m : pre + m));
}

inline void check_device(const Tensor& ref, const Tensor& t, const char* op, const char* arg, const char* ref_name) {
  if (t.is_cuda() != ref.is_cuda() || (t.is_cuda() && t.get_device_index() != ref.get_device_index()))
    bad(op, arg, "must be on ", dev_str(ref), " (", ref_name, "'s device), got ", dev_str(t));
  if (t.layout() != torch::headeronly::Layout::Strided) bad(op, arg, "must be a strided (dense) tensor, got a sparse layout");
}

inline DType float_arg(const Tensor& t, const char* op, const char* arg) {
  if (!is_float_dtype(t.scalar_type())) bad(op, arg, "must be float16, bfloat16, float32 or float64, got ", dt_str(t));
  return *to_dtype(t.scalar_type());
}

// A 1-D index vector (int32/int64), made contiguous if it is not (a documented k-sized copy).
inline Tensor index_arg(const Tensor& ref, const Tensor& t, const char* op, const char* arg, const char* ref_name) {
  check_device(ref, t, op, arg, ref_name);
  if (t.scalar_type() != ScalarType::Int && t.scalar_type() != ScalarType::Long)
    bad(op, arg, "must be int32 or int64, got ", dt_str(t));
  if (t.dim() != 1) bad(op, arg, "must be 1-D, got shape ", shape_str(t));
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// A 1-D vector of k entries (delta, base, values), contiguous.
inline Tensor vec_arg(const Tensor& ref, const Tensor& t, int64_t k, const char* op, const char* arg, const char* ref_name) {
  check_device(ref, t, op, arg, ref_name);
  if (t.dim() != 1 || t.size(0) != k) bad(op, arg, "must have shape [", k, "] (indices' length), got ", shape_str(t));
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

inline SaraLayout layout_of(const Tensor& w, const char* op, const char* arg) {
  SaraLayout L;
  if (w.is_contiguous()) return L;
  if (w.dim() > 8) bad(op, arg, "must have at most 8 dims when it is not contiguous, got ", w.dim());
  L.ndim = static_cast<int32_t>(w.dim());
  for (int64_t d = 0; d < w.dim(); ++d) {
    L.sizes[d] = w.size(d);
    L.strides[d] = w.stride(d);
  }
  return L;
}

// Dense and non-overlapping (a permutation of a contiguous layout): the mutated weight may be written in place.
inline bool non_overlapping_dense(const Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) dims.emplace_back(t.stride(i), t.size(i));
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (const auto& d : dims) {
    if (d.first != expect) return false;
    expect *= d.second;
  }
  return true;
}

inline ScalarType acc_type(ScalarType t) { return t == ScalarType::Double ? ScalarType::Double : ScalarType::Float; }

// ---- sara_abs_histogram_ ---------------------------------------------------------------------------------
template <class B>
void abs_histogram_(Tensor weight, Tensor hist, int64_t shift, int64_t prefix_mask, int64_t prefix) {
  const char* op = "sara_abs_histogram_";
  B::check_kind(weight, op, "weight");
  SaraHistogramParams p;
  p.dtype = float_arg(weight, op, "weight");
  check_device(weight, hist, op, "hist", "weight");
  if (hist.scalar_type() != ScalarType::Long || hist.dim() != 1 || hist.size(0) != 256 || !hist.is_contiguous())
    bad(op, "hist", "must be a contiguous int64 tensor of shape [256], got ", dt_str(hist), " ", shape_str(hist));
  const Tensor w = weight.is_contiguous() ? weight : torch::stable::contiguous(weight);
  p.weight = w.data_ptr();
  p.numel = w.numel();
  p.hist = static_cast<int64_t*>(hist.data_ptr());
  p.shift = static_cast<int32_t>(shift);
  p.prefix_mask = static_cast<uint64_t>(prefix_mask);
  p.prefix = static_cast<uint64_t>(prefix);
  check_core(B::histogram(p, w), op);
}

// ---- sara_select -----------------------------------------------------------------------------------------
template <class B>
std::tuple<Tensor, Tensor> select(Tensor weight, int64_t key_lt, int64_t key_eq, int64_t eq_quota) {
  const char* op = "sara_select";
  B::check_kind(weight, op, "weight");
  SaraSelectParams p;
  p.dtype = float_arg(weight, op, "weight");
  if (key_lt < 0) bad(op, "key_lt", "must be >= 0, got ", key_lt);
  if (eq_quota < 0) bad(op, "eq_quota", "must be >= 0, got ", eq_quota);
  const Tensor w = weight.is_contiguous() ? weight : torch::stable::contiguous(weight);
  p.weight = w.data_ptr();
  p.numel = w.numel();
  p.key_lt = static_cast<uint64_t>(key_lt);
  p.key_eq = static_cast<uint64_t>(key_eq < 0 ? 0 : key_eq);
  p.eq_quota = key_eq < 0 ? 0 : eq_quota;
  const bool i64 = p.numel >= (int64_t(1) << 31);
  p.index_dtype = i64 ? DType::Int64 : DType::Int32;
  const int64_t nb = sara_select_blocks(p.numel);
  Tensor counts = torch::stable::new_empty(w, {std::max<int64_t>(2 * nb, 1)}, ScalarType::Long);
  p.block_counts = static_cast<int64_t*>(counts.data_ptr());
  int64_t count = 0;
  check_core(B::select_count(p, &count, w), op);
  Tensor idx = torch::stable::new_empty(w, {count}, i64 ? ScalarType::Long : ScalarType::Int);
  Tensor base = torch::stable::new_empty(w, {count}, w.scalar_type());
  p.indices = idx.data_ptr();
  p.base = base.data_ptr();
  if (count > 0) check_core(B::select_write(p, w), op);
  return {idx, base};
}

// ---- sara_row_ptr ----------------------------------------------------------------------------------------
template <class B> Tensor row_ptr(Tensor indices, int64_t rows, int64_t cols) {
  const char* op = "sara_row_ptr";
  B::check_kind(indices, op, "indices");
  const Tensor idx = index_arg(indices, indices, op, "indices", "indices");
  if (rows < 0) bad(op, "rows", "must be >= 0, got ", rows);
  if (cols < 0) bad(op, "cols", "must be >= 0, got ", cols);
  SaraRowPtrParams p;
  p.indices = idx.data_ptr();
  p.index_dtype = *to_dtype(idx.scalar_type());
  p.k = idx.numel();
  p.rows = rows;
  p.cols = cols;
  const bool r64 = p.k >= (int64_t(1) << 31);
  p.row_ptr_dtype = r64 ? DType::Int64 : DType::Int32;
  Tensor out = torch::stable::new_empty(idx, {rows + 1}, r64 ? ScalarType::Long : ScalarType::Int);
  p.row_ptr = out.data_ptr();
  check_core(B::row_ptr(p, idx), op);
  return out;
}

// ---- sara_scatter_ ---------------------------------------------------------------------------------------
template <class B>
void scatter_(Tensor weight, Tensor indices, std::optional<Tensor> base, Tensor delta, double alpha) {
  const char* op = "sara_scatter_";
  B::check_kind(weight, op, "weight");
  SaraScatterParams p;
  p.weight_dtype = float_arg(weight, op, "weight");
  if (!non_overlapping_dense(weight))
    bad(op, "weight", "must be non-overlapping and dense (it is written in place), got shape ", shape_str(weight));
  const Tensor idx = index_arg(weight, indices, op, "indices", "weight");
  const int64_t k = idx.numel();
  p.delta_dtype = float_arg(delta, op, "delta");
  const Tensor d = vec_arg(weight, delta, k, op, "delta", "weight");
  Tensor b;
  if (base) {
    b = vec_arg(weight, *base, k, op, "base", "weight");
    if (b.scalar_type() != weight.scalar_type())
      bad(op, "base", "must have the weight's dtype ", dt_str(weight), ", got ", dt_str(b));
    p.base = b.data_ptr();
  }
  p.weight = weight.data_ptr();
  p.weight_numel = weight.numel();
  p.layout = layout_of(weight, op, "weight");
  p.indices = idx.data_ptr();
  p.index_dtype = *to_dtype(idx.scalar_type());
  p.k = k;
  p.delta = d.data_ptr();
  p.alpha = alpha;
  check_core(B::scatter(p, weight), op);
}

// ---- sara_sddmm ------------------------------------------------------------------------------------------
inline void row_ptr_arg(const Tensor& ref, const std::optional<Tensor>& rp, int64_t rows, const char* op,
                        const void*& ptr, DType& dt, Tensor& keep) {
  if (!rp) return;
  check_device(ref, *rp, op, "row_ptr", "grad_out");
  if (rp->scalar_type() != ScalarType::Int && rp->scalar_type() != ScalarType::Long)
    bad(op, "row_ptr", "must be int32 or int64, got ", dt_str(*rp));
  if (rp->dim() != 1 || rp->size(0) != rows + 1)
    bad(op, "row_ptr", "must have shape [", rows + 1, "] (rows + 1), got ", shape_str(*rp));
  keep = rp->is_contiguous() ? *rp : torch::stable::contiguous(*rp);
  ptr = keep.data_ptr();
  dt = *to_dtype(keep.scalar_type());
}

template <class B>
Tensor sddmm(Tensor grad_out, Tensor input, Tensor indices, std::optional<Tensor> row_ptr, int64_t cols,
             bool deterministic) {
  const char* op = "sara_sddmm";
  B::check_kind(grad_out, op, "grad_out");
  SaraSddmmParams p;
  p.dtype = float_arg(grad_out, op, "grad_out");
  check_device(grad_out, input, op, "input", "grad_out");
  if (input.scalar_type() != grad_out.scalar_type())
    bad(op, "input", "must have grad_out's dtype ", dt_str(grad_out), ", got ", dt_str(input));
  if (grad_out.dim() != 2) bad(op, "grad_out", "must be 2-D [N, rows], got shape ", shape_str(grad_out));
  if (input.dim() != 2) bad(op, "input", "must be 2-D [N, cols], got shape ", shape_str(input));
  if (input.size(0) != grad_out.size(0))
    bad(op, "input", "must have grad_out's N = ", grad_out.size(0), " rows, got shape ", shape_str(input));
  if (cols < 0) bad(op, "cols", "must be >= 0, got ", cols);
  if (input.size(1) != cols) bad(op, "input", "must have cols = ", cols, " columns, got shape ", shape_str(input));
  const Tensor idx = index_arg(grad_out, indices, op, "indices", "grad_out");
  const int64_t rows = grad_out.size(1);
  Tensor g = grad_out, x = input, rp_keep;
  B::prepare_rows(g, x);  // CUDA: last-dim stride 1
  p.grad_out = g.data_ptr();
  p.input = x.data_ptr();
  p.n = g.size(0);
  p.rows = rows;
  p.cols = cols;
  p.go_s0 = g.stride(0);
  p.go_s1 = g.stride(1);
  p.in_s0 = x.stride(0);
  p.in_s1 = x.stride(1);
  p.indices = idx.data_ptr();
  p.index_dtype = *to_dtype(idx.scalar_type());
  p.k = idx.numel();
  row_ptr_arg(grad_out, row_ptr, rows, op, p.row_ptr, p.row_ptr_dtype, rp_keep);
  p.deterministic = deterministic;
  Tensor out = torch::stable::new_empty(grad_out, {p.k}, acc_type(grad_out.scalar_type()));
  p.out = out.data_ptr();
  check_core(B::sddmm(p, grad_out), op);
  return out;
}

// ---- sara_conv2d_sddmm -----------------------------------------------------------------------------------
inline std::pair<int64_t, int64_t> pair_arg(const std::vector<int64_t>& v, const char* op, const char* arg) {
  if (v.size() == 1) return {v[0], v[0]};
  if (v.size() != 2) bad(op, arg, "must have 1 or 2 entries, got ", v.size());
  return {v[0], v[1]};
}

template <class B>
Tensor conv2d_sddmm(Tensor grad_out, Tensor input, Tensor indices, std::optional<Tensor> row_ptr,
                    std::vector<int64_t> weight_shape, std::vector<int64_t> stride, std::vector<int64_t> padding,
                    std::vector<int64_t> dilation, int64_t groups, bool deterministic) {
  const char* op = "sara_conv2d_sddmm";
  B::check_kind(grad_out, op, "grad_out");
  SaraConv2dSddmmParams p;
  p.dtype = float_arg(grad_out, op, "grad_out");
  check_device(grad_out, input, op, "input", "grad_out");
  if (input.scalar_type() != grad_out.scalar_type())
    bad(op, "input", "must have grad_out's dtype ", dt_str(grad_out), ", got ", dt_str(input));
  if (grad_out.dim() != 4) bad(op, "grad_out", "must be 4-D [B, O, Ho, Wo], got shape ", shape_str(grad_out));
  if (input.dim() != 4) bad(op, "input", "must be 4-D [B, C, H, W], got shape ", shape_str(input));
  if (weight_shape.size() != 4) bad(op, "weight_shape", "must have 4 entries [O, C/groups, kh, kw], got ", weight_shape.size());
  if (groups < 1) bad(op, "groups", "must be >= 1, got ", groups);
  const auto [sh, sw] = pair_arg(stride, op, "stride");
  const auto [ph, pw] = pair_arg(padding, op, "padding");
  const auto [dh, dw] = pair_arg(dilation, op, "dilation");
  if (input.size(0) != grad_out.size(0))
    bad(op, "grad_out", "must have input's batch size ", input.size(0), ", got shape ", shape_str(grad_out));
  if (weight_shape[0] != grad_out.size(1))
    bad(op, "weight_shape", "must have O = grad_out.size(1) = ", grad_out.size(1), ", got ", weight_shape[0]);
  if (weight_shape[1] * groups != input.size(1))
    bad(op, "weight_shape", "must have C/groups = ", input.size(1), "/", groups, ", got ", weight_shape[1]);
  const Tensor idx = index_arg(grad_out, indices, op, "indices", "grad_out");
  Tensor g = grad_out, x = input, rp_keep;
  B::prepare_conv(g, x);
  p.grad_out = g.data_ptr();
  p.input = x.data_ptr();
  p.batch = x.size(0);
  p.in_channels = x.size(1);
  p.height = x.size(2);
  p.width = x.size(3);
  p.out_channels = g.size(1);
  p.out_height = g.size(2);
  p.out_width = g.size(3);
  for (int d = 0; d < 4; ++d) {
    p.go_s[d] = g.stride(d);
    p.in_s[d] = x.stride(d);
  }
  p.kh = weight_shape[2];
  p.kw = weight_shape[3];
  p.stride_h = sh; p.stride_w = sw;
  p.pad_h = ph; p.pad_w = pw;
  p.dil_h = dh; p.dil_w = dw;
  p.groups = groups;
  p.indices = idx.data_ptr();
  p.index_dtype = *to_dtype(idx.scalar_type());
  p.k = idx.numel();
  row_ptr_arg(grad_out, row_ptr, p.out_channels, op, p.row_ptr, p.row_ptr_dtype, rp_keep);
  p.deterministic = deterministic;
  Tensor out = torch::stable::new_empty(grad_out, {p.k}, acc_type(grad_out.scalar_type()));
  p.out = out.data_ptr();
  check_core(B::conv2d_sddmm(p, grad_out), op);
  return out;
}

// ---- sara_adamw_step_ ------------------------------------------------------------------------------------
inline std::string at(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

template <class B>
void adamw_step_(std::vector<Tensor> deltas, std::vector<Tensor> exp_avgs, std::vector<Tensor> exp_avg_sqs,
                 std::vector<Tensor> grads, std::vector<Tensor> weights, std::vector<Tensor> indices,
                 std::vector<Tensor> bases, double lr, double beta1, double beta2, double eps, double weight_decay,
                 double bias_correction1, double bias_correction2, bool decay_absolute, double alpha) {
  const char* op = "sara_adamw_step_";
  const size_t n = deltas.size();
  if (exp_avgs.size() != n || exp_avg_sqs.size() != n || grads.size() != n || weights.size() != n ||
      indices.size() != n || bases.size() != n)
    bad(op, "deltas", "and the other lists must have equal lengths, got ", n, ", ", exp_avgs.size(), ", ",
        exp_avg_sqs.size(), ", ", grads.size(), ", ", weights.size(), ", ", indices.size(), ", ", bases.size());
  if (n == 0) return;
  const Tensor& ref = deltas[0];
  B::check_kind(ref, op, "deltas");
  std::vector<SaraAdamWTensor> ts(n);
  std::vector<Tensor> keep;
  for (size_t i = 0; i < n; ++i) {
    const Tensor* lists[] = {&deltas[i], &exp_avgs[i], &exp_avg_sqs[i], &grads[i], &weights[i], &bases[i], &indices[i]};
    const char* names[] = {"deltas", "exp_avgs", "exp_avg_sqs", "grads", "weights", "bases", "indices"};
    for (int q = 0; q < 7; ++q) {
      const std::string nm = at(names[q], i);
      if (lists[q]->is_cuda() != ref.is_cuda() || (ref.is_cuda() && lists[q]->get_device_index() != ref.get_device_index()))
        fail(op, "argument '", nm, "' must be on ", dev_str(ref), " (deltas[0]'s device), got ", dev_str(*lists[q]));
      if (q < 4 && !lists[q]->is_contiguous()) fail(op, "argument '", nm, "' must be contiguous");
    }
    const Tensor& d = deltas[i];
    if (d.scalar_type() != ScalarType::Float && d.scalar_type() != ScalarType::Double)
      fail(op, "argument '", at("deltas", i), "' must be float32 or float64, got ", dt_str(d));
    if (d.dim() != 1) fail(op, "argument '", at("deltas", i), "' must be 1-D, got shape ", shape_str(d));
    if (!is_float_dtype(weights[i].scalar_type()))
      fail(op, "argument '", at("weights", i), "' must be a float tensor, got ", dt_str(weights[i]));
    if (!non_overlapping_dense(weights[i]))
      fail(op, "argument '", at("weights", i), "' must be non-overlapping and dense, got shape ", shape_str(weights[i]));
    for (int q = 1; q < 4; ++q)
      if (lists[q]->dim() != 1 || lists[q]->size(0) != d.size(0))
        fail(op, "argument '", at(names[q], i), "' must have shape [", d.size(0), "], got ", shape_str(*lists[q]));
    if (indices[i].scalar_type() != ScalarType::Int && indices[i].scalar_type() != ScalarType::Long)
      fail(op, "argument '", at("indices", i), "' must be int32 or int64, got ", dt_str(indices[i]));
    for (int q = 5; q < 7; ++q)
      if (lists[q]->dim() != 1 || lists[q]->size(0) != d.size(0))
        fail(op, "argument '", at(names[q], i), "' must have shape [", d.size(0), "], got ", shape_str(*lists[q]));
    const Tensor b = bases[i].is_contiguous() ? bases[i] : torch::stable::contiguous(bases[i]);
    const Tensor ix = indices[i].is_contiguous() ? indices[i] : torch::stable::contiguous(indices[i]);
    keep.push_back(b);
    keep.push_back(ix);
    SaraAdamWTensor& t = ts[i];
    auto ref_of = [](const Tensor& x) {
      SaraTensorRef r;
      r.ptr = x.data_ptr();
      r.numel = x.numel();
      r.dtype = *to_dtype(x.scalar_type());
      return r;
    };
    t.delta = ref_of(d);
    t.exp_avg = ref_of(exp_avgs[i]);
    t.exp_avg_sq = ref_of(exp_avg_sqs[i]);
    t.grad = ref_of(grads[i]);
    t.weight = ref_of(weights[i]);
    t.weight_layout = layout_of(weights[i], op, "weights");
    t.indices = ref_of(ix);
    t.base = ref_of(b);
  }
  SaraAdamWParams p;
  p.tensors = ts.data();
  p.n_tensors = static_cast<int64_t>(n);
  p.lr = lr;
  p.beta1 = beta1;
  p.beta2 = beta2;
  p.eps = eps;
  p.weight_decay = weight_decay;
  p.bias_correction1 = bias_correction1;
  p.bias_correction2 = bias_correction2;
  p.decay_absolute = decay_absolute;
  p.alpha = alpha;
  check_core(B::adamw(p, ref), op);
}

// ---- sara_spmm -------------------------------------------------------------------------------------------
template <class B>
Tensor spmm(Tensor indices, Tensor values, std::optional<Tensor> row_ptr, int64_t rows, int64_t cols, Tensor dense,
            bool transpose, bool deterministic) {
  const char* op = "sara_spmm";
  B::check_kind(values, op, "values");
  const Tensor idx = index_arg(values, indices, op, "indices", "values");
  const int64_t k = idx.numel();
  if (values.scalar_type() != ScalarType::Float && values.scalar_type() != ScalarType::Double)
    bad(op, "values", "must be float32 or float64, got ", dt_str(values));
  const Tensor v = vec_arg(values, values, k, op, "values", "values");
  check_device(values, dense, op, "dense", "values");
  if (dense.scalar_type() != values.scalar_type())
    bad(op, "dense", "must have values' dtype ", dt_str(values), ", got ", dt_str(dense));
  if (rows < 0) bad(op, "rows", "must be >= 0, got ", rows);
  if (cols < 0) bad(op, "cols", "must be >= 0, got ", cols);
  const int64_t in_rows = transpose ? rows : cols, out_rows = transpose ? cols : rows;
  if (dense.dim() != 2 || dense.size(0) != in_rows)
    bad(op, "dense", "must be 2-D with ", in_rows, transpose ? " (rows)" : " (cols)", " rows, got shape ", shape_str(dense));
  const Tensor D = dense.is_contiguous() ? dense : torch::stable::contiguous(dense);
  SaraSpmmParams p;
  p.indices = idx.data_ptr();
  p.index_dtype = *to_dtype(idx.scalar_type());
  p.k = k;
  p.values = v.data_ptr();
  p.dtype = *to_dtype(v.scalar_type());
  Tensor rp_keep;
  row_ptr_arg(values, row_ptr, rows, op, p.row_ptr, p.row_ptr_dtype, rp_keep);
  p.rows = rows;
  p.cols = cols;
  p.l = D.size(1);
  p.dense = D.data_ptr();
  Tensor out = torch::stable::new_empty(D, {out_rows, p.l}, D.scalar_type());
  p.out = out.data_ptr();
  p.transpose = transpose;
  p.deterministic = deterministic;
  check_core(B::spmm(p, out), op);
  return out;
}

}  // namespace sara_ops
}  // namespace binding
}  // namespace fastnorm

#define FASTNORM_REGISTER_SARA_IMPLS(m, Backend)                                                        \
  m.impl("sara_abs_histogram_", TORCH_BOX(&fastnorm::binding::sara_ops::abs_histogram_<Backend>));      \
  m.impl("sara_select", TORCH_BOX(&fastnorm::binding::sara_ops::select<Backend>));                      \
  m.impl("sara_row_ptr", TORCH_BOX(&fastnorm::binding::sara_ops::row_ptr<Backend>));                    \
  m.impl("sara_scatter_", TORCH_BOX(&fastnorm::binding::sara_ops::scatter_<Backend>));                  \
  m.impl("sara_sddmm", TORCH_BOX(&fastnorm::binding::sara_ops::sddmm<Backend>));                        \
  m.impl("sara_conv2d_sddmm", TORCH_BOX(&fastnorm::binding::sara_ops::conv2d_sddmm<Backend>));          \
  m.impl("sara_adamw_step_", TORCH_BOX(&fastnorm::binding::sara_ops::adamw_step_<Backend>));            \
  m.impl("sara_spmm", TORCH_BOX(&fastnorm::binding::sara_ops::spmm<Backend>))
