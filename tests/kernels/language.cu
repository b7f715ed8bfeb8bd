// language.cu — valid CUDA that NVRTC accepts and the emulator must accept too
// (issue 10, item 7): a bare __syncwarp(), __activemask(), atomicDec, vector types
// beyond float/int (short2, ushort4, char2, long2, double4, ...), __align__ on
// __shared__ arrays in either order. tests/test_language.py runs each on emu and
// compiles this file with NVRTC. Launch: one block of 64 threads unless a test says.

// Each thread stages its index in an aligned shared array, swaps with its lane
// neighbour after a bare __syncwarp(), and reports the alignment of both arrays
// (1 when 16-byte aligned).
extern "C" __global__ void lang_syncwarp(int* out) {
  __shared__ __align__(16) float staged[64];
  __align__(16) __shared__ float swapped[64];
  const int t = threadIdx.x;
  staged[t] = (float)t;
  __syncwarp();
  swapped[t] = staged[t ^ 1];
  __syncwarp(0xffffffffu);
  const bool aligned = (reinterpret_cast<unsigned long long>(staged) & 15) == 0 &&
                       (reinterpret_cast<unsigned long long>(swapped) & 15) == 0;
  out[t] = (int)swapped[t] * 2 + (aligned ? 1 : 0);
}

// __activemask() in a converged warp: every lane that exists (launch 48 threads: the
// second warp has 16).
extern "C" __global__ void lang_activemask(unsigned* mask) {
  mask[threadIdx.x] = __activemask();
}

// atomicDec wraps to `limit` at 0: n threads decrementing from `start` with limit L.
extern "C" __global__ void lang_atomic_dec(unsigned* counter, unsigned limit) {
  atomicDec(counter, limit);
}

// Vector types in and out of memory: sums of their components per thread.
extern "C" __global__ void lang_vectors(const short2* s, const ushort4* u, long long* out) {
  const int t = threadIdx.x;
  const short2 a = s[t];
  const ushort4 b = u[t];
  const char2 c = make_char2((signed char)1, (signed char)2);
  const uchar3 d = make_uchar3(3, 4, 5);
  const long2 e = make_long2(6, 7);
  const double4 f = make_double4(1.0, 2.0, 3.0, 4.0);
  const float1 g = make_float1(0.5f);
  const longlong4 h = make_longlong4(1, 1, 1, 1);
  const ulong4 k = make_ulong4(1, 1, 1, 1);
  const short4 m = make_short4(1, 1, 1, 1);
  const int1 n = make_int1(1);
  out[t] = a.x + a.y + b.x + b.y + b.z + b.w + c.x + c.y + d.x + d.y + d.z + e.x + e.y +
           (long long)(f.x + f.y + f.z + f.w + 2.0f * g.x) + h.x + h.y + h.z + h.w +
           (long long)(k.x + k.y + k.z + k.w) + m.x + m.y + m.z + m.w + n.x;
}
