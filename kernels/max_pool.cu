// max_pool.cu: 2-D max-pooling (overlapping windows allowed: stride < kernel), forward
// and backward.
//
//   y[n, c, oh, ow] = max over the window rows oh*sh - ph + i (0 <= i < kh) and columns
//                     ow*sw - pw + j (0 <= j < kw) of x[n, c, ., .]
//   OH = (H + 2 ph - kh) / sh + 1, OW likewise (floor: PyTorch's default).
//
// Padding counts as -inf: it is never chosen (the host requires pad <= kernel / 2, so
// every window holds at least one element of x). Ties go to the first element in
// row-major window order; a NaN wins over every number, and the first NaN of a window
// is chosen, so NaN propagates and its position receives the gradient (pool_window.cuh).
//
// The argmax is kept as the offset i * kw + j inside the window (IndexT: unsigned char
// for windows of up to 256 elements, int above), written by max_pool_forward_index.
//
// Backward, without write races and deterministic: one thread per INPUT element
// gathers the gradients of the outputs whose windows cover it (oh in
// [ceil((h + ph - kh + 1) / sh), floor((h + ph) / sh)], ow likewise) and whose argmax
// is it, summing them in row-major output order; nothing is written twice, no
// atomics, and dx needs no zeroing. max_pool_backward reads the saved argmax;
// max_pool_backward_recompute finds each covering window's argmax again from x.
//
// Layout: NCHW float32, C-contiguous; `planes` = N * C; a plane (H * W, OH * OW) must
// have fewer than 2^31 elements. Launch: a thread per output (forward) or input
// (backward) element of a plane: blockDim.x = the plane's elements rounded up to a warp
// (at most the host's block size, ops/max_pool.py), blockDim.y planes per block;
// grid.x = ceil(plane elements / blockDim.x), grid.y blocks of planes (at most 65535,
// the CUDA limit; few on emu), looping over the rest.
#include "common.cuh"
#include "pool_window.cuh"

struct cn_pool_shape {
    int H, W, OH, OW, kh, kw, sh, sw, ph, pw;
};

// The maximum of the window of output (oh, ow) in one plane and its window offset.
static __device__ __forceinline__ float cn_pool_window(const float* __restrict__ plane,
                                                       const cn_pool_shape& p, int oh, int ow,
                                                       int& offset)
{
    const int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
    int i0, i1, j0, j1;
    cn_pool_clip(h0, p.kh, p.H, i0, i1);
    cn_pool_clip(w0, p.kw, p.W, j0, j1);
    return cn_pool_max(plane + (long long)(h0 + i0) * p.W + (w0 + j0), p.W, i0, i1, j0, j1, p.kw,
                       offset);
}

static __device__ __forceinline__ cn_pool_shape cn_pool_make(int H, int W, int OH, int OW, int kh,
                                                             int kw, int sh, int sw, int ph, int pw)
{
    cn_pool_shape p;
    p.H = H; p.W = W; p.OH = OH; p.OW = OW;
    p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw;
    return p;
}

// Launch shape shared by the kernels below: blockIdx.x * blockDim.x + threadIdx.x is an
// element of a plane (32-bit index arithmetic only); blockIdx.y * blockDim.y + threadIdx.y
// a plane, in a grid-stride loop (any number of planes; few, long-lived threads on emu).
// Small planes share a block: blockDim.y planes of blockDim.x elements each.
#define CN_POOL_FOR_EACH(elem, plane_size, pl, planes)                                       \
    const int elem = blockIdx.x * blockDim.x + threadIdx.x;                                 \
    if (elem < (plane_size))                                                                \
        for (long long pl = (long long)blockIdx.y * blockDim.y + threadIdx.y; pl < (planes); \
             pl += (long long)gridDim.y * blockDim.y)

// y only (no backward will follow).
extern "C" __global__ void max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                            long long planes, int H, int W, int OH, int OW,
                                            int kh, int kw, int sh, int sw, int ph, int pw)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    const int oh = (blockIdx.x * blockDim.x + threadIdx.x) / OW;
    const int ow = (blockIdx.x * blockDim.x + threadIdx.x) - oh * OW;
    CN_POOL_FOR_EACH(o, OH * OW, pl, planes) {
        int offset;
        y[pl * (OH * OW) + o] = cn_pool_window(x + pl * H * (long long)W, p, oh, ow, offset);
    }
}

// y and the argmax of every window (for the backward).
template <typename IndexT>
__global__ void max_pool_forward_index(const float* __restrict__ x, float* __restrict__ y,
                                       IndexT* __restrict__ argmax, long long planes, int H, int W,
                                       int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                                       int pw)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    const int oh = (blockIdx.x * blockDim.x + threadIdx.x) / OW;
    const int ow = (blockIdx.x * blockDim.x + threadIdx.x) - oh * OW;
    CN_POOL_FOR_EACH(o, OH * OW, pl, planes) {
        int offset;
        const long long at = pl * (OH * OW) + o;
        y[at] = cn_pool_window(x + pl * H * (long long)W, p, oh, ow, offset);
        argmax[at] = (IndexT)offset;
    }
}

// The outputs whose windows cover input row h: [lo, hi] (empty when lo > hi).
static __device__ __forceinline__ void cn_pool_cover(int h, int k, int s, int pad, int outs,
                                                     int& lo, int& hi)
{
    const int first = h + pad - k + 1;  // oh * s >= first
    lo = first > 0 ? (first + s - 1) / s : 0;
    hi = min((h + pad) / s, outs - 1);
}

// dx from dy and the saved argmax.
template <typename IndexT>
__global__ void max_pool_backward(const float* __restrict__ dy, const IndexT* __restrict__ argmax,
                                  float* __restrict__ dx, long long planes, int H, int W, int OH,
                                  int OW, int kh, int kw, int sh, int sw, int ph, int pw)
{
    const int h = (blockIdx.x * blockDim.x + threadIdx.x) / W;
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) - h * W;
    int oh0, oh1, ow0, ow1;
    cn_pool_cover(h, kh, sh, ph, OH, oh0, oh1);
    cn_pool_cover(w, kw, sw, pw, OW, ow0, ow1);
    CN_POOL_FOR_EACH(e, H * W, pl, planes) {
        const float* dyp = dy + pl * (OH * OW);
        const IndexT* ap = argmax + pl * (OH * OW);
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh) {
            const int i = h - (oh * sh - ph);
            for (int ow = ow0; ow <= ow1; ++ow) {
                const int o = oh * OW + ow;
                if ((int)ap[o] == i * kw + (w - (ow * sw - pw))) acc += dyp[o];
            }
        }
        dx[pl * (H * W) + e] = acc;
    }
}

// dx from dy and x: each covering window's argmax is found again.
extern "C" __global__ void max_pool_backward_recompute(const float* __restrict__ x,
                                                       const float* __restrict__ dy,
                                                       float* __restrict__ dx, long long planes,
                                                       int H, int W, int OH, int OW, int kh,
                                                       int kw, int sh, int sw, int ph, int pw)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    const int h = (blockIdx.x * blockDim.x + threadIdx.x) / W;
    const int w = (blockIdx.x * blockDim.x + threadIdx.x) - h * W;
    int oh0, oh1, ow0, ow1;
    cn_pool_cover(h, kh, sh, ph, OH, oh0, oh1);
    cn_pool_cover(w, kw, sw, pw, OW, ow0, ow1);
    CN_POOL_FOR_EACH(e, H * W, pl, planes) {
        const float* xp = x + pl * (H * W);
        const float* dyp = dy + pl * (OH * OW);
        float acc = 0.0f;
        for (int oh = oh0; oh <= oh1; ++oh) {
            const int i = h - (oh * sh - ph);
            for (int ow = ow0; ow <= ow1; ++ow) {
                int offset;
                cn_pool_window(xp, p, oh, ow, offset);
                if (offset == i * kw + (w - (ow * sw - pw))) acc += dyp[oh * OW + ow];
            }
        }
        dx[pl * (H * W) + e] = acc;
    }
}
