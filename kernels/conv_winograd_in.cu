// conv_winograd_in.cu: the transforms into the Winograd domain of F(2x2, 3x3)
// (conv_winograd.cuh): input tiles, filters and output-gradient tiles, each written as
// 16 matrices (one per transform position xi) for the batched products of
// conv_winograd_gemm.cu. Used by ops/conv_winograd.py for the forward, backward data
// and backward filter of 3x3 stride-1 convolutions.
//
// Tiles: an output of P x Q is cut into TH x TW tiles of 2x2 (TH = ceil(P/2)); tile
// t = (n * TH + th) * TW + tw of T = N * TH * TW. Its input patch is the 4x4 window at
// rows 2*th + oh .., columns 2*tw + ow .. of the image (oh = -pad for a forward, and
// pad - 2 for backward data, which correlates dy with the flipped filter); elements
// outside the image read as 0 (zero padding; tiles past the output's edge compute
// results nobody stores).
//
// winograd_input: src (N, C, H, W) -> V[xi][c][t] = (B^T d B)[xi], V of 16 x C x T
//   floats. One thread per (c, t), id = c * T + t (consecutive threads: neighbouring
//   tiles, so the 16 stores are coalesced).
// winograd_filter: w (K, Cg, 3, 3) -> U[xi] = (G w G^T)[xi], 16 x K x Cg floats,
//   laid out U[xi][k][c] (flip = 0, the forward's A operand: rows k) or, for backward
//   data, of the filter rotated by 180 degrees with the channels exchanged within each
//   group, U[xi][g*Cg + c][k - g*Kg] (flip = 1: rows c, columns the group's k). One
//   thread per (k, c), id = k * Cg + c, reading its 9 contiguous floats.
// winograd_grad: dy (N, K, P, Q) -> D[xi][k][t] = (A dY A^T)[xi] for the 2x2 tiles of
//   dy (zero past P, Q), 16 x K x T floats; one thread per (k, t), id = k * T + t.
//
// Launch: 1-D grid-stride loops, any grid; block 256. 32-bit indices: the host checks
// that 16 x each matrix set holds fewer than 2^31 floats.
#include "common.cuh"
#include "conv_winograd.cuh"

extern "C" __global__ void __launch_bounds__(256)
winograd_input(const float* __restrict__ src, float* __restrict__ V, int N, int C, int H, int W,
               int TH, int TW, int oh, int ow)
{
    const int count = C * N * TH * TW;
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        const int id = (int)i;
        const CnwTile tile = cnw_tile(id, N, TH, TW);
        const int c = tile.plane, n = tile.n;
        const int h0 = tile.p0 + oh;
        const int w0 = tile.q0 + ow;
        const float* plane = src + (n * C + c) * H * W;
        float d[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const bool in = (unsigned)(h0 + a) < (unsigned)H && (unsigned)(w0 + b) < (unsigned)W;
                d[a][b] = in ? plane[(h0 + a) * W + w0 + b] : 0.0f;
            }
        cnw_input_tile(d);
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) V[(4 * a + b) * count + id] = d[a][b];
    }
}

extern "C" __global__ void __launch_bounds__(256)
winograd_filter(const float* __restrict__ w, float* __restrict__ U, int K, int Cg, int groups,
                int flip)
{
    const int count = K * Cg;
    const int Kg = K / groups;
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        const int id = (int)i;
        const float* f = w + 9 * id;
        float g[3][3];
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int s = 0; s < 3; ++s) g[r][s] = flip ? f[8 - 3 * r - s] : f[3 * r + s];
        int out = id;
        if (flip) {
            const int k = id / Cg;
            const int c = id - k * Cg;
            const int grp = k / Kg;
            out = (grp * Cg + c) * Kg + (k - grp * Kg);
        }
        float u[4][4];
        cnw_filter_tile(g, u);
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) U[(4 * a + b) * count + out] = u[a][b];
    }
}

extern "C" __global__ void __launch_bounds__(256)
winograd_grad(const float* __restrict__ dy, float* __restrict__ D, int N, int K, int P, int Q,
              int TH, int TW)
{
    const int count = K * N * TH * TW;
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        const int id = (int)i;
        const CnwTile tile = cnw_tile(id, N, TH, TW);
        const int k = tile.plane, n = tile.n, p0 = tile.p0, q0 = tile.q0;
        const float* plane = dy + (n * K + k) * P * Q;
        float e[2][2];
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b)
                e[a][b] = (p0 + a < P && q0 + b < Q) ? plane[(p0 + a) * Q + q0 + b] : 0.0f;
        float v[4][4];
        cnw_grad_tile(e, v);
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) D[(4 * a + b) * count + id] = v[a][b];
    }
}
