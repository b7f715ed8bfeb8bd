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
// zero outside the image). A thread's B column j is fixed: its image position (h0, w0)
// is computed once. A row's tap (c, r, s) and its offset c*HW + r*W + s are the same
// for every column: a copy reads them from the tap table (CnTcTaps, conv_tc_common.cuh,
// stepped one slice ahead by 16 threads, no division), tests h0 + r and w0 + s against
// the image and adds the offset.
//
// Launch: block = 128 threads; grid = (ceil(N*P*Q / BN), ceil(Kg / BM), groups);
// BN = 128 or 96 (the tile's columns), BM = 128 or 64 (its rows; the default 128 keeps
// the two-argument names); 37 KiB (TF32) or 41 KiB (BF16) static shared memory at
// 128 x 128, plus the 512-byte tap table. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_forward(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, float* __restrict__ y,
                int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN, BM> sm;
    __shared__ CnTcTaps taps;  // (offset, r, s) of a slice's rows

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int kd = Cg * RS;
    const int cols = N * PQ;
    const int m0 = blockIdx.y * BM;
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

    const CnDigits by_slice = cn_digits(R, S, HW, W, 1, 1, 1, CN_TC_BK);
    CnWalker next;
    cn_tc_taps_start(next, by_slice, 0);
    const unsigned himg = col_ok ? H : 0u, wimg = W;  // a column past the end copies zeros

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
#pragma unroll
        for (int i = 0; i < CN_TC_A_COPIES(BM); ++i) {
            const int m = cn_tc_a_row<PREC>(i), kk = k0 + ak;
            const bool ok = m0 + m < Kg && kk < kd;
            cn_cp_async<4>(&sm.a[stage][m][ak], wrow + (ok ? m * kd + kk : -m0 * kd), ok);
        }
        cn_tc_copy_b_taps<PREC, BN>(sm.b[stage], bj, taps, slice & 1, kd - k0, x, xbase, h0, w0, himg, wimg);
        cn_tc_taps_write(taps, (slice + 1) & 1, next, by_slice);  // read by the next call
    };
    cn_tc_taps_write(taps, 0, next, by_slice);
    __syncthreads();
    CnTcAcc<BN, BM> acc;
    cn_tc_gemm<PREC, BN, BM>(load, sm, (kd + CN_TC_BK - 1) / CN_TC_BK, acc);

    cn_tc_store_nchw<BN, BM>(acc, y, bias, has_bias, relu, m0, n0, Kg, cols, PQ, K, g * Kg);
}
