// conv_tc_backward_filter_nhwc.cu: the filter gradient of a 2-D convolution on tensor
// cores from channels-last operands (issue 12), exactly what conv_tc_backward_filter.cu
// computes, bit for bit:
//   dw[g*Kg + k][c][r][s] = sum_{n,p,q} dy[n][p][q][g*Kg + k] * x[n][p*sh - ph + r][q*sw - pw + s][g*Cg + c]
// over kk = (n, p, q) ascending within each split's chunk, FP32 accumulation. The
// operands come rounded by the layout kernel (kernels/conv_layout.cu): TF32 (PREC 0) as
// float32 values, a fragment the shared word as it is; BF16 (PREC 1) as 16-bit values,
// the fragments' kk pairs gathered from two shared rows by ldmatrix.trans (the values
// cvt.rn.bf16x2 would give conv_tc_backward_filter: the same products, the same order).
//
// Layout: x (N, H, W, Cx) and dy (N, P, Q, Kx) channels last, float32 (TF32) or uint16
// (BF16), Cx >= C and Kx >= K channels a pixel; out as conv_tc_backward_filter's:
// out[split][g*Kg + k][c][r][s] float32 (dw itself with one split, else the workspace
// conv_split_sum adds in split order). A 16-byte copy moves V = 4 (TF32) or 8 (BF16)
// channels of one pixel (one tap), so Cgx = Cx / groups and Kgx = Kx / groups are
// multiples of V (the host checks). groups > 1: Cx = C and Kx = K (Cg and Kg multiples
// of V); groups == 1: the layout kernel pads C and K up to multiples of V with zero
// channels (conv1's C = 3: Cx = 4 or 8), and the GEMM below runs over the padded rows
// k < Kgx and columns c < Cgx but stores only k < Kg, c < Cg. The padding widens the
// GEMM's M and N, not its reduction: every stored sum is the unpadded one, bit for bit.
//
// Implicit GEMM per group g: D[k][j] = sum_i A[k][i] B[i][j], i = (n, p, q) (the row of
// dy's NHWC matrix), j = (r, s, c) (c fastest, c < Cgx): A[k][i] = dy[i][g*Kg + k] (dense
// rows), B[i][j] = x[n][p*sh - ph + r][q*sw - pw + s][g*Cg + c], zero outside the image. Both
// operands are held kk-major in shared memory, [BK][columns + 8 elements] (CnTcFSmem
// below), filled by 16-byte cp.async of V consecutive k (A) or c (B). A row's pixel offset and (p*sh,
// q*sw) are the same for every column: a row table (CnTcFRows) written one slice ahead
// by 16 threads stepping mixed-radix counters (CnWalker, conv_common.cuh); a thread's
// column chunk (r, s, c) is fixed, so its tap offset is computed once. Rows past the
// chunk's end carry an impossible row position: the bounds test zero-fills them.
//
// Launch: block = 128 threads; grid = (ceil(Cgx*R*S / BN), ceil(Kg / BM), splits *
// groups), blockIdx.z = split * groups + g; BN = 128 or 96, BM = 128 or 64 (default 128:
// two-argument names); static shared memory at 128 x 128: 34 KiB (TF32) or 17 KiB
// (BF16), plus the 512-byte row table. 32-bit indices (the host checks the sizes).
#include "conv_tc_common.cuh"

// Both operands kk-major: a[stage][kk][m] and b[stage][kk][j] of the layout's elements,
// rows of columns + 8 elements. TF32: a warp's (k = t, column g) words fall on banks
// 8t + g. BF16: rows of 16-byte multiples (ldmatrix's rows), 272, 208 or 144 bytes, so
// that the 8 rows of an ldmatrix matrix fall on distinct 16-byte bank groups.
template <int PREC, int BN, int BM>
struct CnTcFSmem {
    static_assert(BN == 128 || BN == 96, "conv_tc: BN is 128 or 96");
    static_assert(BM == 128 || BM == 64, "conv_tc: BM is 128 or 64");
    typedef typename CnTcOperand<PREC>::type E;
    static constexpr int LDA = BM + 8, LDB = BN + 8;
    E a[CN_TC_STAGES][CN_TC_BK][LDA];
    E b[CN_TC_STAGES][CN_TC_BK][LDB];
};

// One slice of kk-major operands out of stage `st` into the accumulators (found by
// cn_tc_gemm through argument-dependent lookup): TF32 words as they are; BF16 by
// ldmatrix.trans (cn_tc_mma_slice_ldsm).
template <int BN, int BM>
static __device__ __forceinline__ void cn_tc_fslice(const CnTcFSmem<0, BN, BM>& sm, int st, CnTcAcc<BN, BM>& acc)
{
    cn_tc_mma_slice<0, BN, BM>([&](int r, int k) { return __float_as_uint(sm.a[st][k][r]); },
                               [&](int c, int k) { return __float_as_uint(sm.b[st][k][c]); }, acc);
}
template <int BN, int BM>
static __device__ __forceinline__ void cn_tc_fslice(const CnTcFSmem<1, BN, BM>& sm, int st, CnTcAcc<BN, BM>& acc)
{
    cn_tc_mma_slice_ldsm<1, true, BN, BM>(&sm.a[st][0][0], CnTcFSmem<1, BN, BM>::LDA, &sm.b[st][0][0],
                                          CnTcFSmem<1, BN, BM>::LDB, acc);
}
template <int PREC, int BN, int BM>
static __device__ __forceinline__ void cn_tc_slice(const CnTcFSmem<PREC, BN, BM>& sm, int st, CnTcAcc<BN, BM>& acc)
{
    cn_tc_fslice(sm, st, acc);
}

// The row table: entry i of slot (slice & 1) is (pixel offset n*H*W*C + p*sh*W*C +
// q*sw*C, p*sh, q*sw) of row kk = kbeg + BK * slice + i, with p*sh = CN_TC_FAR (the
// bounds test fails for every tap) where kk is past the chunk's end. Threads 0..15
// write it one slice ahead (consecutive loads are a barrier apart: two slots suffice).
#define CN_TC_FAR (-(1 << 29))
struct CnTcFRows {
    int4 e[2][CN_TC_BK];
};
static __device__ __forceinline__ void cn_tc_frows_write(CnTcFRows& rows, int slot, CnWalker& walk,
                                                         const CnDigits& dg, int& left)
{
    if (threadIdx.x < CN_TC_BK) {
        rows.e[slot][threadIdx.x] = make_int4(walk.off, left > 0 ? walk.d1 * dg.h1 : CN_TC_FAR, walk.d2 * dg.w2, 0);
        walk.advance(dg);
        left -= CN_TC_BK;
    }
}

template <int PREC, int BN, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_backward_filter_nhwc(const void* __restrict__ x_, const void* __restrict__ dy_, float* __restrict__ out,
                             int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                             int sh, int sw, int ph, int pw, int groups, int chunk, int Cx, int Kx)
{
    __shared__ __align__(16) CnTcFSmem<PREC, BN, BM> sm;
    __shared__ __align__(16) CnTcFRows rows;
    typedef typename CnTcOperand<PREC>::type E;  // an operand element: float or BF16 bits
    constexpr int V = 16 / sizeof(E);             // channels a 16-byte copy
    constexpr int CA = BM / V, AS = CN_TC_THREADS / CA, AC = CN_TC_BK / AS;  // A: chunks a row, row step, copies
    constexpr int CB = BN / V, BS = V, BC = CN_TC_BK / BS;                   // B: threads < BN copy
    const E* x = static_cast<const E*>(x_);
    const E* dy = static_cast<const E*>(dy_);

    const int split = blockIdx.z / groups;
    const int g = blockIdx.z - split * groups;
    const int Cg = C / groups, Kg = K / groups;
    const int Cgx = Cx / groups, Kgx = Kx / groups;  // the layouts' channels a group (>= Cg, Kg)
    const int RS = R * S;
    const int crs = Cg * RS;                          // dw's columns a filter
    const int crsx = Cgx * RS;                        // the GEMM's columns j = (r, s, c < Cgx)
    const int npq = N * P * Q;
    const int kbeg = split * chunk;
    const int kend = min(kbeg + chunk, npq);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int tid = threadIdx.x;

    // A: this thread's V filters m0 + V aq.. (fixed) in rows arow + AS i of each slice
    const int aq = tid % CA, arow = tid / CA;
    int aoff = (kbeg + arow) * Kx + g * Kg + m0 + V * aq;  // dy[kbeg + arow][g*Kg + m0 + V aq]
    int aleft = m0 + V * aq < Kgx ? kend - kbeg - arow : CN_TC_FAR;  // rows of this thread left
    const int astep = AS * Kx;

    // B: this thread's column chunk j = n0 + V bq.. = (r, s, c..c+V-1) (fixed) in rows brow + V i
    const bool bcopies = BN == CN_TC_THREADS || tid < BN;
    const int bq = tid % CB, brow = bcopies ? tid / CB : 0;
    const int col = n0 + V * bq;
    const bool col_ok = bcopies && col < crsx;
    const int rs = col_ok ? col / Cgx : 0;
    const int cc = col_ok ? col - rs * Cgx : 0;
    const int cr = rs / S, cs = rs - cr * S;
    const int hb = cr - ph, wb = cs - pw;                   // h = p*sh + hb, w = q*sw + wb
    const int xoff = (hb * W + wb) * Cx + g * Cg + cc;      // of (n, p, q) = 0: may lie outside x
    const unsigned himg = col_ok ? H : 0u, wimg = W;        // a column past the end copies zeros

    // the row table's walk: kk = (n, p, q) -> n*H*W*Cx + p*sh*W*Cx + q*sw*Cx, (p*sh, q*sw)
    const CnDigits dg = cn_digits(P, Q, H * W * Cx, sh * W * Cx, sw * Cx, sh, sw, CN_TC_BK);
    CnWalker walk;
    int rleft = kend - kbeg - (tid & (CN_TC_BK - 1));
    walk.start(dg, kbeg + (tid & (CN_TC_BK - 1)));

    auto load = [&](int slice, int stage) {
#pragma unroll
        for (int i = 0; i < AC; ++i) {
            const bool ok = AS * i < aleft;
            cn_cp_async<16>(&sm.a[stage][arow + AS * i][V * aq], dy + (ok ? aoff + i * astep : 0), ok);
        }
        aoff += CN_TC_BK * Kx;
        aleft -= CN_TC_BK;
        if (bcopies) {
#pragma unroll
            for (int i = 0; i < BC; ++i) {
                const int4 e = rows.e[slice & 1][brow + BS * i];
                const bool ok = (unsigned)(e.y + hb) < himg && (unsigned)(e.z + wb) < wimg;
                cn_cp_async<16>(&sm.b[stage][brow + BS * i][V * bq], x + (ok ? xoff + e.x : 0), ok);
            }
        }
        cn_tc_frows_write(rows, (slice + 1) & 1, walk, dg, rleft);  // read by the next call
    };
    cn_tc_frows_write(rows, 0, walk, dg, rleft);
    __syncthreads();
    CnTcAcc<BN, BM> acc;
    cn_tc_gemm<PREC, BN, BM>(load, sm, (kend - kbeg + CN_TC_BK - 1) / CN_TC_BK, acc);

    // D[k][j = (r, s, c)] -> out[split][g*Kg + k][c][r][s], for k < Kg and c < Cg only
    float* part = out + split * K * crs;
    auto store = [&](int m, int jj, float v) {
        const int j = n0 + jj, k = m0 + m;
        const int t = j / Cgx, c = j - t * Cgx;  // t = r*S + s: t < RS is j < Cgx*RS
        if (k < Kg && c < Cg && t < RS) part[(g * Kg + k) * crs + c * RS + t] = v;
    };
    cn_tc_store<BN, BM>(acc, store);
}
