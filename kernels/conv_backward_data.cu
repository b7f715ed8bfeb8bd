// conv_backward_data.cu: the gradient of a 2-D convolution with respect to its input,
//   dx[n][g*Cg + c][h][v] = sum over (k, r, s) with h = p*sh - ph + r, v = q*sw - pw + s,
//                           0 <= p < P, 0 <= q < Q of  w[g*Kg + k][c][r][s] * dy[n][g*Kg + k][p][q]
// (groups as in conv_forward.cu). Every dx element is written (zero where nothing
// reaches it), so dx needs no clearing.
//
// Layout: NCHW float32, C-contiguous: dy (N, K, P, Q), w (K, Cg, R, S), dx (N, C, H, W).
//
// Gather formulation, split by stride phase: the pixels with h % sh == a and
// v % sw == b (phase (a, b)) are reached only by the taps r = r0 + sh*t with
// r0 = (a + ph) % sh, and s = s0 + sw*u likewise, and then p = pa + i - t where
// h = a + sh*i and pa = (a + ph - r0) / sh (same for q). So each phase is a stride-1
// correlation of dy with a sub-filter, an implicit GEMM with no wasted products:
//   A[m][kk] = w[g*Kg + k][m][r0 + sh*t][s0 + sw*u]     kk = (k, t, u), m = c
//   B[kk][j] = dy[n][g*Kg + k][pa + i - t][qa + j' - u]  j = (n, i, j'), zero outside P x Q
// A phase no tap reaches (r0 >= R, when the stride exceeds the kernel) has an empty
// reduction and writes zeros. conv_backward_data tests dy's bounds with per-column tap
// masks (CnTapGather: phases of at most 15 x 16 taps, ceil(R/sh) x ceil(S/sw));
// conv_backward_data_wide, the same kernel with the plain checked gather, takes any.
//
// Launch (both): block = (BM/TM) * (BN/TN) threads (1-D); grid = (ceil(N * ceil(H/sh) *
// ceil(W/sw) / BN), ceil(Cg / BM), groups * sh * sw) with blockIdx.z = g * sh*sw +
// a * sw + b; blocks past their phase's columns return at once. No dynamic shared
// memory. 32-bit indices: the host checks the sizes. One resident block asked for
// (ptxas's default for the 192-thread tile spills on sm_80; two would spill anywhere).
#include "conv_common.cuh"

// The kernel's body, B gathered by LB (CnTapGather or CnGather).
template <class T, class LB>
static __device__ __forceinline__ void conv_backward_data_tile(
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int N,
    int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw,
    int groups)
{
    constexpr int BM = T::BM, BN = T::BN, BK = T::BK, TM = T::TM, TN = T::TN;
    __align__(16) __shared__ float As[2][BK][T::LDA];
    __align__(16) __shared__ float Bs[2][BK][T::LDB];

    const int phases = sh * sw;
    const int g = blockIdx.z / phases;
    const int phase = blockIdx.z - g * phases;
    const int a = phase / sw;
    const int b = phase - a * sw;
    const int Hp = a < H ? (H - a + sh - 1) / sh : 0;  // pixels of this phase per column / row
    const int Wp = b < W ? (W - b + sw - 1) / sw : 0;
    const int cols = N * Hp * Wp;
    const int n0 = blockIdx.x * BN;
    if (n0 >= cols) return;  // the whole block: no barrier has been reached

    const int Cg = C / groups;
    const int Kg = K / groups;
    const int RS = R * S;
    const int PQ = P * Q;
    const int r0 = (a + ph) % sh;
    const int s0 = (b + pw) % sw;
    const int Rp = r0 < R ? (R - r0 + sh - 1) / sh : 0;  // taps of this phase
    const int Sp = s0 < S ? (S - s0 + sw - 1) / sw : 0;
    const int pa = (a + ph - r0) / sh;
    const int qa = (b + pw - s0) / sw;
    const int kd = Kg * Rp * Sp;
    const int m0 = blockIdx.y * BM;
    const int tid = threadIdx.x;
    const int tx = tid % T::TX;
    const int ty = tid / T::TX;

    // A: the phase's taps of w, transposed (rows c, reduction (k, t, u)).
    CnGather<T, BM, true, false> la;
    la.init(w + g * Kg * Cg * RS + r0 * S + s0, kd, 0, 0, tid);
    la.dg = cn_digits(Rp, Sp, Cg * RS, sh * S, sw, 0, 0, BK);
#pragma unroll
    for (int j = 0; j < la.XN; ++j) {
        const int c = min(m0 + la.x_of(j), Cg - 1);
        la.set_x(j, c * RS, 0, 0);
    }

    // B: dy at (pa + i - t, qa + j - u), zero outside P x Q.
    LB lb;
    lb.init(dy + g * Kg * PQ, kd, P, Q, tid);
    lb.dg = cn_digits(Rp, Sp, PQ, -Q, -1, -1, -1, BK);
    const int HWp = Hp * Wp;
#pragma unroll
    for (int j = 0; j < LB::XN; ++j) {
        const int col = min(n0 + lb.x_of(j), cols - 1);
        const int n = col / HWp;
        const int rest = col - n * HWp;
        const int i = rest / Wp;
        const int jj = rest - i * Wp;
        const int p0 = pa + i;
        const int q0 = qa + jj;
        lb.set_x(j, n * K * PQ + p0 * Q + q0, p0, q0);
    }

    const int tiles = (kd + BK - 1) / BK;
    if (tiles > 0) {
        la.start(0);
        lb.start(0);
    }
    float acc[TN][TM];
    cn_zero<T>(acc);
    cn_mainloop<T>(la, lb, As, Bs, acc, tiles, tx, ty);

    const int HW = H * W;
    int xoff[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + cn_tile_index<T::TX>(j, tx);
        const int n = col / HWp;
        const int rest = col - n * HWp;
        const int i = rest / Wp;
        const int jj = rest - i * Wp;
        xoff[j] = col < cols ? n * C * HW + (a + sh * i) * W + (b + sw * jj) : -1;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + cn_tile_index<T::TY>(i, ty);
        if (m >= Cg) continue;
        float* xrow = dx + (g * Cg + m) * HW;
#pragma unroll
        for (int j = 0; j < TN; ++j)
            if (xoff[j] >= 0) xrow[xoff[j]] = acc[j][i];
    }
}

#define CN_DATA_ARGS                                                                          \
    const float* __restrict__ dy, const float* __restrict__ w, float* __restrict__ dx, int N, \
        int C, int H, int W, int K, int R, int S, int P, int Q, int sh, int sw, int ph, int pw, \
        int groups
#define CN_DATA_PASS dy, w, dx, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups

// Phases of at most CN_TAP_N1 x CN_TAP_N2 taps (ceil(R / sh), ceil(S / sw); the host
// checks); a pointer per gathered position of B (not of A: MEDIUM would pass 168
// registers, its three blocks an SM).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), 1) conv_backward_data(CN_DATA_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    conv_backward_data_tile<T, CnTapGather<T, BN, CnTapLanes<T, BN>::value, false, true>>(CN_DATA_PASS);
}

// Any filter (wider phases than conv_backward_data takes).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), 1) conv_backward_data_wide(CN_DATA_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    conv_backward_data_tile<T, CnGather<T, BN, false, true>>(CN_DATA_PASS);
}
