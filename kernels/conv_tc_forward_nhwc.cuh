// conv_tc_forward_nhwc.cuh: the body of the channels-last tensor-core convolution (issue
// 12), for either GEMM engine: conv_tc_forward_nhwc.cu (mma.sync, CnTcMmaEngine below)
// and conv_tc_forward_wgmma.cu (Hopper's wgmma, conv_tc_wgmma.cuh). It computes, with the
// bias and the ReLU fused as conv_tc_forward.cu:
//   y[n][k][p][q] = act(bias[k] + sum_{r,s,c} w[k][r][s][c] * x[n][p*sh - ph + r][q*sw - pw + s][g*Cg + c])
// with FP32 accumulation over kk = (r, s, c) ascending (c fastest). The operands come
// rounded to TF32 (PREC 0) or to BF16 (PREC 1) by the layout kernels
// (kernels/conv_layout.cu, ops/conv_tc.py); the kernel does not round them again.
// Also backward data at unit stride: the input gradient is this convolution of dy
// with the flipped, transposed filter (ops/conv_tc.py).
//
// Layout: x (N, H, W, C) (channels last), w (K, R, S, Cg), both of TF32 values as
// float32 (PREC 0) or BF16 bits as unsigned short (PREC 1); bias (K,) float32 (not read
// when has_bias == 0); y (N, K, P, Q) float32 (NCHW, as the library's tensors). Cg is a
// multiple of 16: a slice of 16 kk is one tap (r, s) and 16 consecutive channels, 64
// (TF32) or 32 (BF16) contiguous bytes of x and of each filter row. SMALL: one group
// whose pixels the layout padded to 4 channels (zeros past the real ones: AlexNet's
// conv1 has 3), one copy a pixel: 16 bytes in TF32, 8 in BF16; a slice is 4 whole
// taps, one a copy, and the reduction's last slice may pass the last tap.
//
// Implicit GEMM per group g: A[m][kk] = w[g*Kg + m][kk] (Kg x R*S*Cg, dense rows),
// B[kk][j] = x[n][h0 + r][w0 + s][g*Cg + c] for j = (n, p, q), zero outside the image.
// Both operands go global -> shared as cp.async of CP bytes (16; BF16's small form 8),
// four (TF32, BF16 small) or two (BF16) a row per slice, into the engine's slots
// (eng.a_slot / b_slot(stage, row, word): the destination of the copy at 32-bit word
// `word` of the row's slice); a column's image position (h0, w0) and offset are
// computed once, and a copy tests its tap against them (no tap table). The engine
// runs the reduction (eng.gemm(load, slices): the loader contract of cn_tc_gemm,
// conv_tc_common.cuh) and the epilogue (eng.store_nchw: cn_tc_store_nchw_frag).
//
// Launch: block = 128 threads; grid = (ceil(N*P*Q / BN), ceil(Kg / BM), groups);
// BN = 128 or 96, BM = 128 or 64. 32-bit indices (the host checks the sizes).
#pragma once

#include "conv_tc_common.cuh"

// The mma.sync engine: the 2 x 2 warps of conv_tc_common.cuh on k-major shared rows
// (CnTcKSmem, static shared memory: 40 KiB TF32 or 24 KiB BF16 at 128 x 128).
template <int PREC, int BN, int BM>
struct CnTcMmaEngine {
    CnTcKSmem<PREC, BN, BM>& sm;
    CnTcAcc<BN, BM> acc;
    __device__ __forceinline__ void* a_slot(int stage, int row, int word) { return &sm.a[stage][row][word]; }
    __device__ __forceinline__ void* b_slot(int stage, int row, int word) { return &sm.b[stage][row][word]; }
    template <class Load>
    __device__ __forceinline__ void gemm(Load& load, int slices) { cn_tc_gemm<PREC, BN, BM>(load, sm, slices, acc); }
    __device__ __forceinline__ void store_nchw(float* out, const float* bias, int has_bias, int relu, int m0, int n0,
                                               int rows, int cols, int plane, int channels, int ch0)
    {
        cn_tc_store_nchw<BN, BM>(acc, out, bias, has_bias, relu, m0, n0, rows, cols, plane, channels, ch0);
    }
};

template <int PREC, int BN, bool SMALL, int BM, class Engine>
static __device__ __forceinline__ void
cn_tc_forward_nhwc(Engine& eng, const void* __restrict__ x_, const void* __restrict__ w_,
                   const float* __restrict__ bias, float* __restrict__ y,
                   int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                   int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    typedef typename CnTcOperand<PREC>::type E;  // an operand element: float or BF16 bits
    // BF16's small form copies 8 bytes (4 channels, a pixel) and so has TF32's geometry
    // of copies: four a row's slice, 32 rows a round (cn_tc_k_row<0>)
    constexpr int CP = PREC && SMALL ? 8 : 16;    // bytes a copy
    constexpr int GEO = PREC && !SMALL;           // the copies' row and word mapping
    constexpr int ROWS = CN_TC_K_ROWS(GEO);       // rows a round of copies
    constexpr int AI = (BM + ROWS - 1) / ROWS, BI = (BN + ROWS - 1) / ROWS;
    constexpr int CHUNKS = CN_TC_K_CHUNKS(GEO);   // copies a row's slice
    const E* x = static_cast<const E*>(x_);
    const E* w = static_cast<const E*>(w_);

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int PQ = P * Q;
    const int kd = R * S * Cg;  // a multiple of 16, or (SMALL) of 4
    const int cols = N * PQ;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int word = cn_tc_k_word<GEO>() * CP / 16;  // this thread's first word of a row's slice
    const int chunk = word * (PREC ? 2 : 1);        // and its first element

    // A: this thread's rows (an index into w; rows past Kg copy zeros)
    const E* wg = w + g * Kg * kd + chunk;
    int aoff[AI];
    bool aok[AI];
#pragma unroll
    for (int i = 0; i < AI; ++i) {
        const int m = m0 + cn_tc_k_row<GEO>(i);
        aok[i] = m < Kg && cn_tc_k_row<GEO>(i) < BM;
        aoff[i] = aok[i] ? m * kd : 0;
    }
    // B: this thread's columns: the image position of tap (0, 0) (a column past the end
    // sits far outside the image) and the offset of its pixel's channel g*Cg + chunk
    // (SMALL: of channel 0; its copy is a whole pixel)
    int bh[BI], bw[BI], boff[BI];
#pragma unroll
    for (int i = 0; i < BI; ++i) {
        const int j = n0 + cn_tc_k_row<GEO>(i);
        const int n = j / PQ, pq = j - n * PQ;
        const int p = pq / Q;
        bh[i] = j < cols ? p * sh - ph : -(1 << 30);
        bw[i] = (pq - p * Q) * sw - pw;
        boff[i] = ((n * H + bh[i]) * W + bw[i]) * C + g * Cg + (SMALL ? 0 : chunk);
    }

    // The tap of this thread's copies: kk = (r, s, c0), stepped one slice per load (loads
    // come in order). Cg % 16 == 0: one tap a slice, the same for every thread. SMALL
    // (groups 1, C = 4: the layout padded the channels): a copy is one whole tap, this
    // thread's the slice's tap number word / (CP / 4) (its own walk), and the last slice
    // may pass the last tap (r = R: zeros).
    int tr = 0, ts = SMALL ? word / (CP / 4) : 0, tc = 0;
    // (r, s) of ts < S + CHUNKS past (tr, 0): at most CHUNKS carries (S >= 1), no loop
    auto carry = [&]() {
#pragma unroll
        for (int i = 0; i < CHUNKS; ++i)
            if (ts >= S) ts -= S, ++tr;
    };
    if (SMALL) carry();
    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
        const bool live = !SMALL || tr < R;
#pragma unroll
        for (int i = 0; i < AI; ++i) {
            const int row = cn_tc_k_row<GEO>(i);
            if (BM % ROWS == 0 || row < BM)
                cn_cp_async<CP>(eng.a_slot(stage, row, word), wg + (live ? aoff[i] + k0 : 0), aok[i] && live);
        }
        const int tap = (tr * W + ts) * C + tc;
#pragma unroll
        for (int i = 0; i < BI; ++i) {
            const int row = cn_tc_k_row<GEO>(i);
            const bool ok = live && (unsigned)(bh[i] + tr) < (unsigned)H && (unsigned)(bw[i] + ts) < (unsigned)W;
            if (BN % ROWS == 0 || row < BN)
                cn_cp_async<CP>(eng.b_slot(stage, row, word), x + (ok ? boff[i] + tap : 0), ok);
        }
        if (SMALL) {
            ts += CHUNKS;
            carry();
        } else {
            tc += CN_TC_BK;
            if (tc == Cg) {
                tc = 0;
                if (++ts == S) {
                    ts = 0;
                    ++tr;
                }
            }
        }
    };
    eng.gemm(load, (kd + CN_TC_BK - 1) / CN_TC_BK);
    eng.store_nchw(y, bias, has_bias, relu, m0, n0, Kg, cols, PQ, K, g * Kg);
}
