// conv_backward_filter.cu: the gradients of a 2-D convolution with respect to its
// filters and its bias,
//   dw[g*Kg + k][c][r][s] = sum_{n,p,q} dy[n][g*Kg + k][p][q] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s]
//   db[k] = sum_{n,p,q} dy[n][k][p][q]
// (groups as in conv_forward.cu; x is zero outside the image).
//
// Layout: NCHW float32, C-contiguous: x (N, C, H, W), dy (N, K, P, Q), dw (K, Cg, R, S),
// db (K,).
//
// conv_backward_filter: an implicit GEMM per group whose reduction runs over N*P*Q,
//   A[m][kk] = dy[n][g*Kg + m][p][q]                        kk = (n, p, q), m = k
//   B[kk][j] = x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s]  j = (c, r, s)
// conv_backward_filter tests the image's bounds with CnTapGather's edge words (paddings
// of at most 7 output rows or columns a side: ceil(ph / sh), ceil(pw / sw));
// conv_backward_filter_wide, the same kernel with the plain checked gather, takes any.
// The reduction is long and the result small (few filters), so it is split into
// `splits` consecutive chunks of `chunk` (a multiple of BK) that separate blocks
// reduce: blockIdx.z = split * groups + g, and block (split, g) writes its partial
// sums to out[split][g*Kg + k][j] (out is dw itself when splits == 1, else a
// workspace of splits * K * Cg*R*S floats). conv_split_sum then adds the partials
// in split order. No atomics: the result does not depend on the schedule.
// Launch (both): block = (BM/TM) * (BN/TN) threads (1-D); grid = (ceil(Cg*R*S / BN),
// ceil(Kg / BM), splits * groups); no dynamic shared memory. The 192-thread tile asks
// for two resident blocks per SM (168 registers), which it fits without spilling; the
// 256-thread tile would spill at 128 and does not ask.
//
// conv_split_sum: out[i] = sum_{s < splits} part[s * count + i], in order of s.
// Launch: any 1-D grid (grid-stride loop).
//
// conv_bias_grad<THREADS>: the bias gradient, first level of a two-level reduction.
// Block (k, split) = (blockIdx.x, blockIdx.y) sums channel k of the images
// [split * images, min((split + 1) * images, N)) -- a run of PQ floats per image -- into
// out[split * K + k]; with one split out is db itself, else a workspace of splits * K
// floats that conv_split_sum (count K) adds in split order. The host picks the splits
// so that K * splits blocks fill the GPU whatever the channel count (ops/conv.py,
// bias_splits). Inside a block thread t takes the elements t, t + THREADS, ... of the
// slice (images laid end to end, so small PQ leaves no lane idle), four loads in
// flight before their four adds, in that order; a tree in shared memory adds the
// THREADS sums. Every sum has a fixed order and there are no atomics: the result is
// the same, bit for bit, on every run and schedule. Launch: grid = (K, splits),
// block = (THREADS) (a power of two).
//
// 32-bit indices: the host checks the sizes.
#include "conv_common.cuh"

// Which gathers keep a pointer per position (cn_walk_start): where the registers allow
// (NVRTC sm_80 and sm_90: no spills, and at most 168 registers where two or three blocks
// are resident): the image gather at every tile but ROWS96 (which would spill on
// sm_80), the dy rows at the 256-thread and 256-column tiles (MEDIUM would pass 168).
template <class T>
struct CnFilterPointers {
    static constexpr bool A = T::THREADS == 256 || T::BN == 256;
    static constexpr bool B = !(T::THREADS == 192 && T::BN == 128);
};

// The kernel's body, B gathered by LB (CnTapGather's edge words or CnGather).
template <class T, class LB>
static __device__ __forceinline__ void conv_backward_filter_tile(
    const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out, int N,
    int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw,
    int groups, int chunk)
{
    constexpr int BM = T::BM, BN = T::BN, BK = T::BK, TM = T::TM, TN = T::TN;
    __align__(16) __shared__ float As[2][BK][T::LDA];
    __align__(16) __shared__ float Bs[2][BK][T::LDB];

    const int split = blockIdx.z / groups;
    const int g = blockIdx.z - split * groups;
    const int Cg = C / groups;
    const int Kg = K / groups;
    const int RS = R * S;
    const int HW = H * W;
    const int PQ = P * Q;
    const int crs = Cg * RS;                 // GEMM columns
    const int npq = N * PQ;                  // the whole reduction
    const int kbeg = split * chunk;
    const int kend = min(kbeg + chunk, npq);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int tid = threadIdx.x;
    const int tx = tid % T::TX;
    const int ty = tid / T::TX;

    // A: dy rows k, reduction (n, p, q): contiguous along kk within an image.
    CnGather<T, BM, true, false, CnFilterPointers<T>::A> la;
    la.init(dy + g * Kg * PQ, kend, 0, 0, tid);
    la.dg = cn_digits(P, Q, K * PQ, Q, 1, 0, 0, BK);
#pragma unroll
    for (int j = 0; j < la.XN; ++j) {
        const int k = min(m0 + la.x_of(j), Kg - 1);
        la.set_x(j, k * PQ, 0, 0);
    }

    // B: x at (p*sh - ph + r, q*sw - pw + s) for column (c, r, s), zero outside the image.
    LB lb;
    lb.init(x + g * Cg * HW, kend, H, W, tid);
    lb.dg = cn_digits(P, Q, C * HW, sh * W, sw, sh, sw, BK);
#pragma unroll
    for (int j = 0; j < LB::XN; ++j) {
        const int col = min(n0 + lb.x_of(j), crs - 1);
        const int c = col / RS;
        const int rs = col - c * RS;
        const int r = rs / S;
        const int s = rs - r * S;
        lb.set_x(j, c * HW + (r - ph) * W + (s - pw), r - ph, s - pw);
    }

    const int tiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    if (tiles > 0) {
        la.start(kbeg);
        lb.start(kbeg);
    }
    float acc[TN][TM];
    cn_zero<T>(acc);
    cn_mainloop<T>(la, lb, As, Bs, acc, tiles, tx, ty);

    float* part = out + split * K * crs;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + cn_tile_index<T::TY>(i, ty);
        if (m >= Kg) continue;
        float* row = part + (g * Kg + m) * crs;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + cn_tile_index<T::TX>(j, tx);
            if (col < crs) row[col] = acc[j][i];
        }
    }
}

#define CN_FILTER_ARGS                                                                        \
    const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ out, int N, \
        int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw,  \
        int groups, int chunk
#define CN_FILTER_PASS x, dy, out, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups, chunk

// Paddings of at most CN_EDGE_ROWS rows (columns) of outputs: ceil(ph / sh), ceil(pw / sw)
// (the host checks).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (BM / TM) * (BN / TN) == 192 ? 2 : 1)
conv_backward_filter(CN_FILTER_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    using LB = CnTapGather<T, BN, CnEdgeLanes<T, BN>::value, true, CnFilterPointers<T>::B>;
    conv_backward_filter_tile<T, LB>(CN_FILTER_PASS);
}

// Any padding (wider ones than conv_backward_filter takes).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (BM / TM) * (BN / TN) == 192 ? 2 : 1)
conv_backward_filter_wide(CN_FILTER_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    conv_backward_filter_tile<T, CnGather<T, BN, false, true>>(CN_FILTER_PASS);
}

extern "C" __global__ void conv_split_sum(const float* __restrict__ part, float* __restrict__ out,
                                          int count, int splits)
{
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        float sum = 0.0f;
        for (int s = 0; s < splits; ++s) sum += part[(long long)s * count + i];
        out[i] = sum;
    }
}

// The element THREADS on: i += step_i with i kept in [0, PQ); the pointer follows
// (step_ptr = step_n images + step_i, one more image less PQ on a wrap).
static __device__ __forceinline__ void cn_bias_step(const float*& at, int& i, int PQ, int step_i,
                                                    long long step_ptr, long long wrap_ptr)
{
    i += step_i;
    at += step_ptr;
    if (i >= PQ) {
        i -= PQ;
        at += wrap_ptr;
    }
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
conv_bias_grad(const float* __restrict__ dy, float* __restrict__ out, int N, int K, int PQ,
               int images)
{
    static_assert(THREADS > 0 && (THREADS & (THREADS - 1)) == 0, "a power of two");
    __shared__ float partial[THREADS];
    const int k = blockIdx.x;
    const int tid = threadIdx.x;
    const int n0 = blockIdx.y * images;
    const int count = (min(n0 + images, N) - n0) * PQ;  // this block's elements
    // element e of the slice is dy[n0 + e / PQ][k][e % PQ]: a pointer walked by THREADS
    const long long image = (long long)K * PQ;
    const int n = tid / PQ;
    int i = tid - n * PQ;
    const int step_n = THREADS / PQ, step_i = THREADS - step_n * PQ;
    const long long step_ptr = step_n * image + step_i, wrap_ptr = image - PQ;
    const float* at = dy + (long long)(n0 + n) * image + (long long)k * PQ + i;
    float sum = 0.0f;
    int e = tid;
    for (; e + 3 * THREADS < count; e += 4 * THREADS) {
        float v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            v[u] = *at;
            cn_bias_step(at, i, PQ, step_i, step_ptr, wrap_ptr);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) sum += v[u];
    }
    for (; e < count; e += THREADS) {
        sum += *at;
        cn_bias_step(at, i, PQ, step_i, step_ptr, wrap_ptr);
    }
    partial[tid] = sum;
    __syncthreads();
#pragma unroll
    for (int width = THREADS / 2; width > 0; width /= 2) {
        if (tid < width) partial[tid] += partial[tid + width];
        __syncthreads();
    }
    if (tid == 0) out[(long long)blockIdx.y * K + k] = partial[0];
}
