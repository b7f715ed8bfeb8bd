// lrn_max_pool.cu: LRN followed by max-pooling, in one forward pass: x is read once and
// only the pooled output and its argmax are written; the LRN output never reaches
// global memory. The paper's layers 1 and 2 (ReLU, LRN, max-pool 3/2) use it.
//
//   y = max_pool(lrn(x)), argmax = the window offset of each maximum
//
// with exactly the semantics of lrn.cu and max_pool.cu (the same window sums from
// lrn_window.cuh, the same choice of maximum from pool_window.cuh), so the output is
// bit-identical to running lrn_forward<false> and max_pool_forward_index in turn.
// The backward is lrn_max_pool_backward below: max-pool's backward and LRN's in one
// pass, bit-identical to max_pool_backward then lrn_backward<false> (s recomputed).
//
// Layout: x NCHW float32; y, argmax (N, C, OH, OW); IndexT as in max_pool.cu.
//
// Work: a block per (n, tile of tile_h x tile_w pooled outputs), walking the channel
// groups in turn (the tile's set-up once for all of them). Its threads
// are the input pixels the tile's windows cover: a region of
// rh = (tile_h - 1) * sh + kh rows by rw = (tile_w - 1) * sw + kw columns, one thread
// each (blockDim.x = rh * rw <= 1024); adjacent tiles share a window's overlap (for
// 3/2 pooling one row and one column, recomputed by both). The channels of the group
// go by in steps of `depth`:
//   A. each thread in the input walks its column as lrn_forward does and writes the
//      LRN output of `depth` channels into shared memory z[d][pixel];
//   B. __syncthreads; the threads share the depth * tile_h * tile_w windows, each
//      pooled from z (thread t takes items t, t + blockDim.x, ..., item = (d, output),
//      stepped without divisions; 3x3 windows with no padding, inside the image, are
//      unrolled); __syncthreads before the next step overwrites z.
// Dynamic shared memory: (width + depth) * blockDim.x floats (width = lo + hi + 1
// slots of each thread's ring, then z). FW is lrn.cu's W (5: the window in registers,
// no ring: width = 0).
//
// lrn_max_pool_backward: dx from x, the pooled gradient dy and the saved argmax, never
// storing the LRN output's gradient dz. Launched as lrn_backward (ops/lrn.py's
// geometry, 3 rings): a thread per (n, group, chunk of channels, input pixel), pixel
// fastest, walking its channels with cn_lrn_backward_column (lrn_window.cuh), which
// asks for dz one channel ahead; dz at (channel j, this pixel) is gathered there from
// the pooled outputs whose windows cover the pixel and whose argmax is it, summed in
// row-major output order (max_pool_backward's rule and order, so the same bits). For
// 3x3/2 pooling a pixel is covered by 1 to 4 outputs (2.25 on average): their dy and
// argmax are read by the up to 4 neighbouring pixels' threads (L1 hits).
#include "common.cuh"
#include "lrn_window.cuh"
#include "pool_window.cuh"

// cn_pool_max over a whole 3x3 window (i0 = j0 = 0, i1 = j1 = 3), unrolled: the same
// order and choice, so the same bits and offset.
static __device__ __forceinline__ float cn_pool_max_3x3(const float* __restrict__ p,
                                                        int row_stride, int& offset)
{
    float best = p[0];
    int where = 0;
#pragma unroll
    for (int i = 0; i < 3; ++i) {
#pragma unroll
        for (int j = 0; j < 3; ++j) {
            const float v = p[i * row_stride + j];
            // pool_window.cuh's rule (v > best, or the first NaN) as "v unordered-greater
            // and best not NaN": the same choice, two compares
            const bool take = !(v <= best) && best == best;
            best = take ? v : best;
            where = take ? i * 3 + j : where;
        }
    }
    offset = where;
    return best;
}

// The pool phase's next item: (d, toh, tow) += (step_d, step_y, step_x) with carries
// (step_y < outs_h, step_x < outs_w, so one carry each).
static __device__ __forceinline__ void cn_lrn_pool_advance(int& d, int& toh, int& tow, int step_d,
                                                           int step_y, int step_x, int outs_h,
                                                           int outs_w)
{
    tow += step_x;
    if (tow >= outs_w) {
        tow -= outs_w;
        ++toh;
    }
    toh += step_y;
    if (toh >= outs_h) {
        toh -= outs_h;
        ++d;
    }
    d += step_d;
}

// The LRN outputs of channels cb .. cb + count - 1 of one column into z[d * region] by the
// general walk, primed at cb (the same window values as a walk carried from g0, so the same
// bits): the inline loop's rare depth steps, and every step off its domain. Out of line (a
// call), so the depth loop does not carry its code.
template <int FW>
static __device__ __noinline__ void cn_lrn_depth_general(const float* __restrict__ xc, int plane,
                                                         int cb, int count, int g0, int g1, int lo,
                                                         int hi, float alpha, float beta,
                                                         bool beta75, float k, float* z, int region,
                                                         float* ring)
{
    cn_lrn_walk<FW> walk;
    cn_lrn_prime<FW>(walk, xc, plane, cb, g0, g1, lo, hi, ring, region);
    for (int d = 0; d < count; ++d) {
        float a;
        const float s = cn_lrn_step<FW>(walk, xc, plane, cb + d, g0, g1, lo, hi, alpha, k, a);
        z[d * region] = cn_lrn_times_power(a, s, beta, beta75);
    }
}

template <typename IndexT, int FW>
__global__ void lrn_max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                     IndexT* __restrict__ argmax, int batch, int channels, int H,
                                     int W, int groups, int lo, int hi, float alpha, float beta,
                                     float k, int OH, int OW, int kh, int kw, int sh, int sw,
                                     int ph, int pw, int tile_h, int tile_w, int depth)
{
    extern __shared__ float cn_fused_shared[];
    const int width = FW > 0 ? 0 : lo + hi + 1;  // the ring's slots (none for FW > 0)
    cn_lrn_fixed_window<FW>(lo, hi);
    const int region = blockDim.x;
    const int t = threadIdx.x;
    float* ring = cn_fused_shared + t;
    float* z = cn_fused_shared + width * region;
    const int rw = (tile_w - 1) * sw + kw;
    const int tiles_w = (OW + tile_w - 1) / tile_w, tiles_h = (OH + tile_h - 1) / tile_h;
    const int group_channels = channels / groups;
    const bool beta75 = beta == 0.75f;
    const long long plane = (long long)H * W, out_plane = (long long)OH * OW;
    const int blocks = batch * tiles_h * tiles_w;  // < 2^31 (ops/lrn_max_pool.py)
    // 3x3 windows inside the image (no clipping) take an unrolled path: outputs
    // oh < full_oh, ow < full_ow when there is no padding
    // a sum of squares <= 2^126 gives s in [k, 2^120] (the rsqrt path's domain)
    const bool fast = cn_lrn_fast75(alpha, beta, k);
    const bool full_3x3 = kh == 3 && kw == 3 && ph == 0 && pw == 0;
    const int full_oh = H >= 3 ? (H - 3) / sh + 1 : 0, full_ow = W >= 3 ? (W - 3) / sw + 1 : 0;

    for (int b = blockIdx.x; b < blocks; b += gridDim.x) {  // 32-bit divisions
        const int tx = b % tiles_w, rest = b / tiles_w;
        const int ty = rest % tiles_h;
        const long long n = rest / tiles_h;
        const int oh0 = ty * tile_h, ow0 = tx * tile_w;
        const int h0 = oh0 * sh - ph, w0 = ow0 * sw - pw;  // the region's first pixel
        const int ry = t / rw, rx = t % rw;
        const int h = h0 + ry, w = w0 + rx;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        const long long base = n * channels * plane + (long long)h * W + w;  // channel 0
        const float* xc = x + (inside ? base : 0);
        const int outs_h = min(tile_h, OH - oh0), outs_w = min(tile_w, OW - ow0);
        const int outs = outs_h * outs_w;
        const bool full_tile = full_3x3 && oh0 + outs_h <= full_oh && ow0 + outs_w <= full_ow;
        // the pool phase's first item (t) and its step (region), split once per tile
        const int d_first = t / outs, o_first = t - d_first * outs;
        const int toh_first = o_first / outs_w, tow_first = o_first - toh_first * outs_w;
        const int step_d = region / outs, step_o = region - step_d * outs;
        const int step_y = step_o / outs_w, step_x = step_o - step_y * outs_w;

        for (int g0 = 0; g0 < channels; g0 += group_channels) {
        const int g1 = g0 + group_channels;
        cn_lrn_walk<FW> walk;  // carried across depth steps by the inline loop only
        if (inside && FW > 0 && fast)
            cn_lrn_prime<FW>(walk, xc, (int)plane, g0, g0, g1, lo, hi, ring, region);
        for (int cb = g0; cb < g1; cb += depth) {
            const int count = min(depth, g1 - cb);
            if (inside && FW > 0 && fast) {
                // the common case inline: window in registers, the FP32 sum and the rsqrt
                // power. A channel needs the wide sum or powf when its sum of squares is
                // > 2^126, inf or NaN (`fast` rules out s = 0 or inf below that): then
                // acc_sum (sums >= 0, rounding monotone) is too, and the step is redone
                // below by the general code (the same walk from channel cb: the same bits)
                float acc_sum = 0.0f;  // > 2^126, inf or NaN when some channel's is
                const float* xn = xc + (long long)(cb + 1 + hi) * plane;  // channel c + 1 + hi
#pragma unroll 5
                for (int d = 0; d < count; ++d, xn += plane) {
                    const int c = cb + d;  // c + 1 + hi >= g0: only the top can be outside
                    walk.x.push(walk.next);
                    walk.next = c + 1 + hi < g1 ? *xn : 0.0f;
                    const float acc = walk.x.squares();
                    z[d * region + t] = walk.x.at(lo) * cn_lrn_power75(fmaf(alpha, acc, k));
                    acc_sum += acc;
                }
                if (!(acc_sum <= 0x1p126f))
                    cn_lrn_depth_general<FW>(xc, (int)plane, cb, count, g0, g1, lo, hi, alpha,
                                             beta, true, k, z + t, region, ring);
            } else if (inside) {
                cn_lrn_depth_general<FW>(xc, (int)plane, cb, count, g0, g1, lo, hi, alpha, beta,
                                         beta75, k, z + t, region, ring);
            }
            __syncthreads();
            // item = d * outs + toh * outs_w + tow walks t, t + region, ... without a
            // division: (d, toh, tow) advance by the block's constant step with carries
            int d = d_first, toh = toh_first, tow = tow_first;
            float* const yc = y + (n * channels + cb) * out_plane;
            IndexT* const ac = argmax + (n * channels + cb) * out_plane;
            if (full_tile) {
                // every window of the tile is a whole 3x3 one: only the unrolled path, and
                // a thread keeps one output (toh, tow) of the channels d, d + step_d, ...
                // (the first step_d x outs threads; step_d = region / outs >= 1): its
                // pointers step by a constant, no carries
                if (d < step_d) {
                    const float* zq = z + d * region + (toh * sh) * rw + tow * sw;
                    const long long at = d * out_plane + (long long)(oh0 + toh) * OW + ow0 + tow;
                    float* yq = yc + at;
                    IndexT* aq = ac + at;
                    const int z_step = step_d * region;
                    const long long out_step = step_d * out_plane;
                    for (; d < count; d += step_d, zq += z_step, yq += out_step, aq += out_step) {
                        int offset;
                        *yq = cn_pool_max_3x3(zq, rw, offset);
                        *aq = (IndexT)offset;
                    }
                }
            } else {
                while (d < count) {
                    const int oh = oh0 + toh, ow = ow0 + tow;
                    int i0, i1, j0, j1, offset;
                    cn_pool_clip(oh * sh - ph, kh, H, i0, i1);
                    cn_pool_clip(ow * sw - pw, kw, W, j0, j1);
                    // window element (i, j) is region pixel (toh * sh + i, tow * sw + j)
                    const float* p = z + d * region + (toh * sh + i0) * rw + (tow * sw + j0);
                    const float best = cn_pool_max(p, rw, i0, i1, j0, j1, kw, offset);
                    const long long at = d * out_plane + (long long)oh * OW + ow;
                    yc[at] = best;
                    ac[at] = (IndexT)offset;
                    cn_lrn_pool_advance(d, toh, tow, step_d, step_y, step_x, outs_h, outs_w);
                }
            }
            __syncthreads();
        }
        }
    }
}

// The gradient of the LRN output at (channel j, one input pixel), gathered from the
// pooled gradient: the covering outputs [oh0, oh1] x [ow0, ow1] whose argmax is the
// pixel. want0 is the argmax value that means this pixel for output (oh0, ow0); it
// falls by sh * kw per output row and by sw per output column.
template <typename IndexT>
struct cn_lrn_pooled_grad {
    const float* __restrict__ dyn;     // dy of image n, channel 0
    const IndexT* __restrict__ an;     // argmax of image n, channel 0
    long long out_plane;
    int OW, oh0, oh1, ow0, ow1, want0, row_step, col_step;
    __device__ __forceinline__ float operator()(int j) const
    {
        const float* dyp = dyn + (long long)j * out_plane;
        const IndexT* ap = an + (long long)j * out_plane;
        float acc = 0.0f;
        int want_row = want0;
        for (int oh = oh0; oh <= oh1; ++oh, want_row -= row_step) {
            int want = want_row;
            for (int ow = ow0; ow <= ow1; ++ow, want -= col_step) {
                const int o = oh * OW + ow;
                if ((int)ap[o] == want) acc += dyp[o];
            }
        }
        return acc;
    }
};

// The outputs whose windows (k wide, stride st, padding pad) cover input index i:
// [first, last] (empty when first > last).
static __device__ __forceinline__ void cn_lrn_pool_cover(int i, int k, int st, int pad, int outs,
                                                         int& first, int& last)
{
    const int low = i + pad - k + 1;  // o * st >= low
    first = low > 0 ? (low + st - 1) / st : 0;
    last = min((i + pad) / st, outs - 1);
}

template <typename IndexT, int FW>
__global__ void lrn_max_pool_backward(const float* __restrict__ x, const float* __restrict__ dy,
                                      const IndexT* __restrict__ argmax, float* __restrict__ dx,
                                      int batch, int channels, int H, int W, int groups, int chunk,
                                      int lo, int hi, float alpha, float beta, float k, int OH,
                                      int OW, int kh, int kw, int sh, int sw, int ph, int pw)
{
    extern __shared__ float cn_lrn_ring[];
    const cn_lrn_rings ring = cn_lrn_backward_rings<FW>(cn_lrn_ring, lo, hi);
    const int plane = H * W;
    const long long out_plane = (long long)OH * OW;
    const int chunks = (channels / groups + chunk - 1) / chunk;
    const long long columns = (long long)batch * groups * chunks * plane;
    const bool beta75 = beta == 0.75f;

    for (long long t = cn_global_thread(); t < columns; t += cn_grid_threads()) {
        const cn_lrn_column col = cn_lrn_locate(t, channels, plane, groups, chunk);
        const int h = col.pixel / W, w = col.pixel - h * W;
        const long long base = col.base;
        cn_lrn_pooled_grad<IndexT> grad;
        grad.dyn = dy + col.n * channels * out_plane;
        grad.an = argmax + col.n * channels * out_plane;
        grad.out_plane = out_plane;
        grad.OW = OW;
        cn_lrn_pool_cover(h, kh, sh, ph, OH, grad.oh0, grad.oh1);
        cn_lrn_pool_cover(w, kw, sw, pw, OW, grad.ow0, grad.ow1);
        // window offset of the pixel in output (oh, ow): (h - (oh sh - ph)) kw + w - (ow sw - pw)
        grad.want0 = (h - (grad.oh0 * sh - ph)) * kw + (w - (grad.ow0 * sw - pw));
        grad.row_step = sh * kw;
        grad.col_step = sw;
        cn_lrn_backward_column<FW, false>(x + base, x + base, dx + base, grad, plane, col.c0,
                                         col.c1, col.g0, col.g1, lo, hi, ring.x, ring.r, ring.d, ring.stride, alpha, beta, beta75,
                                         cn_lrn_fast75(alpha, beta, k), k);
    }
}
