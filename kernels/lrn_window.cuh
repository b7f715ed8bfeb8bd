// lrn_window.cuh: the channel walk of the LRN kernels (lrn.cu, lrn_max_pool.cu): window
// sums in FP32, the power s^-beta, and the walk down one column.
//
// A thread walks one column of an NCHW tensor (fixed n, h, w) along the channels. The
// `width` most recent values sit in a ring in shared memory (ring[slot * stride], slots
// 0..width-1, one ring per thread, stride = blockDim.x so the threads of a warp hit
// distinct banks); each input element is read from global memory once.
//
// Window sums are DIRECT, in FP32, in channel order (oldest first: the ring is read
// from the oldest slot to the end, then from slot 0), one FMA per term; no running
// sum, so nothing to drift or cancel:
//  * squares (forward): every term >= 0, so the sum of w terms is within
//    (w - 1) u of the exact sum (u = 2^-24; Higham's gamma bound, first order);
//    s = fma(alpha, sum, k) adds one rounding: |s - s_exact| <= (w + 1) u s for k >= 0.
//    A square below 2^-126 (|a| < 2^-63) is flushed (FTZ): at most w alpha 2^-126
//    absolute. A sum above 2^126 (or inf: a^2 overflows for |a| > 1.8e19) is redone in
//    FP64 (k + alpha sum rounded once: the float64 reference's own value); never taken
//    on ordinary data, it keeps 1e-20..1e20 within a window exact.
//  * signed terms (backward r): within (w - 1) u of sum |r| (the sum's condition).
//  * NaN and inf propagate as in the direct float64 sum (inf + -inf = NaN): a non-finite
//    value affects exactly the windows that hold it.
// The order is the same for every chunk, launch and kernel (forward, backward's
// recompute, fused), so s is bit-identical wherever it is computed.
//
// The power p = s^-beta, applied to a value v (cn_lrn_times_power):
//  * beta = 0.75: q = rsqrt(s) = s^-1/2, t = rsqrt(q) = s^1/4, p = q * (q * t). On a GPU
//    rsqrtf is MUFU.RSQ (<= 2 ulp, relative <= 2^-22): |p - p_exact| <= 3 * 2^-22 p.
//    (q * t first keeps the product in range for every float s.)
//  * other beta: s = m 2^e (m in [1, 2), e exact from the bits), p = 2^(-beta e) *
//    2^(-beta log2 m), the integer part n of -beta e split off exactly (fma residual),
//    so the approximate log2 (abs error <= 2^-22 on [1, 2)) and exp2 (<= 2 ulp) see
//    arguments of size <= 1 + |beta|, and v * 2^f is scaled by 2^n last (exact):
//    |p - p_exact| <= (3.5 |beta| + 5) u p (u = 2^-24) for results in the normal range.
//  * s = 0, inf or NaN, or |beta| > 64: powf (IEEE special values, the reference's).
// ops/lrn.py (error_bound) turns these into the bounds the tests hold the kernels to.
#pragma once

static __device__ __forceinline__ float cn_inf() { return __int_as_float(0x7f800000); }

// v * s^-beta off the beta = 0.75 path: a call, so that its code (and powf's) stays out
// of the channel loop (a GPU issues the loop's instructions, not the callee's, when
// beta = 0.75). The general path scales v * 2^f by 2^n last, so a product in the
// normal range is not lost to a power below it (s^-beta < 2^-126 with v large).
static __device__ __noinline__ float cn_lrn_times_power_general(float v, float s, float beta)
{
    if (!(s > 0.0f && s < cn_inf()) || !(fabsf(beta) <= 64.0f)) return v * powf(s, -beta);
    const int e = (int)((__float_as_uint(s) >> 23) & 0xff) - 127;  // s normal (FTZ)
    const float m = __uint_as_float((__float_as_uint(s) & 0x007fffffu) | 0x3f800000u);
    const float be = -beta * (float)e;           // -beta e, rounded
    const float lo = fmaf(-beta, (float)e, -be);  // and its exact residual
    const float n = rintf(be);
    const float f = (be - n) + lo - beta * __log2f(m);  // be - n exact: |f| <= 1/2 + |beta|
    return ldexpf(v * exp2f(f), (int)n);
}

// The inline paths' domain (the forward's and the backward's beta = 0.75 loops): beta =
// 0.75, k > 0, alpha >= 0 and alpha 2^126 + k <= 2^120, so a sum of squares <= 2^126
// gives s in [k, 2^120]: the rsqrt power's domain, and the backward's r needs no
// rescaling (cn_lrn_r). False for a NaN alpha or k. AlexNet's alpha = 1e-4, k = 2:
// s <= 8.6e33 < 2^120 = 1.3e36.
static __device__ __forceinline__ bool cn_lrn_fast75(float alpha, float beta, float k)
{
    return beta == 0.75f && k > 0.0f && alpha >= 0.0f && fmaf(alpha, 0x1p126f, k) <= 0x1p120f;
}

// s^-0.75 for s in (0, inf): q = s^-1/2, t = q^-1/2 = s^1/4, q (q t) (see the header).
static __device__ __forceinline__ float cn_lrn_power75(float s)
{
    const float q = rsqrtf(s);
    const float t = rsqrtf(q);
    return q * (q * t);
}

// The backward's r[j] 2^40 = (d 2^40) (a / s), d = dz p (the direct term), for s <=
// 2^120; __fdividef gives 0 for s > 2^126, so the general walk passes a and s scaled by
// 2^-32 above 2^120 (exact). r is kept scaled by 2^40: d a / s falls below 2^-126
// (flushed) for large a (~1e20) while 2 alpha beta a r is still comparable with d.
static __device__ __forceinline__ float cn_lrn_r(float direct, float a, float s)
{
    return (direct * 0x1p40f) * __fdividef(a, s);
}

// v * s^-beta, beta75 = (beta == 0.75f) (warp-uniform: a kernel argument).
static __device__ __forceinline__ float cn_lrn_times_power(float v, float s, float beta,
                                                           bool beta75)
{
    if (beta75 && s > 0.0f && s < cn_inf()) return v * cn_lrn_power75(s);
    return cn_lrn_times_power_general(v, s, beta);
}

// The column thread index t handles (pixel fastest, then chunk, group, image): its first element's offset and its channel range.
struct cn_lrn_column {
    long long n;     // the image
    int pixel;       // the position in the plane
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
    col.n = n;
    col.pixel = pixel;
    col.base = n * channels * (long long)plane + pixel;
    col.g0 = g * group_channels;
    col.g1 = col.g0 + group_channels;
    col.c0 = col.g0 + q * chunk;
    col.c1 = min(col.c0 + chunk, col.g1);
    return col;
}

// A window of the `width` most recent values of a column, oldest first: push(v) enters
// v and drops the oldest; at(i) is the i-th oldest; sum() and squares() add the values
// (or their squares) in that order, one FMA each.
//  * cn_win<0>: any width, a ring in shared memory (ring[slot * stride], slots
//    0..width-1, one ring per thread, stride = blockDim.x: the threads of a warp hit
//    distinct banks); sums read the ring from the oldest slot to the end, then from 0.
//  * cn_win<W>, W > 0: the paper's fixed width in registers (no shared memory); a push
//    shifts W - 1 registers, a sum is W unrolled FMAs. The host picks it when the
//    clipped window is exactly [c - W/2, c + (W-1)/2] (ops/lrn.py).
// Both add in the same order, so both give the same bits.
template <int W>
struct cn_win {
    float v[W];
    __device__ __forceinline__ void init(float*, int, int)
    {
#pragma unroll
        for (int i = 0; i < W; ++i) v[i] = 0.0f;
    }
    __device__ __forceinline__ void push(float x)
    {
#pragma unroll
        for (int i = 0; i + 1 < W; ++i) v[i] = v[i + 1];
        v[W - 1] = x;
    }
    __device__ __forceinline__ float at(int i) const { return v[i]; }
    __device__ __forceinline__ int size() const { return W; }
    __device__ __forceinline__ float sum() const
    {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < W; ++i) acc += v[i];
        return acc;
    }
    __device__ __forceinline__ float squares() const
    {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < W; ++i) acc = fmaf(v[i], v[i], acc);
        return acc;
    }
};

template <>
struct cn_win<0> {
    float* ring;
    int stride, width, slot;  // slot: the oldest value's
    __device__ __forceinline__ void init(float* r, int s, int w)
    {
        ring = r;
        stride = s;
        width = w;
        slot = 0;
        for (int i = 0; i < w; ++i) ring[i * stride] = 0.0f;
    }
    __device__ __forceinline__ void push(float x)
    {
        ring[slot * stride] = x;
        slot = slot + 1 == width ? 0 : slot + 1;
    }
    __device__ __forceinline__ float at(int i) const
    {
        const int s = slot + i < width ? slot + i : slot + i - width;
        return ring[s * stride];
    }
    __device__ __forceinline__ int size() const { return width; }
    __device__ __forceinline__ float sum() const
    {
        float acc = 0.0f;
        for (int s = slot; s < width; ++s) acc += ring[s * stride];
        for (int s = 0; s < slot; ++s) acc += ring[s * stride];
        return acc;
    }
    __device__ __forceinline__ float squares() const
    {
        float acc = 0.0f;
        for (int s = slot; s < width; ++s) acc = fmaf(ring[s * stride], ring[s * stride], acc);
        for (int s = 0; s < slot; ++s) acc = fmaf(ring[s * stride], ring[s * stride], acc);
        return acc;
    }
};

// s in FP64 when the FP32 sum of squares overflowed or came near it: out of line (a
// call), so the channel loop does not carry its code.
template <int W>
static __device__ __noinline__ float cn_lrn_scale_wide(const cn_win<W> win, float alpha, float k)
{
    double sum = 0.0;
    for (int i = 0; i < win.size(); ++i) {
        const double a = (double)win.at(i);
        sum += a * a;
    }
    return (float)((double)k + (double)alpha * sum);
}

// The LRN scale s = k + alpha * sum of squares over the window (see the header).
template <int W>
static __device__ __forceinline__ float cn_lrn_scale(const cn_win<W>& win, float alpha, float k)
{
    const float acc = win.squares();
    // overflowed or near it (a NaN fails the test and propagates)
    if (acc > 0x1p126f) return cn_lrn_scale_wide<W>(win, alpha, k);
    return fmaf(alpha, acc, k);
}

// The window [lo, hi] of the kernels: the host's (clipped) for W = 0, else W's own.
template <int W>
static __device__ __forceinline__ void cn_lrn_fixed_window(int& lo, int& hi)
{
    if (W > 0) {
        lo = W / 2;
        hi = (W - 1) / 2;
    }
}

// The backward walk's three per-thread rings (x, r and dz: lo + hi + 1 slots each, the
// threads of the block interleaved, stride blockDim.x) in the block's dynamic shared
// memory; fixes the window first (cn_lrn_fixed_window<W>).
struct cn_lrn_rings {
    float* x;
    float* r;
    float* d;
    int stride;
};

template <int W>
static __device__ __forceinline__ cn_lrn_rings cn_lrn_backward_rings(float* shared, int& lo, int& hi)
{
    cn_lrn_fixed_window<W>(lo, hi);
    const int width = lo + hi + 1;
    const int stride = blockDim.x;
    float* x = shared + threadIdx.x;
    return cn_lrn_rings{x, x + width * stride, x + 2 * width * stride, stride};
}

// The walk down one column (channels c0, c0 + 1, ... of the group [g0, g1)): after the
// step of channel c the window x holds channels c - lo .. c + hi (c - lo the oldest,
// at(0), which the next step drops). cn_lrn_prime fills the window of c0 except its
// last channel; each cn_lrn_step then enters channel c + hi (zero outside the group)
// and returns s[c] and a[c]. The entering value is loaded one step ahead (`next`), so
// on a GPU the next load is in flight meanwhile.
template <int W>
struct cn_lrn_walk {
    cn_win<W> x;
    float next;  // channel c + hi, loaded at the previous step
};

static __device__ __forceinline__ float cn_lrn_load(const float* __restrict__ xc, int plane, int i,
                                                    int g0, int g1)
{
    return (i >= g0 && i < g1) ? xc[(long long)i * plane] : 0.0f;
}

template <int W>
static __device__ __forceinline__ void cn_lrn_prime(cn_lrn_walk<W>& walk, const float* __restrict__ xc,
                                                    int plane, int c0, int g0, int g1, int lo,
                                                    int hi, float* ring, int stride)
{
    walk.x.init(ring, stride, lo + hi + 1);
    for (int s = 0; s < lo + hi; ++s) walk.x.push(cn_lrn_load(xc, plane, c0 - lo + s, g0, g1));
    walk.next = cn_lrn_load(xc, plane, c0 + hi, g0, g1);
}

template <int W>
static __device__ __forceinline__ float cn_lrn_step(cn_lrn_walk<W>& walk, const float* __restrict__ xc,
                                                    int plane, int c, int g0, int g1, int lo,
                                                    int hi, float alpha, float k, float& a)
{
    walk.x.push(walk.next);
    walk.next = cn_lrn_load(xc, plane, c + 1 + hi, g0, g1);
    a = walk.x.at(lo);
    return cn_lrn_scale<W>(walk.x, alpha, k);
}

// The backward's common case inline: the walk of cn_lrn_backward_column below with s
// recomputed, for the paper's window (lo = hi = 2, in registers) and beta = 0.75 in
// cn_lrn_fast75's domain. The same operations in the same order as the general walk, so
// the same bits, for every channel whose sum of squares is <= 2^126 (then s <= 2^120:
// the rsqrt power, cn_lrn_r unscaled). Returns false when some step's sum was not (> 2^126,
// inf or NaN: then so is the running sum of them, every term >= 0): the caller redoes the
// column with the general walk, which writes every dx of it again. Unrolled by the window
// (5), so the registers' shifts vanish; the entering x and dz are loaded a step ahead.
template <class Grad>
static __device__ __forceinline__ bool cn_lrn_backward_column_75(
    const float* __restrict__ xc, float* __restrict__ dxc, const Grad& grad, int plane, int c0,
    int c1, int g0, int g1, float alpha, float coef, float k)
{
    constexpr int LO = 2, HI = 2;
    const int j0 = c0 - HI;
    cn_lrn_walk<5> walk;
    cn_lrn_prime<5>(walk, xc, plane, j0, g0, g1, LO, HI, nullptr, 0);
    cn_win<5> rw, dw;
    rw.init(nullptr, 0, 5);
    dw.init(nullptr, 0, 5);
    bool inside_next = j0 >= g0;
    float dz_next = inside_next ? grad(j0) : 0.0f;
    float acc_sum = 0.0f;
    const float* xn = xc + (long long)(j0 + 1 + HI) * plane;  // channel j + 1 + hi (>= c0 + 1)
    float* dxo = dxc + (long long)c0 * plane;                  // channel c = j - lo, once >= c0
#pragma unroll 5
    for (int j = j0; j < c1 + LO; ++j, xn += plane) {
        const bool inside = inside_next;
        const float dz_j = dz_next;
        inside_next = j + 1 >= g0 && j + 1 < g1;
        dz_next = inside_next ? grad(j + 1) : 0.0f;
        walk.x.push(walk.next);
        walk.next = j + 1 + HI < g1 ? *xn : 0.0f;
        const float acc = walk.x.squares();
        acc_sum += acc;
        const float s = fmaf(alpha, acc, k);
        float r = 0.0f, direct = 0.0f;
        if (inside) {
            direct = dz_j * cn_lrn_power75(s);
            r = cn_lrn_r(direct, walk.x.at(LO), s);
        }
        rw.push(r);
        dw.push(direct);
        if (j - LO >= c0) {
            *dxo = fmaf((coef * walk.x.at(0)) * rw.sum(), -0x1p-40f, dw.at(HI));
            dxo += plane;
        }
    }
    return acc_sum <= 0x1p126f;
}

// The backward down one column: dx[c] for c in [c0, c1) of the group [g0, g1), from x,
// the gradient of the LRN output dz (grad(j): channel j's, j inside the group; a plain
// array in lrn_backward, gathered from the pooled gradient in lrn_max_pool_backward)
// and s (read from `sc` with SAVED_SCALE, else recomputed by the forward's walk).
//
// The thread steps j from c0 - hi to c1 - 1 + lo. At step j it has s[j] (window
// [j - lo, j + hi]), r[j] = dz[j] p[j] a[j] / s[j] and the direct term dz[j] p[j] (both
// zero outside the group), and the window of r over [j - lo - hi, j] = the mirrored
// window of c = j - lo, whose dx it then writes:
//   dx[c] = dz[c] p[c] - 2 alpha beta a[c] sum r   (r held as r 2^40: see below).
// Windows: rw, dw: r and the direct terms over [j - lo - hi, j] (c at at(hi)); with
// recompute, the forward walk's x over [j - lo, j + hi] (c the oldest, at(0)); with a
// saved scale, xw: x over [j - lo - hi, j] like rw. Rings (W = 0): xr, rr, dr.
//
// With s recomputed, lo = hi = 2 and fast75 (cn_lrn_fast75: the kernel's beta, alpha, k),
// the column first goes through cn_lrn_backward_column_75 (below), and through this
// general walk only when that meets a channel outside its domain.
template <int W, bool SAVED_SCALE, class Grad>
static __device__ __forceinline__ void cn_lrn_backward_column(
    const float* __restrict__ xc, const float* __restrict__ sc, float* __restrict__ dxc,
    const Grad& grad, int plane, int c0, int c1, int g0, int g1, int lo, int hi, float* xr,
    float* rr, float* dr, int stride, float alpha, float beta, bool beta75, bool fast75,
    float k)
{
    const float coef = 2.0f * alpha * beta;
    if (!SAVED_SCALE && fast75 && lo == 2 && hi == 2 &&
        cn_lrn_backward_column_75(xc, dxc, grad, plane, c0, c1, g0, g1, alpha, coef, k))
        return;
    const int width = lo + hi + 1;
    cn_win<W> rw, dw, xw;
    rw.init(rr, stride, width);
    dw.init(dr, stride, width);
    cn_lrn_walk<W> walk;
    if (SAVED_SCALE)
        xw.init(xr, stride, width);
    else
        cn_lrn_prime<W>(walk, xc, plane, c0 - hi, g0, g1, lo, hi, xr, stride);
    // dz[j], x[j] and s[j] (saved) of the next step, loaded one step ahead
    const int j0 = c0 - hi;
    bool inside_next = j0 >= g0;
    float dz_next = inside_next ? grad(j0) : 0.0f;
    float x_next = 0.0f, s_next = 1.0f;
    if (SAVED_SCALE && inside_next) {
        x_next = xc[(long long)j0 * plane];
        s_next = sc[(long long)j0 * plane];
    }
    for (int j = j0; j < c1 + lo; ++j) {
        const bool inside = inside_next;
        const float dz_j = dz_next;
        float a_j = x_next, s_j = s_next;
        inside_next = j + 1 >= g0 && j + 1 < g1;
        dz_next = inside_next ? grad(j + 1) : 0.0f;
        if (SAVED_SCALE) {
            x_next = inside_next ? xc[(long long)(j + 1) * plane] : 0.0f;
            s_next = inside_next ? sc[(long long)(j + 1) * plane] : 1.0f;
            xw.push(a_j);
        } else {
            float a;
            const float s = cn_lrn_step<W>(walk, xc, plane, j, g0, g1, lo, hi, alpha, k, a);
            if (inside) {
                a_j = a;
                s_j = s;
            }
        }
        float r = 0.0f, direct = 0.0f;  // r 2^40 (cn_lrn_r)
        if (inside) {
            direct = cn_lrn_times_power(dz_j, s_j, beta, beta75);
            r = s_j > 0x1p120f ? cn_lrn_r(direct, a_j * 0x1p-32f, s_j * 0x1p-32f)
                               : cn_lrn_r(direct, a_j, s_j);
        }
        rw.push(r);
        dw.push(direct);
        const int c = j - lo;
        if (c >= c0) {
            const float a_c = SAVED_SCALE ? xw.at(hi) : walk.x.at(0);
            dxc[(long long)c * plane] = fmaf((coef * a_c) * rw.sum(), -0x1p-40f, dw.at(hi));
        }
    }
}
