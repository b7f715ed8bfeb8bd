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
// Launch: block = 128 threads; grid = (ceil(N*H*W / BN), ceil(Cg / 128), groups);
// UNIT = (sh == 1 && sw == 1 && R <= 32 && S <= 32: the tap masks' bits);
// BN = 128 or 96 (the tile's columns); 37 KiB (TF32) or 41 KiB (BF16) static shared
// memory at BN = 128. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN, bool UNIT>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                      int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                      int sh, int sw, int ph, int pw, int groups)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN> sm;

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int kd = Kg * RS;
    const int cols = N * HW;
    const int m0 = blockIdx.y * CN_TC_BM;
    const int n0 = blockIdx.x * BN;

    const int ak = cn_tc_a_col(), bj = cn_tc_b_col();
    const int wg = (g * Kg * Cg + m0) * RS;  // w[g*Kg][m0][0][0] (an index: fewer live registers than pointers)
    const int col = n0 + bj;
    const bool col_ok = cn_tc_b_copies<BN>() && col < cols;
    const int cn = col_ok ? col / HW : 0;
    const int chw = col_ok ? col - cn * HW : 0;
    const int ch = chw / W;
    const int th0 = ch + ph, tw0 = chw - ch * W + pw;  // p*sh + r and q*sw + s
    const float* dyimg = dy + (cn * K + g * Kg) * PQ;
    // UNIT: bit r of hmask = (tap row p = th0 - r lands on an output), bit s of wmask
    // likewise for q, so a copy's test is two shifts; the offset of tap (k, r, s) is
    // k*PQ - r*Q - s from dyc = &dy[n][g*Kg][th0][tw0] (formed, not read, when outside).
    unsigned hmask = 0u, wmask = 0u;
    if (UNIT && col_ok) {
        for (int r = 0; r < R; ++r) hmask |= (unsigned)(th0 - r >= 0 && th0 - r < P) << r;
        for (int s = 0; s < S; ++s) wmask |= (unsigned)(tw0 - s >= 0 && tw0 - s < Q) << s;
    }
    const float* dyc = dyimg + th0 * Q + tw0;

    // kk = (k, r, s) as digits: A's column -> k*Cg*RS + r*S + s (w[g*Kg + k][c][r][s]
    // less c), stepped by BK per slice; B's rows -> k*PQ with (r, s), stepped by B_STEP along a
    // slice and by BK per slice (CnWalker, conv_common.cuh; UNIT: k*PQ - r*Q - s). UNIT (the
    // host chooses) needs no division at all; other strides divide by the stride to find the
    // tap's phase.
    const CnDigits a_slice = cn_digits(1, RS, Cg * RS, 0, 1, 0, 0, CN_TC_BK);
    const CnDigits b_slice = cn_digits(R, S, PQ, UNIT ? -Q : 0, UNIT ? -1 : 0, 1, 1, CN_TC_BK);
    const CnDigits b_step = cn_digits(R, S, PQ, UNIT ? -Q : 0, UNIT ? -1 : 0, 1, 1, CN_TC_B_STEP);
    CnWalker a_next, b_next;
    a_next.start(a_slice, ak);
    b_next.start(b_slice, cn_tc_b_row(0));

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
        {
            const bool kk_ok = k0 + ak < kd;
#pragma unroll
            for (int i = 0; i < CN_TC_A_COPIES; ++i) {
                const int m = cn_tc_a_row<PREC>(i);
                const bool ok = m0 + m < Cg && kk_ok;
                cn_cp_async<4>(&sm.a[stage][m][ak], ok ? w + (wg + m * RS + a_next.off) : w, ok);
            }
            a_next.advance(a_slice);
        }
        CnWalker t = b_next;
        if (cn_tc_b_copies<BN>()) {  // with BN = 96 the last warp copies no B
#pragma unroll
            for (int i = 0; i < CN_TC_B_COPIES; ++i) {
                const int r = cn_tc_b_row(i), kk = k0 + r;
                if (UNIT) {
                    const bool ok = ((hmask >> t.d1) & (wmask >> t.d2) & 1u) && kk < kd;
                    cn_cp_async<4>(&sm.b[stage][r][bj], ok ? dyc + t.off : dy, ok);
                } else {
                    const int th = th0 - t.d1, tw = tw0 - t.d2;
                    const int p = th / sh, q = tw / sw;
                    const bool ok = col_ok && kk < kd && th >= 0 && tw >= 0 && p * sh == th &&
                                    q * sw == tw && p < P && q < Q;
                    cn_cp_async<4>(&sm.b[stage][r][bj], ok ? dyimg + t.off + p * Q + q : dy, ok);
                }
                if (i < CN_TC_B_COPIES - 1) t.advance(b_step);
            }
        }
        b_next.advance(b_slice);
    };
    CnTcAcc<BN> acc;
    cn_tc_gemm<PREC, BN>(load, sm, (kd + CN_TC_BK - 1) / CN_TC_BK, acc);

    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, c = m0 + m;
        if (j >= cols || c >= Cg) return;
        const int n = j / HW;
        dx[(n * C + g * Cg + c) * HW + (j - n * HW)] = v;
    };
    cn_tc_store<BN>(acc, store);
}
