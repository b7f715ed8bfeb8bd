// launch_resources.cu — kernels for the launch-resource checks (issue 10, item 4).
// Each is correct code; what makes a launch wrong is its block, which
// tests/test_launch_resources.py picks: the broken launch a GPU refuses and its
// correct twin. All compile with NVRTC (tests/test_language.py).

// At most 128 threads per block: a launch of 256 threads is refused, 128 runs.
extern "C" __global__ void __launch_bounds__(128) bounded_128(float* y) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  y[t] = 2.0f * t;
}

// Many registers (96 values live across a barrier, no launch bounds to cap them):
// well over 64 per thread, so 1024 threads x registers exceed the 65,536-register
// file, while 256 threads fit.
extern "C" __global__ void register_heavy(float* x, int n) {
  float a[96];
#pragma unroll
  for (int i = 0; i < 96; ++i) a[i] = x[i * n + threadIdx.x];
  __syncthreads();
  float s = 0.f;
#pragma unroll
  for (int i = 95; i >= 0; --i) s = s * a[i] + x[i];
  x[threadIdx.x] = s;
}

// 32 KiB of static shared memory plus whatever dynamic shared memory the launch asks
// for: above 48 KiB in total only with the opt-in, above the architecture's
// per-block maximum (227 KiB on sm_90, 99 KiB on sm_86) never.
extern "C" __global__ void static_and_dynamic(float* y, int dynamic_floats) {
  __shared__ float fixed[8192];
  extern __shared__ float extra[];
  const int t = threadIdx.x;
  fixed[t] = 1.0f;
  if (t < dynamic_floats) extra[t] = 2.0f;
  __syncthreads();
  y[t] = fixed[t] + (t < dynamic_floats ? extra[t] : 0.0f);
}
