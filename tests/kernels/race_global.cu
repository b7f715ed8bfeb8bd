// race_global.cu — global-memory races within one launch for check="race", each
// fault line marked `// RACE:name`, and correct twins. Launch: a few blocks of 64.

#include "threadfence_sum.cuh"

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

// The threadfence reduction (CUDA programming guide, threadfence_sum.cuh): ordered by
// the fence and the atomic ticket, so clean.
extern "C" __global__ void threadfence_reduction(const float* x, float* partial, unsigned* count,
                                                 float* out) {
  threadfence_sum_into(x, partial, count, out);
}
