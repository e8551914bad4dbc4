// rng.h: counter-based random numbers. Every random draw in a run is a pure function of
// a key built from (seed, step, micro-step, rank, layer, module, ...) and an element
// index, so a resumed run draws exactly what the uninterrupted run would have drawn,
// and the CPU and CUDA backends draw the same numbers. Header-only so CUDA kernels use it.
#ifndef ACTLORA_RNG_H
#define ACTLORA_RNG_H

#include <math.h>
#include <stdint.h>

#ifdef __CUDACC__
#define RNG_FN static __host__ __device__ inline
#else
#define RNG_FN static inline
#endif

// splitmix64 finalizer: a bijective, well-mixed 64-bit hash.
RNG_FN uint64_t rng_mix(uint64_t x) {
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

// Folds one more counter field into a key.
RNG_FN uint64_t rng_key(uint64_t key, uint64_t field) { return rng_mix(key ^ rng_mix(field)); }

// The i-th 64-bit draw of stream `key`.
RNG_FN uint64_t rng_u64(uint64_t key, uint64_t i) { return rng_mix(key ^ rng_mix(i + 0x632be59bd9b4e019ULL)); }

// The i-th uniform draw in [0, 1) of stream `key` (24 random bits, exact in fp32).
RNG_FN float rng_uniform(uint64_t key, uint64_t i) { return (float)(rng_u64(key, i) >> 40) * (1.0f / 16777216.0f); }

// The i-th standard normal draw of stream `key` (Box-Muller on draws 2i and 2i+1, in double).
RNG_FN float rng_normal(uint64_t key, uint64_t i) {
    double u1 = (double)rng_uniform(key, 2 * i) + 1.0 / 33554432.0;  // (0, 1]
    double u2 = (double)rng_uniform(key, 2 * i + 1);
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

#endif
