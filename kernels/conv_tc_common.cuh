// conv_tc_common.cuh: the tensor-core implicit-GEMM engine of the conv_tc_*.cu kernels
// (issue 12): D[m][j] = sum_kk A[m][kk] B[kk][j] for one 64 x 64 tile of D per block.
//
// Block: 128 threads = 4 warps in 2 x 2, each computing 32 x 32 of the tile as 2 x 4
// mma tiles of 16 x 8 (kernels/mma.cuh); PREC 0: TF32 operands (m16n8k8, two k-steps
// per slice), PREC 1: BF16 operands (m16n8k16). FP32 accumulation in registers.
// The reduction advances in slices of BK = 16. A slice of A (64 x 16, kk fastest) and
// of B (16 x 64, j fastest) goes global -> shared through 4-byte cp.async
// (kernels/cp_async.cuh) issued by the kernel's loader; the ring holds 3 slices, so
// slice t+2 is in flight while slice t is multiplied, with one __syncthreads per
// slice. Values are rounded to TF32/BF16 as the fragments are read from shared
// memory; each product joins the sum in ascending kk, one FP32 rounding per addition.
//
// Loader contract: load(slice, stage) is called for slices 0, 1, 2, ... in order (so a
// loader may step its gather state by one slice per call) and issues, for this
// thread, the copies of A rows
// cn_tc_a_row(i) (i < 8) at column cn_tc_a_col() and of B rows cn_tc_b_row(i) at
// column cn_tc_b_col() of that slice into As[stage] / Bs[stage], zero-filling
// everything outside the operands (padding, edges, past the reduction's end).
// Shared rows are padded (A by 4, B by 8 floats): the fragment reads of a warp then
// fall on 32 distinct banks.
#pragma once

// conv_common.cuh: CnDigits / CnWalker, gather offsets without divisions
#include "conv_common.cuh"
#include "cp_async.cuh"
#include "mma.cuh"

#define CN_TC_BM 64
#define CN_TC_BN 64
#define CN_TC_BK 16
#define CN_TC_STAGES 3
#define CN_TC_THREADS 128
#define CN_TC_LDA (CN_TC_BK + 4)
#define CN_TC_LDB (CN_TC_BN + 8)

typedef float CnTcA[CN_TC_STAGES][CN_TC_BM][CN_TC_LDA];
typedef float CnTcB[CN_TC_STAGES][CN_TC_BK][CN_TC_LDB];

// The slots a thread loads (tid = threadIdx.x).
static __device__ __forceinline__ int cn_tc_a_row(int i) { return (threadIdx.x >> 4) + 8 * i; }
static __device__ __forceinline__ int cn_tc_a_col() { return threadIdx.x & 15; }
static __device__ __forceinline__ int cn_tc_b_row(int i) { return (threadIdx.x >> 6) + 2 * i; }
static __device__ __forceinline__ int cn_tc_b_col() { return threadIdx.x & 63; }

// One slice out of stage `st` into the accumulators.
template <int PREC>
static __device__ __forceinline__ void cn_tc_slice(const CnTcA& As, const CnTcB& Bs, int st,
                                                   float (&acc)[2][4][4])
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    if (PREC == 0) {
#pragma unroll
        for (int ks = 0; ks < CN_TC_BK; ks += 8) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r0 = wm + 16 * mi + gq;
                a[mi][0] = cn_tf32(As[st][r0][ks + tq]);
                a[mi][1] = cn_tf32(As[st][r0 + 8][ks + tq]);
                a[mi][2] = cn_tf32(As[st][r0][ks + tq + 4]);
                a[mi][3] = cn_tf32(As[st][r0 + 8][ks + tq + 4]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int c0 = wn + 8 * ni + gq;
                b[ni][0] = cn_tf32(Bs[st][ks + tq][c0]);
                b[ni][1] = cn_tf32(Bs[st][ks + tq + 4][c0]);
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) cn_mma_tf32(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
        }
    } else {
        unsigned a[2][4], b[4][2];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
            const int r0 = wm + 16 * mi + gq;
            a[mi][0] = cn_bf16x2(As[st][r0][2 * tq], As[st][r0][2 * tq + 1]);
            a[mi][1] = cn_bf16x2(As[st][r0 + 8][2 * tq], As[st][r0 + 8][2 * tq + 1]);
            a[mi][2] = cn_bf16x2(As[st][r0][2 * tq + 8], As[st][r0][2 * tq + 9]);
            a[mi][3] = cn_bf16x2(As[st][r0 + 8][2 * tq + 8], As[st][r0 + 8][2 * tq + 9]);
        }
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int c0 = wn + 8 * ni + gq;
            b[ni][0] = cn_bf16x2(Bs[st][2 * tq][c0], Bs[st][2 * tq + 1][c0]);
            b[ni][1] = cn_bf16x2(Bs[st][2 * tq + 8][c0], Bs[st][2 * tq + 9][c0]);
        }
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) cn_mma_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
    }
}

// The whole reduction: `slices` slices through the 3-stage cp.async ring.
template <int PREC, class Load>
static __device__ __forceinline__ void cn_tc_gemm(Load& load, const CnTcA& As, const CnTcB& Bs, int slices,
                                                  float (&acc)[2][4][4])
{
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
#pragma unroll
    for (int s = 0; s < CN_TC_STAGES - 1; ++s) {
        if (s < slices) load(s, s);
        cn_cp_async_commit();
    }
    for (int t = 0; t < slices; ++t) {
        cn_cp_async_wait<CN_TC_STAGES - 2>();  // slice t has landed (this thread's copies)
        __syncthreads();                        // everyone's copies; slice t-1 is free
        if (t + CN_TC_STAGES - 1 < slices) load(t + CN_TC_STAGES - 1, (t + CN_TC_STAGES - 1) % CN_TC_STAGES);
        cn_cp_async_commit();
        cn_tc_slice<PREC>(As, Bs, t % CN_TC_STAGES, acc);
    }
    cn_cp_async_wait_all();  // only empty groups are left: nothing pending at exit
}

// Calls store(m, j, v) for each of this thread's results: row m and column j of the
// block's tile (0..63), v = D[m][j] (the C/D fragment layout: element e of tile
// (mi, ni) is row wm + 16 mi + g + 8 (e >> 1), column wn + 8 ni + 2 t + (e & 1)).
template <class Store>
static __device__ __forceinline__ void cn_tc_store(const float (&acc)[2][4][4], Store& store)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int ni = 0; ni < 4; ++ni)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1)
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int e0 = 0; e0 < 2; ++e0)
                    store(wm + 16 * mi + gq + 8 * e0, wn + 8 * ni + 2 * tq + e1, acc[mi][ni][2 * e0 + e1]);
}
