// uninit.cu — reads of memory nothing wrote, for check="init" and fill_empty, each
// fault line marked `// INIT:name`, and correct twins. Launch: one block of 64.

// Adds x into y without ever clearing y: right only when y happens to hold zeros.
extern "C" __global__ void accumulate_uncleared(const float* x, float* y, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    for (int k = 0; k < 4; ++k) y[i] += x[k * n + i];  // INIT:accumulate
  }
}

// The twin: clears its own outputs first.
extern "C" __global__ void accumulate_cleared(const float* x, float* y, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    y[i] = 0.0f;
    for (int k = 0; k < 4; ++k) y[i] += x[k * n + i];
  }
}

// Max over a 64-slot tile of which only n slots are loaded: the rest is whatever
// shared memory held. NaN-filled shared memory does not show it (fmaxf ignores NaN).
extern "C" __global__ void max_partial_tile(const float* x, float* out, int n) {
  __shared__ float tile[64];
  const int t = threadIdx.x;
  if (t < n) tile[t] = x[t];
  __syncthreads();
  if (t == 0) {
    float m = -3.0e38f;
    for (int i = 0; i < 64; ++i) m = fmaxf(m, tile[i]);  // INIT:max
    out[0] = m;
  }
}

// The twin: the unloaded slots get the max's identity.
extern "C" __global__ void max_full_tile(const float* x, float* out, int n) {
  __shared__ float tile[64];
  const int t = threadIdx.x;
  tile[t] = t < n ? x[t] : -3.0e38f;
  __syncthreads();
  if (t == 0) {
    float m = -3.0e38f;
    for (int i = 0; i < 64; ++i) m = fmaxf(m, tile[i]);
    out[0] = m;
  }
}

// Dynamic shared memory: each thread reads the slot of the thread after it, but the
// last thread's neighbour slot (blockDim.x) is never written.
extern "C" __global__ void neighbour_past_end(const float* x, float* y) {
  extern __shared__ float buffer[];
  const int t = threadIdx.x;
  buffer[t] = x[t];
  __syncthreads();
  y[t] = buffer[t] + buffer[t + 1];  // INIT:neighbour
}
