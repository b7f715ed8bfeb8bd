// augment.cu: the data augmentation of Krizhevsky et al. 2012 (sections 4.1, 4.2),
// fused into one pass from the loader's uint8 batch to the network's float input:
// crop, horizontal mirror, mean-image subtraction, PCA lighting, NHWC -> NCHW.
//
//   out[m, c, y, x] = ((float)images[src, sy, sx, c] - mean[sy, sx, c] + offset[m, c]) * scale
//   sy = y0 + y,   sx = flip ? x0 + crop - 1 - x : x0 + x
//
// Each output image m has its parameters in params[m] = (src, y0, x0, flip): the source
// image, the crop's top-left corner in it, and whether to mirror; offset[m] is its
// PCA lighting offset (sum_i alpha_i lambda_i p_i, drawn on the host; zeros at test
// time). Training takes one random crop of each image; evaluation one center crop, or
// ten crops (four corners and the center, each also mirrored) of each image; all are
// this kernel with different params, computed on the host (convnet.data.augment) and
// checked there (0 <= src < n_images, 0 <= y0 <= height - crop, 0 <= x0 <= width - crop).
// The mean is subtracted at the source pixel, before the mirror, as the paper subtracts
// it from the whole 256x256 image before cropping.
//
// Layout: images uint8 (n_images, height, width, 3), C order (the loader's batch);
//         mean float32 (height, width, 3); params int32 (M, 4); offset float32 (M, 3);
//         out float32 (M, 3, crop, crop).
// Launch shape: blocks of (32, 8) threads; grid (M, row_groups). Block (m, g) covers
// the rows y = 8 * g + threadIdx.y + 8 * row_groups * k of output image m, and in each
// row the quads of columns x = 4 * (threadIdx.x + 32 * j) .. x + 3, so one warp reads
// 384 consecutive source bytes and writes 128 consecutive floats of each channel plane.
// The host takes row_groups = ceil(crop / 8) on a GPU (one row per thread) and 1 on the
// emulator (fewer, longer-lived threads).
//
// Memory: a quad's four source pixels are 12 consecutive bytes (mirrored or not); they
// are read as the three or four aligned 32-bit words that hold them and funnel-shifted
// into place (any crop offset), the mean's twelve floats as three float4 where aligned,
// and each plane's four outputs stored as one float4 where aligned (crop % 4 == 0).
// A quad that runs past the crop's edge, or whose words would leave the images array,
// goes pixel by pixel with byte loads: the values are the same either way.
//
// The arithmetic is done in this order, in float32, with no multiply-add to contract,
// so the NumPy reference gives the same bits.
#include "common.cuh"

static __device__ __forceinline__ bool ag_aligned(const void* p, unsigned long long bytes)
{
    return ((unsigned long long)p & (bytes - 1)) == 0;
}

// The 12 bytes at p (any alignment) as three little-endian words, from the aligned words
// that hold them; the caller has checked that those words lie inside the array.
static __device__ __forceinline__ void ag_load12(const unsigned char* p, unsigned int u[3])
{
    const unsigned long long a = (unsigned long long)p;
    const unsigned int* w = reinterpret_cast<const unsigned int*>(a & ~3ull);
    const unsigned int shift = 8u * (unsigned int)(a & 3ull);
    const unsigned int w0 = w[0], w1 = w[1], w2 = w[2];
    const unsigned int w3 = shift ? w[3] : 0u;
    u[0] = __funnelshift_r(w0, w1, shift);
    u[1] = __funnelshift_r(w1, w2, shift);
    u[2] = __funnelshift_r(w2, w3, shift);
}

extern "C" __global__ void augment_crops(const unsigned char* __restrict__ images,
                                         const float* __restrict__ mean,
                                         const int* __restrict__ params,
                                         const float* __restrict__ offset,
                                         float* __restrict__ out,
                                         int height, int width, int crop, float scale,
                                         int n_images)
{
    const int m = blockIdx.x;
    const int src = params[4 * m + 0];
    const int y0 = params[4 * m + 1];
    const int x0 = params[4 * m + 2];
    const int flip = params[4 * m + 3];
    const float o0 = offset[3 * m + 0];
    const float o1 = offset[3 * m + 1];
    const float o2 = offset[3 * m + 2];
    const long long plane = (long long)crop * crop;
    const unsigned char* image = images + (long long)src * height * width * 3;
    float* dst = out + (long long)m * 3 * plane;
    const unsigned char* images_end = images + (long long)n_images * height * width * 3;

    for (int y = blockIdx.y * blockDim.y + threadIdx.y; y < crop; y += gridDim.y * blockDim.y) {
        const int sy = y0 + y;
        const unsigned char* row = image + (long long)sy * width * 3;
        const float* mrow = mean + (long long)sy * width * 3;
        float* d = dst + (long long)y * crop;
        for (int x = 4 * threadIdx.x; x < crop; x += 4 * blockDim.x) {
            // The quad's lowest source pixel; output column x + k reads pixel k, or 3 - k
            // when mirrored.
            const int lo = flip ? x0 + crop - 4 - x : x0 + x;
            const unsigned char* p = row + 3 * lo;
            const unsigned long long a = (unsigned long long)p & ~3ull;
            const bool vec = x + 4 <= crop && a >= (unsigned long long)images &&
                             a + ((unsigned long long)p & 3ull ? 16ull : 12ull) <=
                                 (unsigned long long)images_end;
            if (!vec) {  // pixel by pixel, byte loads
                for (int k = 0; k < 4 && x + k < crop; ++k) {
                    const int sx = flip ? x0 + crop - 1 - (x + k) : x0 + x + k;
                    const unsigned char* q = row + 3 * sx;
                    const float* mq = mrow + 3 * sx;
                    d[x + k] = ((float)q[0] - mq[0] + o0) * scale;
                    d[plane + x + k] = ((float)q[1] - mq[1] + o1) * scale;
                    d[2 * plane + x + k] = ((float)q[2] - mq[2] + o2) * scale;
                }
                continue;
            }
            unsigned int u[3];
            ag_load12(p, u);
            float mv[12];
            const float* mp = mrow + 3 * lo;
            if (ag_aligned(mp, 16)) {
                for (int j = 0; j < 3; ++j) {
                    const float4 f = reinterpret_cast<const float4*>(mp)[j];
                    mv[4 * j] = f.x;
                    mv[4 * j + 1] = f.y;
                    mv[4 * j + 2] = f.z;
                    mv[4 * j + 3] = f.w;
                }
            } else {
                for (int j = 0; j < 12; ++j) mv[j] = mp[j];
            }
            const float o[3] = {o0, o1, o2};
            for (int c = 0; c < 3; ++c) {
                float v[4];
                for (int k = 0; k < 4; ++k) {
                    const int b = 3 * (flip ? 3 - k : k) + c;  // byte of the quad
                    const float pix = (float)((u[b >> 2] >> (8 * (b & 3))) & 0xFFu);
                    v[k] = (pix - mv[b] + o[c]) * scale;
                }
                float* dc = d + c * plane + x;
                if (ag_aligned(dc, 16)) {
                    reinterpret_cast<float4*>(dc)[0] = make_float4(v[0], v[1], v[2], v[3]);
                } else {
                    for (int k = 0; k < 4; ++k) dc[k] = v[k];
                }
            }
        }
    }
}
