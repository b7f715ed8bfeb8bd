// features.cu — small kernels that exercise one CUDA feature each, so the emulator's
// semantics can be checked against NumPy. Layouts are flat float32/int32 arrays.

// Writes every thread's and block's coordinates (3-D grid of 3-D blocks).
// out: 6 ints per thread, in (block linear, thread linear) order.
extern "C" __global__ void coordinates(int* out) {
  unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  int* o = out + 6 * (block * per_block + thread);
  o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
  o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
}

// One warp per 32 values: every kind of shuffle and vote, one output row each.
// out: 8 rows of n floats (n = threads).
extern "C" __global__ void warp_ops(const float* x, float* out, int n) {
  int t = threadIdx.x;
  float v = x[t];
  out[0 * n + t] = __shfl_sync(0xffffffffu, v, 3);
  out[1 * n + t] = __shfl_up_sync(0xffffffffu, v, 2);
  out[2 * n + t] = __shfl_down_sync(0xffffffffu, v, 5);
  out[3 * n + t] = __shfl_xor_sync(0xffffffffu, v, 1);
  out[4 * n + t] = __shfl_sync(0xffffffffu, v, 1, 8);  // width 8: lane 1 of each group of 8
  out[5 * n + t] = (float)__popc(__ballot_sync(0xffffffffu, v > 0.5f));
  out[6 * n + t] = (float)__any_sync(0xffffffffu, v > 0.9f);
  out[7 * n + t] = (float)__all_sync(0xffffffffu, v >= 0.0f);
}

// Block-wide reductions of a predicate through the barrier's reducing forms.
extern "C" __global__ void barrier_reductions(const int* flags, int* out) {
  int p = flags[blockIdx.x * blockDim.x + threadIdx.x];
  int count = __syncthreads_count(p);
  int all = __syncthreads_and(p);
  int any = __syncthreads_or(p);
  if (threadIdx.x == 0) {
    out[3 * blockIdx.x + 0] = count;
    out[3 * blockIdx.x + 1] = all;
    out[3 * blockIdx.x + 2] = any;
  }
}

// Histogram with atomics from many blocks running on several OS threads.
extern "C" __global__ void histogram(const int* values, int n, int* bins, float* total) {
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    atomicAdd(&bins[values[i]], 1);
    atomicAdd(total, 1.0f);
  }
}

// A tree reduction in dynamic shared memory (blockDim.x a power of two).
extern "C" __global__ void block_sum(const float* x, float* out) {
  extern __shared__ float partial[];
  unsigned t = threadIdx.x;
  partial[t] = x[blockIdx.x * blockDim.x + t];
  __syncthreads();
  for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
    if (t < s) partial[t] += partial[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = partial[0];
}

// Reads shared memory before writing it (the write below happens only for a
// negative n): the value seen is whatever the block found there.
extern "C" __global__ void read_uninitialised_shared(float* out, int n) {
  __shared__ float tile[32];
  if (n < 0) tile[threadIdx.x] = 0.0f;
  out[threadIdx.x] = tile[threadIdx.x];
}

// Every parameter kind the argument checker knows.
extern "C" __global__ void scalar_kinds(float* out, const float* in, int i, unsigned u, float f,
                                         unsigned long long big, double d) {
  out[0] = in[0] + (float)i + (float)u + f + (float)(big >> 40) + (float)d;
}

// Busy work: each thread runs `iterations` dependent steps (for interruption tests).
extern "C" __global__ void busy(float* out, int iterations) {
  float v = threadIdx.x;
  for (int i = 0; i < iterations; ++i) v = v * 0.999f + 1.0f;
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}
