// A tensor shape as text ("[2, 19, 9409]") for the kernels' error messages.
#pragma once
#include <c10/util/ArrayRef.h>

#include <cstdint>
#include <string>

namespace csfr {

// Written out instead of streamed through c10's ArrayRef printer: on one GPU build (torch 2.11, CUDA 13)
// every failed check that streamed a shape crashed the process, while dtypes and devices printed
// (docs/cuda.md, "The second run").
inline std::string shape_text(c10::ArrayRef<int64_t> sizes) {
  std::string text = "[";
  for (size_t i = 0; i < sizes.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(sizes[i]);
  }
  return text + "]";
}

}  // namespace csfr
