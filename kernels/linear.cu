// linear.cu: the epilogue of a fully-connected layer, y = act(z + b), and its backward.
// The matrix product z = x · Wᵀ comes from the array library (cuBLAS through CuPy on a
// GPU, NumPy on the host); these kernels add the bias and apply the optional ReLU in the
// same pass, and in the backward mask the gradient by the saved output and reduce it
// over the batch into the bias gradient.
//
// Layout: z, y, dy, dz are rows×cols float32, row-major, contiguous (rows = batch,
// cols = output features); b and db hold cols float32.
//
// bias_act_forward<RELU>: in place, y[r,c] = act(y[r,c] + b[c]), act = ReLU (NaN kept,
//   -0.0 becomes +0.0, as relu.cu) or the identity; n = rows·cols is 64-bit. 1-D
//   grid-stride over groups of four elements; a full group of y moves as one float4
//   when y is 16-byte aligned (b is read per element: a group may straddle two rows).
//   Launch: any 1-D grid; the host sizes it as for the elementwise kernels
//   (ops/_elementwise.py: 256 threads, min(ceil(n / 1024), 4096) blocks).
// bias_relu_backward<COLS, ROWS>: dz[r,c] = y[r,c] > 0 ? dy[r,c] : 0 and
//   db[c] = sum_r dz[r,c].
// bias_grad<COLS, ROWS>: db[c] = sum_r dy[r,c] (no activation to mask by).
//   Both: block (COLS, ROWS): threadIdx.x walks COLS consecutive columns (coalesced
//   rows), threadIdx.y strides over the rows by ROWS; the ROWS partial sums of a column
//   meet in shared memory after one barrier. grid = ceil(cols / COLS). The sum order is
//   fixed, so results are deterministic (no atomics).
// bias_relu_dropout_forward: in place, y[r,c] = keep(i) ? relu(y[r,c] + b[c]) * scale : 0
//   for flat index i = r·cols + c, keep(i) = Philox word(i) >= threshold as dropout.cu
//   (philox.cuh: counter i / 4, word i % 4, key = seed; threshold 0 keeps everything and
//   skips the generator, threshold 2^32 keeps nothing). The mask is computed here and
//   never stored: the same values, bit for bit, as bias_act_forward<true> then
//   dropout_apply with the same seed. Launch as bias_act_forward (one Philox call per
//   group of four, which is exactly one counter).
// bias_relu_dropout_backward<QUADS, ROWS>: dz[r,c] = (keep(i) && y[r,c] > 0) ? dy[r,c] * scale
//   : 0 and db[c] = sum_r dz[r,c], the mask regenerated from the seed (y is the fused
//   forward's output, so y > 0 iff kept and relu(z + b)·scale > 0). Block (QUADS, ROWS):
//   each thread takes four consecutive columns of a row (one float4 of y, dy and dz
//   where cols % 4 == 0 and the arrays are 16-byte aligned: then the four are one
//   Philox counter; otherwise element by element, at most two counters), threadIdx.y
//   strides over the rows by ROWS; the ROWS partial sums of a column meet in shared
//   memory and are added in row-slot order. grid = ceil(cols / (4·QUADS)). Fixed order,
//   no atomics: deterministic.
#include "common.cuh"
#include "philox.cuh"

static __device__ __forceinline__ float ba_relu(float v) { return (v > 0.0f || v != v) ? v : 0.0f; }

template <bool RELU>
__global__ void bias_act_forward(float* y, const float* __restrict__ b, long long n, int cols)
{
    const long long groups = (n + 3) / 4;
    const bool vec = cn_aligned16(y);
    for (long long q = cn_global_thread(); q < groups; q += cn_grid_threads()) {
        const long long i = 4 * q;
        if (vec && i + 4 <= n) {
            float4 v = reinterpret_cast<float4*>(y)[q];
            int c = (int)(i % cols);
            v.x += b[c];
            if (++c == cols) c = 0;
            v.y += b[c];
            if (++c == cols) c = 0;
            v.z += b[c];
            if (++c == cols) c = 0;
            v.w += b[c];
            if (RELU) {
                v.x = ba_relu(v.x);
                v.y = ba_relu(v.y);
                v.z = ba_relu(v.z);
                v.w = ba_relu(v.w);
            }
            reinterpret_cast<float4*>(y)[q] = v;
        } else {
            const long long end = i + 4 < n ? i + 4 : n;
            for (long long k = i; k < end; ++k) {
                const float v = y[k] + b[k % cols];
                y[k] = RELU ? ba_relu(v) : v;
            }
        }
    }
}

// The column sums of dy (masked by y > 0 when MASK, then also written to dz).
template <bool MASK, int COLS, int ROWS>
static __device__ __forceinline__ void ba_column_sums(const float* y, const float* dy, float* dz,
                                                      float* db, int rows, int cols)
{
    __shared__ float partial[ROWS][COLS];
    const int c = blockIdx.x * COLS + threadIdx.x;
    float sum = 0.0f;
    if (c < cols) {
        for (int r = threadIdx.y; r < rows; r += ROWS) {
            const long long k = (long long)r * cols + c;
            float d = dy[k];
            if (MASK) {
                d = y[k] > 0.0f ? d : 0.0f;
                dz[k] = d;
            }
            sum += d;
        }
    }
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float total = partial[0][threadIdx.x];
        for (int j = 1; j < ROWS; ++j) total += partial[j][threadIdx.x];
        db[c] = total;
    }
}

template <int COLS, int ROWS>
__global__ void __launch_bounds__(COLS * ROWS)
bias_relu_backward(const float* __restrict__ y, const float* __restrict__ dy,
                   float* __restrict__ dz, float* __restrict__ db, int rows, int cols)
{
    ba_column_sums<true, COLS, ROWS>(y, dy, dz, db, rows, cols);
}

template <int COLS, int ROWS>
__global__ void __launch_bounds__(COLS * ROWS)
bias_grad(const float* __restrict__ dy, float* __restrict__ db, int rows, int cols)
{
    ba_column_sums<false, COLS, ROWS>(nullptr, dy, nullptr, db, rows, cols);
}

// ---------------------------------------------------------------- dropout in the epilogue

// Bit k of the result: element 4q + k of the stream of `seed` is kept.
static __device__ __forceinline__ unsigned int ba_keep4(unsigned long long seed,
                                                        unsigned long long threshold,
                                                        unsigned long long q)
{
    if (threshold > 0xFFFFFFFFull) return 0u;
    if (threshold == 0ull) return 0xFu;
    const cn_philox_block r = cn_philox_group(seed, q);
    unsigned int keep = 0u;
    for (int k = 0; k < 4; ++k)
        keep |= ((unsigned long long)r.w[k] >= threshold ? 1u : 0u) << k;
    return keep;
}

static __device__ __forceinline__ float ba_drop(float v, unsigned int keep, int k, float scale)
{
    return ((keep >> k) & 1u) ? v * scale : 0.0f;
}

extern "C" __global__ void bias_relu_dropout_forward(float* y, const float* __restrict__ b,
                                                     long long n, int cols,
                                                     unsigned long long seed,
                                                     unsigned long long threshold, float scale)
{
    const long long groups = (n + 3) / 4;
    const bool vec = cn_aligned16(y);
    for (long long q = cn_global_thread(); q < groups; q += cn_grid_threads()) {
        const long long i = 4 * q;
        const unsigned int keep = ba_keep4(seed, threshold, (unsigned long long)q);
        if (vec && i + 4 <= n) {
            float4 v = reinterpret_cast<float4*>(y)[q];
            int c = (int)(i % cols);
            v.x = ba_drop(ba_relu(v.x + b[c]), keep, 0, scale);
            if (++c == cols) c = 0;
            v.y = ba_drop(ba_relu(v.y + b[c]), keep, 1, scale);
            if (++c == cols) c = 0;
            v.z = ba_drop(ba_relu(v.z + b[c]), keep, 2, scale);
            if (++c == cols) c = 0;
            v.w = ba_drop(ba_relu(v.w + b[c]), keep, 3, scale);
            reinterpret_cast<float4*>(y)[q] = v;
        } else {
            const long long end = i + 4 < n ? i + 4 : n;
            for (long long k = i; k < end; ++k)
                y[k] = ba_drop(ba_relu(y[k] + b[k % cols]), keep, (int)(k - i), scale);
        }
    }
}

template <int QUADS, int ROWS>
__global__ void __launch_bounds__(QUADS * ROWS)
bias_relu_dropout_backward(const float* __restrict__ y, const float* __restrict__ dy,
                           float* __restrict__ dz, float* __restrict__ db, int rows, int cols,
                           unsigned long long seed, unsigned long long threshold, float scale)
{
    __shared__ float partial[ROWS][4 * QUADS + 1];  // +1: no bank conflicts on the writes
    const int c0 = 4 * (blockIdx.x * QUADS + threadIdx.x);
    const bool vec = (cols & 3) == 0 && cn_aligned16(y) && cn_aligned16(dy) && cn_aligned16(dz);
    float sum[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    const int width = cols - c0 < 4 ? cols - c0 : 4;  // columns of this thread's quad
    if (c0 < cols) {
        for (int r = threadIdx.y; r < rows; r += ROWS) {
            const long long i = (long long)r * cols + c0;
            // The quad's elements i .. i + width - 1 lie in one Philox counter (always when
            // vec: i % 4 == 0) or straddle two.
            const unsigned long long q0 = (unsigned long long)(i >> 2);
            const int off = (int)(i & 3);
            unsigned int keep = ba_keep4(seed, threshold, q0);
            if (off + width > 4) keep |= ba_keep4(seed, threshold, q0 + 1) << 4;
            keep >>= off;  // bit k: element i + k is kept
            if (vec) {
                const float4 y4 = reinterpret_cast<const float4*>(y)[i >> 2];
                const float4 g4 = reinterpret_cast<const float4*>(dy)[i >> 2];
                float4 d;
                d.x = ((keep & 1u) && y4.x > 0.0f) ? g4.x * scale : 0.0f;
                d.y = ((keep & 2u) && y4.y > 0.0f) ? g4.y * scale : 0.0f;
                d.z = ((keep & 4u) && y4.z > 0.0f) ? g4.z * scale : 0.0f;
                d.w = ((keep & 8u) && y4.w > 0.0f) ? g4.w * scale : 0.0f;
                reinterpret_cast<float4*>(dz)[i >> 2] = d;
                sum[0] += d.x;
                sum[1] += d.y;
                sum[2] += d.z;
                sum[3] += d.w;
            } else {
#pragma unroll
                for (int k = 0; k < 4; ++k) {  // unrolled: sum[k] stays in registers
                    if (k < width) {
                        const long long e = i + k;
                        const float d = (((keep >> k) & 1u) && y[e] > 0.0f) ? dy[e] * scale : 0.0f;
                        dz[e] = d;
                        sum[k] += d;
                    }
                }
            }
        }
    }
#pragma unroll
    for (int k = 0; k < 4; ++k) partial[threadIdx.y][4 * threadIdx.x + k] = sum[k];
    __syncthreads();
    // The first 4·QUADS threads of the block (one warp for QUADS = 8) each add up one
    // column's ROWS partial sums in row-slot order.
    const int t = threadIdx.y * QUADS + threadIdx.x;
    if (t < 4 * QUADS) {
        const int c = 4 * blockIdx.x * QUADS + t;
        if (c < cols) {
            float total = partial[0][t];
            for (int j = 1; j < ROWS; ++j) total += partial[j][t];
            db[c] = total;
        }
    }
}
