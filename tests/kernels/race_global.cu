// race_global.cu — global-memory races within one launch for check="race", each
// fault line marked `// RACE:name`, and correct twins. Launch: a few blocks of 64.

// Every block writes the same output word: a write-write race between blocks.
extern "C" __global__ void last_block_wins(int* out) {
  if (threadIdx.x == 0) out[0] = blockIdx.x;  // RACE:blocks-write
}

// Each block sums its part and adds it into the total with a plain read-modify-write.
extern "C" __global__ void total_plain(const float* x, float* total) {
  __shared__ float s[64];
  s[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int i = 0; i < 64; ++i) sum += s[i];
    *total += sum;  // RACE:total
  }
}

// The twin: atomicAdd into the total.
extern "C" __global__ void total_atomic(const float* x, float* total) {
  __shared__ float s[64];
  s[threadIdx.x] = x[blockIdx.x * 64 + threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float sum = 0.0f;
    for (int i = 0; i < 64; ++i) sum += s[i];
    atomicAdd(total, sum);
  }
}

// Threads of one block write neighbouring outputs that overlap by one element
// (y[t] and y[t + 1]): a write-write race between threads of a block.
extern "C" __global__ void overlapping_writes(float* y) {
  const int t = threadIdx.x;
  y[t] = 1.0f;
  y[t + 1] = 2.0f;  // RACE:overlap
}

// The threadfence reduction (CUDA programming guide): every block writes its partial
// sum, __threadfence, counts itself with atomicInc; the last block sums the partials.
extern "C" __global__ void threadfence_reduction(const float* x, float* partial, unsigned* count,
                                                 float* out) {
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
    unsigned ticket = atomicInc(count, gridDim.x);
    last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (last && t == 0) {
    float sum = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) sum += partial[b];
    out[0] = sum;
    *count = 0;
  }
}
