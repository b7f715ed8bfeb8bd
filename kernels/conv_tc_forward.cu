// conv_tc_forward.cu: 2-D convolution forward on tensor cores (issue 12), with the
// bias and the ReLU fused into the epilogue, as conv_forward.cu computes it:
//   y[n][k][p][q] = act(bias[k] + sum_{c,r,s} w[k][c][r][s] * x[n][g*Cg + c][p*sh - ph + r][q*sw - pw + s])
// but with the operands rounded to TF32 (PREC 0: cvt.rna.tf32.f32, mma m16n8k8) or BF16
// (PREC 1: round to nearest even, mma m16n8k16) and FP32 accumulation. The sum runs
// over kk = (c, r, s) in ascending order, one FP32 rounding per product added (see
// kernels/mma.cuh and csrc/emu/emu_mma.h for what emu computes bit for bit), then the
// bias is added and ReLU applied (NaN kept).
//
// Layout: NCHW float32, C-contiguous, as conv_forward.cu: x (N, C, H, W), w (K, Cg, R, S),
// bias (K,) (not read when has_bias == 0), y (N, K, P, Q).
//
// Implicit GEMM per group g: D[m][j] = sum_kk A[m][kk] B[kk][j], A = w's rows (Kg x Cg*R*S),
// B = the gathered input (Cg*R*S x N*P*Q), never materialised. A block computes a
// 64 x 64 tile of D with 4 warps (2 x 2, each 32 x 32: 2 x 4 mma tiles of 16 x 8);
// the reduction advances by BK = 16 per step. Operand slices go global -> shared with
// 4-byte cp.async (any alignment, any shape; zero-fill for padding and edges) through
// a 3-stage ring: slice t+2 is in flight while slice t is multiplied, one
// __syncthreads per slice. Shared rows are padded (A by 4, B by 8 floats) so that the
// fragment reads of a warp hit 32 distinct banks. Values are rounded to TF32/BF16 as
// the fragments are read from shared memory.
//
// Launch: block = 128 threads (1-D); grid = (ceil(N*P*Q / 64), ceil(Kg / 64), groups);
// no dynamic shared memory (29 KiB static). 32-bit indices (the host checks the sizes).
#include "cp_async.cuh"
#include "mma.cuh"

#define CN_TC_BM 64
#define CN_TC_BN 64
#define CN_TC_BK 16
#define CN_TC_STAGES 3
#define CN_TC_THREADS 128
#define CN_TC_LDA (CN_TC_BK + 4)
#define CN_TC_LDB (CN_TC_BN + 8)

template <int PREC>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_forward(const float* __restrict__ x, const float* __restrict__ w,
                const float* __restrict__ bias, float* __restrict__ y,
                int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    __shared__ __align__(16) float As[CN_TC_STAGES][CN_TC_BM][CN_TC_LDA];
    __shared__ __align__(16) float Bs[CN_TC_STAGES][CN_TC_BK][CN_TC_LDB];

    const int g = blockIdx.z;
    const int Cg = C / groups;
    const int Kg = K / groups;
    const int HW = H * W;
    const int PQ = P * Q;
    const int RS = R * S;
    const int kd = Cg * RS;
    const int cols = N * PQ;
    const int m0 = blockIdx.y * CN_TC_BM;
    const int n0 = blockIdx.x * CN_TC_BN;
    const int tid = threadIdx.x;

    // This thread's loads: A rows am + 8i at column ak; B column bj at rows bk + 2i (i < 8).
    const int am = tid >> 4, ak = tid & 15;
    const int bj = tid & 63, bk = tid >> 6;
    const float* wrow = w + (g * Kg) * kd;
    const int col = n0 + bj;
    const bool col_ok = col < cols;
    const int cn = col_ok ? col / PQ : 0;
    const int cpq = col_ok ? col - cn * PQ : 0;
    const int cp = cpq / Q;
    const int h0 = cp * sh - ph, w0 = (cpq - cp * Q) * sw - pw;
    const float* ximg = x + cn * C * HW + g * Cg * HW;

    auto load = [&](int slice, int stage) {
        const int k0 = slice * CN_TC_BK;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int m = am + 8 * i, kk = k0 + ak;
            const bool ok = m0 + m < Kg && kk < kd;
            cn_cp_async<4>(&As[stage][m][ak], ok ? wrow + (m0 + m) * kd + kk : w, ok);
        }
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            const int r = bk + 2 * i, kk = k0 + r;
            const int c = kk / RS, rs = kk - c * RS;
            const int fr = rs / S, fs = rs - fr * S;
            const int h = h0 + fr, wi = w0 + fs;
            const bool ok = col_ok && kk < kd && h >= 0 && h < H && wi >= 0 && wi < W;
            cn_cp_async<4>(&Bs[stage][r][bj], ok ? ximg + c * HW + h * W + wi : x, ok);
        }
    };

    const int warp = tid >> 5, lane = tid & 31;
    const int gq = lane >> 2, tq = lane & 3;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.0f;

    const int slices = (kd + CN_TC_BK - 1) / CN_TC_BK;
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
        const int st = t % CN_TC_STAGES;
        if (PREC == 0) {
#pragma unroll
            for (int ks = 0; ks < CN_TC_BK; ks += 8) {
                unsigned a[2][4], b[4][2];
#pragma unroll
                for (int mi = 0; mi < 2; ++mi) {
                    const int r0 = wm + 16 * mi + gq;
                    a[mi][0] = cn_tf32(As[st][r0][ks + tq]);
                    a[mi][1] = cn_tf32(As[st][r0 + 8][ks + tq]);
                    a[mi][2] = cn_tf32(As[st][r0][ks + tq + 4]);
                    a[mi][3] = cn_tf32(As[st][r0 + 8][ks + tq + 4]);
                }
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) {
                    const int c0 = wn + 8 * ni + gq;
                    b[ni][0] = cn_tf32(Bs[st][ks + tq][c0]);
                    b[ni][1] = cn_tf32(Bs[st][ks + tq + 4][c0]);
                }
#pragma unroll
                for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                    for (int ni = 0; ni < 4; ++ni) cn_mma_tf32(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
            }
        } else {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
                const int r0 = wm + 16 * mi + gq;
                a[mi][0] = cn_bf16x2(As[st][r0][2 * tq], As[st][r0][2 * tq + 1]);
                a[mi][1] = cn_bf16x2(As[st][r0 + 8][2 * tq], As[st][r0 + 8][2 * tq + 1]);
                a[mi][2] = cn_bf16x2(As[st][r0][2 * tq + 8], As[st][r0][2 * tq + 9]);
                a[mi][3] = cn_bf16x2(As[st][r0 + 8][2 * tq + 8], As[st][r0 + 8][2 * tq + 9]);
            }
#pragma unroll
            for (int ni = 0; ni < 4; ++ni) {
                const int c0 = wn + 8 * ni + gq;
                b[ni][0] = cn_bf16x2(Bs[st][2 * tq][c0], Bs[st][2 * tq + 1][c0]);
                b[ni][1] = cn_bf16x2(Bs[st][2 * tq + 8][c0], Bs[st][2 * tq + 9][c0]);
            }
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni) cn_mma_bf16(acc[mi][ni], a[mi], b[ni], acc[mi][ni]);
        }
    }
    cn_cp_async_wait_all();  // only empty groups are left; nothing may be pending at exit

    // Epilogue: element e of tile (mi, ni) is row wm + 16 mi + gq + 8 (e >> 1), column
    // wn + 8 ni + 2 tq + (e & 1) (the C/D fragment layout).
#pragma unroll
    for (int ni = 0; ni < 4; ++ni) {
#pragma unroll
        for (int e1 = 0; e1 < 2; ++e1) {
            const int j = n0 + wn + 8 * ni + 2 * tq + e1;
            if (j >= cols) continue;
            const int n = j / PQ;
            float* yj = y + n * K * PQ + (j - n * PQ);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi) {
#pragma unroll
                for (int e0 = 0; e0 < 2; ++e0) {
                    const int m = m0 + wm + 16 * mi + gq + 8 * e0;
                    if (m >= Kg) continue;
                    const int k = g * Kg + m;
                    float v = acc[mi][ni][2 * e0 + e1];
                    if (has_bias) v += bias[k];
                    if (relu) v = (v > 0.0f || v != v) ? v : 0.0f;
                    yj[k * PQ] = v;
                }
            }
        }
    }
}
