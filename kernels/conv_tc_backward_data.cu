// conv_tc_backward_data.cu: the input gradient of a 2-D convolution on tensor cores
// (issue 12), as conv_backward_data.cu computes it:
//   dx[n][g*Cg + c][h][w] = sum_{k,r,s} w[g*Kg + k][c][r][s] * dy[n][g*Kg + k][p][q]
// over the taps with h = p*sh - ph + r, w = q*sw - pw + s (p, q whole and in range),
// with the operands rounded to TF32 (PREC 0) or BF16 (PREC 1) and FP32 accumulation
// over kk = (k, r, s) ascending (conv_tc_common.cuh).
//
// Layout: NCHW float32, C-contiguous: dy (N, K, P, Q), w (K, Cg, R, S), dx (N, C, H, W);
// every element of dx is written.
//
// Implicit GEMM per group g: A[c][kk] = w[g*Kg + k][c][r][s] (Cg x Kg*R*S, gathered),
// B[kk][j] = dy[n][g*Kg + k][p][q] for j = (n, h, w), zero where the tap does not land
// on an output (stride phase, edges). One kernel for every stride: at stride s > 1
// most taps are zeros (the FP32 engine splits by phase; AlexNet's strided conv1 needs
// no input gradient).
//
// Launch: block = 128 threads; grid = (ceil(N*H*W / 64), ceil(Cg / 64), groups);
// 29 KiB static shared memory. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                      int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                      int sh, int sw, int ph, int pw, int groups)
{
    __shared__ __align__(16) CnTcA As;
    __shared__ __align__(16) CnTcB Bs;

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int kd = Kg * RS;
    const int cols = N * HW;
    const int m0 = blockIdx.y * CN_TC_BM;
    const int n0 = blockIdx.x * CN_TC_BN;

    const int ak = cn_tc_a_col(), bj = cn_tc_b_col();
    const float* wg = w + (g * Kg * Cg + m0) * RS;  // w[g*Kg][m0][0][0]
    const int col = n0 + bj;
    const bool col_ok = col < cols;
    const int cn = col_ok ? col / HW : 0;
    const int chw = col_ok ? col - cn * HW : 0;
    const int ch = chw / W;
    const int th0 = ch + ph, tw0 = chw - ch * W + pw;  // p*sh + r and q*sw + s
    const float* dyimg = dy + (cn * K + g * Kg) * PQ;

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
        {
            const int kk = k0 + ak;
            const int k = kk / RS, rs = kk - k * RS;
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const int m = cn_tc_a_row(i);
                const bool ok = m0 + m < Cg && kk < kd;
                cn_cp_async<4>(&As[stage][m][ak], ok ? wg + (k * Cg + m) * RS + rs : w, ok);
            }
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = cn_tc_b_row(i), kk = k0 + r;
            const int k = kk / RS, rs = kk - k * RS;
            const int fr = rs / S, fs = rs - fr * S;
            const int th = th0 - fr, tw = tw0 - fs;
            const int p = th / sh, q = tw / sw;
            const bool ok = col_ok && kk < kd && th >= 0 && tw >= 0 && p * sh == th && q * sw == tw &&
                            p < P && q < Q;
            cn_cp_async<4>(&Bs[stage][r][bj], ok ? dyimg + k * PQ + p * Q + q : dy, ok);
        }
    };
    float acc[2][4][4];
    cn_tc_gemm<PREC>(load, As, Bs, (kd + CN_TC_BK - 1) / CN_TC_BK, acc);

    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, c = m0 + m;
        if (j >= cols || c >= Cg) return;
        const int n = j / HW;
        dx[(n * C + g * Cg + c) * HW + (j - n * HW)] = v;
    };
    cn_tc_store(acc, store);
}
