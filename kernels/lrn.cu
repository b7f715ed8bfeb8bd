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
// the running sums of lrn_window.cuh (double, recounted on cancellation, non-finite
// terms counted). A chunk reads the lo + hi channels around it as well; the host
// picks chunk = the whole group unless there are too few columns to fill a GPU.
// The host passes lo and hi already clipped to group_channels - 1 (the same windows).
// Global loads run one channel ahead of the arithmetic, so that on a GPU each thread
// has its next loads in flight while it computes (the walk is a serial recurrence).
//
// Launch: 1-D blocks of T threads (T a multiple of 32), a grid-stride loop over the
// columns; dynamic shared memory: the rings, width = lo + hi + 1 slots per thread of
// 4 bytes each: 1 ring in the forward (T * width * 4 bytes), 3 in the backward.
//
// Variants: lrn_forward<WRITE_SCALE> also stores s (for a backward that reads it);
// lrn_backward<SAVED_SCALE> reads s from the forward instead of recomputing it from
// x with a third window sum. ops/lrn.py says which pair the library uses and why.
#include "common.cuh"
#include "lrn_window.cuh"

// The column a thread handles: its first element's offset and its channel range.
struct cn_lrn_column {
    long long base;  // offset of (n, channel 0, pixel)
    int g0, g1;      // the channels of its group: [g0, g1)
    int c0, c1;      // the channels it writes: [c0, c1)
};

static __device__ __forceinline__ cn_lrn_column cn_lrn_locate(long long t, int channels, int plane,
                                                              int groups, int chunk)
{
    const int group_channels = channels / groups;
    const int chunks = (group_channels + chunk - 1) / chunk;
    cn_lrn_column col;
    const int pixel = (int)(t % plane);
    long long rest = t / plane;
    const int q = (int)(rest % chunks);
    rest /= chunks;
    const int g = (int)(rest % groups);
    const long long n = rest / groups;
    col.base = n * channels * (long long)plane + pixel;
    col.g0 = g * group_channels;
    col.g1 = col.g0 + group_channels;
    col.c0 = col.g0 + q * chunk;
    col.c1 = min(col.c0 + chunk, col.g1);
    return col;
}

template <bool WRITE_SCALE>
__global__ void lrn_forward(const float* __restrict__ x, float* __restrict__ y,
                            float* __restrict__ scale, int batch, int channels, int plane,
                            int groups, int chunk, int lo, int hi, float alpha, float beta,
                            float k)
{
    extern __shared__ float cn_lrn_ring[];
    const int width = lo + hi + 1;
    const int stride = blockDim.x;
    float* ring = cn_lrn_ring + threadIdx.x;
    const int chunks = (channels / groups + chunk - 1) / chunk;
    const long long columns = (long long)batch * groups * chunks * plane;
    const double alpha_d = alpha, k_d = k;

    for (long long t = cn_global_thread(); t < columns; t += cn_grid_threads()) {
        const cn_lrn_column col = cn_lrn_locate(t, channels, plane, groups, chunk);
        const float* xc = x + col.base;
        cn_lrn_walk walk;
        cn_lrn_prime(walk, xc, plane, col.c0, col.g0, col.g1, lo, hi, width, ring, stride);
        for (int c = col.c0; c < col.c1; ++c) {
            float a;
            const float s = cn_lrn_step(walk, xc, plane, c, col.g0, col.g1, hi, width, ring,
                                        stride, alpha_d, k_d, a);
            y[col.base + (long long)c * plane] = a * powf(s, -beta);
            if (WRITE_SCALE) scale[col.base + (long long)c * plane] = s;
        }
    }
}

// dx from x and dy; s from `scale` (SAVED_SCALE) or recomputed (then `scale` is unused).
//
// The thread steps j from c0 - hi to c1 - 1 + lo. At step j it computes s[j] (a window
// of squares over [j - lo, j + hi], entering channel j + hi), r[j] and the direct term
// dy[j] * s[j]^-beta (both zero outside the group), and slides the window of r over
// [j - lo - hi, j] = the mirrored window of c = j - lo, whose dx it then writes.
// Rings (a slot is an index's offset from the ring's first index, mod width):
//   rr, dr: r and the direct terms over [j - lo - hi, j]; slot of j: (j - (c0 - hi)).
//   xr with recompute: x over [j - lo, j + hi]; slot of x[i]: (i - (c0 - hi - lo)), so
//     channel c = j - lo is the oldest, in the slot the next entering channel takes.
//   xr with a saved scale: x over [j - lo - hi, j], slotted like rr.
template <bool SAVED_SCALE>
__global__ void lrn_backward(const float* __restrict__ x, const float* __restrict__ scale,
                             const float* __restrict__ dy, float* __restrict__ dx, int batch,
                             int channels, int plane, int groups, int chunk, int lo, int hi,
                             float alpha, float beta, float k)
{
    extern __shared__ float cn_lrn_ring[];
    const int width = lo + hi + 1;
    const int stride = blockDim.x;
    float* xr = cn_lrn_ring + threadIdx.x;
    float* rr = xr + width * stride;
    float* dr = rr + width * stride;
    const int chunks = (channels / groups + chunk - 1) / chunk;
    const long long columns = (long long)batch * groups * chunks * plane;
    const double alpha_d = alpha, k_d = k;
    const float coef = 2.0f * alpha * beta;

    for (long long t = cn_global_thread(); t < columns; t += cn_grid_threads()) {
        const cn_lrn_column col = cn_lrn_locate(t, channels, plane, groups, chunk);
        const float* xc = x + col.base;
        const float* dyc = dy + col.base;
        cn_window_sum rsum;
        cn_window_reset(rsum);
        for (int s = 0; s < width; ++s) {
            rr[s * stride] = 0.0f;
            dr[s * stride] = 0.0f;
        }
        // With recompute, the forward's walk from j = c0 - hi: its window is
        // [j - lo, j + hi], so after a step its oldest channel, in the slot the next
        // channel takes, is c = j - lo.
        cn_lrn_walk walk{};
        if (!SAVED_SCALE)
            cn_lrn_prime(walk, xc, plane, col.c0 - hi, col.g0, col.g1, lo, hi, width, xr, stride);
        int slot = 0;                         // slot of j in rr, dr (xr with a saved scale)
        int cslot = (width - lo) % width;     // slot of c = j - lo there
        // x[j], s[j] (saved) and dy[j] of the next step, loaded one step ahead
        const int j0 = col.c0 - hi;
        bool inside_next = j0 >= col.g0;
        float dy_next = inside_next ? dyc[(long long)j0 * plane] : 0.0f;
        float x_next = 0.0f, s_next = 1.0f;
        if (SAVED_SCALE && inside_next) {
            x_next = xc[(long long)j0 * plane];
            s_next = scale[col.base + (long long)j0 * plane];
        }
        for (int j = j0; j < col.c1 + lo; ++j) {
            const bool inside = inside_next;
            const float dy_j = dy_next;
            float a_j = x_next, s_j = s_next;
            inside_next = j + 1 >= col.g0 && j + 1 < col.g1;
            dy_next = inside_next ? dyc[(long long)(j + 1) * plane] : 0.0f;
            if (SAVED_SCALE) {
                x_next = inside_next ? xc[(long long)(j + 1) * plane] : 0.0f;
                s_next = inside_next ? scale[col.base + (long long)(j + 1) * plane] : 1.0f;
                xr[slot * stride] = a_j;
            } else {
                float a;
                const float s = cn_lrn_step(walk, xc, plane, j, col.g0, col.g1, hi, width, xr,
                                            stride, alpha_d, k_d, a);
                if (inside) {
                    a_j = a;
                    s_j = s;
                }
            }
            float r = 0.0f, direct = 0.0f;
            if (inside) {
                direct = dy_j * powf(s_j, -beta);
                r = direct * a_j / s_j;
            }
            const float old_r = rr[slot * stride];
            rr[slot * stride] = r;
            dr[slot * stride] = direct;
            cn_window_slide(rsum, r, old_r);
            if (cn_window_needs_recount(rsum)) cn_window_recount(rsum, rr, stride, width);
            const int c = j - lo;
            if (c >= col.c0) {
                const float a_c = xr[(SAVED_SCALE ? cslot : walk.slot) * stride];
                const float d_c = dr[cslot * stride];
                const float sum_r = (float)cn_window_value(rsum);
                dx[col.base + (long long)c * plane] = d_c - coef * a_c * sum_r;
            }
            slot = slot + 1 == width ? 0 : slot + 1;
            cslot = cslot + 1 == width ? 0 : cslot + 1;
        }
    }
}
