// CUDA kernels of the SaRA ops, registered for the CUDA dispatch key (schemas in sara.cpp, fastnorm._C). Launches go
// on torch's current stream of the op's device, under a device guard; scratch comes from torch's caching allocator.
#include "binding_cuda.h"
#include "fastnorm/sara_cuda.h"
#include "sara_ops.h"

namespace {

using fastnorm::binding::current_stream;
using fastnorm::binding::Tensor;
namespace fs = fastnorm::sara;
namespace fsc = fastnorm::sara::cuda;
using torch::headeronly::ScalarType;

struct CudaBackend {
  static void check_kind(const Tensor& t, const char* op, const char* arg) {
    if (!t.is_cuda()) fastnorm::binding::sara_ops::bad(op, arg, "must be a CUDA tensor for this kernel, got ",
                                                       fastnorm::binding::sara_ops::dev_str(t));
  }
  // The tile loader reads rows of 64 consecutive elements: last-dim stride 1 (a documented copy otherwise).
  static void prepare_rows(Tensor& g, Tensor& x) {
    if (g.size(1) > 1 && g.stride(1) != 1) g = torch::stable::contiguous(g);
    if (x.size(1) > 1 && x.stride(1) != 1) x = torch::stable::contiguous(x);
  }
  static void prepare_conv(Tensor&, Tensor&) {}  // any strides
  static fastnorm::Status histogram(const fs::SaraHistogramParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_abs_histogram(p, current_stream(ref));
  }
  static fastnorm::Status select_count(const fs::SaraSelectParams& p, int64_t* n, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_select_count(p, n, current_stream(ref));
  }
  static fastnorm::Status select_write(const fs::SaraSelectParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_select_write(p, current_stream(ref));
  }
  static fastnorm::Status row_ptr(const fs::SaraRowPtrParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_row_ptr(p, current_stream(ref));
  }
  static fastnorm::Status scatter(const fs::SaraScatterParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_scatter(p, current_stream(ref));
  }
  // row_ptr computed on the device when the caller passes none (rows + 1 int32/int64).
  static fastnorm::Status ensure_row_ptr(const void*& rp, fastnorm::DType& rdt, const void* idx, fastnorm::DType idt,
                                         int64_t k, int64_t rows, int64_t cols, const Tensor& ref, Tensor& keep) {
    if (rp != nullptr) return fastnorm::Status::OK();
    const bool r64 = k >= (int64_t(1) << 31);
    keep = torch::stable::new_empty(ref, {rows + 1}, r64 ? ScalarType::Long : ScalarType::Int);
    fs::SaraRowPtrParams q;
    q.indices = idx;
    q.index_dtype = idt;
    q.k = k;
    q.rows = rows;
    q.cols = cols;
    q.row_ptr = keep.data_ptr();
    q.row_ptr_dtype = r64 ? fastnorm::DType::Int64 : fastnorm::DType::Int32;
    rp = keep.data_ptr();
    rdt = q.row_ptr_dtype;
    return fsc::sara_row_ptr(q, current_stream(ref));
  }
  static fastnorm::Status sddmm(fs::SaraSddmmParams p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    Tensor rp;
    if (p.k > 0) {
      fastnorm::Status s = ensure_row_ptr(p.row_ptr, p.row_ptr_dtype, p.indices, p.index_dtype, p.k, p.rows, p.cols, ref, rp);
      if (!s.ok()) return s;
    }
    return fsc::sara_sddmm(p, current_stream(ref));
  }
  static fastnorm::Status conv2d_sddmm(const fs::SaraConv2dSddmmParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_conv2d_sddmm(p, current_stream(ref));
  }
  static fastnorm::Status adamw(const fs::SaraAdamWParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return fsc::sara_adamw_step(p, current_stream(ref));
  }
  static fastnorm::Status spmm(fs::SaraSpmmParams p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    Tensor rp, ws;
    if (!p.transpose && p.k > 0) {
      fastnorm::Status s = ensure_row_ptr(p.row_ptr, p.row_ptr_dtype, p.indices, p.index_dtype, p.k, p.rows, p.cols, ref, rp);
      if (!s.ok()) return s;
    }
    const size_t bytes = fsc::sara_spmm_workspace_bytes_cuda(p);
    if (bytes > 0) {
      ws = torch::stable::new_empty(ref, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
      p.workspace = ws.data_ptr();
      p.workspace_size = bytes;
    }
    return fsc::sara_spmm(p, current_stream(ref));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_SARA_IMPLS(m, CudaBackend); }
