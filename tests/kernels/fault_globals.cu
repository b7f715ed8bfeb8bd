// fault_globals.cu — `__device__` variables shared by every block of a launch however
// many OS threads run them (issue 10, item 5), and a file-scope `extern __shared__`
// array (valid CUDA; issue 10, item 7). All correct kernels: each must give the GPU's
// answer on emu with several workers.

// The threadfence reduction of the CUDA programming guide: each block writes its
// partial sum, fences, takes a ticket from a __device__ counter; the block that takes
// the last ticket adds the partial sums and resets the counter for the next launch.
__device__ unsigned int tickets = 0;

extern "C" __global__ void threadfence_sum(const float* x, float* partial, float* out) {
  __shared__ float s[64];
  __shared__ bool last;
  const int t = threadIdx.x;
  s[t] = x[blockIdx.x * 64 + t];
  __syncthreads();
  for (int stride = 32; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) {
    partial[blockIdx.x] = s[0];
    __threadfence();
    const unsigned ticket = atomicInc(&tickets, gridDim.x);
    last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (last && t == 0) {
    float total = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) total += ((volatile float*)partial)[b];
    out[0] = total;
    tickets = 0;
  }
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
