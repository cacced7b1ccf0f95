// CPU feature detection for kernel dispatch and `veil --version`.
#pragma once

#include <string>

namespace veil {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avx512bf16 = false;
  bool avxvnni = false;
};

const CpuFeatures& cpu_features();
std::string cpu_features_string();  // e.g. "avx2 fma f16c"

}  // namespace veil
