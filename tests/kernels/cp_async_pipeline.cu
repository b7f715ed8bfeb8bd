// cp_async_pipeline.cu — a three-stage cp.async pipeline through kernels/cp_async.cuh,
// correct and with the wait missing (the fault line marked `// WAIT:`).
// One block of 64 threads walks `tiles` tiles of 64 floats: tile i is copied into
// stage i % 3 of shared memory two tiles ahead of its use, and thread t adds element
// (t + 1) % 64 of each tile (written by another thread's copy) into out[t]. Elements
// at or past n are zero-filled copies (nothing read). BYTES per copy: 4 (every thread
// one float) or 16 (the first 16 threads four floats each).
#include "../../kernels/cp_async.cuh"

#define STAGES 3

template <int BYTES, bool WAIT>
static __device__ __forceinline__ void staged_sum(const float* x, float* out, int tiles, int n)
{
    __shared__ __align__(16) float stage[STAGES][64];
    const int t = threadIdx.x;
    const int per = BYTES / 4;  // floats per copy
    auto load = [&](int i) {
        if (t * per < 64) {
            const int e = i * 64 + t * per;
            cn_cp_async<BYTES>(&stage[i % STAGES][t * per], x + (e < n ? e : 0), e < n);
        }
    };
    for (int i = 0; i < STAGES - 1; ++i) {
        if (i < tiles) load(i);
        cn_cp_async_commit();
    }
    float sum = 0.0f;
    for (int i = 0; i < tiles; ++i) {
        if (WAIT) cn_cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (i + STAGES - 1 < tiles) load(i + STAGES - 1);
        cn_cp_async_commit();
        sum += stage[i % STAGES][(t + 1) % 64];  // WAIT:read
    }
    cn_cp_async_wait_all();
    out[t] = sum;
}

extern "C" __global__ void staged_sum4(const float* x, float* out, int tiles, int n)
{
    staged_sum<4, true>(x, out, tiles, n);
}

extern "C" __global__ void staged_sum16(const float* x, float* out, int tiles, int n)
{
    staged_sum<16, true>(x, out, tiles, n);
}

extern "C" __global__ void staged_sum4_no_wait(const float* x, float* out, int tiles, int n)
{
    staged_sum<4, false>(x, out, tiles, n);
}

// A 16-byte copy from an address that is only 4-byte aligned (x + 1).
extern "C" __global__ void misaligned_copy(const float* x, float* out)
{
    __shared__ __align__(16) float buf[4];
    if (threadIdx.x == 0) cn_cp_async<16>(buf, x + 1, true);  // ALIGN:cp_async
    cn_cp_async_wait_all();
    __syncthreads();
    if (threadIdx.x < 4) out[threadIdx.x] = buf[threadIdx.x];
}
