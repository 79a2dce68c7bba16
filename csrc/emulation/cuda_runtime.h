// Emulated stand-in for the CUDA runtime header: kernels/ includes <cuda_runtime.h>, and the
// emulation build puts this folder first on the include path (csfr/ops/emulation.py).
#pragma once
#include "emulation.h"
