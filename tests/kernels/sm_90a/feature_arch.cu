// A kernel module built only for the sm_90a feature set (tests/test_feature_arch.py).
//
// On a GPU both kernels issue Hopper's warpgroup-MMA fence and the async-proxy fence,
// which ptxas accepts for sm_90a alone ("not supported on .target 'sm_90'"). The emu
// build (g++, no __CUDA_ARCH__) has nothing for the fences to order: it skips them.
//
// It lives in a folder of its own because tests/test_language.py compiles every
// tests/kernels/*.cu as a portable module for sm_90, which this file cannot be; the
// NVRTC build of it (for sm_90a) is checked by tests/test_feature_arch.py.

__device__ __forceinline__ void feature_fences()
{
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// One warpgroup (128 threads) per block: y[i] = 1.
extern "C" __global__ void __launch_bounds__(128) feature_ones(float* y)
{
    feature_fences();
    y[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}

// The same with a template argument, so that the kernel has a mangled name: y[i] = N.
template <int N>
__global__ void __launch_bounds__(128) feature_fill(float* y)
{
    feature_fences();
    y[blockIdx.x * blockDim.x + threadIdx.x] = float(N);
}
