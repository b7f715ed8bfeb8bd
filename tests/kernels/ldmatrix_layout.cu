// ldmatrix_layout.cu — one warp loads 8 x 8 matrices of 16-bit elements from shared
// memory with kernels/mma.cuh's cn_ldmatrix, and hands back what each lane received
// (ldmatrix_dump) or multiplies the fragments (ldmatrix_mma), so that tests compare the
// layouts with the PTX ISA's. Launch: one block of 32 threads (one warp) unless a test
// says otherwise.
#include "../../kernels/mma.cuh"

// src: 4 matrices of 8 x 8 uint16 (matrix i, row r at src[64 i + 8 r]); out[lane][i]: the
// lane's register i (N of them). rows[lane]: the row (0..31) whose address the lane
// gives, so a test can permute them; shift[lane]: bytes added to that address (a
// misalignment when not a multiple of 16).
template <int N, bool TRANS>
static __device__ __forceinline__ void dump(const unsigned short* src, const int* rows, const int* shift, unsigned* out)
{
    __shared__ __align__(16) unsigned short tile[32 * 8 + 8];
    const int lane = threadIdx.x;
    for (int i = lane; i < 32 * 8; i += blockDim.x) tile[i] = src[i];
    __syncthreads();
    unsigned d[4];
    cn_ldmatrix<N, TRANS>(d, reinterpret_cast<const char*>(&tile[8 * rows[lane]]) + shift[lane]);
    for (int i = 0; i < N; ++i) out[4 * lane + i] = d[i];
}
extern "C" __global__ void ldmatrix_x1(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<1, false>(s, r, b, o); }
extern "C" __global__ void ldmatrix_x2(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<2, false>(s, r, b, o); }
extern "C" __global__ void ldmatrix_x4(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<4, false>(s, r, b, o); }
extern "C" __global__ void ldmatrix_x1_trans(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<1, true>(s, r, b, o); }
extern "C" __global__ void ldmatrix_x2_trans(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<2, true>(s, r, b, o); }
extern "C" __global__ void ldmatrix_x4_trans(const unsigned short* s, const int* r, const int* b, unsigned* o) { dump<4, true>(s, r, b, o); }

// The same load, but the rows are never written (check="init" must object).
extern "C" __global__ void ldmatrix_unwritten(unsigned* out)
{
    __shared__ __align__(16) unsigned short tile[32 * 8];
    unsigned d[4];
    cn_ldmatrix<4, false>(d, &tile[8 * threadIdx.x]);
    out[threadIdx.x] = d[0] ^ d[1] ^ d[2] ^ d[3];
}

// Rows given from global memory: not an address ldmatrix can take.
extern "C" __global__ void ldmatrix_global(const unsigned short* src, unsigned* out)
{
    unsigned d[1];
    cn_ldmatrix<1, false>(d, src + 8 * (threadIdx.x & 7));
    out[threadIdx.x] = d[0];
}

// Two warps: warp 1 loads rows warp 0 wrote with no barrier between (check="race").
extern "C" __global__ void ldmatrix_racy(const unsigned short* src, unsigned* out)
{
    __shared__ __align__(16) unsigned short tile[32 * 8];
    if (threadIdx.x < 32)
        for (int i = threadIdx.x; i < 32 * 8; i += 32) tile[i] = src[i];
    else {
        unsigned d[1];
        cn_ldmatrix<1, false>(d, &tile[8 * (threadIdx.x & 7)]);
        out[threadIdx.x - 32] = d[0];
    }
}

// D (16 x 8) = A (16 x 16) B (16 x 8) in BF16 with every fragment by ldmatrix: A stored
// row-major (a row's 16 k), read by x4 without .trans; B stored k-row by k-row (a row's
// 8 n), read by x2.trans. Inputs are BF16 bits; D float row-major.
extern "C" __global__ void ldmatrix_mma(const unsigned short* A, const unsigned short* B, float* D)
{
    __shared__ __align__(16) unsigned short a[16 * 16];
    __shared__ __align__(16) unsigned short b[16 * 8];
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    for (int i = lane; i < 16 * 16; i += 32) a[i] = A[i];
    for (int i = lane; i < 16 * 8; i += 32) b[i] = B[i];
    __syncthreads();
    // A's matrices: (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15)
    const int m = lane & 15, k = (lane >> 4) * 8;
    unsigned fa[4], fb[2];
    cn_ldmatrix<4, false>(fa, &a[16 * m + k]);
    cn_ldmatrix<2, true>(fb, &b[8 * (lane & 15)]);  // (k 0-7), (k 8-15); lanes 16.. unused
    float c[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    cn_mma_bf16(c, fa, fb, c);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}
