// conv_common.cuh: the implicit-GEMM engine shared by the three convolution kernels
// (conv_forward.cu, conv_backward_data.cu, conv_backward_filter.cu).
//
// Each kernel is a matrix product C[m][n] = sum_kk A[m][kk] * B[kk][n] whose operands
// are never built in memory: the loaders below gather a BK-deep slice of A (BM rows)
// and of B (BN columns) straight from the tensors into shared memory, and the block's
// threads multiply the slices out of shared memory into per-thread register tiles.
//
// Tile shape <BM, BN, BK, TM, TN>: a block computes a BM x BN tile of C with
// (BM/TM) * (BN/TN) threads, 1-D (blockDim.x); each thread keeps TM x TN results in
// registers. Thread (tx, ty) = (tid % (BN/TN), tid / (BN/TN)) owns the rows
// h * (4 * BM/TM) + 4 * ty + i (h < TM/4, i < 4) and likewise the columns: groups of
// four, a quarter (or half) of the tile apart, so that its operands are float4 reads
// of shared memory and the eight threads of a quarter warp read 32 consecutive floats
// (no bank conflicts).
//
// Shared tiles are kk-major (As[kk][m], Bs[kk][n]) and double-buffered: while the
// threads multiply slice t out of one buffer, the loaders have already fetched slice
// t+1 into registers and store it into the other buffer afterwards, so there is one
// __syncthreads per slice and the global loads overlap the arithmetic on a GPU. Tiles
// whose staging would cost more than 16 registers per thread (the emulator's deep
// tiles, the thin tile) copy slice t+1 straight into the other buffer instead.
// Rows are padded by 4 floats (16-byte aligned, and stores along kk spread over banks).
//
// Gathers: an operand element is src[base(x) + off(kk)], where x is the row (of A)
// or column (of B) and kk the reduction index. base(x) is computed once per thread
// (each thread always loads the same x positions); off(kk) follows kk through the
// tiles with a mixed-radix counter (CnWalker: kk = (d0 * n1 + d1) * n2 + d2, stepped
// by BK with at most one carry per digit, no division in the loop). Gathers that
// need it also track a row/column displacement (h, w) so that an element outside the
// image (the zero padding, the image's edge) reads as 0 without being touched.
// Elements with kk past the reduction's end are zeros in both operands; rows and
// columns past the matrix edge load a clamped (valid) position, whose products
// land only in results that are never stored.
//
// All indices are 32-bit: the host checks that every tensor (and every padded image)
// has fewer than 2^31 elements.
#pragma once

#include "common.cuh"

#define CN_PAD 4

template <int BM_, int BN_, int BK_, int TM_, int TN_>
struct CnTile {
    static constexpr int BM = BM_;
    static constexpr int BN = BN_;
    static constexpr int BK = BK_;
    static constexpr int TM = TM_;
    static constexpr int TN = TN_;
    static constexpr int TX = BN / TN;  // threads along n
    static constexpr int TY = BM / TM;  // threads along m
    static constexpr int THREADS = TX * TY;
    static constexpr int LDA = BM + CN_PAD;
    static constexpr int LDB = BN + CN_PAD;
    // Whether the next slice goes through registers (overlapping its global loads with
    // the arithmetic on a GPU) or straight into shared memory: staging costs
    // BK * (BM + BN) / THREADS registers per thread, too many for the emulator's deep
    // tiles, which gain nothing from it (an emulated load completes at once).
    static constexpr bool STAGED = BK * (BM + BN) <= 16 * THREADS;
    static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "thread tiles are made of float4 groups");
    static_assert(BK % 4 == 0, "the dense loader moves four kk at a time");
};

// The digits of the reduction index kk = (d0 * n1 + d1) * n2 + d2 and what one unit of
// each digit adds to the memory offset (o0, o1, o2), to the row displacement h (h1 per
// unit of d1) and to the column displacement w (w2 per unit of d2). The step fields
// are the decomposition of BK (the distance a walker moves per tile).
struct CnDigits {
    int n1, n2;
    int o0, o1, o2;
    int h1, w2;
    int q1, q2;       // BK = (q0 * n1 + q1) * n2 + q2
    int step_off;     // q0 * o0 + q1 * o1 + q2 * o2
    int carry2_off;   // offset change when d2 wraps: o1 - n2 * o2
    int carry1_off;   // offset change when d1 wraps: o0 - n1 * o1
};

static __device__ __forceinline__ CnDigits cn_digits(int n1, int n2, int o0, int o1, int o2,
                                                     int h1, int w2, int step)
{
    CnDigits d;
    d.n1 = n1 > 0 ? n1 : 1;
    d.n2 = n2 > 0 ? n2 : 1;
    d.o0 = o0; d.o1 = o1; d.o2 = o2;
    d.h1 = h1; d.w2 = w2;
    const int inner = d.n1 * d.n2;
    const int q0 = step / inner;
    const int rem = step - q0 * inner;
    d.q1 = rem / d.n2;
    d.q2 = rem - d.q1 * d.n2;
    d.step_off = q0 * o0 + d.q1 * o1 + d.q2 * o2;
    d.carry2_off = o1 - d.n2 * o2;
    d.carry1_off = o0 - d.n1 * o1;
    return d;
}

// One position kk along the reduction: its inner digits and memory offset (the
// displacements are d1 * h1 and d2 * w2, formed where they are needed).
struct CnWalker {
    int d1, d2, off;

    __device__ __forceinline__ void start(const CnDigits& g, int k)
    {
        const int inner = g.n1 * g.n2;
        const int d0 = k / inner;
        const int rem = k - d0 * inner;
        d1 = rem / g.n2;
        d2 = rem - d1 * g.n2;
        off = d0 * g.o0 + d1 * g.o1 + d2 * g.o2;
    }

    // kk += BK (the step cn_digits was given): one carry at most per digit.
    __device__ __forceinline__ void advance(const CnDigits& g)
    {
        d2 += g.q2;
        d1 += g.q1;
        off += g.step_off;
        if (d2 >= g.n2) {
            d2 -= g.n2;
            d1 += 1;
            off += g.carry2_off;
        }
        if (d1 >= g.n1) {
            d1 -= g.n1;
            off += g.carry1_off;
        }
    }
};

// A gathered operand: V[kk][x] = src[base[x] + off(kk)] for kk in [kbeg, kend), zero past
// kend and, when CHECK, zero unless 0 <= hx[x] + h(kk) < H and 0 <= wx[x] + w(kk) < W.
// BX is the tile's extent along x (BM for A, BN for B). KMAJOR: consecutive threads take
// consecutive kk (memory contiguous along kk); else consecutive x (contiguous along x).
// Each thread loads KR rows kk (one walker each) times XN positions x.
template <class T, int BX, bool KMAJOR, bool CHECK>
struct CnGather {
    static constexpr int BK = T::BK;
    static constexpr int THREADS = T::THREADS;
    static constexpr int TXL = KMAJOR ? THREADS / BK : (BX < 32 ? BX : 32);  // threads along x
    static constexpr int TKL = THREADS / TXL;                                // threads along kk
    static constexpr int KR = BK / TKL;
    static constexpr int XN = BX / TXL;
    static_assert(TXL >= 1 && THREADS % TXL == 0 && BK % TKL == 0 && BX % TXL == 0,
                  "the loader's thread grid must tile the BK x BX slice");

    const float* src;
    int krem, H, W;  // krem: kend minus the current slice's first kk
    CnDigits dg;
    int tk, tx;
    CnWalker wk[KR];
    int base[XN];
    int hx[XN];
    int wx[XN];
    float v[KR][XN];

    __device__ __forceinline__ void init(const float* src_, int kend_, int H_, int W_, int tid)
    {
        src = src_;
        krem = kend_;
        H = H_;
        W = W_;
        if (KMAJOR) {
            tk = tid % TKL;
            tx = tid / TKL;
        } else {
            tx = tid % TXL;
            tk = tid / TXL;
        }
    }

    // The tile-relative x of this thread's j-th position.
    __device__ __forceinline__ int x_of(int j) const { return tx + j * TXL; }

    __device__ __forceinline__ void set_x(int j, int b, int h, int w)
    {
        base[j] = b;
        hx[j] = h;
        wx[j] = w;
    }

    __device__ __forceinline__ void start(int kbeg)
    {
        krem -= kbeg;
#pragma unroll
        for (int i = 0; i < KR; ++i) wk[i].start(dg, kbeg + tk + i * TKL);
    }

    __device__ __forceinline__ void advance()
    {
        krem -= BK;
#pragma unroll
        for (int i = 0; i < KR; ++i) wk[i].advance(dg);
    }

    __device__ __forceinline__ void load()
    {
#pragma unroll
        for (int i = 0; i < KR; ++i) {
            const bool kin = tk + i * TKL < krem;
            const int h = wk[i].d1 * dg.h1;
            const int w = wk[i].d2 * dg.w2;
#pragma unroll
            for (int j = 0; j < XN; ++j) {
                bool ok = kin;
                if (CHECK) {
                    ok = ok && (unsigned)(hx[j] + h) < (unsigned)H
                            && (unsigned)(wx[j] + w) < (unsigned)W;
                }
                v[i][j] = ok ? src[base[j] + wk[i].off] : 0.0f;
            }
        }
    }

    template <int LD>
    __device__ __forceinline__ void store(float (&S)[BK][LD]) const
    {
#pragma unroll
        for (int i = 0; i < KR; ++i)
#pragma unroll
            for (int j = 0; j < XN; ++j)
                S[tk + i * TKL][tx + j * TXL] = v[i][j];
    }

    // load() and store() in one, without the staging registers.
    template <int LD>
    __device__ __forceinline__ void copy(float (&S)[BK][LD]) const
    {
#pragma unroll
        for (int i = 0; i < KR; ++i) {
            const bool kin = tk + i * TKL < krem;
            const int h = wk[i].d1 * dg.h1;
            const int w = wk[i].d2 * dg.w2;
#pragma unroll
            for (int j = 0; j < XN; ++j) {
                bool ok = kin;
                if (CHECK) {
                    ok = ok && (unsigned)(hx[j] + h) < (unsigned)H
                            && (unsigned)(wx[j] + w) < (unsigned)W;
                }
                S[tk + i * TKL][tx + j * TXL] = ok ? src[base[j] + wk[i].off] : 0.0f;
            }
        }
    }
};

// A dense operand: V[kk][x] = src[row(x) * ld + kk] for kk < kend, where row(x) =
// min(x0 + x, rows - 1). Each thread moves groups of four consecutive kk: one float4
// when ld is a multiple of 4 and src is 16-byte aligned, else four floats. A thin
// tile (BX smaller than the threads' rows per pass) leaves the surplus threads idle.
template <class T, int BX>
struct CnDense {
    static constexpr int BK = T::BK;
    static constexpr int THREADS = T::THREADS;
    static constexpr int VK = BK / 4;          // threads along kk, four kk each
    static constexpr int RP = THREADS / VK;    // rows per pass
    static constexpr int XP = RP < BX ? BX / RP : 1;  // passes
    static constexpr bool SPARE = RP > BX;     // threads with tr >= BX load nothing
    static_assert(THREADS % VK == 0 && (SPARE || BX % RP == 0),
                  "the dense loader's thread grid must tile the BK x BX slice");

    const float* src;
    int ld, kend, k, tv, tr;
    bool vec;
    int rowoff[XP];
    float v[XP][4];

    __device__ __forceinline__ void init(const float* src_, int ld_, int rows, int x0, int kbeg,
                                         int kend_, int tid)
    {
        src = src_;
        ld = ld_;
        kend = kend_;
        tv = tid % VK;
        tr = tid / VK;
        k = kbeg + 4 * tv;
        vec = (ld % 4 == 0) && (kbeg % 4 == 0) && cn_aligned16(src_);
#pragma unroll
        for (int p = 0; p < XP; ++p) {
            const int row = min(x0 + tr + p * RP, rows - 1);
            rowoff[p] = row * ld;
        }
    }

    __device__ __forceinline__ void advance() { k += BK; }

    __device__ __forceinline__ void load()
    {
        if (SPARE && tr >= BX) return;
        if (vec && k + 4 <= kend) {
#pragma unroll
            for (int p = 0; p < XP; ++p) {
                const float4 f = __ldg(reinterpret_cast<const float4*>(src + rowoff[p] + k));
                v[p][0] = f.x;
                v[p][1] = f.y;
                v[p][2] = f.z;
                v[p][3] = f.w;
            }
        } else {
#pragma unroll
            for (int p = 0; p < XP; ++p)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    v[p][e] = k + e < kend ? src[rowoff[p] + k + e] : 0.0f;
        }
    }

    template <int LD>
    __device__ __forceinline__ void store(float (&S)[BK][LD]) const
    {
        if (SPARE && tr >= BX) return;
#pragma unroll
        for (int p = 0; p < XP; ++p)
#pragma unroll
            for (int e = 0; e < 4; ++e)
                S[4 * tv + e][tr + p * RP] = v[p][e];
    }

    // load() and store() in one, without the staging registers.
    template <int LD>
    __device__ __forceinline__ void copy(float (&S)[BK][LD]) const
    {
        if (SPARE && tr >= BX) return;
        if (vec && k + 4 <= kend) {
#pragma unroll
            for (int p = 0; p < XP; ++p) {
                const float4 f = __ldg(reinterpret_cast<const float4*>(src + rowoff[p] + k));
                S[4 * tv + 0][tr + p * RP] = f.x;
                S[4 * tv + 1][tr + p * RP] = f.y;
                S[4 * tv + 2][tr + p * RP] = f.z;
                S[4 * tv + 3][tr + p * RP] = f.w;
            }
        } else {
#pragma unroll
            for (int p = 0; p < XP; ++p)
#pragma unroll
                for (int e = 0; e < 4; ++e)
                    S[4 * tv + e][tr + p * RP] = k + e < kend ? src[rowoff[p] + k + e] : 0.0f;
        }
    }
};

// acc[j][i] += sum over the slice of A[row i][kk] * B[kk][col j] (the thread's tile).
template <class T>
__device__ __forceinline__ void cn_multiply(const float (&As)[T::BK][T::LDA],
                                            const float (&Bs)[T::BK][T::LDB],
                                            float (&acc)[T::TN][T::TM], int tx, int ty)
{
#pragma unroll
    for (int k = 0; k < T::BK; ++k) {
        float a[T::TM];
        float b[T::TN];
#pragma unroll
        for (int h = 0; h < T::TM / 4; ++h) {
            const float4 f = *reinterpret_cast<const float4*>(&As[k][h * 4 * T::TY + 4 * ty]);
            a[4 * h + 0] = f.x;
            a[4 * h + 1] = f.y;
            a[4 * h + 2] = f.z;
            a[4 * h + 3] = f.w;
        }
#pragma unroll
        for (int h = 0; h < T::TN / 4; ++h) {
            const float4 f = *reinterpret_cast<const float4*>(&Bs[k][h * 4 * T::TX + 4 * tx]);
            b[4 * h + 0] = f.x;
            b[4 * h + 1] = f.y;
            b[4 * h + 2] = f.z;
            b[4 * h + 3] = f.w;
        }
#pragma unroll
        for (int i = 0; i < T::TM; ++i)
#pragma unroll
            for (int j = 0; j < T::TN; ++j)
                acc[j][i] = fmaf(a[i], b[j], acc[j][i]);
    }
}

// The tile-relative row of the i-th result row of thread row t (TT = T::TY), or the
// column of the i-th result column of thread column t (TT = T::TX).
template <int TT>
static __device__ __forceinline__ int cn_tile_index(int i, int t)
{
    return (i / 4) * 4 * TT + 4 * t + (i % 4);
}

// The double-buffered main loop over `tiles` slices: the loaders are started at the
// first slice; acc holds the sums when it returns. Ends with a barrier, so the caller
// may reuse shared memory. `tiles` must be the same for every thread of the block.
template <class T, class LA, class LB>
__device__ __forceinline__ void cn_mainloop(LA& la, LB& lb, float (&As)[2][T::BK][T::LDA],
                                            float (&Bs)[2][T::BK][T::LDB],
                                            float (&acc)[T::TN][T::TM], int tiles, int tx, int ty)
{
    if (tiles <= 0) return;
    la.copy(As[0]);
    lb.copy(Bs[0]);
    __syncthreads();
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        const bool more = t + 1 < tiles;
        if (more) {
            la.advance();
            lb.advance();
        }
        if (T::STAGED) {
            if (more) {  // fetch the next slice into registers while this one is multiplied
                la.load();
                lb.load();
            }
            cn_multiply<T>(As[cur], Bs[cur], acc, tx, ty);
            if (more) {
                la.store(As[cur ^ 1]);
                lb.store(Bs[cur ^ 1]);
            }
        } else {
            if (more) {  // the other buffer was last read before the previous barrier
                la.copy(As[cur ^ 1]);
                lb.copy(Bs[cur ^ 1]);
            }
            cn_multiply<T>(As[cur], Bs[cur], acc, tx, ty);
        }
        __syncthreads();
    }
}

template <class T>
__device__ __forceinline__ void cn_zero(float (&acc)[T::TN][T::TM])
{
#pragma unroll
    for (int j = 0; j < T::TN; ++j)
#pragma unroll
        for (int i = 0; i < T::TM; ++i)
            acc[j][i] = 0.0f;
}
