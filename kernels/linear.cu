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
#include "common.cuh"

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
