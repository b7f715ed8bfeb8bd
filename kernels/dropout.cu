// dropout.cu: dropout with a Philox4x32-10 mask regenerated from a 64-bit seed.
//
//   y[i] = keep(i) ? x[i] * scale : 0,   keep(i) = word(offset + i) >= threshold
//
// word(e) is the 32-bit Philox word of stream position e (philox.cuh: counter e / 4,
// word e % 4, key = seed); offset (64-bit, 0 for a whole tensor) places the array in a
// larger one's stream: with offset = r0 * units an array of rows r0.. of an (N, units)
// activation gets exactly those rows of the whole activation's mask. threshold = ceil(p * 2^32), computed on the host, is 64-bit so that
// p = 1 (threshold 2^32) keeps nothing and p = 0 (threshold 0) keeps everything.
// The same kernel serves both directions: forward with x, backward with the incoming
// gradient in place of x and the forward's seed, threshold and scale, so the backward
// regenerates the mask instead of storing one. With threshold 0 it is a plain scale
// (the "paper" mode at eval time: y = x * (1 - p)) and skips the generator; with
// threshold 2^32 it writes zeros.
//
// Layout: flat float32 arrays of n elements (C-contiguous), n 64-bit.
// Launch shape: 1-D grid-stride over the Philox counters the array's positions
// offset .. offset + n - 1 touch (one call per counter, one element per output word:
// group g is counter offset / 4 + g, local elements 4g + k - offset % 4). With
// offset % 4 == 0 a group is four local elements and moves as a float4 when x and y
// are 16-byte aligned; otherwise element by element (the first and last groups may
// hold fewer than four). Any 1-D launch covers any n; the host sizes it per device
// (ops/_elementwise.py).
#include "common.cuh"
#include "philox.cuh"

extern "C" __global__ void dropout_apply(const float* __restrict__ x, float* __restrict__ y,
                                         long long n, unsigned long long seed,
                                         unsigned long long threshold, float scale,
                                         unsigned long long offset)
{
    const long long skip = (long long)(offset & 3ull);  // words of the first counter before us
    const unsigned long long counter0 = offset >> 2;
    const long long groups = (n + skip + 3) / 4;
    const bool vec = skip == 0 && cn_aligned16(x) && cn_aligned16(y);
    for (long long g = cn_global_thread(); g < groups; g += cn_grid_threads()) {
        unsigned int keep = 0xFu;  // bit k: local element 4g + k - skip is kept
        if (threshold > 0xFFFFFFFFull) {
            keep = 0u;  // p = 1: nothing is kept, no words needed
        } else if (threshold > 0ull) {
            const cn_philox_block r = cn_philox_group(seed, counter0 + (unsigned long long)g);
            keep = 0u;
            for (int k = 0; k < 4; ++k)
                keep |= ((unsigned long long)r.w[k] >= threshold ? 1u : 0u) << k;
        }
        const long long i = 4 * g - skip;  // local index of the counter's word 0 (may be < 0)
        if (vec && i + 4 <= n) {
            const float4 v = reinterpret_cast<const float4*>(x)[g];
            float4 out;
            out.x = (keep & 1u) ? v.x * scale : 0.0f;
            out.y = (keep & 2u) ? v.y * scale : 0.0f;
            out.z = (keep & 4u) ? v.z * scale : 0.0f;
            out.w = (keep & 8u) ? v.w * scale : 0.0f;
            reinterpret_cast<float4*>(y)[g] = out;
        } else {
            const long long begin = i > 0 ? i : 0, end = i + 4 < n ? i + 4 : n;
            for (long long k = begin; k < end; ++k)
                y[k] = ((keep >> (k - i)) & 1u) ? x[k] * scale : 0.0f;
        }
    }
}
