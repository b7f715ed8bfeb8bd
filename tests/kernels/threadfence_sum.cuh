// threadfence_sum.cuh — the threadfence reduction of the CUDA programming guide, shared
// by the test kernels that use it (race_global.cu: the counter is an argument;
// fault_globals.cu: a __device__ variable). 64 threads a block, one float each: every
// block writes its partial sum, __threadfence, takes a ticket from *count with
// atomicInc; the block that takes the last ticket adds the partials into out[0] and
// resets the counter for the next launch.
#pragma once

__device__ void threadfence_sum_into(const float* x, float* partial, unsigned* count, float* out) {
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
    const unsigned ticket = atomicInc(count, gridDim.x);
    last = ticket == gridDim.x - 1;
  }
  __syncthreads();
  if (last && t == 0) {
    float total = 0.0f;
    for (unsigned b = 0; b < gridDim.x; ++b) total += ((volatile float*)partial)[b];
    out[0] = total;
    *count = 0;
  }
}
