// relu.cu: the rectified linear unit, y = max(x, 0), and its gradient.
//
// Layout: flat float32 arrays of n elements (any shape, C-contiguous); n is 64-bit.
// Launch shape: 1-D grid-stride. Thread t handles groups of four consecutive
// elements, group g = t, t + T, t + 2T, ... (T = threads in the grid). A full group
// is moved as one float4 when every pointer of the call is 16-byte aligned (the
// usual case: allocations are); otherwise, and for the last partial group, the
// elements are moved one by one, so misaligned views (x[1:]) stay correct.
// Any 1-D launch covers any n; the host sizes it per device (ops/_elementwise.py).
//
// NaN propagates (a diverging network must not be hidden by its activations);
// -0.0 becomes +0.0. The NumPy reference does the same.
#include "common.cuh"

static __device__ __forceinline__ float cn_relu(float v) { return v <= 0.0f ? 0.0f : v; }  // NaN <= 0 is false

// y = relu(x)
extern "C" __global__ void relu_forward(const float* __restrict__ x, float* __restrict__ y,
                                        long long n)
{
    const long long groups = (n + 3) / 4;
    const bool vec = cn_aligned16(x) && cn_aligned16(y);
    for (long long g = cn_global_thread(); g < groups; g += cn_grid_threads()) {
        const long long i = 4 * g;
        if (vec && i + 4 <= n) {
            float4 v = reinterpret_cast<const float4*>(x)[g];
            v.x = cn_relu(v.x);
            v.y = cn_relu(v.y);
            v.z = cn_relu(v.z);
            v.w = cn_relu(v.w);
            reinterpret_cast<float4*>(y)[g] = v;
        } else {
            const long long end = i + 4 < n ? i + 4 : n;
            for (long long k = i; k < end; ++k) y[k] = cn_relu(x[k]);
        }
    }
}

// dx = dy where y > 0, else 0 (y is the saved forward output).
extern "C" __global__ void relu_backward(const float* __restrict__ y, const float* __restrict__ dy,
                                         float* __restrict__ dx, long long n)
{
    const long long groups = (n + 3) / 4;
    const bool vec = cn_aligned16(y) && cn_aligned16(dy) && cn_aligned16(dx);
    for (long long g = cn_global_thread(); g < groups; g += cn_grid_threads()) {
        const long long i = 4 * g;
        if (vec && i + 4 <= n) {
            const float4 m = reinterpret_cast<const float4*>(y)[g];
            const float4 d = reinterpret_cast<const float4*>(dy)[g];
            float4 out;
            out.x = m.x > 0.0f ? d.x : 0.0f;
            out.y = m.y > 0.0f ? d.y : 0.0f;
            out.z = m.z > 0.0f ? d.z : 0.0f;
            out.w = m.w > 0.0f ? d.w : 0.0f;
            reinterpret_cast<float4*>(dx)[g] = out;
        } else {
            const long long end = i + 4 < n ? i + 4 : n;
            for (long long k = i; k < end; ++k) dx[k] = y[k] > 0.0f ? dy[k] : 0.0f;
        }
    }
}
