// lrn_window.cuh: the sliding-window sums of the LRN kernels (lrn.cu, lrn_max_pool.cu),
// and the forward's walk down one column.
//
// A thread walks one column of an NCHW tensor (fixed n, h, w) along the channels and
// keeps the sum of the `width` most recent terms (a[c]^2 in the forward, dy*b/s in the
// backward): add the entering term, subtract the leaving one. The terms themselves sit
// in a ring in shared memory (ring[slot * stride], slots 0..width-1, one ring per
// thread, stride = blockDim.x, so the threads of a warp hit distinct banks), so each
// input element is read from global memory once and the leaving term is exact.
//
// Why the sum does not drift:
//  * It is kept in double. Each term is a float (or the square of one, exact in
//    double), so every add or subtract rounds by at most 2^-53 of the running sum.
//  * Cancellation is bounded by an exact recount: `mag` is the sum of |term| over the
//    window and `peak` the largest `mag` seen since the last recount; when `mag` falls
//    below peak / 2^10 (a large term has left), the sum is recomputed from the ring
//    and `peak` reset. The error of the sum is then at most about
//    steps * 2^-53 * 2^10 * mag (steps since the recount, at most the column length):
//    below 1e-9 relative for 10,000 channels. Recounts are rare (ReLU zeros make
//    some: a window of zeros after a non-zero one), and cost `width` shared reads.
//  * Non-finite terms never enter the double sum: they are counted (NaN, +inf, -inf),
//    so a NaN or inf affects exactly the windows that hold it, as in a direct sum.
//    value() = NaN if the window holds a NaN or both infinities, else +-inf if it
//    holds one, else the finite sum.
// Cost on a GPU: about ten FP64 operations per element and window, cheap where FP64
// runs at half the FP32 rate (A100, H100, H200); on GPUs with 1/64-rate FP64 they
// would bound the LRN kernels' speed.
#pragma once

struct cn_window_sum {
    double sum;   // the finite terms
    double mag;   // the sum of |term| over the finite terms
    double peak;  // the largest mag since the last recount
    int nan, pinf, ninf;
};

static __device__ __forceinline__ float cn_inf() { return __int_as_float(0x7f800000); }

static __device__ __forceinline__ void cn_window_reset(cn_window_sum& w)
{
    w.sum = 0.0;
    w.mag = 0.0;
    w.peak = 0.0;
    w.nan = 0;
    w.pinf = 0;
    w.ninf = 0;
}

static __device__ __forceinline__ bool cn_finite(float v)
{
    return (__float_as_uint(v) & 0x7f800000u) != 0x7f800000u;
}

// Count a term in (sign = +1) or out (sign = -1) of the window.
static __device__ __forceinline__ void cn_window_update(cn_window_sum& w, double t, int sign)
{
    if (t - t == 0.0) {  // finite
        const double m = t < 0.0 ? -t : t;
        w.sum += sign > 0 ? t : -t;
        w.mag += sign > 0 ? m : -m;
    } else if (t != t) {
        w.nan += sign;
    } else if (t > 0.0) {
        w.pinf += sign;
    } else {
        w.ninf += sign;
    }
}

// Slide the window by one: term `in` enters, term `out` leaves. One rounding per step
// when both are finite (the common case: in - out is exact or rounded once).
static __device__ __forceinline__ void cn_window_slide(cn_window_sum& w, float in, float out)
{
    if (cn_finite(in) && cn_finite(out)) {
        const double i = in, o = out;
        w.sum += i - o;
        w.mag += (i < 0.0 ? -i : i) - (o < 0.0 ? -o : o);
    } else {
        cn_window_update(w, (double)out, -1);
        cn_window_update(w, (double)in, 1);
    }
}

// The same for a window of squares: a^2 enters, b^2 leaves (exact in double; mag = sum).
static __device__ __forceinline__ void cn_window_slide_squares(cn_window_sum& w, float a, float b)
{
    if (cn_finite(a) && cn_finite(b)) {
        const double i = a, o = b;
        w.sum += i * i - o * o;
        w.mag = w.sum;
    } else {
        cn_window_update(w, (double)b * b, -1);
        cn_window_update(w, (double)a * a, 1);
    }
}

// Whether cancellation has eaten into the sum enough to recount it (and track the peak).
static __device__ __forceinline__ bool cn_window_needs_recount(cn_window_sum& w)
{
    if (w.mag > w.peak) w.peak = w.mag;
    return w.mag < w.peak * (1.0 / 1024.0);
}

// The window's sum: NaN, +-inf, or the finite sum (see the header).
static __device__ __forceinline__ double cn_window_value(const cn_window_sum& w)
{
    if (w.nan > 0 || (w.pinf > 0 && w.ninf > 0)) return (double)__int_as_float(0x7fc00000);
    if (w.pinf > 0) return (double)cn_inf();
    if (w.ninf > 0) return -(double)cn_inf();
    return w.sum;
}

// Recount the window of squares a^2 from a ring of a values.
static __device__ __forceinline__ void cn_window_recount_squares(cn_window_sum& w, const float* ring,
                                                                 int stride, int width)
{
    cn_window_reset(w);
    for (int s = 0; s < width; ++s) {
        const double a = (double)ring[s * stride];
        cn_window_update(w, a * a, 1);
    }
    w.peak = w.mag;
}

// Recount the window of signed terms from a ring of them.
static __device__ __forceinline__ void cn_window_recount(cn_window_sum& w, const float* ring,
                                                         int stride, int width)
{
    cn_window_reset(w);
    for (int s = 0; s < width; ++s) cn_window_update(w, (double)ring[s * stride], 1);
    w.peak = w.mag;
}

// The LRN scale s = k + alpha * sum, rounded once to float (the sum of squares may have
// drifted below zero by rounding; it is clamped).
static __device__ __forceinline__ float cn_lrn_scale(const cn_window_sum& squares, double alpha,
                                                     double k)
{
    double sum = cn_window_value(squares);
    if (sum < 0.0) sum = 0.0;
    return (float)(k + alpha * sum);
}

// The forward's walk down one column (channels c0, c0 + 1, ... of the group [g0, g1)):
// channel i sits in ring slot (i - (c0 - lo)) mod width. cn_lrn_prime fills the window
// of c0 except its last channel; each cn_lrn_step then enters channel c + hi (zero
// outside the group), lets c - lo - 1 leave, and returns s[c] and a[c]. The entering
// value is loaded one step ahead (`next`), so that on a GPU the load of the next
// channel is in flight while this one is computed.
struct cn_lrn_walk {
    cn_window_sum squares;
    int slot;    // where channel c + hi goes (and c - lo - 1 leaves)
    int centre;  // where channel c sits
    float next;  // channel c + hi, loaded at the previous step
};

static __device__ __forceinline__ float cn_lrn_load(const float* __restrict__ xc, int plane, int i,
                                                    int g0, int g1)
{
    return (i >= g0 && i < g1) ? xc[(long long)i * plane] : 0.0f;
}

static __device__ __forceinline__ void cn_lrn_prime(cn_lrn_walk& walk, const float* __restrict__ xc,
                                                    int plane, int c0, int g0, int g1, int lo,
                                                    int hi, int width, float* ring, int stride)
{
    cn_window_reset(walk.squares);
    ring[(width - 1) * stride] = 0.0f;  // the (zero) term that leaves at the first step
    for (int s = 0; s < width - 1; ++s) {
        const float v = cn_lrn_load(xc, plane, c0 - lo + s, g0, g1);
        ring[s * stride] = v;
        cn_window_update(walk.squares, (double)v * v, 1);
    }
    walk.slot = width - 1;
    walk.centre = lo;
    walk.next = cn_lrn_load(xc, plane, c0 + hi, g0, g1);
}

static __device__ __forceinline__ float cn_lrn_step(cn_lrn_walk& walk, const float* __restrict__ xc,
                                                    int plane, int c, int g0, int g1, int hi,
                                                    int width, float* ring, int stride,
                                                    double alpha, double k, float& a)
{
    const float v = walk.next;
    walk.next = cn_lrn_load(xc, plane, c + 1 + hi, g0, g1);
    const float old = ring[walk.slot * stride];
    ring[walk.slot * stride] = v;
    cn_window_slide_squares(walk.squares, v, old);
    if (cn_window_needs_recount(walk.squares))
        cn_window_recount_squares(walk.squares, ring, stride, width);
    a = ring[walk.centre * stride];
    walk.slot = walk.slot + 1 == width ? 0 : walk.slot + 1;
    walk.centre = walk.centre + 1 == width ? 0 : walk.centre + 1;
    return cn_lrn_scale(walk.squares, alpha, k);
}
