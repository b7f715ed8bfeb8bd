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
//   for flat index i = r·cols + c, keep(i) = Philox word(offset + i) >= threshold as
//   dropout.cu (philox.cuh: counter e / 4, word e % 4 of stream position e, key = seed;
//   offset 64-bit, r0·cols for rows r0.. of a larger batch; threshold 0 keeps everything
//   and skips the generator, threshold 2^32 keeps nothing). The mask is computed here
//   and never stored: the same values, bit for bit, as bias_act_forward<true> then
//   dropout_apply with the same seed and offset. Launch as bias_act_forward (one Philox
//   call per counter: group q is counter offset / 4 + q; with offset % 4 != 0 the groups
//   straddle local quads and go element by element).
// bias_relu_dropout_backward<COLS, ROWS>: dz[r,c] = (keep(i) && y[r,c] > 0) ? dy[r,c] * scale
//   : 0 and db[c] = sum_r dz[r,c], the mask regenerated from the seed and offset (y is the fused
//   forward's output, so y > 0 iff kept and relu(z + b)·scale > 0). Block (32, ROWS) as
//   bias_relu_backward: a warp is one row of the block's 32 columns (128 coalesced bytes
//   per array), warp threadIdx.y takes rows threadIdx.y + ROWS·k, 16 at a time with all
//   their loads in flight, summing in row order; the block total as bias_relu_backward
//   (the same sums, bit for bit, as dropout then bias_relu_backward). Where cols % 4 == 0
//   and offset % 4 == 0 a row's 32 columns are 8 whole Philox counters: each lane draws one counter for one
//   of 4 rows and a row's lanes fetch their bits by a shuffle (one Philox per lane per 4
//   rows); otherwise each lane draws its own. grid = ceil(cols / 32). Fixed order, no
//   atomics: deterministic.
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

// The block's column totals: each thread's partial sum of column c (its row slot
// threadIdx.y's rows) meets the others in shared memory (a warp writes one row of
// `partial`: no bank conflicts), and row slot 0 adds the ROWS partials in slot order.
template <int COLS, int ROWS>
static __device__ __forceinline__ void ba_block_total(float sum, int c, int cols, float* db)
{
    __shared__ float partial[ROWS][COLS];
    partial[threadIdx.y][threadIdx.x] = sum;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        float total = partial[0][threadIdx.x];
#pragma unroll
        for (int j = 1; j < ROWS; ++j) total += partial[j][threadIdx.x];
        db[c] = total;
    }
}

// The column sums of dy (masked by y > 0 when MASK, then also written to dz).
template <bool MASK, int COLS, int ROWS>
static __device__ __forceinline__ void ba_column_sums(const float* y, const float* dy, float* dz,
                                                      float* db, int rows, int cols)
{
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
    ba_block_total<COLS, ROWS>(sum, c, cols, db);
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
                                                     unsigned long long threshold, float scale,
                                                     unsigned long long offset)
{
    const long long skip = (long long)(offset & 3ull);  // words of the first counter before us
    const unsigned long long counter0 = offset >> 2;
    const long long groups = (n + skip + 3) / 4;
    const bool vec = skip == 0 && cn_aligned16(y);
    for (long long q = cn_global_thread(); q < groups; q += cn_grid_threads()) {
        const long long i = 4 * q - skip;  // local index of the counter's word 0 (may be < 0)
        const unsigned int keep = ba_keep4(seed, threshold, counter0 + (unsigned long long)q);
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
            const long long begin = i > 0 ? i : 0, end = i + 4 < n ? i + 4 : n;
            for (long long k = begin; k < end; ++k)
                y[k] = ba_drop(ba_relu(y[k] + b[k % cols]), keep, (int)(k - i), scale);
        }
    }
}

template <int COLS, int ROWS>
__global__ void __launch_bounds__(COLS * ROWS)
bias_relu_dropout_backward(const float* __restrict__ y, const float* __restrict__ dy,
                           float* __restrict__ dz, float* __restrict__ db, int rows, int cols,
                           unsigned long long seed, unsigned long long threshold, float scale,
                           unsigned long long offset)
{
    static_assert(COLS == 32, "a warp is one row of the block's 32 columns");
    constexpr int STEP = 16;  // rows per thread per pass, all their loads issued at once
    const int lane = threadIdx.x;
    const int c0 = blockIdx.x * COLS;
    const int c = c0 + lane;
    float sum = 0.0f;  // column c over this warp's rows, in row order
    if ((cols & 3) == 0 && (offset & 3ull) == 0) {
        // A row's 32 columns are 8 whole Philox counters (quads). In group g of a pass (its
        // rows 4g .. 4g + 3) lane l draws the counter of quad l & 7 in row 4g + (l >> 3),
        // so 4 rows cost one Philox per lane; a row's lanes then fetch their quad's keep
        // bits by one shuffle (a warp-uniform branch: the row is the warp's).
        const long long quads = cols >> 2, stride = (long long)ROWS * cols;
        const unsigned long long counter0 = offset >> 2;  // the array's first counter
        const long long first = (long long)threadIdx.y * cols + c;  // this warp's first row
        const float* yp = y + first;
        const float* gp = dy + first;
        float* zp = dz + first;
        for (int left = rows - (int)threadIdx.y; left > 0; left -= ROWS * STEP) {
            const long long base = rows - left;  // this pass's rows: base + ROWS * j, j < STEP
            float yv[STEP], gv[STEP];
#pragma unroll
            for (int j = 0; j < STEP; ++j) {
                const bool in = ROWS * j < left && c < cols;
                yv[j] = in ? yp[j * stride] : 0.0f;
                gv[j] = in ? gp[j * stride] : 0.0f;
            }
            unsigned int nib[STEP / 4];
#pragma unroll
            for (int g = 0; g < STEP / 4; ++g) {
                const long long r = base + ROWS * (4 * g + (lane >> 3));
                nib[g] = ROWS * 4 * g < left
                    ? ba_keep4(seed, threshold,
                               counter0 + (unsigned long long)(r * quads + (c0 >> 2) + (lane & 7)))
                    : 0u;
            }
#pragma unroll
            for (int j = 0; j < STEP; ++j) {
                if (ROWS * j < left) {  // warp-uniform: every lane takes part in the shuffle
                    const unsigned int keep =
                        __shfl_sync(0xffffffffu, nib[j >> 2], 8 * (j & 3) + (lane >> 2)) >> (lane & 3);
                    if (c < cols) {
                        const float d = ((keep & 1u) && yv[j] > 0.0f) ? gv[j] * scale : 0.0f;
                        zp[j * stride] = d;
                        sum += d;
                    }
                }
            }
            yp += STEP * stride;
            gp += STEP * stride;
            zp += STEP * stride;
        }
    } else if (c < cols) {
        // Rows whose columns straddle Philox counters (cols or offset not a multiple of 4):
        // each lane draws its own.
        for (int left = rows - (int)threadIdx.y; left > 0; left -= ROWS) {
            const long long e = (long long)(rows - left) * cols + c;
            const unsigned long long pos = offset + (unsigned long long)e;  // stream position
            const unsigned int keep = ba_keep4(seed, threshold, pos >> 2) >> (unsigned int)(pos & 3ull);
            const float d = ((keep & 1u) && y[e] > 0.0f) ? dy[e] * scale : 0.0f;
            dz[e] = d;
            sum += d;
        }
    }
    ba_block_total<COLS, ROWS>(sum, c, cols, db);
}
