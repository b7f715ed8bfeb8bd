// misaligned.cu — vector and 64-bit accesses off their alignment, which a GPU refuses
// ("misaligned address"); each fault line is marked `// ALIGN:name`. Launch: 1 x 32.

// float4 loads from x + 1: 4 bytes past a 16-byte boundary.
extern "C" __global__ void float4_load_off_by_one(const float* x, float* y) {
  const float4 v = reinterpret_cast<const float4*>(x + 1)[threadIdx.x];  // ALIGN:float4-load
  y[threadIdx.x] = v.x + v.y + v.z + v.w;
}

// float4 stores to y + 2.
extern "C" __global__ void float4_store_off_by_two(const float* x, float* y) {
  reinterpret_cast<float4*>(y + 2)[threadIdx.x] = make_float4(x[0], x[1], x[2], x[3]);  // ALIGN:float4-store
}

// 64-bit integer loads at a 4-byte offset.
extern "C" __global__ void int64_load_off_by_four(const int* x, long long* y) {
  y[threadIdx.x] = *reinterpret_cast<const long long*>(x + 2 * threadIdx.x + 1);  // ALIGN:int64
}

// float2 reads of a shared float array at an odd float offset.
extern "C" __global__ void float2_shared_odd(const float* x, float* y) {
  __shared__ float s[80];
  s[threadIdx.x] = x[threadIdx.x];
  s[threadIdx.x + 32] = x[threadIdx.x + 32];
  __syncthreads();
  const float2 v = reinterpret_cast<const float2*>(s + 1)[threadIdx.x];  // ALIGN:float2-shared
  y[threadIdx.x] = v.x + v.y;
}

// A double read at a 4-byte offset of dynamic shared memory.
extern "C" __global__ void double_shared_off_by_four(double* y) {
  extern __shared__ float words[];
  words[2 * threadIdx.x] = 1.0f;
  words[2 * threadIdx.x + 1] = 1.0f;
  __syncthreads();
  if (threadIdx.x < 8) y[threadIdx.x] = *reinterpret_cast<const double*>(words + 2 * threadIdx.x + 1);  // ALIGN:double-shared
}

// The twin: float4 loads and stores on 16-byte boundaries, float2 on 8.
extern "C" __global__ void vectors_aligned(const float* x, float* y) {
  const float4 v = reinterpret_cast<const float4*>(x)[threadIdx.x];
  const float2 w = reinterpret_cast<const float2*>(x)[threadIdx.x];
  reinterpret_cast<float4*>(y)[threadIdx.x] = make_float4(v.x + w.x, v.y + w.y, v.z, v.w);
}
