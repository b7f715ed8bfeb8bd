// sgd.cu: the update rule of Krizhevsky, Sutskever & Hinton (2012), section 5, for one
// parameter tensor, fused into a single pass over its elements:
//
//   v <- momentum * v - decay * w - lr * g        (decay = weight_decay * lr, on the host)
//   w <- w + v
//
// lr is the parameter's own learning rate (the global rate times its multiplier); the
// paper's values are momentum 0.9, weight_decay 0.0005, lr 0.01. w and v are updated in
// place; g (the gradient) is read only.
//
// Layout: flat float32 arrays of n elements (any shape, C-contiguous); n is 64-bit.
// Launch shape: 1-D grid-stride over groups of four elements, moved as float4 when
// all three pointers are 16-byte aligned, element by element otherwise (and for the
// last partial group). Any 1-D launch covers any n; the host sizes it per device
// (ops/_elementwise.py).
#include "common.cuh"

static __device__ __forceinline__ void sgd_one(float& w, float& v, float g, float lr,
                                               float momentum, float decay)
{
    v = momentum * v - decay * w - lr * g;
    w = w + v;
}

extern "C" __global__ void sgd_momentum(float* __restrict__ w, float* __restrict__ v,
                                        const float* __restrict__ g, long long n, float lr,
                                        float momentum, float decay)
{
    const long long groups = (n + 3) / 4;
    const bool vec = cn_aligned16(w) && cn_aligned16(v) && cn_aligned16(g);
    for (long long q = cn_global_thread(); q < groups; q += cn_grid_threads()) {
        const long long i = 4 * q;
        if (vec && i + 4 <= n) {
            float4 w4 = reinterpret_cast<float4*>(w)[q];
            float4 v4 = reinterpret_cast<float4*>(v)[q];
            const float4 g4 = reinterpret_cast<const float4*>(g)[q];
            sgd_one(w4.x, v4.x, g4.x, lr, momentum, decay);
            sgd_one(w4.y, v4.y, g4.y, lr, momentum, decay);
            sgd_one(w4.z, v4.z, g4.z, lr, momentum, decay);
            sgd_one(w4.w, v4.w, g4.w, lr, momentum, decay);
            reinterpret_cast<float4*>(w)[q] = w4;
            reinterpret_cast<float4*>(v)[q] = v4;
        } else {
            const long long end = i + 4 < n ? i + 4 : n;
            for (long long k = i; k < end; ++k) {
                float wk = w[k], vk = v[k];
                sgd_one(wk, vk, g[k], lr, momentum, decay);
                w[k] = wk;
                v[k] = vk;
            }
        }
    }
}
