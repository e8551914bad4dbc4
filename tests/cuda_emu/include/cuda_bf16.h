// cuda_bf16.h (CUDA emulator): bf16 storage and its conversions (round to nearest even, as the hardware).
#ifndef ACTLORA_CUDA_EMU_BF16_H
#define ACTLORA_CUDA_EMU_BF16_H

#include "cuda_emu.h"

struct __nv_bfloat16 { unsigned short x; };
struct __attribute__((aligned(4))) __nv_bfloat162 { __nv_bfloat16 x, y; };

static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    __nv_bfloat16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {  // NaN: the canonical one, as cuda_bf16.hpp
        b.x = 0x7fff;
        return b;
    }
    u += 0x7fffu + ((u >> 16) & 1u);
    b.x = (unsigned short)(u >> 16);
    return b;
}
static inline float __bfloat162float(__nv_bfloat16 b) {
    uint32_t u = (uint32_t)b.x << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) {
    __nv_bfloat162 r;
    r.x = __float2bfloat16_rn(a);
    r.y = __float2bfloat16_rn(b);
    return r;
}

#endif
