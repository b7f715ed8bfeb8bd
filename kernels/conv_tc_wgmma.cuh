// conv_tc_wgmma.cuh: the warpgroup engine of the channels-last tensor-core convolution
// (issue 12; conv_tc_forward_wgmma.cu): Hopper's wgmma.mma_async (kernels/wgmma.cuh,
// sm_90a) in place of mma.sync, for the body of conv_tc_forward_nhwc.cuh.
//
// Block: 128 threads = one warpgroup computing a BM x BN tile (BM = 128 or 64, BN = 128
// or 96) as BM / 64 products m64nBN, their accumulators in registers (BN / 2 floats per
// thread each). The tensor core reads both operands from shared memory, once per
// warpgroup: per 16-kk slice it reads the slice's A and B once (about 0.5 shared
// wavefronts per 64 x 8 x 8 of products where four mma.sync warps read about 1.5),
// and the 128 threads issue BM / 64 (BF16) or 2 BM / 64 (TF32) instructions.
//
// Shared memory (dynamic, SHARED_BYTES): CN_WG_STAGES stages, each A's BM rows then B's
// BN rows of one 16-kk slice, K-major without swizzle: the 16-byte chunk c of row r (of
// CHUNKS: 4 TF32, 2 BF16) at (r / 8) * SBO + c * LBO + (r % 8) * 16. LBO = 144 (a core
// matrix, 128 bytes, plus 16), so that the copies of a quarter-warp (the loader's
// rows and chunks, conv_tc_common.cuh cn_tc_k_row) meet no bank twice; SBO = CHUNKS * LBO.
// A k step (8 TF32, 16 BF16) is two chunks: descriptor start + 2 ks LBO.
//
// Pipeline: the loader runs CN_WG_STAGES - 2 slices ahead; per slice t: wait for this
// thread's copies of t, fence.proxy.async (they were written by the generic proxy),
// __syncthreads (everyone's copies; and every thread has waited for slice t - 2's
// product, so its stage is free), issue the loads of slice t + 2 into that stage,
// wgmma.fence, the slice's products, commit, and wait until at most one product group
// (slice t's) is in flight. So slice t's product runs under slice t + 1's barrier and
// loads.
#pragma once

#include "conv_tc_common.cuh"
#include "wgmma.cuh"

#define CN_WG_STAGES 4

template <int PREC, int BN, int BM>
struct CnTcWgEngine {
    static_assert(BN == 128 || BN == 96, "conv_tc: BN is 128 or 96");
    static_assert(BM == 128 || BM == 64, "conv_tc: BM is 128 or 64");
    static constexpr int CHUNKS = PREC ? 2 : 4;  // 16-byte chunks of a row's slice
    static constexpr int LBO = 144;
    static constexpr int SBO = CHUNKS * LBO;
    static constexpr int A_BYTES = BM / 8 * SBO;
    static constexpr int STAGE_BYTES = (BM + BN) / 8 * SBO;
    static constexpr int SHARED_BYTES = CN_WG_STAGES * STAGE_BYTES;
    unsigned char* smem;
    float acc[BM / 64][BN / 2];

    // the destination of a copy at 32-bit word `word` of row `row`'s slice
    __device__ __forceinline__ void* at(int stage, int row, int word)
    {
        return smem + stage * STAGE_BYTES + (row >> 3) * SBO + (word >> 2) * LBO + (row & 7) * 16 + (word & 3) * 4;
    }
    __device__ __forceinline__ void* a_slot(int stage, int row, int word) { return at(stage, row, word); }
    __device__ __forceinline__ void* b_slot(int stage, int row, int word)
    {
        return static_cast<unsigned char*>(at(stage, row, word)) + A_BYTES;
    }

    template <class Load>
    __device__ __forceinline__ void gemm(Load& load, int slices)
    {
        constexpr int S = CN_WG_STAGES;
#pragma unroll
        for (int h = 0; h < BM / 64; ++h)
#pragma unroll
            for (int j = 0; j < BN / 2; ++j) acc[h][j] = 0.0f;
        // descriptors differ only in their start address (bits 0-13, in 16-byte units)
        const unsigned long long base = cn_wgmma_desc(smem, LBO, SBO);
#pragma unroll
        for (int s = 0; s < S - 2; ++s) {
            if (s < slices) load(s, s);
            cn_cp_async_commit();
        }
        for (int t = 0; t < slices; ++t) {
            cn_cp_async_wait<S - 3>();  // slice t has landed (this thread's copies)
            cn_fence_proxy_async();     // ... where the tensor core reads it
            __syncthreads();            // everyone's copies; slice t - 2's stage is free
            if (t + S - 2 < slices) load(t + S - 2, (t + S - 2) % S);
            cn_cp_async_commit();
            const unsigned long long stage = base + (unsigned)((t % S) * STAGE_BYTES >> 4);
            cn_wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < (PREC ? 1 : 2); ++ks) {
                const unsigned long long db = stage + ((A_BYTES + 2 * ks * LBO) >> 4);
#pragma unroll
                for (int h = 0; h < BM / 64; ++h)
                    cn_wgmma<PREC, BN>(acc[h], stage + ((h * 8 * SBO + 2 * ks * LBO) >> 4), db, 1);
            }
            cn_wgmma_commit();
            cn_wgmma_wait<1>();  // slice t - 1's products are done
        }
        cn_wgmma_wait<0>();
        cn_cp_async_wait_all();  // only empty groups are left: nothing pending at exit
    }

    // The epilogue: warp w of the group holds rows 64 h + 16 w + g + 8 e0 (r = (h, e0))
    // and columns 8 i + 2 t + e1 (c = (i, e1)) in acc[h][4 i + 2 e0 + e1].
    __device__ __forceinline__ void store_nchw(float* out, const float* bias, int has_bias, int relu, int m0, int n0,
                                               int rows, int cols, int plane, int channels, int ch0)
    {
        const int w = (threadIdx.x >> 5) & 3, g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
        auto row_of = [&](int r) { return 64 * (r >> 1) + 16 * w + g + 8 * (r & 1); };
        auto col_of = [&](int c) { return 8 * (c >> 1) + 2 * t + (c & 1); };
        auto value = [&](int r, int c) { return acc[r >> 1][4 * (c >> 1) + 2 * (r & 1) + (c & 1)]; };
        cn_tc_store_nchw_frag<2 * (BM / 64), BN / 4>(row_of, col_of, value, out, bias, has_bias, relu, m0, n0, rows,
                                                     cols, plane, channels, ch0);
    }
};
