// cross_entropy.cu: softmax and negative log-likelihood fused, numerically stable.
//
// forward, row n of the logits x (N×C):
//   m[n]   = max_c x[n,c]
//   ls[n]  = log(sum_c exp(x[n,c] - m[n]))           (no exp overflows; ls in [0, log C])
//   loss[n] = (m[n] - x[n, label[n]]) + ls[n]         (= -log softmax(x[n])[label[n]])
// m and ls are kept apart rather than summed into the log-sum-exp: for logits of
// size 1e4 the sum would round ls to float32's spacing at 1e4 (~1e-3), while
// x - m is exact, so the softmax below keeps full relative precision.
// The batch mean is taken by the caller (sum of N values). NaN in a row propagates to
// its loss (exp(NaN) poisons the sum even though fmaxf skips NaN in the max).
//
// backward, from the saved m and ls and the scalar gradient of the mean loss g:
//   dx[n,c] = (exp((x[n,c] - m[n]) - ls[n]) - [c == label[n]]) * g / N
// g is read from device memory (a 1-element array), so the host never waits for it.
//
// Layout: x and dx N×C float32, row-major, contiguous; labels N int32, already checked
// to lie in 0..C-1 on the host; loss, m and ls N float32.
// Launch shape: one block per row (grid = N), THREADS threads (the template argument
// of both kernels, a multiple of 32) striding over the C classes; the forward's max
// and sum are reduced with warp shuffles, then across the warps through shared memory
// (two barriers per reduction). No dynamic shared memory.

// The reduction of v over the whole block of THREADS threads (op: max or sum); every
// thread gets the result. `scratch` holds THREADS / 32 floats; the first barrier also
// protects it from the previous reduction's readers.
template <bool MAX, int THREADS>
static __device__ __forceinline__ float ce_block_reduce(float v, float* scratch)
{
    for (int offset = 16; offset > 0; offset >>= 1) {
        const float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = MAX ? fmaxf(v, other) : v + other;
    }
    const int lane = threadIdx.x & 31;
    const int warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float r = scratch[0];
    for (int w = 1; w < THREADS / 32; ++w) r = MAX ? fmaxf(r, scratch[w]) : r + scratch[w];
    return r;
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
cross_entropy_forward(const float* __restrict__ x, const int* __restrict__ labels,
                      float* __restrict__ loss, float* __restrict__ mx, float* __restrict__ ls,
                      int C)
{
    static_assert(THREADS % 32 == 0, "whole warps");
    __shared__ float scratch[THREADS / 32];
    const long long n = blockIdx.x;
    const float* row = x + n * (long long)C;

    float m = __int_as_float((int)0xff800000u);  // -inf
    for (int c = threadIdx.x; c < C; c += THREADS) m = fmaxf(m, row[c]);
    m = ce_block_reduce<true, THREADS>(m, scratch);

    float s = 0.0f;
    for (int c = threadIdx.x; c < C; c += THREADS) s += expf(row[c] - m);
    s = ce_block_reduce<false, THREADS>(s, scratch);

    if (threadIdx.x == 0) {
        const float l = logf(s);
        mx[n] = m;
        ls[n] = l;
        loss[n] = (m - row[labels[n]]) + l;
    }
}

template <int THREADS>
__global__ void __launch_bounds__(THREADS)
cross_entropy_backward(const float* __restrict__ x, const int* __restrict__ labels,
                       const float* __restrict__ mx, const float* __restrict__ ls,
                       const float* __restrict__ dloss,
                       float* __restrict__ dx, int N, int C)
{
    const long long n = blockIdx.x;
    const long long base = n * (long long)C;
    const float scale = dloss[0] / (float)N;
    const float m = mx[n];
    const float l = ls[n];
    const int label = labels[n];
    for (int c = threadIdx.x; c < C; c += THREADS) {
        const float p = expf((x[base + c] - m) - l);
        dx[base + c] = (c == label ? p - 1.0f : p) * scale;
    }
}
