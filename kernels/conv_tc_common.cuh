// conv_tc_common.cuh: the tensor-core implicit-GEMM engine of the conv_tc_*.cu kernels
// (issue 12): D[m][j] = sum_kk A[m][kk] B[kk][j] for one BM x BN tile of D per block,
// BM = 128 or 64, BN = 128 or 96 (template parameters: 96 gives a grid of better waves
// where 128's falls just past a whole number; 64 rows waste less of the tile where a
// group has few rows, conv2's 48 channels: ops/conv_tc.py TILES).
//
// Block: 128 threads = 4 warps in 2 x 2, each computing BM/2 x BN/2 of the tile as BM/32
// x BN/16 mma tiles of 16 x 8 (kernels/mma.cuh); PREC 0: TF32 operands (m16n8k8, two k-steps
// per slice), PREC 1: BF16 operands (m16n8k16). FP32 accumulation in registers. A
// 64 x 64 warp tile reads 128 operand values of shared memory per k for 64 x 64 products
// (a 32 x 64 one: 96 for 32 x 64), which is what the shared-memory bandwidth limits.
// The reduction advances in slices of BK = 16. A slice of A (BM x 16, kk fastest) and
// of B (16 x BN, j fastest) goes global -> shared through 4-byte cp.async
// (kernels/cp_async.cuh) issued by the kernel's loader; the ring holds 2 slices (3 would
// pass the 48 KiB of static shared memory), so slice t+1 is in flight while slice t is
// multiplied, with one __syncthreads per slice. Values are rounded to TF32/BF16 as the
// fragments are read from shared memory; each product joins the sum in ascending kk,
// one FP32 rounding per addition.
//
// Loader contract: load(slice, stage) is called for slices 0, 1, 2, ... in order (so a
// loader may step its gather state by one slice per call; with CN_TC_STAGES == 2 two
// calls are always a __syncthreads apart, so a call may leave the next one data in
// shared memory) and issues, for this
// thread, the copies of A rows cn_tc_a_row<PREC>(i) (i < CN_TC_A_COPIES(BM)) at column
// cn_tc_a_col() and, where cn_tc_b_copies<BN>() (thread < BN), of B rows cn_tc_b_row(i)
// (i < CN_TC_B_COPIES, CN_TC_B_STEP apart) at column cn_tc_b_col() of that slice into
// sm.a[stage] / sm.b[stage], zero-filling
// everything outside the operands (padding, edges, past the reduction's end).
// Shared rows are padded so that the fragment reads of a warp and its copies fall on
// distinct banks: TF32 reads A (g, t) and B (k = t, n = g) words (A rows of 20 floats,
// B rows of BN + 8: banks 20g + t and 8t + g); BF16 reads A pairs (g, 2t..2t+1) as one
// 8-byte word per lane (rows of 24 floats: a half-warp's 16 pairs on 32 banks) and B
// rows 2t and 2t+1 (rows of BN + 4 floats: banks 8t + g and 8t + 4 + g; BN = 96 or 128). A warp's A copies
// cover two rows 16 floats long, chosen so that their banks do not meet.
#pragma once

// conv_common.cuh: CnDigits / CnWalker, gather offsets without divisions
#include "conv_common.cuh"
#include "cp_async.cuh"
#include "mma.cuh"

#define CN_TC_BK 16
#define CN_TC_STAGES 2
#define CN_TC_THREADS 128
#define CN_TC_MI(BM) ((BM) / 32)                            // mma tiles per warp, down
#define CN_TC_A_COPIES(BM) ((BM) * CN_TC_BK / CN_TC_THREADS)  // A copies per thread per slice
#define CN_TC_B_COPIES CN_TC_BK                              // B copies per thread (< BN) per slice
#define CN_TC_B_STEP 1                                       // B rows between a thread's copies
#define CN_TC_NI(BN) ((BN) / 16)                             // mma tiles per warp, across
#define CN_TC_LDA(PREC) ((PREC) ? CN_TC_BK + 8 : CN_TC_BK + 4)
#define CN_TC_LDB(PREC, BN) ((PREC) ? (BN) + 4 : (BN) + 8)

template <int PREC, int BN, int BM>
struct CnTcSmem {
    static_assert(BN == 128 || BN == 96, "conv_tc: BN is 128 or 96");
    static_assert(BM == 128 || BM == 64, "conv_tc: BM is 128 or 64");
    float a[CN_TC_STAGES][BM][CN_TC_LDA(PREC)];
    float b[CN_TC_STAGES][CN_TC_BK][CN_TC_LDB(PREC, BN)];
};
template <int BN, int BM>
using CnTcAcc = float[CN_TC_MI(BM)][CN_TC_NI(BN)][4];

// The slots a thread loads (tid = threadIdx.x). A: each half-warp copies 16 floats of
// one row; a warp's two rows are 4 apart for TF32 (20-float rows: 80 words, banks
// 16 apart) and 2 apart for BF16 (24-float rows: 48 words), so its 32 words meet no bank
// twice; the 8 rows of the block's copies i are 8i .. 8i + 7.
template <int PREC>
static __device__ __forceinline__ int cn_tc_a_row(int i)
{
    const int warp = threadIdx.x >> 5, half = (threadIdx.x >> 4) & 1;
    const int row = PREC ? (warp & 1) + 4 * (warp >> 1) + 2 * half : warp + 4 * half;
    return row + 8 * i;
}
static __device__ __forceinline__ int cn_tc_a_col() { return threadIdx.x & (CN_TC_BK - 1); }
// B: thread j < BN copies the 16 rows of column j (with BN = 96 the last warp copies none
// of B: the same warp instructions as 12 rows per thread, and one column per thread).
static __device__ __forceinline__ int cn_tc_b_row(int i) { return threadIdx.x / CN_TC_THREADS + CN_TC_B_STEP * i; }
static __device__ __forceinline__ int cn_tc_b_col() { return threadIdx.x & (CN_TC_THREADS - 1); }
template <int BN>
static __device__ __forceinline__ bool cn_tc_b_copies() { return BN == CN_TC_THREADS || (int)threadIdx.x < BN; }

// The warp's tile origin in the block's tile.
template <int BM>
static __device__ __forceinline__ int cn_tc_wm() { return (threadIdx.x >> 6) * (BM / 2); }
template <int BN>
static __device__ __forceinline__ int cn_tc_wn() { return ((threadIdx.x >> 5) & 1) * (BN / 2); }

// A tap table: for a loader whose B rows' offsets and displacements do not depend on the
// column (an implicit GEMM's gathered operand), entry i of slot (slice & 1) is (offset,
// d1 * h1, d2 * w2) of row kk = BK * slice + i. Threads 0..15 write it one slice ahead,
// each stepping its own CnWalker by BK (cn_tc_taps_start at the first slice, then
// cn_tc_taps_write(slot of slice s) once per slice s in order), so no copy walks the
// digits itself. A warp reads the slice's 16 entries at once, lane l entry l % 16 (one
// 16-byte read: 4 wavefronts for the warp, where one read per row, the same address
// for every lane, would take 4 each), and cn_tc_tap hands row r's entry to every lane
// by shuffles. Two slots suffice because consecutive loads are a barrier apart.
static_assert(CN_TC_STAGES == 2, "CnTcTaps: two slots need consecutive loads a barrier apart");
struct CnTcTaps {
    int4 e[2][CN_TC_BK];
};
static __device__ __forceinline__ void cn_tc_taps_start(CnWalker& walk, const CnDigits& g, int kbeg)
{
    walk.start(g, kbeg + ((int)threadIdx.x & (CN_TC_BK - 1)));
}
static __device__ __forceinline__ void cn_tc_taps_write(CnTcTaps& taps, int slot, CnWalker& walk, const CnDigits& g)
{
    if (threadIdx.x < CN_TC_BK) {
        taps.e[slot][threadIdx.x] = make_int4(walk.off, walk.d1 * g.h1, walk.d2 * g.w2, 0);
        walk.advance(g);
    }
}
static __device__ __forceinline__ int4 cn_tc_taps_read(const CnTcTaps& taps, int slot)
{
    return taps.e[slot][threadIdx.x & (CN_TC_BK - 1)];
}
// Row r's (offset, displacement 1, displacement 2) from the warp's cn_tc_taps_read (every
// lane of the warp must call, with the same r).
static __device__ __forceinline__ int3 cn_tc_tap(const int4& mine, int r)
{
    return make_int3(__shfl_sync(0xffffffffu, mine.x, r), __shfl_sync(0xffffffffu, mine.y, r),
                     __shfl_sync(0xffffffffu, mine.z, r));
}

// The B copies of one slice for this thread's column bj through the tap table: row r
// (< left) copies src[base + offset] where (unsigned)(h + d1) < hlim and (unsigned)(w +
// d2) < wlim, zeros elsewhere (hlim = 0: a column past the end), into b[r][bj].
template <int PREC, int BN>
static __device__ __forceinline__ void cn_tc_copy_b_taps(float (&b)[CN_TC_BK][CN_TC_LDB(PREC, BN)], int bj,
                                                         const CnTcTaps& taps, int slot, int left,
                                                         const float* src, int base, int h, int w,
                                                         unsigned hlim, unsigned wlim)
{
    const int4 mine = cn_tc_taps_read(taps, slot);
#pragma unroll
    for (int i = 0; i < CN_TC_B_COPIES; ++i) {
        const int r = cn_tc_b_row(i);
        const int3 tap = cn_tc_tap(mine, r);  // every lane: a shuffle
        const bool ok = r < left && (unsigned)(h + tap.y) < hlim && (unsigned)(w + tap.z) < wlim;
        if (cn_tc_b_copies<BN>())  // with BN = 96 the last warp copies no B
            cn_cp_async<4>(&b[r][bj], src + (ok ? base + tap.x : 0), ok);
    }
}

// K-major operands (the channels-last kernel, conv_tc_forward_nhwc.cu): A (BM x 16) and
// B (16 x BN) both held kk fastest, a shared row per GEMM row or column, a[m][kk] and
// b[j][kk], so that B's fragments read exactly as A's. The operands arrive already
// rounded by the layout kernels (kernels/conv_layout.cu): TF32 as floats, BF16 as
// 16-bit values, two to a word (kk 2i in the low half), so no fragment is converted:
// a fragment register is a shared word as it is. Rows of 16 kk: 16 words + 4 of padding
// for TF32 (a warp's (g, t) words on banks 20g + t), 8 words + 4 for BF16 (banks
// 12g + t). A row's slice (64 or 32 bytes) arrives by 16-byte copies: CN_TC_K_CHUNKS
// threads a row, CN_TC_K_ROWS rows a round of the block's copies (cn_tc_k_row).
template <int PREC> struct CnTcOperand { typedef float type; };             // TF32 values
template <> struct CnTcOperand<1> { typedef unsigned short type; };           // BF16 bits
#define CN_TC_LDK(PREC) ((PREC) ? 12 : 20)
#define CN_TC_K_CHUNKS(PREC) ((PREC) ? 2 : 4)
#define CN_TC_K_ROWS(PREC) (CN_TC_THREADS / CN_TC_K_CHUNKS(PREC))

template <int PREC, int BN, int BM>
struct CnTcKSmem {
    static_assert(BN == 128 || BN == 96, "conv_tc: BN is 128 or 96");
    static_assert(BM == 128 || BM == 64, "conv_tc: BM is 128 or 64");
    unsigned a[CN_TC_STAGES][BM][CN_TC_LDK(PREC)];
    unsigned b[CN_TC_STAGES][BN][CN_TC_LDK(PREC)];
};

// The row of this thread's copy in round i (rows CN_TC_K_ROWS * i ..): a quarter-warp's
// 16-byte writes go together, so its rows are chosen to meet no bank twice: TF32, 4
// threads a row, rows r and r + 4 (80 words apart: banks 16 apart); BF16, 2 threads a
// row, rows r, r + 2, r + 4, r + 6 (12-word rows: the eight chunks on distinct banks).
template <int PREC>
static __device__ __forceinline__ int cn_tc_k_row(int i)
{
    const int lane = threadIdx.x & 31, quarter = lane >> 3;
    const int row = PREC ? 2 * ((lane >> 1) & 3) + (quarter & 1) + 8 * (quarter >> 1)
                         : quarter + 4 * ((lane >> 2) & 1);
    return CN_TC_K_ROWS(PREC) * i + (32 / CN_TC_K_CHUNKS(PREC)) * (threadIdx.x >> 5) + row;
}
// The first word of this thread's 16 bytes in a row's slice.
template <int PREC>
static __device__ __forceinline__ int cn_tc_k_word() { return 4 * (threadIdx.x & (CN_TC_K_CHUNKS(PREC) - 1)); }

// The mma of one slice: the warp's MI x NI tiles of 16 x 8 from fragment registers
// fa(row, k) and fb(column, k) (row, column: of the block's tile; k: the fragment's
// reduction index, k and k + 4 for a register pair: TF32 the slice's kk, two steps of
// 8; BF16 the kk pair 2k, 2k + 1, one step of 16), each operand's layout and rounding
// being its reader's.
template <int PREC, int BN, int BM, class FragA, class FragB>
static __device__ __forceinline__ void cn_tc_mma_slice(const FragA& fa, const FragB& fb, CnTcAcc<BN, BM>& acc)
{
    constexpr int MI = CN_TC_MI(BM);
    const int lane = threadIdx.x & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = cn_tc_wm<BM>(), wn = cn_tc_wn<BN>();
#pragma unroll
    for (int ks = 0; ks < (PREC ? 1 : 2); ++ks) {
        const int k = 8 * ks + tq;
        unsigned a[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi) {
            const int r0 = wm + 16 * mi + gq;
            a[mi][0] = fa(r0, k);
            a[mi][1] = fa(r0 + 8, k);
            a[mi][2] = fa(r0, k + 4);
            a[mi][3] = fa(r0 + 8, k + 4);
        }
#pragma unroll
        for (int ni = 0; ni < CN_TC_NI(BN); ++ni) {  // a column's B fragment at a time (registers)
            const int c0 = wn + 8 * ni + gq;
            const unsigned b[2] = {fb(c0, k), fb(c0, k + 4)};
#pragma unroll
            for (int mi = 0; mi < MI; ++mi) {
                if (PREC == 0) cn_mma_tf32(acc[mi][ni], a[mi], b, acc[mi][ni]);
                else cn_mma_bf16(acc[mi][ni], a[mi], b, acc[mi][ni]);
            }
        }
    }
}

// The mma of one slice from operands in shared memory, the fragments read by
// ldmatrix.x4 (kernels/mma.cuh), which moves 8 x 8 matrices of 16-bit elements: a TF32
// word is two of them, so a matrix of 8 rows x 4 TF32 words hands lane (g, t) word t of
// row g, the TF32 fragment layout. TRANS (BF16 only): held k-row by k-row, a[kk][m] and
// b[kk][j] (the filter kernel), read transposed; else k-major, a[m][kk] and b[j][kk]
// (the channels-last forward), read as they are. Rows of lda and ldb 16-bit units,
// 16-byte multiples; a k step of 8 (TF32: two per slice) or 16 (BF16) is 16 units wide.
// A's four 8 x 8 matrices of mma tile mi are (rows 0-7 | 8-15) x (k 0-3 | 4-7 TF32
// words, or kk 0-7 | 8-15 BF16), matrix q = a[q] (rows + 8 (q & 1), k half q >> 1);
// B's are b0 and b1 of two column tiles ni, ni + 1 (k half q & 1, columns + 8 (q >> 1)).
// Lane l gives row l % 8 of matrix l / 8. Each fragment element is the value the lambda
// readers of cn_tc_mma_slice would hand over, the products and their order the same.
template <int PREC, bool TRANS, int BN, int BM>
static __device__ __forceinline__ void cn_tc_mma_slice_ldsm(const unsigned short* a, int lda, const unsigned short* b,
                                                            int ldb, CnTcAcc<BN, BM>& acc)
{
    static_assert(PREC == 1 || !TRANS, "a transposed ldmatrix moves 16-bit elements: BF16 only");
    constexpr int MI = CN_TC_MI(BM), NI = CN_TC_NI(BN);
    static_assert(NI % 2 == 0, "B fragments come two column tiles an ldmatrix");
    const int lane = threadIdx.x & 31, q = lane >> 3, r = lane & 7;
    const int wm = cn_tc_wm<BM>(), wn = cn_tc_wn<BN>();
    // this lane's row of a matrix whose first row or column is mn and first k unit is k
    auto at = [&](const unsigned short* base, int ld, int mn, int k) {
        return TRANS ? base + (k + r) * ld + mn : base + (mn + r) * ld + k;
    };
#pragma unroll
    for (int ks = 0; ks < (PREC ? 1 : 2); ++ks) {
        unsigned fa[MI][4];
#pragma unroll
        for (int mi = 0; mi < MI; ++mi)
            cn_ldmatrix<4, TRANS>(fa[mi], at(a, lda, wm + 16 * mi + 8 * (q & 1), 16 * ks + 8 * (q >> 1)));
#pragma unroll
        for (int ni = 0; ni < NI; ni += 2) {
            unsigned fb[4];
            cn_ldmatrix<4, TRANS>(fb, at(b, ldb, wn + 8 * (ni + (q >> 1)), 16 * ks + 8 * (q & 1)));
#pragma unroll
            for (int h = 0; h < 2; ++h) {
#pragma unroll
                for (int mi = 0; mi < MI; ++mi) {
                    if (PREC == 0) cn_mma_tf32(acc[mi][ni + h], fa[mi], &fb[2 * h], acc[mi][ni + h]);
                    else cn_mma_bf16(acc[mi][ni + h], fa[mi], &fb[2 * h], acc[mi][ni + h]);
                }
            }
        }
    }
}

// One slice of k-major operands out of stage `st` by ldmatrix (cn_tc_mma_slice_ldsm):
// the registers are the shared words, rows of CN_TC_LDK(PREC) words.
template <int PREC, int BN, int BM>
static __device__ __forceinline__ void cn_tc_slice(const CnTcKSmem<PREC, BN, BM>& sm, int st, CnTcAcc<BN, BM>& acc)
{
    cn_tc_mma_slice_ldsm<PREC, false, BN, BM>(reinterpret_cast<const unsigned short*>(&sm.a[st][0][0]),
                                              2 * CN_TC_LDK(PREC),
                                              reinterpret_cast<const unsigned short*>(&sm.b[st][0][0]),
                                              2 * CN_TC_LDK(PREC), acc);
}

// One slice out of stage `st`, rounded as it is read: A's rows kk fastest (a BF16 pair
// one 8-byte read: 8-aligned, even rows and columns of floats), B's rows j fastest.
template <int PREC, int BN, int BM>
static __device__ __forceinline__ void cn_tc_slice(const CnTcSmem<PREC, BN, BM>& sm, int st, CnTcAcc<BN, BM>& acc)
{
    auto fa = [&](int r, int k) {
        if (PREC == 0) return cn_tf32(sm.a[st][r][k]);
        const float2 p = *reinterpret_cast<const float2*>(&sm.a[st][r][2 * k]);
        return cn_bf16x2(p.x, p.y);
    };
    auto fb = [&](int c, int k) {
        return PREC == 0 ? cn_tf32(sm.b[st][k][c]) : cn_bf16x2(sm.b[st][2 * k][c], sm.b[st][2 * k + 1][c]);
    };
    cn_tc_mma_slice<PREC, BN, BM>(fa, fb, acc);
}

// The whole reduction: `slices` slices through the cp.async ring of CN_TC_STAGES
// (Smem: CnTcSmem or CnTcKSmem, whose cn_tc_slice reads it).
template <int PREC, int BN, int BM, class Smem, class Load>
static __device__ __forceinline__ void cn_tc_gemm(Load& load, const Smem& sm, int slices, CnTcAcc<BN, BM>& acc)
{
#pragma unroll
    for (int mi = 0; mi < CN_TC_MI(BM); ++mi)
#pragma unroll
        for (int ni = 0; ni < CN_TC_NI(BN); ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;
#pragma unroll
    for (int s = 0; s < CN_TC_STAGES - 1; ++s) {
        if (s < slices) load(s, s);
        cn_cp_async_commit();
    }
    for (int t = 0; t < slices; ++t) {
        cn_cp_async_wait<CN_TC_STAGES - 2>();  // slice t has landed (this thread's copies)
        __syncthreads();                        // everyone's copies; slice t-1 is free
        if (t + CN_TC_STAGES - 1 < slices) load(t + CN_TC_STAGES - 1, (t + CN_TC_STAGES - 1) % CN_TC_STAGES);
        cn_cp_async_commit();
        cn_tc_slice<PREC, BN, BM>(sm, t % CN_TC_STAGES, acc);
    }
    cn_cp_async_wait_all();  // only empty groups are left: nothing pending at exit
}

// Calls store(m, j, v) for each of this thread's results: row m and column j of the
// block's tile (0..127, 0..BN-1), v = D[m][j] (the C/D fragment layout: element e of tile
// (mi, ni) is row wm + 16 mi + g + 8 (e >> 1), column wn + 8 ni + 2 t + (e & 1)).
template <int BN, int BM, class Store>
static __device__ __forceinline__ void cn_tc_store(const CnTcAcc<BN, BM>& acc, Store& store)
{
    const int lane = threadIdx.x & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = cn_tc_wm<BM>(), wn = cn_tc_wn<BN>();
#pragma unroll
    for (int ni = 0; ni < CN_TC_NI(BN); ++ni)
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1)
#pragma unroll
            for (int mi = 0; mi < CN_TC_MI(BM); ++mi)
#pragma unroll
                for (int e0 = 0; e0 < 2; ++e0)
                    store(wm + 16 * mi + gq + 8 * e0, wn + 8 * ni + 2 * tq + e1, acc[mi][ni][2 * e0 + e1]);
}

// The epilogue of a GEMM whose rows m are channels ch0 + m of an NCHW tensor out (N,
// channels, plane) and whose columns j = (n, i) are the positions i < plane of image n
// (forward: y; backward data: dx): out[n][ch0 + m][i] = D[m][j] (+ bias[ch0 + m] when
// has_bias; then ReLU keeping NaN when relu) for m < rows and j < cols, for a thread
// holding the results of R rows and C columns of the block's tile: row_of(r) and
// col_of(c) their indices in the tile, value(r, c) the result. A thread's rows (their
// offsets and biases) are set up once and each of its columns divides once: not a
// division per value. Any fragment layout: cn_tc_store_nchw (mma's warps) and the
// warpgroup engine's (conv_tc_wgmma.cuh).
template <int R, int C, class RowOf, class ColOf, class Value>
static __device__ __forceinline__ void cn_tc_store_nchw_frag(const RowOf& row_of, const ColOf& col_of,
                                                             const Value& value, float* __restrict__ out,
                                                             const float* __restrict__ bias, int has_bias, int relu,
                                                             int m0, int n0, int rows, int cols, int plane,
                                                             int channels, int ch0)
{
    // no bias adds -0 (x + -0 is x, -0 included); the ReLU zeroes v <= lo: 0, or NaN
    // (never true) without it, so NaN is kept either way
    const float lo = relu ? 0.0f : __int_as_float(0x7fc00000);
    int at[R];
    float add[R];
#pragma unroll
    for (int r = 0; r < R; ++r) {
        const int m = m0 + row_of(r);
        at[r] = m < rows ? (ch0 + m) * plane : -1;  // -1: a row past the end
        add[r] = has_bias && m < rows ? bias[ch0 + m] : -0.0f;
    }
#pragma unroll
    for (int c = 0; c < C; ++c) {
        const int j = n0 + col_of(c);
        if (j >= cols) continue;
        const int n = j / plane;
        float* col = out + n * channels * plane + (j - n * plane);
#pragma unroll
        for (int r = 0; r < R; ++r) {
            if (at[r] < 0) continue;
            const float v = value(r, c) + add[r];
            col[at[r]] = v <= lo ? 0.0f : v;
        }
    }
}

// cn_tc_store_nchw_frag for the 2 x 2 warps' mma fragments: row r = (mi, e0), column
// c = (ni, e1) of cn_tc_store's layout.
template <int BN, int BM>
static __device__ __forceinline__ void cn_tc_store_nchw(const CnTcAcc<BN, BM>& acc, float* __restrict__ out,
                                                        const float* __restrict__ bias, int has_bias, int relu,
                                                        int m0, int n0, int rows, int cols, int plane,
                                                        int channels, int ch0)
{
    const int lane = threadIdx.x & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = cn_tc_wm<BM>(), wn = cn_tc_wn<BN>();
    auto row_of = [&](int r) { return wm + 16 * (r >> 1) + gq + 8 * (r & 1); };
    auto col_of = [&](int c) { return wn + 8 * (c >> 1) + 2 * tq + (c & 1); };
    auto value = [&](int r, int c) { return acc[r >> 1][c >> 1][2 * (r & 1) + (c & 1)]; };
    cn_tc_store_nchw_frag<2 * CN_TC_MI(BM), 2 * CN_TC_NI(BN)>(row_of, col_of, value, out, bias, has_bias, relu, m0,
                                                              n0, rows, cols, plane, channels, ch0);
}
