// Links the torch-free fastnorm core from another program and calls one op of every family through it
// (norm, Lion, Poincaré, HyperAttention, SaRA), checking each output against a plain double-precision
// computation written here. Exit status 0 when everything matches, 1 otherwise.
#include <cstdio>

#include "check.h"
#include "fastnorm/version.h"

int main() {
  std::printf("fastnorm %s core, float32 inputs, checked against double precision\n", FASTNORM_VERSION_STRING);
  bool ok = true;
  // Every check runs even after a failure, so one run shows everything that is wrong.
  ok &= example::check_norm();
  ok &= example::check_lion();
  ok &= example::check_poincare();
  ok &= example::check_hyper_attention();
  ok &= example::check_sara();
  ok &= example::check_bad_argument();
  std::printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
