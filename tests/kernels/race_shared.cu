// race_shared.cu — deliberately racy kernels for check="race" and schedule="random",
// each with its fault line marked `// RACE:name`, and correct twins that must pass.
// Launch: one block of 64 threads (two warps) unless a test says otherwise.

// Every thread adds 1 to one shared counter with a plain read-modify-write: the
// updates race (a GPU loses most of them).
extern "C" __global__ void counter_plain(int* out) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  count += 1;  // RACE:counter
  __syncthreads();
  if (threadIdx.x == 0) out[0] = count;
}

// The twin: atomicAdd under contention from every thread.
extern "C" __global__ void counter_atomic(int* out) {
  __shared__ int count;
  if (threadIdx.x == 0) count = 0;
  __syncthreads();
  atomicAdd(&count, 1);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = count;
}

// "The first thread to get here claims the slot", without an atomic: several
// threads see the slot free and all claim it.
extern "C" __global__ void claim_plain(int* out) {
  __shared__ int owner;
  if (threadIdx.x == 0) owner = -1;
  __syncthreads();
  if (owner < 0) owner = threadIdx.x;  // RACE:claim
  __syncthreads();
  out[threadIdx.x] = owner == (int)threadIdx.x;
}

// The twin: atomicCAS claims the slot once.
extern "C" __global__ void claim_atomic(int* out) {
  __shared__ int owner;
  if (threadIdx.x == 0) owner = -1;
  __syncthreads();
  atomicCAS(&owner, -1, (int)threadIdx.x);
  __syncthreads();
  out[threadIdx.x] = owner == (int)threadIdx.x;
}

// Warp 0 publishes a two-word record (value, its check) while warp 1 reads it, with
// no barrier between: warp 1 can see one new word and one old (a torn read).
extern "C" __global__ void torn_record(int* out, int rounds) {
  __shared__ int record[2];
  if (threadIdx.x == 0) { record[0] = 0; record[1] = 0; }
  __syncthreads();
  int torn = 0;
  for (int r = 1; r <= rounds; ++r) {
    if (threadIdx.x == 0) {
      record[0] = r;
      record[1] = -r;  // RACE:torn-write
    } else if (threadIdx.x == 32) {
      int a = record[0];  // RACE:torn-read
      int b = record[1];
      torn += a != -b;
    }
  }
  __syncthreads();
  if (threadIdx.x == 32) out[0] = torn;
}

// Tree reduction of 64 values; the barrier after the first level is missing, so the
// second level reads partial sums another warp may not have written yet.
extern "C" __global__ void tree_missing_barrier(const float* x, float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  if (t < 32) s[t] += s[t + 32];
  // (__syncthreads() belongs here)
  if (t < 16) s[t] += s[t + 16];  // RACE:tree
  __syncthreads();
  for (int stride = 8; stride > 0; stride >>= 1) {
    if (t < stride) s[t] += s[t + stride];
    __syncthreads();
  }
  if (t == 0) out[0] = s[0];
}

// The twin: every level behind a barrier; the last warp-wide levels with __syncwarp.
extern "C" __global__ void tree_reduction(const float* x, float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncthreads();
  if (t < 32) s[t] += s[t + 32];
  __syncthreads();
  if (t < 32) {
    for (int stride = 16; stride > 0; stride >>= 1) {
      float v = s[t] + s[t + stride];
      __syncwarp();
      s[t] = v;
      __syncwarp();
    }
  }
  if (t == 0) out[0] = s[0];
}

// Warp-synchronous exchange: each lane writes its slot, __syncwarp, reads its
// neighbour's; then a shuffle reduction. Correct: lanes of one warp ordered by
// __syncwarp and shuffles.
extern "C" __global__ void warp_exchange(const float* x, float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  __syncwarp();
  float v = s[(t & ~31) | ((t + 1) & 31)];
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  if ((t & 31) == 0) s[t] = v;  // after the shuffles: lane 0 overwrites its own slot
  __syncthreads();
  if (t == 0) out[0] = s[0] + s[32];
}

// The same exchange without the __syncwarp: lanes read slots other lanes write.
extern "C" __global__ void warp_exchange_unsynced(const float* x, float* out) {
  __shared__ float s[64];
  const int t = threadIdx.x;
  s[t] = x[t];
  float v = s[(t & ~31) | ((t + 1) & 31)];  // RACE:warp
  for (int d = 16; d > 0; d >>= 1) v += __shfl_down_sync(0xffffffffu, v, d);
  __syncthreads();
  if ((t & 31) == 0) s[t] = v;
  __syncthreads();
  if (t == 0) out[0] = s[0] + s[32];
}
