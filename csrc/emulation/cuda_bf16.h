// Emulated __nv_bfloat16: the top 16 bits of a float, converted with round to nearest even.
#pragma once
#include <cstdint>

#include "emulation.h"

struct __nv_bfloat16 {
  uint16_t bits;
};

inline float __bfloat162float(__nv_bfloat16 h) { return csfr::emu::bit_cast<float>(static_cast<uint32_t>(h.bits) << 16); }

inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t u = csfr::emu::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return {static_cast<uint16_t>((u >> 16) | 0x40u)};  // quiet nan
  return {static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
}
