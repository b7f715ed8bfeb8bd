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
// Launch: block = 128 threads; grid = (ceil(N*H*W / BN), ceil(Cg / BM), groups);
// UNIT = (sh == 1 && sw == 1);
// BN = 128 or 96 (the tile's columns), BM = 128 or 64 (its rows; the default 128 keeps
// the two-argument names); 37 KiB (TF32) or 41 KiB (BF16) static shared memory at
// 128 x 128, plus the 512-byte tap table. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN, bool UNIT, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_data(const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx,
                      int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                      int sh, int sw, int ph, int pw, int groups)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN, BM> sm;
    __shared__ CnTcTaps taps;  // (offset, -r, -s) of a slice's rows

    const int g = blockIdx.z;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int kd = Kg * RS;
    const int cols = N * HW;
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    const int ak = cn_tc_a_col(), bj = cn_tc_b_col();
    const int wg = (g * Kg * Cg + m0) * RS;  // w[g*Kg][m0][0][0] (an index: fewer live registers than pointers)
    const int col = n0 + bj;
    const bool col_ok = cn_tc_b_copies<BN>() && col < cols;
    const int cn = col_ok ? col / HW : 0;
    const int chw = col_ok ? col - cn * HW : 0;
    const int ch = chw / W;
    const int th0 = ch + ph, tw0 = chw - ch * W + pw;  // p*sh + r and q*sw + s
    const int dyimg = (cn * K + g * Kg) * PQ;  // dy[n][g*Kg] (an index)
    const int dyc = dyimg + th0 * Q + tw0;      // dy[n][g*Kg][th0][tw0] (UNIT; formed, not read)

    // kk = (k, r, s) as digits: A's column -> k*Cg*RS + r*S + s (w[g*Kg + k][c][r][s]
    // less c), stepped by BK per slice (CnWalker, conv_common.cuh); B's rows from the tap
    // table (CnTcTaps, conv_tc_common.cuh): offset k*PQ (UNIT: k*PQ - r*Q - s, from dyc)
    // and displacements (-r, -s). UNIT (stride 1, the host chooses) tests p = th0 - r and
    // q = tw0 - s against the output and needs no division at all; other strides divide
    // by the stride to find the tap's phase.
    const CnDigits a_slice = cn_digits(1, RS, Cg * RS, 0, 1, 0, 0, CN_TC_BK);
    const CnDigits b_slice = cn_digits(R, S, PQ, UNIT ? -Q : 0, UNIT ? -1 : 0, -1, -1, CN_TC_BK);
    CnWalker a_next, b_next;
    a_next.start(a_slice, ak);
    cn_tc_taps_start(b_next, b_slice, 0);
    const unsigned pimg = col_ok ? P : 0u, qimg = Q;  // a column past the end copies zeros

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
        {
            const bool kk_ok = k0 + ak < kd;
#pragma unroll
            for (int i = 0; i < CN_TC_A_COPIES(BM); ++i) {
                const int m = cn_tc_a_row<PREC>(i);
                const bool ok = m0 + m < Cg && kk_ok;
                cn_cp_async<4>(&sm.a[stage][m][ak], w + (ok ? wg + m * RS + a_next.off : 0), ok);
            }
            a_next.advance(a_slice);
        }
        {
            const int left = kd - k0;
            const int4 mine = cn_tc_taps_read(taps, slice & 1);
#pragma unroll
            for (int i = 0; i < CN_TC_B_COPIES; ++i) {
                const int r = cn_tc_b_row(i);
                const int3 tap = cn_tc_tap(mine, r);  // every lane: a shuffle
                const int th = th0 + tap.y, tw = tw0 + tap.z;
                bool ok;
                int at;
                if (UNIT) {
                    ok = r < left && (unsigned)th < pimg && (unsigned)tw < qimg;
                    at = dyc + tap.x;
                } else {
                    const int p = th / sh, q = tw / sw;
                    ok = col_ok && r < left && th >= 0 && tw >= 0 && p * sh == th && q * sw == tw &&
                         p < P && q < Q;
                    at = dyimg + tap.x + p * Q + q;
                }
                if (cn_tc_b_copies<BN>())  // with BN = 96 the last warp copies no B
                    cn_cp_async<4>(&sm.b[stage][r][bj], dy + (ok ? at : 0), ok);
            }
        }
        cn_tc_taps_write(taps, (slice + 1) & 1, b_next, b_slice);  // read by the next call
    };
    cn_tc_taps_write(taps, 0, b_next, b_slice);
    __syncthreads();
    CnTcAcc<BN, BM> acc;
    cn_tc_gemm<PREC, BN, BM>(load, sm, (kd + CN_TC_BK - 1) / CN_TC_BK, acc);

    cn_tc_store_nchw<BN, BM>(acc, dx, dx, 0, 0, m0, n0, Cg, cols, HW, C, g * Cg);
}
