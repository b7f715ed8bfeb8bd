// broken.cu — deliberately wrong kernels: each shows one fault the emulator's
// runtime must catch. Tests find the faulty lines by their `// FAULT:` markers.
// Launch: one block of 64 threads (two warps) unless a test says otherwise.

// Reverses each block's 64 values through shared memory, but forgets the barrier
// between the writes and the reads: the result depends on the thread order.
extern "C" __global__ void missing_syncthreads(const float* x, float* y) {
  __shared__ float tile[64];
  int t = threadIdx.x;
  tile[t] = x[blockIdx.x * 64 + t];
  // (__syncthreads() belongs here)
  y[blockIdx.x * 64 + t] = tile[63 - t];
}

// Half of warp 0 waits at the block barrier, the other half at a full-warp shuffle:
// neither can ever complete.
extern "C" __global__ void deadlock(float* y) {
  int t = threadIdx.x;
  if (t < 16) {
    __syncthreads();  // FAULT:deadlock-barrier
  } else {
    y[t] = __shfl_sync(0xffffffffu, 1.0f * t, 0);  // FAULT:deadlock-shuffle
  }
}

// Each thread writes one slot to the right: the last thread writes past the array.
extern "C" __global__ void shared_out_of_bounds(float* y) {
  __shared__ float tile[64];
  int t = threadIdx.x;
  tile[t + 1] = 1.0f;  // FAULT:shared-oob
  __syncthreads();
  y[t] = tile[t];
}

// Thread 5 leaves early while the others wait at the barrier.
extern "C" __global__ void early_exit(float* y) {
  int t = threadIdx.x;
  if (t == 5) return;
  __syncthreads();  // FAULT:early-exit
  y[t] = 1.0f;
}

// The two halves of the block wait at different barriers.
extern "C" __global__ void divergent_barriers(float* y) {
  int t = threadIdx.x;
  if (t < 32) {
    __syncthreads();  // FAULT:divergent-a
  } else {
    __syncthreads();  // FAULT:divergent-b
  }
  y[t] = 1.0f;
}

// The lower half-warp shuffles among itself but reads lane 20, outside its mask.
extern "C" __global__ void shuffle_outside_mask(float* y) {
  int t = threadIdx.x;
  if ((t & 31) < 16) {
    y[t] = __shfl_sync(0x0000ffffu, 1.0f * t, 20);  // FAULT:shuffle-mask
  }
}

// Writes one element past the end of a global array of n elements.
extern "C" __global__ void global_out_of_bounds(float* y, int n) {
  int t = threadIdx.x;
  if (t <= n) y[t] = 1.0f;  // FAULT:global-oob
}

// Writes one element past the end of the block's dynamic shared memory.
extern "C" __global__ void dynamic_shared_out_of_bounds(float* y, int n) {
  extern __shared__ float buffer[];
  int t = threadIdx.x;
  buffer[t + 1] = 1.0f;  // FAULT:dynamic-oob
  __syncthreads();
  if (t < n) y[t] = buffer[t];
}
