// fastnorm._C: an empty Python module. Importing it loads this library, whose static registrars add the
// schemas and CPU kernels to torch's dispatcher (no pybind11 needed: ops bind through the dispatcher).
#include <Python.h>
#include <torch/csrc/stable/library.h>

#include "fastnorm/version.h"

static struct PyModuleDef fastnorm_c_module = {PyModuleDef_HEAD_INIT, "_C", "fastnorm CPU kernels and op schemas", -1,
                                               nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&fastnorm_c_module);
  if (m != nullptr) PyModule_AddStringConstant(m, "__version__", FASTNORM_VERSION_STRING);
  return m;
}

// The `fastnorm` op namespace. Each family adds its schemas with STABLE_TORCH_LIBRARY_FRAGMENT.
STABLE_TORCH_LIBRARY(fastnorm, m) { (void)m; }
