// conv_layout.cu: layout changes for the channels-last tensor-core convolution.
//
// conv_to_channels_last: a batched 2-D transpose, (B, R, C) -> (B, C, R); activations
//   (N, C, H*W) -> (N, H*W, C) and filters (K, Cg, R*S) -> (K, R*S, Cg);
//   conv_pixels_to_channels_last: the same for a few rows (channels), a thread a pixel.
// conv_filter_layout: a filter (K, Cg, R*S) -> (K, R*S, Cg) for the forward GEMM, or
//   backward data's filter as a forward convolution's (per group: channels-out c, taps
//   flipped, filters k fastest).
//
// All round what they move to the tensor cores' operands when asked (ROUND 1: TF32,
// cvt.rna.tf32.f32 with the 13 low bits cleared, written as float; 2: BF16, round to
// nearest even, written as its 16 bits (unsigned short): half the bytes for the GEMM to
// copy; 0: float as it is), so that the GEMM that reads the result rounds nothing.
//
// Float input, C-contiguous, 32-bit indices: the host checks every array's size fits in int.
#include "common.cuh"
#include "mma.cuh"

// ROUND's output element (type) and value of v (of) as that element; `rounded` is v on
// ROUND's grid as a float (what a tile holds: a BF16 value is exact in float).
template <int ROUND>
struct CnLayoutValue {
    typedef float type;
    static __device__ __forceinline__ float rounded(float v)
    {
        return ROUND == 1 ? __uint_as_float(cn_tf32(v) & 0xffffe000u) : v;
    }
    static __device__ __forceinline__ float of(float v) { return v; }
};
template <>
struct CnLayoutValue<2> {
    typedef unsigned short type;
    static __device__ __forceinline__ float rounded(float v)
    {
        return __uint_as_float(cn_bf16x2(0.0f, v) & 0xffff0000u);
    }
    static __device__ __forceinline__ unsigned short of(float v) { return (unsigned short)(__float_as_uint(v) >> 16); }
};

#define CN_LAYOUT_TILE 32   // a tile is 32 x 32 elements
#define CN_LAYOUT_ROWS 8    // block rows: each thread moves 32 / 8 = 4 elements each way

// out[b][j][i] = in[b][i][j] for i < rows, j < cols, and 0 for rows <= i < out_rows
// (channels padded with zeros: a small channel count made a whole 16-byte copy).
//
// Launch shape: block (32, 8); grid.x = one block per 32 x 32 tile of a matrix
// (ceil(out_rows/32) * ceil(cols/32), tile row-major), grid.y <= batches (<= 65535): each
// block steps through the batches b = blockIdx.y, + gridDim.y, ... so any batch count
// fits. A tile is read along j (coalesced: 32 consecutive floats a warp) into shared
// memory and written along i (coalesced too); its rows are padded to 33 floats so that
// neither the column reads nor the row writes of a warp meet on one bank. A tile inside
// the matrix moves with no test; an edge tile masks its reads and writes alike, so no
// thread reads a shared element nobody wrote.
template <int ROUND>
__global__ void __launch_bounds__(CN_LAYOUT_TILE * CN_LAYOUT_ROWS)
conv_to_channels_last(const float* __restrict__ in, typename CnLayoutValue<ROUND>::type* __restrict__ out,
                      int batches, int rows, int cols, int out_rows)
{
    __shared__ float tile[CN_LAYOUT_TILE][CN_LAYOUT_TILE + 1];
    const int tiles_j = (cols + CN_LAYOUT_TILE - 1) / CN_LAYOUT_TILE;
    const int i0 = (int)(blockIdx.x / tiles_j) * CN_LAYOUT_TILE;   // tile's first row of in
    const int j0 = (int)(blockIdx.x % tiles_j) * CN_LAYOUT_TILE;   // tile's first column
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int matrix = rows * cols;
    // a whole tile inside the matrix (and so inside out_rows): no test an element
    const bool full = i0 + CN_LAYOUT_TILE <= rows && j0 + CN_LAYOUT_TILE <= cols;
    for (int b = blockIdx.y; b < batches; b += gridDim.y) {
        const float* src = in + (long long)b * matrix;
        typename CnLayoutValue<ROUND>::type* dst = out + (long long)b * out_rows * cols;
        const int j = j0 + tx;
        if (full) {
#pragma unroll
            for (int k = 0; k < CN_LAYOUT_TILE; k += CN_LAYOUT_ROWS)
                tile[ty + k][tx] = CnLayoutValue<ROUND>::rounded(src[(i0 + ty + k) * cols + j]);
        } else {
#pragma unroll
            for (int k = 0; k < CN_LAYOUT_TILE; k += CN_LAYOUT_ROWS) {
                const int i = i0 + ty + k;
                if (i < out_rows && j < cols) tile[ty + k][tx] = i < rows ? CnLayoutValue<ROUND>::rounded(src[i * cols + j]) : 0.0f;
            }
        }
        __syncthreads();
        const int i = i0 + tx;
        if (full) {
#pragma unroll
            for (int k = 0; k < CN_LAYOUT_TILE; k += CN_LAYOUT_ROWS)
                dst[(j0 + ty + k) * out_rows + i] = CnLayoutValue<ROUND>::of(tile[tx][ty + k]);
        } else {
#pragma unroll
            for (int k = 0; k < CN_LAYOUT_TILE; k += CN_LAYOUT_ROWS) {
                const int jj = j0 + ty + k;
                if (i < out_rows && jj < cols) dst[jj * out_rows + i] = CnLayoutValue<ROUND>::of(tile[tx][ty + k]);
            }
        }
        __syncthreads();   // the tile is rewritten for the next batch
    }
}

// The same result as conv_to_channels_last for few rows (out_rows <= 8: conv1's 3
// channels padded to a 16-byte copy): a thread per pixel (b, j) reads its rows (each
// read coalesced across the warp's consecutive pixels) and writes its out_rows
// consecutive elements, where a 32 x 32 tile would leave most of its threads idle.
//
// Launch shape: 1-D grid-stride over batches * cols pixels.
template <int ROUND>
__global__ void conv_pixels_to_channels_last(const float* __restrict__ in,
                                             typename CnLayoutValue<ROUND>::type* __restrict__ out,
                                             int batches, int rows, int cols, int out_rows)
{
    const long long total = (long long)batches * cols;
    for (long long o = cn_global_thread(); o < total; o += cn_grid_threads()) {
        const long long b = o / cols;
        const float* src = in + b * rows * cols + (o - b * cols);
        typename CnLayoutValue<ROUND>::type* dst = out + o * out_rows;
        for (int i = 0; i < out_rows; ++i)
            dst[i] = CnLayoutValue<ROUND>::of(i < rows ? CnLayoutValue<ROUND>::rounded(src[(long long)i * cols]) : 0.0f);
    }
}

// A filter w (K, Cg, RS) laid out for the channels-last GEMM, as rows of F elements:
//   forward (DATA false): out[(k*RS + t)*Fo + c] = w[(k*Cg + c)*RS + t], F = Cg, the
//     columns Cg <= c < Fo zeros (a small channel count made a whole 16-byte copy);
//   backward data (DATA true): out[((g*Cg + c)*RS + t)*Kg + k] = w[((g*Kg + k)*Cg + c)*RS
//     + (RS - 1 - t)], Kg = K / groups, F = Fo = Kg: per group, channels-out c, taps
//     flipped, filters k fastest (backward data's filter as a forward convolution's).
//
// Launch shape: 1-D grid-stride over chunks of 4 consecutive output elements of a row
// (rows * ceil(Fo / 4) chunks): a thread finds its row and tap with two divisions, reads
// its 4 values (stride RS or Cg*RS: a few-MB filter stays in cache) and writes them
// with one 16-byte (TF32, float) or 8-byte (BF16) store when Fo % 4 == 0, else one at
// a time. The host checks every index fits in int.
template <int ROUND>
static __device__ __forceinline__ void cn_layout_store4(typename CnLayoutValue<ROUND>::type* dst, const float (&v)[4],
                                                        int n, bool whole)
{
    if (whole && ROUND == 2) {
        const unsigned lo = CnLayoutValue<2>::of(v[0]) | ((unsigned)CnLayoutValue<2>::of(v[1]) << 16);
        const unsigned hi = CnLayoutValue<2>::of(v[2]) | ((unsigned)CnLayoutValue<2>::of(v[3]) << 16);
        *reinterpret_cast<uint2*>(dst) = make_uint2(lo, hi);
    } else if (whole) {
        *reinterpret_cast<float4*>(dst) = make_float4(v[0], v[1], v[2], v[3]);
    } else {
        for (int i = 0; i < n; ++i) dst[i] = CnLayoutValue<ROUND>::of(v[i]);
    }
}
template <int ROUND, bool DATA>
__global__ void conv_filter_layout(const float* __restrict__ w, typename CnLayoutValue<ROUND>::type* __restrict__ out,
                                   int K, int Cg, int RS, int groups, int Fo)
{
    const int Kg = K / groups;
    const int F = DATA ? Kg : Cg;                      // the row's real elements (Fo >= F)
    const int rows = DATA ? groups * Cg * RS : K * RS;
    const int chunks = (Fo + 3) / 4;
    const bool whole = Fo % 4 == 0;                    // every chunk a full, aligned store
    const int total = rows * chunks;
    for (int q = (int)cn_global_thread(); q < total; q += (int)cn_grid_threads()) {
        const int row = q / chunks;
        const int f0 = 4 * (q - row * chunks);
        const int lead = row / RS, t = row - lead * RS;  // lead: k (forward) or g*Cg + c (data)
        int src, step;
        if (DATA) {
            const int g = lead / Cg, c = lead - g * Cg;
            src = ((g * Kg + f0) * Cg + c) * RS + (RS - 1 - t);
            step = Cg * RS;
        } else {
            src = (lead * Cg + f0) * RS + t;
            step = RS;
        }
        float v[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = f0 + i < F ? CnLayoutValue<ROUND>::rounded(w[src + i * step]) : 0.0f;
        cn_layout_store4<ROUND>(out + row * Fo + f0, v, min(4, Fo - f0), whole);
    }
}
