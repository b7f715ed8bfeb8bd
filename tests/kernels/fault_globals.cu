// fault_globals.cu — `__device__` variables shared by every block of a launch however
// many OS threads run them (issue 10, item 5), and a file-scope `extern __shared__`
// array (valid CUDA; issue 10, item 7). All correct kernels: each must give the GPU's
// answer on emu with several workers.

#include "threadfence_sum.cuh"

// The threadfence reduction with its ticket counter in a __device__ variable.
__device__ unsigned int tickets = 0;

extern "C" __global__ void threadfence_sum(const float* x, float* partial, float* out) {
  threadfence_sum_into(x, partial, &tickets, out);
}

// A counter every block bumps and that lives on between launches, as on a GPU.
__device__ int bumps;
extern "C" __global__ void bump(int* seen) {
  if (threadIdx.x == 0) seen[blockIdx.x] = atomicAdd(&bumps, 1);
}
extern "C" __global__ void read_bumps(int* out, int reset) {
  out[0] = bumps;
  if (reset) bumps = 0;
}

// Dynamic shared memory declared once at file scope, used by a helper and a kernel.
extern __shared__ float staged[];

__device__ float staged_sum(int n) {
  float total = 0.0f;
  for (int i = 0; i < n; ++i) total += staged[i];
  return total;
}

extern "C" __global__ void file_scope_shared(const float* x, float* y) {
  const int n = blockDim.x;
  staged[threadIdx.x] = x[blockIdx.x * n + threadIdx.x];
  __syncthreads();
  y[blockIdx.x * n + threadIdx.x] = staged_sum(n) - staged[n - 1 - threadIdx.x];
}
