// conv_winograd_gemm.cu: the batched matrix products of the Winograd convolution
// (ops/conv_winograd.py): for each of the 16 transform positions xi and each group g,
//   C[m][j] = sum_{kk in chunk} A[m][kk] * B[kk][j]
// on the implicit-GEMM engine of conv_common.cuh (the same tiles, loaders and
// double-buffered main loop as the direct convolution), with
//   A[m][kk] = A0[xi * a_xi + g * a_g + m * lda + kk]           (dense rows)
//   B[kk][j] = B0[xi * b_xi + g * b_g + j * bj + kk * bk]       (one stride each way)
//   C[m][j] -> C0[split * c_split + xi * c_xi + g * c_g + m * ldc + j]
// for m < rows, j < cols, kk in [split * chunk, min((split + 1) * chunk, kd)).
// KMAJOR says which way B is contiguous: false, along j (bj = 1: the forward's and
// backward data's transformed inputs V[xi][c][t], reduced over the channels c);
// true, along kk (bk = 1: backward filter's V[xi][c][t] reduced over the tiles t,
// where the long reduction is split into chunks, a multiple of BK, that separate
// blocks sum into their own slice of C; conv_winograd_out.cu adds the slices).
//
// Launch: block = (BM/TM) * (BN/TN) threads (1-D); grid = (ceil(cols / BN),
// ceil(rows / BM), 16 * groups * splits) with blockIdx.z = (split * groups + g) * 16
// + xi; no dynamic shared memory. Every index is guarded (rows and columns past the
// edge load clamped positions whose results are not stored); 32-bit indices, checked
// by the host.
#include "conv_common.cuh"

template <int BM, int BN, int BK, int TM, int TN, bool KMAJOR>
__global__ void __launch_bounds__((BM / TM) * (BN / TN), (BM / TM) * (BN / TN) >= 256 ? 2 : 1)
winograd_gemm(const float* __restrict__ A0, const float* __restrict__ B0, float* __restrict__ C0,
              int rows, int cols, int kd, int lda, int bj, int bk, int ldc, int groups, int chunk,
              int a_xi, int a_g, int b_xi, int b_g, int c_split, int c_xi, int c_g)
{
    using T = CnTile<BM, BN, BK, TM, TN>;
    __align__(16) __shared__ float As[2][BK][T::LDA];
    __align__(16) __shared__ float Bs[2][BK][T::LDB];

    const int xi = blockIdx.z % 16;
    const int rest = blockIdx.z / 16;
    const int split = rest / groups;
    const int g = rest - split * groups;
    const int kbeg = split * chunk;
    const int kend = min(kbeg + chunk, kd);
    const int m0 = blockIdx.y * BM;
    const int n0 = blockIdx.x * BN;
    const int tid = threadIdx.x;
    const int tx = tid % T::TX;
    const int ty = tid / T::TX;

    CnDense<T, BM> la;
    la.init(A0 + xi * a_xi + g * a_g, lda, rows, m0, kbeg, kend, tid);

    CnGather<T, BN, KMAJOR, false> lb;
    lb.init(B0 + xi * b_xi + g * b_g, kend, 0, 0, tid);
    lb.dg = cn_digits(1, 1, bk, 0, 0, 0, 0, BK);
#pragma unroll
    for (int j = 0; j < lb.XN; ++j) lb.set_x(j, min(n0 + lb.x_of(j), cols - 1) * bj, 0, 0);

    const int tiles = kend > kbeg ? (kend - kbeg + BK - 1) / BK : 0;
    if (tiles > 0) lb.start(kbeg);
    float acc[TN][TM];
    cn_zero<T>(acc);
    cn_mainloop<T>(la, lb, As, Bs, acc, tiles, tx, ty);

    float* out = C0 + split * c_split + xi * c_xi + g * c_g;
#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + cn_tile_index<T::TY>(i, ty);
        if (m >= rows) continue;
        float* row = out + m * ldc;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            const int col = n0 + cn_tile_index<T::TX>(j, tx);
            if (col < cols) row[col] = acc[j][i];
        }
    }
}
