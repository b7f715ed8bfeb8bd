// lrn_max_pool.cu: LRN followed by max-pooling, in one forward pass: x is read once and
// only the pooled output and its argmax are written; the LRN output never reaches
// global memory. The paper's layers 1 and 2 (ReLU, LRN, max-pool 3/2) use it.
//
//   y = max_pool(lrn(x)), argmax = the window offset of each maximum
//
// with exactly the semantics of lrn.cu and max_pool.cu (the same window sums from
// lrn_window.cuh, the same choice of maximum from pool_window.cuh), so the output is
// bit-identical to running lrn_forward<false> and max_pool_forward_index in turn.
// The backward is those two ops' backward kernels (max_pool_backward gives the
// gradient of the LRN output, lrn_backward<false> recomputes s from x).
//
// Layout: x NCHW float32; y, argmax (N, C, OH, OW); IndexT as in max_pool.cu.
//
// Work: a block per (n, group, tile of tile_h x tile_w pooled outputs). Its threads
// are the input pixels the tile's windows cover: a region of
// rh = (tile_h - 1) * sh + kh rows by rw = (tile_w - 1) * sw + kw columns, one thread
// each (blockDim.x = rh * rw <= 1024); adjacent tiles share a window's overlap (for
// 3/2 pooling one row and one column, recomputed by both). The channels of the group
// go by in steps of `depth`:
//   A. each thread in the input walks its column as lrn_forward does and writes the
//      LRN output of `depth` channels into shared memory z[d][pixel];
//   B. __syncthreads; the threads share the depth * tile_h * tile_w windows, each
//      pooled from z; __syncthreads before the next step overwrites z.
// Dynamic shared memory: (width + depth) * blockDim.x floats (width = lo + hi + 1
// slots of each thread's ring, then z).
#include "common.cuh"
#include "lrn_window.cuh"
#include "pool_window.cuh"

template <typename IndexT>
__global__ void lrn_max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                     IndexT* __restrict__ argmax, int batch, int channels, int H,
                                     int W, int groups, int lo, int hi, float alpha, float beta,
                                     float k, int OH, int OW, int kh, int kw, int sh, int sw,
                                     int ph, int pw, int tile_h, int tile_w, int depth)
{
    extern __shared__ float cn_fused_shared[];
    const int width = lo + hi + 1;
    const int region = blockDim.x;
    const int t = threadIdx.x;
    float* ring = cn_fused_shared + t;
    float* z = cn_fused_shared + width * region;
    const int rw = (tile_w - 1) * sw + kw;
    const int tiles_w = (OW + tile_w - 1) / tile_w, tiles_h = (OH + tile_h - 1) / tile_h;
    const int group_channels = channels / groups;
    const double alpha_d = alpha, k_d = k;
    const long long plane = (long long)H * W, out_plane = (long long)OH * OW;
    const long long blocks = (long long)batch * groups * tiles_h * tiles_w;

    for (long long b = blockIdx.x; b < blocks; b += gridDim.x) {
        const int tx = (int)(b % tiles_w);
        const int ty = (int)(b / tiles_w % tiles_h);
        const long long ng = b / ((long long)tiles_w * tiles_h);  // n * groups + g
        const int g = (int)(ng % groups);
        const long long n = ng / groups;
        const int oh0 = ty * tile_h, ow0 = tx * tile_w;
        const int h0 = oh0 * sh - ph, w0 = ow0 * sw - pw;  // the region's first pixel
        const int ry = t / rw, rx = t % rw;
        const int h = h0 + ry, w = w0 + rx;
        const bool inside = h >= 0 && h < H && w >= 0 && w < W;
        const int g0 = g * group_channels, g1 = g0 + group_channels;
        const long long base = n * channels * plane + (long long)h * W + w;  // channel 0
        const float* xc = x + (inside ? base : 0);
        const int outs_h = min(tile_h, OH - oh0), outs_w = min(tile_w, OW - ow0);
        const int outs = outs_h * outs_w;

        cn_lrn_walk walk;
        if (inside) cn_lrn_prime(walk, xc, (int)plane, g0, g0, g1, lo, hi, width, ring, region);
        for (int cb = g0; cb < g1; cb += depth) {
            const int count = min(depth, g1 - cb);
            if (inside) {
                for (int d = 0; d < count; ++d) {
                    float a;
                    const float s = cn_lrn_step(walk, xc, (int)plane, cb + d, g0, g1, hi, width,
                                                ring, region, alpha_d, k_d, a);
                    z[d * region + t] = a * powf(s, -beta);
                }
            }
            __syncthreads();
            for (int item = t; item < count * outs; item += region) {
                const int d = item / outs, o = item - d * outs;
                const int toh = o / outs_w, tow = o - toh * outs_w;
                const int oh = oh0 + toh, ow = ow0 + tow;
                int i0, i1, j0, j1, offset;
                cn_pool_clip(oh * sh - ph, kh, H, i0, i1);
                cn_pool_clip(ow * sw - pw, kw, W, j0, j1);
                // window element (i, j) is region pixel (toh * sh + i, tow * sw + j)
                const float* p = z + d * region + (toh * sh + i0) * rw + (tow * sw + j0);
                const float best = cn_pool_max(p, rw, i0, i1, j0, j1, kw, offset);
                const long long at = (n * channels + cb + d) * out_plane + (long long)oh * OW + ow;
                y[at] = best;
                argmax[at] = (IndexT)offset;
            }
            __syncthreads();
        }
    }
}
