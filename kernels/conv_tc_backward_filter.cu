// conv_tc_backward_filter.cu: the filter gradient of a 2-D convolution on tensor cores
// (issue 12), as conv_backward_filter.cu computes it:
//   dw[g*Kg + k][c][r][s] = sum_{n,p,q} dy[n][g*Kg + k][p][q] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s]
// with the operands rounded to TF32 (PREC 0) or BF16 (PREC 1) and FP32 accumulation
// over kk = (n, p, q) ascending (conv_tc_common.cuh).
//
// Layout: NCHW float32, C-contiguous: x (N, C, H, W), dy (N, K, P, Q), out (see below).
//
// Implicit GEMM per group g: A[k][kk] = dy[n][g*Kg + k][p][q] (Kg x N*P*Q), B[kk][j] =
// x[...] for j = (c, r, s) (gathered, zero outside the image; a row's (n, p, q) offset
// and displacements are the same for every column: the tap table, CnTcTaps, stepped
// with mixed-radix counters, no division in the loop). The reduction over
// N*P*Q is split into `splits` consecutive chunks of `chunk` (a multiple of 16) that
// separate blocks reduce: blockIdx.z = split * groups + g writes its partial sums to
// out[split][g*Kg + k][j] (out is dw itself when splits == 1, else a workspace of
// splits * K * Cg*R*S floats that conv_split_sum (conv_backward_filter.cu) adds in
// split order). No atomics: the result does not depend on the schedule.
//
// Launch: block = 128 threads; grid = (ceil(Cg*R*S / BN), ceil(Kg / BM), splits *
// groups); BN = 128 or 96 (the tile's columns), BM = 128 or 64 (its rows; the default
// 128 keeps the two-argument names); 37 KiB (TF32) or 41 KiB (BF16) static shared
// memory at 128 x 128, plus the 512-byte tap table. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_filter(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out,
                        int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                        int sh, int sw, int ph, int pw, int groups, int chunk)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN, BM> sm;
    __shared__ CnTcTaps taps;  // (offset, p*sh, q*sw) of a slice's rows

    const int split = blockIdx.z / groups;
    const int g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int crs = Cg * RS;
    const int npq = N * PQ;
    const int kbeg = split * chunk;
    const int kend = min(kbeg + chunk, npq);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;

    const int ak = cn_tc_a_col(), bj = cn_tc_b_col();
    const float* dyg = dy + (g * Kg + m0) * PQ;  // dy[0][g*Kg + m0]
    const int col = n0 + bj;
    const bool col_ok = cn_tc_b_copies<BN>() && col < crs;
    const int cc = col_ok ? col / RS : 0;
    const int crs_rem = col_ok ? col - cc * RS : 0;
    const int cr = crs_rem / S, cs = crs_rem - cr * S;
    const int hb = cr - ph, wb = cs - pw;             // h = p*sh + hb, w = q*sw + wb
    const int xbase = (g * Cg + cc) * HW + hb * W + wb;  // of (n, p, q) = 0: may lie outside x

    // kk = (n, p, q) as digits with offsets: A's column (n, pq) -> n*K*PQ + pq, stepped by
    // BK per slice (CnWalker, conv_common.cuh); B's rows (n, p, q) -> n*C*HW + p*sh*W +
    // q*sw with the displacements (p*sh, q*sw), from the tap table (CnTcTaps,
    // conv_tc_common.cuh): no division in the loop.
    const CnDigits a_slice = cn_digits(1, PQ, K * PQ, 0, 1, 0, 0, CN_TC_BK);
    const CnDigits b_slice = cn_digits(P, Q, C * HW, sh * W, sw, sh, sw, CN_TC_BK);
    CnWalker a_next, b_next;
    a_next.start(a_slice, kbeg + ak);
    cn_tc_taps_start(b_next, b_slice, kbeg);
    const unsigned himg = col_ok ? H : 0u, wimg = W;  // a column past the end copies zeros

    auto load = [&](int slice, int stage) {
        const int k0 = kbeg + slice * CN_TC_BK;
        {
            const bool kk_ok = k0 + ak < kend;
#pragma unroll
            for (int i = 0; i < CN_TC_A_COPIES(BM); ++i) {
                const int m = cn_tc_a_row<PREC>(i);
                const bool ok = m0 + m < Kg && kk_ok;
                cn_cp_async<4>(&sm.a[stage][m][ak], dyg + (ok ? m * PQ + a_next.off : 0), ok);
            }
            a_next.advance(a_slice);
        }
        cn_tc_copy_b_taps<PREC, BN>(sm.b[stage], bj, taps, slice & 1, kend - k0, x, xbase, hb, wb, himg, wimg);
        cn_tc_taps_write(taps, (slice + 1) & 1, b_next, b_slice);  // read by the next call
    };
    cn_tc_taps_write(taps, 0, b_next, b_slice);
    __syncthreads();
    CnTcAcc<BN, BM> acc;
    cn_tc_gemm<PREC, BN, BM>(load, sm, (kend - kbeg + CN_TC_BK - 1) / CN_TC_BK, acc);

    float* part = out + split * K * crs;
    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, k = m0 + m;
        if (j >= crs || k >= Kg) return;
        part[(g * Kg + k) * crs + j] = v;
    };
    cn_tc_store<BN, BM>(acc, store);
}
