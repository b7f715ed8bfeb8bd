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
//
// sgd_momentum_multi: the same update of every parameter of a model in one launch.
// table (int64, 6·T for T tensors): rows t = 0..T-1 of five entries (addresses of w, v
// and g; n; the tensor's first group in the global numbering), then T pairs of float32
// (lr, decay) in the last T entries. Tensor t owns groups first_t .. first_t +
// ceil(n_t / 4) - 1 of a global index 0 .. groups-1 (a group never straddles two
// tensors); a 1-D grid-stride loop walks the global index, each thread finding its
// tensor by binary search once and then moving forward (its groups only increase).
// Per tensor as sgd_momentum: float4 when its three arrays are 16-byte aligned, element
// by element otherwise and for its last partial group, the same arithmetic, so the
// results are bit-identical to one sgd_momentum launch per tensor.
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

struct sgd_tensor {
    float* w;
    float* v;
    const float* g;
    long long n, first;
    float lr, decay;
    bool vec;
};

static __device__ __forceinline__ sgd_tensor sgd_row(const long long* table, int tensors, int t)
{
    sgd_tensor r;
    const long long* row = table + 5 * t;
    r.w = reinterpret_cast<float*>(row[0]);
    r.v = reinterpret_cast<float*>(row[1]);
    r.g = reinterpret_cast<const float*>(row[2]);
    r.n = row[3];
    r.first = row[4];
    const float* rates = reinterpret_cast<const float*>(table + 5 * tensors);
    r.lr = rates[2 * t];
    r.decay = rates[2 * t + 1];
    r.vec = cn_aligned16(r.w) && cn_aligned16(r.v) && cn_aligned16(r.g);
    return r;
}

extern "C" __global__ void sgd_momentum_multi(const long long* __restrict__ table, int tensors,
                                              long long groups, float momentum)
{
    long long q = cn_global_thread();
    if (q >= groups) return;
    int lo = 0, hi = tensors - 1;  // the last tensor whose first group is <= q
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (table[5 * mid + 4] <= q) lo = mid;
        else hi = mid - 1;
    }
    int t = lo;
    sgd_tensor p = sgd_row(table, tensors, t);
    for (; q < groups; q += cn_grid_threads()) {
        if (t + 1 < tensors && q >= table[5 * (t + 1) + 4]) {
            do {
                ++t;
            } while (t + 1 < tensors && q >= table[5 * (t + 1) + 4]);
            p = sgd_row(table, tensors, t);
        }
        const long long j = q - p.first;
        const long long i = 4 * j;
        if (p.vec && i + 4 <= p.n) {
            float4 w4 = reinterpret_cast<float4*>(p.w)[j];
            float4 v4 = reinterpret_cast<float4*>(p.v)[j];
            const float4 g4 = reinterpret_cast<const float4*>(p.g)[j];
            sgd_one(w4.x, v4.x, g4.x, p.lr, momentum, p.decay);
            sgd_one(w4.y, v4.y, g4.y, p.lr, momentum, p.decay);
            sgd_one(w4.z, v4.z, g4.z, p.lr, momentum, p.decay);
            sgd_one(w4.w, v4.w, g4.w, p.lr, momentum, p.decay);
            reinterpret_cast<float4*>(p.w)[j] = w4;
            reinterpret_cast<float4*>(p.v)[j] = v4;
        } else {
            const long long end = i + 4 < p.n ? i + 4 : p.n;
            for (long long k = i; k < end; ++k) {
                float wk = p.w[k], vk = p.v[k];
                sgd_one(wk, vk, p.g[k], p.lr, momentum, p.decay);
                p.w[k] = wk;
                p.v[k] = vk;
            }
        }
    }
}
