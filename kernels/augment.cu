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
// row the columns x = threadIdx.x + 32 * j, so one warp writes 32 consecutive floats
// of each channel plane. The host takes row_groups = ceil(crop / 8) on a GPU (one row
// per thread) and 1 on the emulator (fewer, longer-lived threads).
//
// The arithmetic is done in this order, in float32, with no multiply-add to contract,
// so the NumPy reference gives the same bits.

extern "C" __global__ void augment_crops(const unsigned char* __restrict__ images,
                                         const float* __restrict__ mean,
                                         const int* __restrict__ params,
                                         const float* __restrict__ offset,
                                         float* __restrict__ out,
                                         int height, int width, int crop, float scale)
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

    for (int y = blockIdx.y * blockDim.y + threadIdx.y; y < crop; y += gridDim.y * blockDim.y) {
        const int sy = y0 + y;
        const unsigned char* row = image + (long long)sy * width * 3;
        const float* mrow = mean + (long long)sy * width * 3;
        float* d = dst + (long long)y * crop;
        for (int x = threadIdx.x; x < crop; x += blockDim.x) {
            const int sx = flip ? x0 + crop - 1 - x : x0 + x;
            const unsigned char* p = row + 3 * sx;
            const float* mp = mrow + 3 * sx;
            d[x] = ((float)p[0] - mp[0] + o0) * scale;
            d[plane + x] = ((float)p[1] - mp[1] + o1) * scale;
            d[2 * plane + x] = ((float)p[2] - mp[2] + o2) * scale;
        }
    }
}
