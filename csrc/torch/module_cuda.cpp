// fastnorm._C_cuda: an empty Python module whose library registers the CUDA kernels. Imported only when
// torch has CUDA (the schemas come from fastnorm._C, which must be imported first).
#include <Python.h>

static struct PyModuleDef fastnorm_c_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", "fastnorm CUDA kernels", -1,
                                                    nullptr, nullptr, nullptr, nullptr, nullptr};

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&fastnorm_c_cuda_module); }
