// mma.h (CUDA emulator): the subset of CUDA's warp matrix API (nvcuda::wmma) that the bf16 tensor-core kernels
// use, on the CPU. The real build compiles against CUDA's own <mma.h>; this one is found first on the emulator's
// include path (tests/cuda_emu/include), as its cuda_runtime.h and cuda_bf16.h are.
//
// Provided: fragment<matrix_a | matrix_b, 16, 16, 16, __nv_bfloat16, row_major | col_major> and
// fragment<accumulator, 16, 16, 16, float>; load_matrix_sync, store_matrix_sync, fill_fragment and
// mma_sync (D = A B + C in fp32) on them. Any other fragment (shape, element type, layout) fails to compile.
//
// What is emulated: every lane of the warp holds the WHOLE 16x16 tile in its fragment, as floats (bf16 values
// are exact in float). A load reads the whole tile in every lane; a store writes, in each lane, only the
// elements the lane holds in the tensor cores' accumulator layout (store_matrix_sync below), so that the stores
// of a warp are spread over its lanes as on the device and the race checker (race.cpp) sees that reading
// another lane's elements needs a __syncwarp or __syncthreads after the store. mma_sync computes each element of D as
// C[i][j] + A[i][0] B[0][j] + A[i][1] B[1][j] + ... + A[i][15] B[15][j], added in that order in fp32 (the
// products of bf16 values are exact in fp32; the emulator is built with -ffp-contract=off); D may be C.
// The hardware's rules are checked (cuda_emu_wmma_enter, cuda_emu.cpp), stopping the program with the call,
// its pointer and ldm in the message: the call is made inside a kernel, by every lane of a full warp with the
// same arguments (the lanes converge there; it orders no memory); the pointer of a load or store is 256-bit
// (32-byte) aligned; ldm is a multiple of 8 for bf16 elements and of 4 for float ones.
//
// What is not: the per-lane layout of the fragments. CUDA's fragments expose x[] and num_elements, whose
// mapping to the tile's elements is unspecified and differs between architectures; this emulation cannot
// reproduce it and provides neither, so a kernel that relies on it fails to compile here. Nor the tensor
// cores' accumulation order and internal precision: on the device the sum of the products is formed in
// another order, so results agree with the hardware only to fp32 rounding. A fragment holds 256 floats
// (1 KiB) on the thread's 64 KiB emulator stack.
#ifndef ACTLORA_CUDA_EMU_MMA_H
#define ACTLORA_CUDA_EMU_MMA_H

#include "cuda_bf16.h"
#include "cuda_emu.h"

// the fragment arithmetic touches only the thread's own stack, which the race checker does not check:
// uninstrumented in its build, where every access would otherwise call into it
#define CUDA_EMU_WMMA_NO_RACE_HOOKS __attribute__((no_sanitize("thread")))

namespace nvcuda {
namespace wmma {

// tags
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};

enum layout_t { mem_row_major, mem_col_major };

namespace cuda_emu_detail {
template <typename A, typename B> struct same { static const bool value = false; };
template <typename A> struct same<A, A> { static const bool value = true; };
// fill_fragment's value: out of the deduction, of the fragment's element type (a bf16 fragment's from a bf16,
// or from a float rounded to nearest even, as CUDA's __nv_bfloat16 converts it)
struct bf16_value {
    float v;
    bf16_value(__nv_bfloat16 b) : v(__bfloat162float(b)) {}
    bf16_value(float f) : v(__bfloat162float(__float2bfloat16_rn(f))) {}
};
template <typename T> struct arg { typedef T type; };
template <> struct arg<__nv_bfloat16> { typedef bf16_value type; };
static inline float widen(float v) { return v; }
static inline float widen(const bf16_value &b) { return b.v; }
}  // namespace cuda_emu_detail

template <typename Use, int m, int n, int k, typename T, typename Layout = void>
class fragment {
    typedef cuda_emu_detail::same<Use, matrix_a> is_a;
    typedef cuda_emu_detail::same<Use, matrix_b> is_b;
    typedef cuda_emu_detail::same<Use, accumulator> is_acc;
    static_assert(m == 16 && n == 16 && k == 16,
                  "nvcuda::wmma (CUDA emulator): only the 16x16x16 fragment shape is emulated");
    static_assert(is_a::value || is_b::value || is_acc::value,
                  "nvcuda::wmma (CUDA emulator): a fragment's use is matrix_a, matrix_b or accumulator");
    static_assert(!(is_a::value || is_b::value) || cuda_emu_detail::same<T, __nv_bfloat16>::value,
                  "nvcuda::wmma (CUDA emulator): matrix_a / matrix_b fragments are emulated for __nv_bfloat16 only");
    static_assert(!(is_a::value || is_b::value) || cuda_emu_detail::same<Layout, row_major>::value ||
                      cuda_emu_detail::same<Layout, col_major>::value,
                  "nvcuda::wmma (CUDA emulator): a matrix_a / matrix_b fragment's layout is row_major or col_major");
    static_assert(!is_acc::value || cuda_emu_detail::same<T, float>::value,
                  "nvcuda::wmma (CUDA emulator): accumulator fragments are emulated for float only");
    static_assert(!is_acc::value || cuda_emu_detail::same<Layout, void>::value,
                  "nvcuda::wmma (CUDA emulator): an accumulator fragment has no layout (load and store name one)");

  public:
    // The whole tile, row-major, in every lane. Internal to the emulator: CUDA's fragments have no such member
    // (and this one has no x[] / num_elements, on purpose: see the top of this file).
    float cuda_emu_tile[256];
};

// ---------------------------------------------------------------------------------------------- loads

template <typename Use, typename Layout>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, __nv_bfloat16, Layout> &a, const __nv_bfloat16 *p,
                                    unsigned ldm) {
    const bool col = cuda_emu_detail::same<Layout, col_major>::value;
    cuda_emu_wmma_enter("load_matrix_sync", p, ldm, 2, col);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++)
            a.cuda_emu_tile[r * 16 + c] = __bfloat162float(p[col ? (size_t)c * ldm + r : (size_t)r * ldm + c]);
}

static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, float> &a, const float *p, unsigned ldm,
                                    layout_t layout) {
    const bool col = layout == mem_col_major;
    cuda_emu_wmma_enter("load_matrix_sync", p, ldm, 4, (int)layout);
    for (int r = 0; r < 16; r++)
        for (int c = 0; c < 16; c++) a.cuda_emu_tile[r * 16 + c] = p[col ? (size_t)c * ldm + r : (size_t)r * ldm + c];
}

// ---------------------------------------------------------------------------------------------- store

// Each lane stores the elements (r, c) of the tile it holds in the accumulator layout of the tensor cores' mma
// (m16n8k16, twice across n): lane (r % 8) * 4 + (c % 8) / 2, eight elements per lane in pairs of neighbours.
// A kernel that reads the stored tile back in any other pattern (e.g. element e by lane e % 32) reads other
// lanes' stores, and the race checker asks for the barrier the device needs there.
static inline void store_matrix_sync(float *p, const fragment<accumulator, 16, 16, 16, float> &a, unsigned ldm,
                                     layout_t layout) {
    const bool col = layout == mem_col_major;
    cuda_emu_wmma_enter("store_matrix_sync", p, ldm, 4, (int)layout);
    unsigned lane = cuda_emu_lane();
    for (unsigned half = 0; half < 4; half++) {  // rows lane/4 and lane/4 + 8, columns 2 (lane % 4) (+ 1) (+ 8)
        unsigned r = lane / 4 + (half & 1) * 8, c0 = (lane % 4) * 2 + (half >> 1) * 8;
        for (unsigned c = c0; c < c0 + 2; c++) p[col ? (size_t)c * ldm + r : (size_t)r * ldm + c] = a.cuda_emu_tile[r * 16 + c];
    }
}

// ---------------------------------------------------------------------------------------------- fill, mma

template <typename Use, int m, int n, int k, typename T, typename Layout>
CUDA_EMU_WMMA_NO_RACE_HOOKS static inline void fill_fragment(fragment<Use, m, n, k, T, Layout> &a,
                                                             const typename cuda_emu_detail::arg<T>::type &v) {
    const float f = cuda_emu_detail::widen(v);
    for (int e = 0; e < 256; e++) a.cuda_emu_tile[e] = f;
}

template <typename LayoutA, typename LayoutB>
CUDA_EMU_WMMA_NO_RACE_HOOKS static inline void mma_sync(fragment<accumulator, 16, 16, 16, float> &d,
                                                        const fragment<matrix_a, 16, 16, 16, __nv_bfloat16, LayoutA> &a,
                                                        const fragment<matrix_b, 16, 16, 16, __nv_bfloat16, LayoutB> &b,
                                                        const fragment<accumulator, 16, 16, 16, float> &c) {
    cuda_emu_wmma_enter("mma_sync", NULL, 0, 4, 0);
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 16; j++) {
            float s = c.cuda_emu_tile[i * 16 + j];  // read before d's element is written: d may be c
            for (int k = 0; k < 16; k++) s += a.cuda_emu_tile[i * 16 + k] * b.cuda_emu_tile[k * 16 + j];
            d.cuda_emu_tile[i * 16 + j] = s;
        }
}

}  // namespace wmma
}  // namespace nvcuda

#undef CUDA_EMU_WMMA_NO_RACE_HOOKS

#endif
