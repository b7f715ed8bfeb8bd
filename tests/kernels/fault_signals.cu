// fault_signals.cu — kernels that crash on purpose (issue 10, item 5): a null or wild
// pointer, integer division by zero, a bus error, a stack overflow. Each faulting
// line is marked `// FAULT:name`; only thread `culprit` of block `block` faults, so a
// diagnostic must name that thread. Pointers arrive as integers so that the compiler
// cannot see the fault coming (g++ turns a provable null dereference into a trap).

// Thread `culprit` of block `block` writes through `address` (0: null; a
// non-canonical address: a wild pointer), the others write their own element.
extern "C" __global__ void write_through(float* y, unsigned long long address, int culprit, int block) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  float* p = (threadIdx.x == culprit && blockIdx.x == block) ? reinterpret_cast<float*>(address) : y + t;
  *p = 1.0f;  // FAULT:write
}

// Reads through a pointer a few pages past the end of `x`'s allocation for thread `culprit`.
extern "C" __global__ void read_through(const float* x, float* y, unsigned long long address, int culprit) {
  const int t = threadIdx.x;
  const float* p = t == culprit ? reinterpret_cast<const float*>(address) : x + t;
  y[t] = *p;  // FAULT:read
}

// Integer division (and remainder) by a divisor that is zero for one thread.
extern "C" __global__ void divide(const int* a, const int* d, int* q) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  q[t] = a[t] / d[t];  // FAULT:divide
}
extern "C" __global__ void remainder_of(const int* a, const int* d, int* q) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  q[t] = a[t] % d[t];  // FAULT:remainder
}

// Reads `x` with a stride of `stride` floats: given a memory-mapped file that has been
// truncated under it, the read past the file's end is a bus error.
extern "C" __global__ void strided_read(const float* x, float* y, int stride) {
  const int t = threadIdx.x;
  y[t] = x[t * stride];  // FAULT:bus
}

// Recursion deeper than a thread's stack: each level keeps a 1 KiB array alive.
__device__ int nest(int n, volatile char* above) {
  volatile char here[1024];
  here[0] = above[0] + 1;
  here[1023] = 0;  // read on the way back up: without this the sum depends on old stack contents
  if (n == 0) return here[0];
  return nest(n - 1, here) + here[1023];  // FAULT:recurse
}
extern "C" __global__ void recurse(int* out, int depth) {
  volatile char base[1024];
  base[0] = 0;
  base[1023] = 0;
  out[threadIdx.x] = threadIdx.x == 7 ? nest(depth, base) : 0;
}

// The correct twin, launched after each fault: y = 2 * x.
extern "C" __global__ void twice(const float* x, float* y, int n) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t < n) y[t] = 2.0f * x[t];
}
