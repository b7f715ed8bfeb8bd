// conv_tc_backward_filter.cu: the filter gradient of a 2-D convolution on tensor cores
// (issue 12), as conv_backward_filter.cu computes it:
//   dw[g*Kg + k][c][r][s] = sum_{n,p,q} dy[n][g*Kg + k][p][q] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s]
// with the operands rounded to TF32 (PREC 0) or BF16 (PREC 1) and FP32 accumulation
// over kk = (n, p, q) ascending (conv_tc_common.cuh).
//
// Layout: NCHW float32, C-contiguous: x (N, C, H, W), dy (N, K, P, Q), out (see below).
//
// Implicit GEMM per group g: A[k][kk] = dy[n][g*Kg + k][p][q] (Kg x N*P*Q), B[kk][j] =
// x[...] for j = (c, r, s) (gathered, zero outside the image; the (n, p, q) offsets
// follow kk with mixed-radix counters, CnWalker, no division in the loop). The reduction over
// N*P*Q is split into `splits` consecutive chunks of `chunk` (a multiple of 16) that
// separate blocks reduce: blockIdx.z = split * groups + g writes its partial sums to
// out[split][g*Kg + k][j] (out is dw itself when splits == 1, else a workspace of
// splits * K * Cg*R*S floats that conv_split_sum (conv_backward_filter.cu) adds in
// split order). No atomics: the result does not depend on the schedule.
//
// Launch: block = 128 threads; grid = (ceil(Cg*R*S / BN), ceil(Kg / 128), splits *
// groups); BN = 128 or 96 (the tile's columns); 37 KiB (TF32) or 41 KiB (BF16) static
// shared memory at BN = 128. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

template <int PREC, int BN>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_filter(const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out,
                        int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                        int sh, int sw, int ph, int pw, int groups, int chunk)
{
    __shared__ __align__(16) CnTcSmem<PREC, BN> sm;

    const int split = blockIdx.z / groups;
    const int g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups;
    const int HW = H * W, PQ = P * Q, RS = R * S;
    const int crs = Cg * RS;
    const int npq = N * PQ;
    const int kbeg = split * chunk;
    const int kend = min(kbeg + chunk, npq);
    const int m0 = blockIdx.y * CN_TC_BM;
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
    // BK per slice; B's rows (n, p, q) -> n*C*HW + p*sh*W + q*sw, stepped by B_STEP along a
    // slice and by BK per slice (CnWalker, conv_common.cuh): no division in the loop.
    const CnDigits a_slice = cn_digits(1, PQ, K * PQ, 0, 1, 0, 0, CN_TC_BK);
    const CnDigits b_slice = cn_digits(P, Q, C * HW, sh * W, sw, 1, 1, CN_TC_BK);
    const CnDigits b_step = cn_digits(P, Q, C * HW, sh * W, sw, 1, 1, CN_TC_B_STEP);
    CnWalker a_next, b_next;
    a_next.start(a_slice, kbeg + ak);
    b_next.start(b_slice, kbeg + cn_tc_b_row(0));

    auto load = [&](int slice, int stage) {
        const int k0 = kbeg + slice * CN_TC_BK;
        {
            const bool kk_ok = k0 + ak < kend;
#pragma unroll
            for (int i = 0; i < CN_TC_A_COPIES; ++i) {
                const int m = cn_tc_a_row<PREC>(i);
                const bool ok = m0 + m < Kg && kk_ok;
                cn_cp_async<4>(&sm.a[stage][m][ak], ok ? dyg + m * PQ + a_next.off : dy, ok);
            }
            a_next.advance(a_slice);
        }
        CnWalker t = b_next;
        if (cn_tc_b_copies<BN>()) {  // with BN = 96 the last warp copies no B
#pragma unroll
            for (int i = 0; i < CN_TC_B_COPIES; ++i) {
                const int r = cn_tc_b_row(i), kk = k0 + r;
                const int h = hb + t.d1 * sh, wi = wb + t.d2 * sw;
                const bool ok = col_ok && kk < kend && h >= 0 && h < H && wi >= 0 && wi < W;
                cn_cp_async<4>(&sm.b[stage][r][bj], ok ? x + (xbase + t.off) : x, ok);
                if (i < CN_TC_B_COPIES - 1) t.advance(b_step);
            }
        }
        b_next.advance(b_slice);
    };
    CnTcAcc<BN> acc;
    cn_tc_gemm<PREC, BN>(load, sm, (kend - kbeg + CN_TC_BK - 1) / CN_TC_BK, acc);

    float* part = out + split * K * crs;
    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, k = m0 + m;
        if (j >= crs || k >= Kg) return;
        part[(g * Kg + k) * crs + j] = v;
    };
    cn_tc_store<BN>(acc, store);
}
