// lrn.cu: local response normalization across channels (Krizhevsky, Sutskever &
// Hinton 2012, section 3.3), forward and backward.
//
//   s[c] = k + alpha * sum_{j in W(c)} a[j]^2,   b[c] = a[c] * s[c]^-beta
//   W(c) = [c - lo, c + hi] clipped to the channel group of c, lo = size / 2,
//   hi = (size - 1) / 2 (an odd size is centred; an even one reaches one further down).
//
// alpha is not divided by size (the paper's form). Channels are split into `groups`
// equal consecutive parts and no window crosses a part's boundary.
//
// Backward (with r[j] = dy[j] * b[j] / s[j] = dy[j] * a[j] * s[j]^-beta / s[j]):
//   dx[c] = dy[c] * s[c]^-beta - 2 alpha beta a[c] * sum_{j : c in W(j)} r[j]
// and c is in W(j) exactly when j is in [c - hi, c + lo] (the mirrored window).
//
// Layout: x, y, scale, dy, dx are NCHW float32, C-contiguous; plane = H * W.
// Work: one thread per (n, group, chunk of `chunk` channels, pixel), pixel fastest so
// a warp reads consecutive addresses of one channel plane; it walks its channels with
// the window sums and power of lrn_window.cuh (FP32, direct sums in channel order, an
// rsqrt path for beta = 0.75; the error bounds are stated there and in ops/lrn.py).
// A chunk reads the lo + hi channels around it as well; the host
// picks chunk = the whole group unless there are too few columns to fill a GPU.
// The host passes lo and hi already clipped to group_channels - 1 (the same windows).
// Global loads run one channel ahead of the arithmetic, so that on a GPU each thread
// has its next loads in flight while it computes (the walk is a serial recurrence).
//
// Launch: 1-D blocks of T threads (T a multiple of 32), a grid-stride loop over the
// columns; dynamic shared memory: the rings, width = lo + hi + 1 slots per thread of
// 4 bytes each: 1 ring in the forward (T * width * 4 bytes), 3 in the backward.
// The backward's column walk (cn_lrn_backward_column, lrn_window.cuh) is shared with
// the fused max-pool + LRN backward of lrn_max_pool.cu.
//
// Variants: lrn_forward<WRITE_SCALE, W> also stores s (for a backward that reads it);
// lrn_backward<SAVED_SCALE, W> reads s from the forward instead of recomputing it from
// x with a third window sum. ops/lrn.py says which pair the library uses and why.
// W = 0: any window, rings in shared memory; W = 5: the paper's window [c-2, c+2] in
// registers (lo and hi are then W's; the host still allocates the rings, unused, which
// at 5 slots does not limit occupancy): a channel step is a few shifts and W FMAs.
// ops/lrn.py instantiates W = 5 for the forward only (why: there).
#include "common.cuh"
#include "lrn_window.cuh"

template <bool WRITE_SCALE, int W>
__global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ y,
                            float* __restrict__ scale, int batch, int channels, int plane,
                            int groups, int chunk, int lo, int hi, float alpha, float beta,
                            float k)
{
    extern __shared__ float cn_lrn_ring[];
    cn_lrn_fixed_window<W>(lo, hi);
    const int stride = blockDim.x;
    float* ring = cn_lrn_ring + threadIdx.x;
    const int chunks = (channels / groups + chunk - 1) / chunk;
    const long long columns = (long long)batch * groups * chunks * plane;
    const bool beta75 = beta == 0.75f;

    for (long long t = cn_global_thread(); t < columns; t += cn_grid_threads()) {
        const cn_lrn_column col = cn_lrn_locate(t, channels, plane, groups, chunk);
        const float* xc = x + col.base;
        cn_lrn_walk<W> walk;
        cn_lrn_prime<W>(walk, xc, plane, col.c0, col.g0, col.g1, lo, hi, ring, stride);
        for (int c = col.c0; c < col.c1; ++c) {
            float a;
            const float s = cn_lrn_step<W>(walk, xc, plane, c, col.g0, col.g1, lo, hi, alpha, k, a);
            y[col.base + (long long)c * plane] = cn_lrn_times_power(a, s, beta, beta75);
            if (WRITE_SCALE) scale[col.base + (long long)c * plane] = s;
        }
    }
}

// The gradient of the LRN output at channel j of one column: a plain array.
struct cn_lrn_plain_grad {
    const float* __restrict__ dyc;  // dy + the column's base
    int plane;
    __device__ __forceinline__ float operator()(int j) const { return dyc[(long long)j * plane]; }
};

// dx from x and dy; s from `scale` (SAVED_SCALE) or recomputed (then `scale` is unused).
// The walk is cn_lrn_backward_column (lrn_window.cuh).
template <bool SAVED_SCALE, int W>
__global__ void lrn_backward(const float* __restrict__ x, const float* __restrict__ scale,
                             const float* __restrict__ dy, float* __restrict__ dx, int batch,
                             int channels, int plane, int groups, int chunk, int lo, int hi,
                             float alpha, float beta, float k)
{
    extern __shared__ float cn_lrn_ring[];
    const cn_lrn_rings ring = cn_lrn_backward_rings<W>(cn_lrn_ring, lo, hi);
    const int chunks = (channels / groups + chunk - 1) / chunk;
    const long long columns = (long long)batch * groups * chunks * plane;
    const bool beta75 = beta == 0.75f;

    for (long long t = cn_global_thread(); t < columns; t += cn_grid_threads()) {
        const cn_lrn_column col = cn_lrn_locate(t, channels, plane, groups, chunk);
        const cn_lrn_plain_grad grad{dy + col.base, plane};
        cn_lrn_backward_column<W, SAVED_SCALE>(x + col.base, scale + col.base, dx + col.base,
                                               grad, plane, col.c0, col.c1, col.g0, col.g1, lo, hi,
                                               ring.x, ring.r, ring.d, ring.stride, alpha, beta, beta75,
                                               cn_lrn_fast75(alpha, beta, k), k);
    }
}
