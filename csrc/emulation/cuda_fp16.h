// Emulated __half: IEEE binary16 storage with the CUDA conversion functions (round to nearest even).
// Like torch's nvcc flags (-D__CUDA_NO_HALF_CONVERSIONS__), no implicit conversions exist.
#pragma once
#include <cstdint>

#include "emulation.h"

struct __half {
  uint16_t bits;
};

inline float __half2float(__half h) {
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1fu, man = h.bits & 0x3ffu;
  if (exp == 0x1f) return csfr::emu::bit_cast<float>(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return csfr::emu::bit_cast<float>(sign | ((exp + 112) << 23) | (man << 13));
  const float sub = static_cast<float>(man) * 5.9604644775390625e-8f;  // man * 2^-24, exact
  return sign ? -sub : sub;
}

inline __half __float2half_rn(float f) {
  const uint32_t u = csfr::emu::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return {static_cast<uint16_t>(sign | 0x7e00u)};      // nan
  if (a >= 0x477ff000u) return {static_cast<uint16_t>(sign | 0x7c00u)};     // rounds to inf
  if (a < 0x38800000u) {                                                   // subnormal or zero in half
    // a * 2^24 rounded to an integer, ties to even: the float adder does it exactly
    const float scaled = csfr::emu::bit_cast<float>(a) + 0.5f;  // 0.5 = 2^-1: aligns the result's ulp at 2^-24
    return {static_cast<uint16_t>(sign | (csfr::emu::bit_cast<uint32_t>(scaled) - 0x3f000000u))};
  }
  const uint32_t odd = (a >> 13) & 1u;
  const uint32_t r = a + 0xfffu + odd;  // round to nearest even at bit 13
  return {static_cast<uint16_t>(sign | ((r - 0x38000000u) >> 13))};
}
