// conv_forward.cu: 2-D convolution (cross-correlation, as in PyTorch and the paper),
// with the bias and the ReLU fused into the epilogue:
//   y[n][k][p][q] = act(bias[k] + sum_{c,r,s} w[k][c][r][s] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s])
// for output channel k of group g = k / Kg (Cg = C / groups, Kg = K / groups); x is
// zero outside the image (zero padding); act is ReLU (NaN kept, as kernels/relu.cu)
// when relu != 0, else the identity; the bias is added when has_bias != 0 (else
// `bias` is not read and may be any float array).
//
// Layout: NCHW float32, all C-contiguous: x (N, C, H, W), w (K, Cg, R, S), bias (K,),
// y (N, K, P, Q) with P = (H + 2ph - R) / sh + 1, Q = (W + 2pw - S) / sw + 1.
//
// Implicit GEMM per group (see conv_common.cuh): C = A * B with
//   A[m][kk] = w[g*Kg + m][kk]                          (Kg x Cg*R*S, dense rows)
//   B[kk][j] = x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s]  for kk = (c, r, s),
//              j = (n, p, q)                             (Cg*R*S x N*P*Q, gathered)
// The B gather never materialises im2col: each thread keeps the image position of
// its columns j and walks (c, r, s) with a counter. conv_forward tests the image's
// bounds with per-column tap masks (CnTapGather: filters of at most 15 x 16 taps);
// conv_forward_wide, the same kernel with the plain checked gather, takes any filter.
//
// Launch (both): block = (BM/TM) * (BN/TN) threads (1-D); grid = (ceil(N*P*Q / BN),
// ceil(Kg / BM), groups); no dynamic shared memory. Every index is guarded, so any
// shape works. 32-bit indices: the host checks the sizes. Tiles of 192 or more
// threads ask for two resident blocks per SM (at most 128 registers at 256 threads,
// 168 at 192), which they fit without spilling; the backward kernels, with two
// gathers, ask it of the 192-thread tile only (conv_backward_filter.cu) or not at all.
#include "conv_common.cuh"

// The kernel's body, B gathered by LB (CnTapGather or CnGather).
template <class T, class LB>
static __device__ __forceinline__ void conv_forward_tile(
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
    float* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q, int sh,
    int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    constexpr int BM = T::BM, BN = T::BN, BK = T::BK, TM = T::TM, TN = T::TN;
    __align__(16) __shared__ float As[2][BK][T::LDA];
    __align__(16) __shared__ float Bs[2][BK][T::LDB];

    const int g = blockIdx.z;
    const int Cg = C / groups;
    const int Kg = K / groups;
    const int HW = H * W;
    const int PQ = P * Q;
    const int kd = Cg * R * S;       // reduction length
    const int cols = N * PQ;         // GEMM columns
    const int m0 = blockIdx.y * BM;  // first output channel (within the group)
    const int n0 = blockIdx.x * BN;  // first column
    const int tid = threadIdx.x;
    const int tx = tid % T::TX;
    const int ty = tid / T::TX;

    CnDense<T, BM> la;
    la.init(w + g * Kg * kd, kd, Kg, m0, 0, kd, tid);
    LB lb;
    lb.init(x + g * Cg * HW, kd, H, W, tid);
    lb.dg = cn_digits(R, S, HW, W, 1, 1, 1, BK);
#pragma unroll
    for (int j = 0; j < LB::XN; ++j) {
        const int col = min(n0 + lb.x_of(j), cols - 1);
        const int n = col / PQ;
        const int pq = col - n * PQ;
        const int p = pq / Q;
        const int q = pq - p * Q;
        const int h0 = p * sh - ph;
        const int w0 = q * sw - pw;
        lb.set_x(j, n * C * HW + h0 * W + w0, h0, w0);
    }
    lb.start(0);

    float acc[TN][TM];
    cn_zero<T>(acc);
    cn_mainloop<T>(la, lb, As, Bs, acc, (kd + BK - 1) / BK, tx, ty);

    // Epilogue: bias, ReLU, one store per result.
    int yoff[TN];
#pragma unroll
    for (int j = 0; j < TN; ++j) {
        const int col = n0 + cn_tile_index<T::TX>(j, tx);
        const int n = col / PQ;
        yoff[j] = col < cols ? n * K * PQ + (col - n * PQ) : -1;
    }
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + cn_tile_index<T::TY>(i, ty);
        if (m >= Kg) continue;
        const int k = g * Kg + m;
        const float b = has_bias ? bias[k] : 0.0f;
        float* yrow = y + k * PQ;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            if (yoff[j] < 0) continue;
            float v = acc[j][i] + b;
            if (relu) v = (v > 0.0f || v != v) ? v : 0.0f;
            yrow[yoff[j]] = v;
        }
    }
}

#define CN_FORWARD_ARGS                                                                      \
    const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias, \
        float* __restrict__ y, int N, int C, int H, int W, int K, int R, int S, int P, int Q,   \
        int sh, int sw, int ph, int pw, int groups, int has_bias, int relu
#define CN_FORWARD_PASS \
    x, w, bias, y, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups, has_bias, relu

// Filters of at most CN_TAP_N1 x CN_TAP_N2 taps (the host checks); a pointer per
// gathered position (the registers allow it at every tile).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (BM / TM) * (BN / TN) >= 192 ? 2 : 1)
conv_forward(CN_FORWARD_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    conv_forward_tile<T, CnTapGather<T, BN, CnTapLanes<T, BN>::value, false, true>>(CN_FORWARD_PASS);
}

// Any filter (wider ones than conv_forward takes).
template <int BM, int BN, int BK, int TM, int TN>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (BM / TM) * (BN / TN) >= 192 ? 2 : 1)
conv_forward_wide(CN_FORWARD_ARGS)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    conv_forward_tile<T, CnGather<T, BN, false, true>>(CN_FORWARD_PASS);
}
