// Shared helpers of the consumer example: each check_<family>.cpp calls one op of its family through the
// torch-free core API, recomputes the result naively in double precision, and reports the largest error.
#pragma once
#include <cstddef>
#include <vector>

#include "fastnorm/common.h"

namespace example {

// float32 results against a double reference, for values of order 1: a few float32 ulps of headroom.
constexpr double kTol = 1e-5;

// Largest |got - want| over all elements.
double max_error(const std::vector<float>& got, const std::vector<double>& want);
// Largest |got - want| / max(1, |want|): absolute for small values, relative for large ones.
double max_scaled_error(const std::vector<float>& got, const std::vector<double>& want);
// Prints one line and returns whether err <= tol.
bool report(const char* what, double err, double tol = kTol);
// Prints the status message of a failed call; returns s.ok().
bool call_ok(const char* what, const fastnorm::Status& s);

// One per family; each returns true when every output matched.
bool check_norm();             // LayerNorm, RMSNorm, CRMSNorm forward
bool check_lion();             // one Lion step over two tensors
bool check_poincare();         // Möbius addition and the geodesic distance
bool check_hyper_attention();  // causal forward in its exact regime vs dense softmax attention
bool check_sara();             // masked Linear weight gradient (SDDMM) vs the dense product at the indices
bool check_bad_argument();     // a bad argument comes back as a Status

}  // namespace example
