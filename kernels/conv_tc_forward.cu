// conv_tc_forward.cu: 2-D convolution forward on tensor cores (issue 12), with the
// bias and the ReLU fused into the epilogue, as conv_forward.cu computes it:
//   y[n][k][p][q] = act(bias[k] + sum_{c,r,s} w[k][c][r][s] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s])
// but with the operands rounded to TF32 (PREC 0) or BF16 (PREC 1) and FP32
// accumulation over kk = (c, r, s) ascending (conv_tc_common.cuh), then the bias added
// and ReLU applied (NaN kept) when relu != 0.
//
// Layout: NCHW float32, C-contiguous: x (N, C, H, W), w (K, Cg, R, S), bias (K,) (not
// read when has_bias == 0), y (N, K, P, Q).
//
// Implicit GEMM per group g: A[m][kk] = w[g*Kg + m][kk] (Kg x Cg*R*S, dense rows),
// B[kk][j] = x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s] for j = (n, p, q) (gathered,
// zero outside the image). A thread's B column j is fixed: its image position is
// computed once; its rows' (c, r, s) and offsets follow kk with mixed-radix counters
// (CnWalker, conv_common.cuh), no division in the loop.
//
// Launch: block = 128 threads; grid = (ceil(N*P*Q / BN), ceil(Kg / 128), groups);
// BN = 128 or 96 (the tile's columns); 37 KiB (TF32) or 41 KiB (BF16) static shared
// memory at BN = 128. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_forward(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, float* __restrict__ y,
                int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN> sm;

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int kd = Cg * RS;
    const int cols = N * PQ;
    const int m0 = blockIdx.y * CN_TC_BM;
    const int n0 = blockIdx.x * BN;

    const int ak = cn_tc_a_col(), bj = cn_tc_b_col();
    const float* wrow = w + (g * Kg + m0) * kd;
    const int col = n0 + bj;
    const bool col_ok = cn_tc_b_copies<BN>() && col < cols;
    const int cn = col_ok ? col / PQ : 0;
    const int cpq = col_ok ? col - cn * PQ : 0;
    const int cp = cpq / Q;
    const int h0 = cp * sh - ph, w0 = (cpq - cp * Q) * sw - pw;
    const int xbase = (cn * C + g * Cg) * HW + h0 * W + w0;  // of (c, r, s) = 0: may lie outside x

    // This thread's B rows kk = k0 + cn_tc_b_row(i) = k0 + row0 + B_STEP i, as digits (c, r, s)
    // with the offset c*HW + r*W + s: stepped by B_STEP along a slice and by BK per slice.
    const CnDigits by_slice = cn_digits(R, S, HW, W, 1, 1, 1, CN_TC_BK);
    const CnDigits by_step = cn_digits(R, S, HW, W, 1, 1, 1, CN_TC_B_STEP);
    CnWalker next;
    next.start(by_slice, cn_tc_b_row(0));

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
#pragma unroll
        for (int i = 0; i < CN_TC_A_COPIES; ++i) {
            const int m = cn_tc_a_row<PREC>(i), kk = k0 + ak;
            const bool ok = m0 + m < Kg && kk < kd;
            cn_cp_async<4>(&sm.a[stage][m][ak], ok ? wrow + m * kd + kk : w, ok);
        }
        CnWalker t = next;
        if (cn_tc_b_copies<BN>()) {  // with BN = 96 the last warp copies no B
#pragma unroll
            for (int i = 0; i < CN_TC_B_COPIES; ++i) {
                const int r = cn_tc_b_row(i), kk = k0 + r;
                const int h = h0 + t.d1, wi = w0 + t.d2;
                const bool ok = col_ok && kk < kd && h >= 0 && h < H && wi >= 0 && wi < W;
                cn_cp_async<4>(&sm.b[stage][r][bj], ok ? x + (xbase + t.off) : x, ok);
                if (i < CN_TC_B_COPIES - 1) t.advance(by_step);
            }
        }
        next.advance(by_slice);
    };
    CnTcAcc<BN> acc;
    cn_tc_gemm<PREC, BN>(load, sm, (kd + CN_TC_BK - 1) / CN_TC_BK, acc);

    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, k = m0 + m;
        if (j >= cols || k >= Kg) return;
        const int n = j / PQ;
        if (has_bias) v += bias[g * Kg + k];
        if (relu) v = (v > 0.0f || v != v) ? v : 0.0f;
        y[(n * K + g * Kg + k) * PQ + (j - n * PQ)] = v;
    };
    cn_tc_store<BN>(acc, store);
}
