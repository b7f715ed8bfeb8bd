// conv_winograd_out.cu: the transforms out of the Winograd domain of F(2x2, 3x3)
// (conv_winograd.cuh), after the batched products of conv_winograd_gemm.cu.
//
// winograd_output: M[xi][k][t] (16 x K x T floats, tiles as in conv_winograd_in.cu) ->
//   y (N, K, P, Q) = act(A^T M A + bias[k]): the output transform with the forward's
//   epilogue fused (bias when has_bias != 0, else `bias` is not read; ReLU keeping NaN,
//   as kernels/relu.cu, when relu != 0). Backward data uses it with neither (K = C,
//   P x Q = H x W). One thread per (k, t), id = k * T + t: 16 coalesced loads, up to
//   four stores (the 2x2 tile, clipped at the output's edge).
// winograd_filter_out: S[split][xi][k][c] (splits x 16 x K x Cg floats: the filter
//   gradient's products, split over the tiles) -> dw (K, Cg, 3, 3) = G^T (sum over the
//   splits, in split order) G. One thread per (k, c), id = k * Cg + c. The splits'
//   sum is fused here, so no separate pass reads them; no atomics, the result does not
//   depend on the schedule.
//
// Launch: 1-D grid-stride loops, any grid; block 256. 32-bit indices (host-checked).
#include "common.cuh"
#include "conv_winograd.cuh"

extern "C" __global__ void __launch_bounds__(256)
winograd_output(const float* __restrict__ M, const float* __restrict__ bias, float* __restrict__ y,
                int N, int K, int P, int Q, int TH, int TW, int has_bias, int relu)
{
    const int count = K * N * TH * TW;
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        const int id = (int)i;
        const CnwTile tile = cnw_tile(id, N, TH, TW);
        const int k = tile.plane, n = tile.n, p0 = tile.p0, q0 = tile.q0;
        float m[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) m[a][b] = M[(4 * a + b) * count + id];
        float o[2][2];
        cnw_output_tile(m, o);
        const float add = has_bias ? bias[k] : 0.0f;
        float* plane = y + (n * K + k) * P * Q;
#pragma unroll
        for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) {
                if (p0 + a >= P || q0 + b >= Q) continue;
                float v = o[a][b] + add;
                if (relu) v = (v > 0.0f || v != v) ? v : 0.0f;
                plane[(p0 + a) * Q + q0 + b] = v;
            }
    }
}

extern "C" __global__ void __launch_bounds__(256)
winograd_filter_out(const float* __restrict__ S, float* __restrict__ dw, int count, int splits)
{
    for (long long i = cn_global_thread(); i < count; i += cn_grid_threads()) {
        const int id = (int)i;
        float s[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const float* at = S + (4 * a + b) * count + id;
                float sum = 0.0f;
                for (int p = 0; p < splits; ++p) sum += at[p * 16 * count];
                s[a][b] = sum;
            }
        float g[3][3];
        cnw_filter_grad_tile(s, g);
#pragma unroll
        for (int r = 0; r < 3; ++r)
#pragma unroll
            for (int c = 0; c < 3; ++c) dw[9 * id + 3 * r + c] = g[r][c];
    }
}
