// profile_traffic.cu — kernels with known memory-traffic figures for the emu
// profiler (tests/test_emu_profile.py). Each line marked PROFILE:name is the
// access the test reads the figures of. 1-D launches unless said.

// out[i] = in[i]: 4-byte loads and stores, 128 B per full warp = 4 sectors.
extern "C" __global__ void copy_float(const float* in, float* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    float v = in[i];  // PROFILE:copy_load
    out[i] = v;       // PROFILE:copy_store
  }
}

// 16-byte loads and stores, 512 B per full warp = 16 sectors.
extern "C" __global__ void copy_float4(const float4* in, float4* out, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    float4 v = in[i];  // PROFILE:copy4_load
    out[i] = v;        // PROFILE:copy4_store
  }
}

// out[i] = in[i * stride]: with stride >= 8 floats every lane has its own sector.
extern "C" __global__ void strided_read(const float* in, float* out, int stride, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    float v = in[i * stride];  // PROFILE:strided_load
    out[i] = v;
  }
}

// Block (32, 32): a tile written by rows (conflict-free), read by columns: the 32
// lanes of a warp read one column, 32 words 32 apart, all in one bank: 32-way.
extern "C" __global__ void shared_column(const float* in, float* out) {
  __shared__ float tile[32][32];
  int tx = threadIdx.x, ty = threadIdx.y;
  tile[ty][tx] = in[ty * 32 + tx];  // PROFILE:tile_store
  __syncthreads();
  out[ty * 32 + tx] = tile[tx][ty];  // PROFILE:column_load
}

// The same with a padded row of 33 words: the column's words fall in 32 banks.
extern "C" __global__ void shared_column_padded(const float* in, float* out) {
  __shared__ float tile[32][33];
  int tx = threadIdx.x, ty = threadIdx.y;
  tile[ty][tx] = in[ty * 32 + tx];  // PROFILE:padded_store
  __syncthreads();
  out[ty * 32 + tx] = tile[tx][ty];  // PROFILE:padded_load
}

// Every lane reads the same shared word: one wavefront (a broadcast).
extern "C" __global__ void shared_broadcast(const float* in, float* out) {
  __shared__ float value[32];
  int t = threadIdx.x;
  if (t < 32) value[t] = in[t];
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = value[5];  // PROFILE:broadcast_load
}

// Dynamic shared memory, float2 per lane (8 bytes, half-warps): a contiguous row is
// 2 wavefronts (the ideal), a stride of 32 words puts every half-warp in one bank pair.
extern "C" __global__ void shared_float2(const float* in, float* out, int stride) {
  extern __shared__ float2 buffer[];
  int t = threadIdx.x;
  for (int k = t; k < 32 * 32; k += blockDim.x) buffer[k] = make_float2(in[k], in[k]);
  __syncthreads();
  float2 v = buffer[(t * stride) % 1024];  // PROFILE:float2_load
  out[t] = v.x + v.y;
}

// `rounds` barriers per block, then one more after the loop.
extern "C" __global__ void barriers(float* out, int rounds) {
  __shared__ float slot[64];
  int t = threadIdx.x;
  float acc = 0.0f;
  for (int r = 0; r < rounds; ++r) {
    slot[t] = static_cast<float>(r + t);
    __syncthreads();
    acc += slot[(t + 1) % blockDim.x];
    __syncthreads();
  }
  __syncthreads();
  out[blockIdx.x * blockDim.x + t] = acc;
}

// Global atomics: every lane adds to one counter.
extern "C" __global__ void count_atomic(int* counter) {
  atomicAdd(counter, 1);  // PROFILE:atomic_add
}
