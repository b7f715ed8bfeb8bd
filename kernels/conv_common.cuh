// conv_common.cuh: the implicit-GEMM engine shared by the three convolution kernels
// (conv_forward.cu, conv_backward_data.cu, conv_backward_filter.cu) and Winograd's
// batched products (conv_winograd_gemm.cu).
//
// Each kernel is a matrix product C[m][n] = sum_kk A[m][kk] * B[kk][n] whose operands
// are never built in memory: the loaders below copy a BK-deep slice of A (BM rows) and
// of B (BN columns) straight from the tensors into shared memory, and the block's
// threads multiply the slices out of shared memory into per-thread register tiles.
//
// Tile shape <BM, BN, BK, TM, TN>: a block computes a BM x BN tile of C with
// (BM/TM) * (BN/TN) threads, 1-D (blockDim.x); each thread keeps TM x TN results in
// registers. Thread (tx, ty) = (tid % (BN/TN), tid / (BN/TN)) owns the rows
// h * (4 * BM/TM) + 4 * ty + i (h < TM/4, i < 4) and likewise the columns: groups of
// four, a quarter (or half) of the tile apart, so that its operands are float4 reads
// (LDS.128) of shared memory and the eight threads of a quarter warp read 32
// consecutive floats (no bank conflicts).
//
// Main loop (cn_mainloop): shared tiles are kk-major (As[kk][m], Bs[kk][n]) and
// double-buffered. The global -> shared copies are asynchronous (cp.async,
// cp_async.cuh; the emulator lands them at the wait): slice t+1 is issued into the
// other buffer right after the barrier that opens slice t, and lands while the threads
// multiply slice t, with no staging registers. Per slice one wait and one barrier.
// Inside a slice (cn_multiply, unrolled over BK) the fragments are double-buffered in
// registers: the float4s of step k+1 are read from shared memory before the
// multiply-adds of step k, so no FFMA waits on the load just before it.
// Rows are padded by 4 floats (16-byte aligned rows).
//
// Gathers: an operand element is src[base(x) + off(kk)], where x is the row (of A)
// or column (of B) and kk the reduction index. base(x) is computed once per thread
// (each thread always copies the same x positions); off(kk) follows kk through the
// slices with a mixed-radix counter (CnWalker: kk = (d0 * n1 + d1) * n2 + d2, stepped
// by BK with at most one carry per digit, no division in the loop), one per row kk a
// thread copies, so the per-element work in the loop is a bounds test (gathers that
// need one), one address and one copy. Gathers that need it also track a row/column
// displacement (h, w) so that an element outside the image (the zero padding, the
// image's edge) is zero-filled by the copy without being read; with CnTapGather each
// position keeps a word of the digit values that leave the image (forward, backward
// data: the filter taps; backward filter: the output rows and columns near an edge) and
// the bounds test is one AND per element.
// Elements with kk past the reduction's end are zeros in both operands; rows and columns past the matrix
// edge copy a clamped (valid) position, whose products land only in results that are
// never stored.
//
// All indices are 32-bit: the host checks that every tensor (and every padded image)
// has fewer than 2^31 elements.
#pragma once

#include "common.cuh"
#include "cp_async.cuh"

#define CN_PAD 4

// p itself, as a value the compiler cannot see through: the loaders' base pointers, so
// that an element's address stays one multiply-add on them instead of being re-derived
// from the kernel's arguments with 64-bit index arithmetic per element.
static __device__ __forceinline__ const float* cn_opaque(const float* p)
{
#ifdef __CUDA_ARCH__
    asm("mov.b64 %0, %0;" : "+l"(p));
#endif
    return p;
}

// v << n, zero for n >= 32 (PTX's shl clamps the count; C++ leaves it undefined).
static __device__ __forceinline__ unsigned cn_shl(unsigned v, int n)
{
#ifdef __CUDA_ARCH__
    unsigned r;
    asm("shl.b32 %0, %1, %2;" : "=r"(r) : "r"(v), "r"(n));
    return r;
#else
    return (unsigned)n < 32u ? v << n : 0u;
#endif
}

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
    static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
    static_assert(TM % 4 == 0 && TN % 4 == 0, "thread tiles are made of float4 groups");
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

// The walk shared by the gathers (CnGather, CnTapGather: members src, krem, dg, tk, wk[KR],
// base[XN], pos[], PTR_POS, TKL, BK). Start: the walkers at kbeg; the thread's first
// position is folded into its own pointer (the others relative to it), so an element's
// address is one addition and one multiply-add on a per-thread register pair; or, with
// PTR_POS, every position gets its own pointer (pos[j]) and the address is one
// multiply-add on it, for two registers a position instead of one (the kernels ask for
// it where the registers allow). Advance: one slice on.
template <class G>
static __device__ __forceinline__ void cn_walk_start(G& g, int kbeg)
{
    g.krem -= kbeg;
#pragma unroll
    for (int i = 0; i < G::KR; ++i) g.wk[i].start(g.dg, kbeg + g.tk + i * G::TKL);
    g.src = cn_opaque(g.src + g.base[0]);
#pragma unroll
    for (int j = G::XN - 1; j >= 0; --j) g.base[j] -= g.base[0];
    if (G::PTR_POS) {
#pragma unroll
        for (int j = 0; j < G::XN; ++j) g.pos[j] = cn_opaque(g.src + g.base[j]);
    }
}

// Position j's element at reduction offset off (see cn_walk_start).
template <class G>
static __device__ __forceinline__ const float* cn_elem(const G& g, int j, int off)
{
    if (G::PTR_POS) return g.pos[j] + off;
    return g.src + (g.base[j] + off);
}

template <class G>
static __device__ __forceinline__ void cn_walk_advance(G& g)
{
    g.krem -= G::BK;
#pragma unroll
    for (int i = 0; i < G::KR; ++i) g.wk[i].advance(g.dg);
}

// A gathered operand: V[kk][x] = src[base[x] + off(kk)] for kk in [kbeg, kend), zero past
// kend and, when CHECK, zero unless 0 <= hx[x] + h(kk) < H and 0 <= wx[x] + w(kk) < W.
// BX is the tile's extent along x (BM for A, BN for B). KMAJOR: consecutive threads take
// consecutive kk (memory contiguous along kk); else consecutive x (contiguous along x).
// Each thread copies KR rows kk (one walker each) times XN positions x, one 4-byte
// cp.async each (zero-filled, reading nothing, where the element is outside). PTR: a
// pointer per position (cn_walk_start).
template <class T, int BX, bool KMAJOR, bool CHECK, bool PTR = false>
struct CnGather {
    static constexpr int BK = T::BK;
    static constexpr int THREADS = T::THREADS;
    static constexpr int TXL = KMAJOR ? THREADS / BK : (BX < 32 ? BX : 32);  // threads along x
    static constexpr int TKL = THREADS / TXL;                                // threads along kk
    static constexpr int KR = BK / TKL;
    static constexpr int XN = BX / TXL;
    static constexpr bool PTR_POS = PTR;
    static_assert(TXL >= 1 && THREADS % TXL == 0 && TKL >= 1 && BK % TKL == 0 && BX % TXL == 0,
                  "the loader's thread grid must tile the BK x BX slice");

    const float* src;
    int krem, H, W;  // krem: kend minus the current slice's first kk
    CnDigits dg;
    int tk, tx;
    CnWalker wk[KR];
    int base[XN];
    int hx[XN];
    int wx[XN];
    const float* pos[PTR ? XN : 1];

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

    // After set_x: the walkers at kbeg (cn_walk_start).
    __device__ __forceinline__ void start(int kbeg) { cn_walk_start(*this, kbeg); }
    __device__ __forceinline__ void advance() { cn_walk_advance(*this); }

    // Issues the current slice's copies into S (asynchronous: they land at the wait).
    template <int LD>
    __device__ __forceinline__ void issue(float (&S)[BK][LD]) const
    {
#pragma unroll
        for (int i = 0; i < KR; ++i) {
            const bool kin = tk + i * TKL < krem;
            const int h = wk[i].d1 * dg.h1;
            const int w = wk[i].d2 * dg.w2;
            float* dst = &S[tk + i * TKL][tx];
#pragma unroll
            for (int j = 0; j < XN; ++j) {
                bool ok = kin;
                if (CHECK) {
                    ok = ok && (unsigned)(hx[j] + h) < (unsigned)H
                            && (unsigned)(wx[j] + w) < (unsigned)W;
                }
                cn_cp_async<4>(dst + j * TXL, cn_elem(*this, j, wk[i].off), ok);
            }
        }
    }
};

// The tap masks' limits: CnTapGather handles digits d1 < CN_TAP_N1 and d2 < CN_TAP_N2.
#define CN_TAP_N1 15
#define CN_TAP_N2 16

// A gathered operand bounds-checked by tap masks: V[kk][x] = src[base[x] + off(kk)] as
// CnGather's (KMAJOR false, CHECK true), for displacements h = d1 * h1, w = d2 * w2.
// Whether an element is inside the image depends only on x's (hx, wx) and kk's digits
// (d1, d2), so set_x folds x's part into one word per position, skip[x], and a row kk
// of a slice forms a word `tap` from its digits; the element is copied when
// skip[x] & tap == 0: one AND per element instead of two additions and two compares.
// Past the reduction's end tap is a bit that every skip word has. Two codings:
//
// Taps (EDGE false; the forward and backward-data image gathers, whose digits are
// filter taps): h1, w2 each 1 or -1 and n1 <= CN_TAP_N1, n2 <= CN_TAP_N2 (the caller
// checks; CnGather covers other shapes). skip[x] has bit d1 set where hx + d1 * h1 is
// outside [0, H), bit 16 + d2 where wx + d2 * w2 is outside [0, W), and bit 15 always;
// tap is (1 << d1) | (1 << (16 + d2)), or bit 15 past the end.
//
// Edges (EDGE true; backward filter's image gather, whose digits are output positions
// (p, q) = (d1, d2) < (n1, n2) with h1, w2 > 0 the strides): the rows outside the image
// for a position are the first few (hx + p * h1 < 0) and the last few (>= H), at most
// ceil(pad / stride) at either end (cn_edge_rows; the caller checks that it is at most
// CN_EDGE_ROWS). So the word classes a digit by its distance to either end: p (bits
// 0-6) and n1 - 1 - p (bits 25-31), q (bits 7-13) and n2 - 1 - q (bits 14-20), a
// distance of 7 or more setting no bit; skip[x] has the bits of its outside distances
// and bit 21 (the end) always.
//
// TXL threads along x (consecutive x, memory-contiguous): each thread copies
// BK / (THREADS / TXL) rows kk times BX / TXL positions. PTR: a pointer per position
// (cn_walk_start).
#define CN_EDGE_ROWS 7
#define CN_EDGE_END (1u << 21)

template <class T, int BX, int TXL_, bool EDGE = false, bool PTR = false>
struct CnTapGather {
    static constexpr int BK = T::BK;
    static constexpr int THREADS = T::THREADS;
    static constexpr int TXL = TXL_;
    static constexpr int TKL = THREADS / TXL;
    static constexpr int KR = BK / TKL;
    static constexpr int XN = BX / TXL;
    static constexpr unsigned END = EDGE ? CN_EDGE_END : 0x8000u;
    static constexpr bool PTR_POS = PTR;
    static_assert(TXL >= 1 && THREADS % TXL == 0 && TKL >= 1 && BK % TKL == 0 && BX % TXL == 0,
                  "the loader's thread grid must tile the BK x BX slice");

    const float* src;
    int krem, H, W;
    CnDigits dg;
    int tk, tx;
    CnWalker wk[KR];
    int base[XN];
    unsigned skip[XN];
    const float* pos[PTR ? XN : 1];

    __device__ __forceinline__ void init(const float* src_, int kend_, int H_, int W_, int tid)
    {
        src = src_;
        krem = kend_;
        H = H_;
        W = W_;
        tx = tid % TXL;
        tk = tid / TXL;
        if (TXL == 16) {
            // A warp's two half warps write rows 4 apart (mod 8): shared rows of LDB =
            // BN + 4 floats put them 16 banks apart, so the warp's copies never conflict.
            // Rows past the last multiple of 8 (TKL = 12) go in consecutive pairs.
            const int warp = tid / 32;
            const int half = (tid / 16) % 2;
            tk = warp < 4 * (TKL / 8) ? warp % 4 + 4 * half + 8 * (warp / 4) : 2 * warp + half;
        }
    }

    __device__ __forceinline__ int x_of(int j) const { return tx + j * TXL; }

    // The digit values d < n (at most `bits` of them) with 0 <= at + d * step < size,
    // as a bit mask; step is 1 or -1.
    static __device__ __forceinline__ unsigned inside(int at, int step, int size, int n, int bits)
    {
        int lo = step > 0 ? -at : at - size + 1;  // d >= lo
        int hi = step > 0 ? size - at : at + 1;   // d < hi
        lo = max(lo, 0);
        hi = min(min(hi, n), bits);
        return hi > lo ? ((1u << hi) - 1u) & ~((1u << lo) - 1u) : 0u;
    }

    // The digit values d < n with at + d * step outside [0, size) (step > 0) as the
    // counts (first, last) of them at either end, at most CN_EDGE_ROWS each.
    static __device__ __forceinline__ unsigned edges(int at, int step, int size, int n,
                                                     int first_bit, int last_bit)
    {
        const int first = at < 0 ? (step - 1 - at) / step : 0;                  // at + d*step < 0
        const int in_end = size - at > 0 ? (size - at + step - 1) / step : 0;  // d >= this: past
        const int last = max(n - in_end, 0);
        const unsigned f = (1u << min(first, CN_EDGE_ROWS)) - 1u;
        const unsigned l = (1u << min(last, CN_EDGE_ROWS)) - 1u;
        return (f << first_bit) | (l << last_bit);
    }

    // After dg is set.
    __device__ __forceinline__ void set_x(int j, int b, int h, int w)
    {
        base[j] = b;
        if (EDGE)
            skip[j] = END | edges(h, dg.h1, H, dg.n1, 0, 25) | edges(w, dg.w2, W, dg.n2, 7, 14);
        else
            skip[j] = ~(inside(h, dg.h1, H, dg.n1, CN_TAP_N1)
                        | (inside(w, dg.w2, W, dg.n2, CN_TAP_N2) << 16));
    }

    __device__ __forceinline__ void start(int kbeg) { cn_walk_start(*this, kbeg); }
    __device__ __forceinline__ void advance() { cn_walk_advance(*this); }

    // Row i's word (see above).
    __device__ __forceinline__ unsigned tap(int i) const
    {
        const int d1 = wk[i].d1, d2 = wk[i].d2;
        if (!EDGE) return (1u << d1) | (0x10000u << d2);
        // Each bit is 1 shifted by the distance plus its field's first bit (n1 - 1 - p's
        // overflow leaves the word; the others' are masked off).
        const unsigned pf = cn_shl(1u, d1), pl = cn_shl(1u, (dg.n1 + 24) - d1);
        const unsigned qf = cn_shl(1u, d2 + 7), ql = cn_shl(1u, (dg.n2 + 13) - d2);
        return (pf & 0x7Fu) | pl | (qf & 0x3F80u) | (ql & 0x1FC000u);
    }

    template <int LD>
    __device__ __forceinline__ void issue(float (&S)[BK][LD]) const
    {
#pragma unroll
        for (int i = 0; i < KR; ++i) {
            const unsigned t = tk + i * TKL < krem ? tap(i) : END;
            float* dst = &S[tk + i * TKL][tx];
#pragma unroll
            for (int j = 0; j < XN; ++j)
                cn_cp_async<4>(dst + j * TXL, cn_elem(*this, j, wk[i].off), (skip[j] & t) == 0u);
        }
    }
};

// CnTapGather's threads along x for a tile's BX positions: 16 (so half as many rows
// kk, so walkers, a thread) where the rows' threads come in multiples of eight (the
// half warps can then be paired without bank conflicts, see CnTapGather::init) and
// the registers allow (not the 256-thread tile, which would spill); else up to 32.
template <class T, int BX>
struct CnTapLanes {
    static constexpr int value =
        (BX == 128 && T::THREADS <= 192 && (T::THREADS / 16) % 8 == 0) ? 16 : (BX < 32 ? BX : 32);
};

// The same for the edge words (backward filter, whose A gather holds fewer registers):
// 16 for 128 positions at every tile; else up to 32.
template <class T, int BX>
struct CnEdgeLanes {
    static constexpr int value = BX == 128 ? 16 : (BX < 32 ? BX : 32);
};

// A dense operand: V[kk][x] = src[row(x) * ld + kk] for kk in [kbeg, kend), zero past
// kend, where row(x) = min(x0 + x, rows - 1). Each thread copies four consecutive kk
// of XP rows (one address per row, the four copies at immediate offsets); any ld and
// alignment (the copies are 4 bytes each). A thin tile (BX smaller than the threads'
// rows per pass) leaves the surplus threads idle. init also starts it at kbeg.
template <class T, int BX>
struct CnDense {
    static constexpr int BK = T::BK;
    static constexpr int THREADS = T::THREADS;
    static constexpr int VK = BK / 4;                 // threads along kk, four kk each
    static constexpr int RP = THREADS / VK;           // rows per pass
    static constexpr int XP = RP < BX ? BX / RP : 1;  // passes
    static constexpr bool SPARE = RP > BX;            // threads with tr >= BX copy nothing
    static_assert(BK % 4 == 0, "the dense loader copies four kk at a time");
    static_assert(THREADS % VK == 0 && (SPARE || BX % RP == 0),
                  "the dense loader's thread grid must tile the BK x BX slice");

    const float* src;  // the current slice's first kk of this thread, row 0
    int krem, tv, tr;  // krem: kend minus that kk
    unsigned rowoff[XP];

    __device__ __forceinline__ void init(const float* src_, int ld, int rows, int x0, int kbeg,
                                         int kend, int tid)
    {
        tv = tid % VK;
        tr = tid / VK;
        src = cn_opaque(src_ + kbeg + 4 * tv);
        krem = kend - kbeg - 4 * tv;
#pragma unroll
        for (int p = 0; p < XP; ++p) rowoff[p] = (unsigned)(min(x0 + tr + p * RP, rows - 1) * ld);
    }

    __device__ __forceinline__ void advance()
    {
        src += BK;
        krem -= BK;
    }

    template <int LD>
    __device__ __forceinline__ void issue(float (&S)[BK][LD]) const
    {
        if (SPARE && tr >= BX) return;
#pragma unroll
        for (int p = 0; p < XP; ++p) {
            const float* at = src + rowoff[p];
#pragma unroll
            for (int e = 0; e < 4; ++e) cn_cp_async<4>(&S[4 * tv + e][tr + p * RP], at + e, e < krem);
        }
    }
};

// Step k's fragments: the thread's TM rows of A and TN columns of B, float4 reads.
template <class T>
__device__ __forceinline__ void cn_fragments(const float (&As)[T::BK][T::LDA],
                                             const float (&Bs)[T::BK][T::LDB], int k, int tx,
                                             int ty, float (&a)[T::TM], float (&b)[T::TN])
{
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
}

// acc[j][i] += sum over the slice of A[row i][kk] * B[kk][col j] (the thread's tile),
// the fragments of step k+1 read before the outer product of step k.
template <class T>
__device__ __forceinline__ void cn_multiply(const float (&As)[T::BK][T::LDA],
                                            const float (&Bs)[T::BK][T::LDB],
                                            float (&acc)[T::TN][T::TM], int tx, int ty)
{
    float a[2][T::TM];
    float b[2][T::TN];
    cn_fragments<T>(As, Bs, 0, tx, ty, a[0], b[0]);
#pragma unroll
    for (int k = 0; k < T::BK; ++k) {
        if (k + 1 < T::BK) cn_fragments<T>(As, Bs, k + 1, tx, ty, a[(k + 1) & 1], b[(k + 1) & 1]);
#pragma unroll
        for (int i = 0; i < T::TM; ++i)
#pragma unroll
            for (int j = 0; j < T::TN; ++j)
                acc[j][i] = fmaf(a[k & 1][i], b[k & 1][j], acc[j][i]);
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
// first slice; acc holds the sums when it returns. Slice t+1's copies are issued into
// the other buffer after the barrier that opens slice t (every thread has finished
// slice t-1, the buffer's last reader) and land while slice t is multiplied. Ends with
// a barrier, so the caller may reuse shared memory. `tiles` must be the same for every
// thread of the block.
template <class T, class LA, class LB>
__device__ __forceinline__ void cn_mainloop(LA& la, LB& lb, float (&As)[2][T::BK][T::LDA],
                                            float (&Bs)[2][T::BK][T::LDB],
                                            float (&acc)[T::TN][T::TM], int tiles, int tx, int ty)
{
    if (tiles <= 0) return;
    la.issue(As[0]);
    lb.issue(Bs[0]);
    cn_cp_async_commit();
    for (int t = 0; t < tiles; ++t) {
        const int cur = t & 1;
        cn_cp_async_wait<0>();  // this thread's copies of slice t have landed
        __syncthreads();        // everyone's have, and slice t-1 is no longer read
        if (t + 1 < tiles) {
            la.advance();
            lb.advance();
            la.issue(As[cur ^ 1]);
            lb.issue(Bs[cur ^ 1]);
            cn_cp_async_commit();
        }
        cn_multiply<T>(As[cur], Bs[cur], acc, tx, ty);
    }
    __syncthreads();
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
