// Internal: per-CPU-feature kernel sets. Each returns nullptr when not compiled for this target.
#pragma once

#include "tensor/tensor.h"

namespace veil::tensor {

// AVX2+FMA+F16C: F32, F16, Q8_0, Q4_0 (activations quantised to Q8_0 on the fly for the quantised types);
// the other types use the scalar reference. Defined in kernels_avx2.cpp.
const KernelSet* avx2_kernels();

}  // namespace veil::tensor
