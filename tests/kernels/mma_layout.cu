// mma_layout.cu — one warp multiplies one tile through kernels/mma.cuh, with its
// fragments loaded in the PTX ISA's layouts (the correct kernels) or with a lane-index
// mistake (the broken twins, each fault line marked `// LAYOUT:`). Launch: one block
// of 32 threads (one warp). Matrices row-major float32: A (16 x K), B (K x 8), C and
// D (16 x 8); K = 8 for tf32, 16 for bf16/f16.
#include "../../kernels/mma.cuh"

// tf32 m16n8k8: operands rounded by cvt.rna.tf32.f32.
extern "C" __global__ void mma_tf32_tile(const float* A, const float* B, const float* C, float* D)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned a[4] = {cn_tf32(A[g * 8 + t]), cn_tf32(A[(g + 8) * 8 + t]),
                     cn_tf32(A[g * 8 + t + 4]), cn_tf32(A[(g + 8) * 8 + t + 4])};
    unsigned b[2] = {cn_tf32(B[t * 8 + g]), cn_tf32(B[(t + 4) * 8 + g])};
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    cn_mma_tf32(c, a, b, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// The twin with a1 and a2 exchanged (row g+8 and column t+4 confused): every lane
// holds valid data of A, in the wrong registers.
extern "C" __global__ void mma_tf32_tile_swapped(const float* A, const float* B, const float* C, float* D)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned a[4] = {cn_tf32(A[g * 8 + t]), cn_tf32(A[g * 8 + t + 4]),  // LAYOUT:tf32
                     cn_tf32(A[(g + 8) * 8 + t]), cn_tf32(A[(g + 8) * 8 + t + 4])};
    unsigned b[2] = {cn_tf32(B[t * 8 + g]), cn_tf32(B[(t + 4) * 8 + g])};
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    cn_mma_tf32(c, a, b, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

// The raw FP32 bits as tf32 operands (no cvt): the tensor core reads their top 19 bits.
extern "C" __global__ void mma_tf32_tile_unrounded(const float* A, const float* B, const float* C, float* D)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned a[4] = {__float_as_uint(A[g * 8 + t]), __float_as_uint(A[(g + 8) * 8 + t]),
                     __float_as_uint(A[g * 8 + t + 4]), __float_as_uint(A[(g + 8) * 8 + t + 4])};
    unsigned b[2] = {__float_as_uint(B[t * 8 + g]), __float_as_uint(B[(t + 4) * 8 + g])};
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    float d[4];
    cn_mma_tf32(d, a, b, c);
    D[g * 8 + 2 * t] = d[0];
    D[g * 8 + 2 * t + 1] = d[1];
    D[(g + 8) * 8 + 2 * t] = d[2];
    D[(g + 8) * 8 + 2 * t + 1] = d[3];
}

// 16-bit m16n8k16: BF16 when BF16 != 0, else FP16; operands rounded to nearest even.
template <int BF16>
static __device__ __forceinline__ unsigned pack16(float lo, float hi)
{
    return BF16 ? cn_bf16x2(lo, hi) : cn_f16x2(lo, hi);
}

template <int BF16, bool SWAP_B>
static __device__ __forceinline__ void mma16_tile(const float* A, const float* B, const float* C, float* D)
{
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned a[4];
    for (int r = 0; r < 4; ++r) {
        const int row = g + (r & 1) * 8, col = 2 * t + (r >> 1) * 8;
        a[r] = pack16<BF16>(A[row * 16 + col], A[row * 16 + col + 1]);
    }
    unsigned b[2];
    for (int r = 0; r < 2; ++r) {
        const int k = 2 * t + r * 8;
        b[r] = SWAP_B ? pack16<BF16>(B[(k + 1) * 8 + g], B[k * 8 + g])  // LAYOUT:bf16
                      : pack16<BF16>(B[k * 8 + g], B[(k + 1) * 8 + g]);
    }
    float c[4] = {C[g * 8 + 2 * t], C[g * 8 + 2 * t + 1], C[(g + 8) * 8 + 2 * t], C[(g + 8) * 8 + 2 * t + 1]};
    if (BF16) cn_mma_bf16(c, a, b, c);
    else cn_mma_f16(c, a, b, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

extern "C" __global__ void mma_bf16_tile(const float* A, const float* B, const float* C, float* D)
{
    mma16_tile<1, false>(A, B, C, D);
}

// The twin that packs each B pair high-first (the halves of b0 and b1 exchanged).
extern "C" __global__ void mma_bf16_tile_swapped(const float* A, const float* B, const float* C, float* D)
{
    mma16_tile<1, true>(A, B, C, D);
}

extern "C" __global__ void mma_f16_tile(const float* A, const float* B, const float* C, float* D)
{
    mma16_tile<0, false>(A, B, C, D);
}

// The conversions alone: y[i] = cvt.rna.tf32.f32(x[i]); z[i] = cvt.rn.bf16x2(x[i], x[i]) bits.
extern "C" __global__ void convert(const float* x, unsigned* tf32, unsigned* bf16, unsigned* f16, int n)
{
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        tf32[i] = cn_tf32(x[i]);
        bf16[i] = cn_bf16x2(x[i], -x[i]);
        f16[i] = cn_f16x2(x[i], -x[i]);
    }
}
