// Internal helpers shared by the CPU files of the Poincaré layers (poincare_layers.cpp, poincare_layers_bn.cpp).
#pragma once
#include "fastnorm/poincare.h"
#include "poincare_layers_kernels.h"

namespace fastnorm {
namespace poincare {
namespace layers_cpu {

int threads_of(int requested);                   // 0 → OpenMP default
double read_curvature(const Curvature& c);       // host pointer, any float dtype
void write_scalar(void* p, DType t, double v);   // one element of a float dtype
void gemm(const GemmArgs& a);                    // AVX2 or baseline build

}  // namespace layers_cpu
}  // namespace poincare
}  // namespace fastnorm
