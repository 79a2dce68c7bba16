// The csfr op library (schemas in schemas.h) and the Python module.
// Implementations register per dispatch key: CPU in csrc/cpu_kernels.cpp, CUDA in csrc/cuda/.
#include <Python.h>
#include <torch/library.h>

#include "fused_autograd.h"
#include "schemas.h"

TORCH_LIBRARY(csfr, m) { csfr::define_kernel_schemas(m); }

namespace {
struct CsfrLib {
  static constexpr const char* kNamespace = "csfr";
};
}  // namespace
TORCH_LIBRARY_IMPL(csfr, Autograd, m) { csfr::register_fused_autograd<CsfrLib>(m); }

// A plain CPython module (no pybind11: it keeps the build light); importing it loads the
// op registrations above. Attributes say what this build contains.
static PyModuleDef csfr_module = {PyModuleDef_HEAD_INIT, "_C", "csfr fused kernels", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&csfr_module);
  if (m == nullptr) return nullptr;
#ifdef CSFR_WITH_CUDA
  const bool with_cuda = true;
#else
  const bool with_cuda = false;
#endif
#ifdef _OPENMP
  const bool with_openmp = true;
#else
  const bool with_openmp = false;
#endif
  if (PyModule_AddObject(m, "with_cuda", PyBool_FromLong(with_cuda)) < 0 ||
      PyModule_AddObject(m, "with_openmp", PyBool_FromLong(with_openmp)) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
