// wgmma_tile.cu — one warpgroup multiplies a 64 x (steps K) tile of A by an N x (steps K)
// tile of B through kernels/wgmma.cuh (K = 8 TF32 or 16 BF16 a step, chained on the same
// accumulators), so that tests compare the result with the PTX ISA's layouts and
// arithmetic, and break each rule of wgmma once (`mode`) to see the emulator object.
//
// a: (64, steps K) and b: (N, steps K), K fastest: TF32 values as float (PREC 0) or BF16
// bits (PREC 1); d: (64, N) float. Both operands go global -> dynamic shared memory by
// 16-byte cp.async in the K-major no-swizzle layout: chunk kc (16 bytes along K) of row
// r at (r / 8) * sbo + kc * lbo + (r % 8) * 16, sbo = 2 steps lbo (A at 0, B after A).
// Launch: one block of 128 threads (a warpgroup); shared_bytes = (64 + N) / 8 * sbo.
//
// mode: 0 as it should be; 1 no wgmma.fence; 2 no fence.proxy.async; 3 no wait (the
// threads end with the product in flight); 4 thread 0 overwrites a chunk of B while the
// product is in flight; 5 every thread writes its accumulators while in flight;
// 6 a descriptor with a swizzle mode; 7 a descriptor of a static __shared__ array;
// 8 read the accumulators before the wait (the old values: garbage on a GPU); 9 no
// barrier between the copies and the product (check="race").
#include "../../../kernels/cp_async.cuh"
#include "../../../kernels/wgmma.cuh"

template <int PREC, int N>
static __device__ __forceinline__ void tile(const void* a_, const void* b_, float* out, int steps, int lbo, int mode)
{
    extern __shared__ __align__(128) unsigned char smem[];
    __shared__ __align__(16) unsigned char elsewhere[1024];
    constexpr int SIZE = PREC ? 2 : 4, K = PREC ? 16 : 8;
    const int kchunks = 2 * steps, sbo = kchunks * lbo;
    const int rowbytes = steps * K * SIZE;  // = kchunks * 16
    unsigned char* sa = smem;
    unsigned char* sb = smem + 8 * sbo;  // A: 64 rows = 8 groups of 8
    const char* a = static_cast<const char*>(a_);
    const char* b = static_cast<const char*>(b_);
    for (int q = threadIdx.x; q < (64 + N) * kchunks; q += blockDim.x) {
        const bool is_b = q >= 64 * kchunks;
        const int i = is_b ? q - 64 * kchunks : q;
        const int r = i / kchunks, kc = i % kchunks;
        unsigned char* dst = (is_b ? sb : sa) + (r / 8) * sbo + kc * lbo + (r % 8) * 16;
        cn_cp_async<16>(dst, (is_b ? b : a) + r * rowbytes + kc * 16, true);
    }
    cn_cp_async_commit();
    cn_cp_async_wait_all();
    if (mode != 2) cn_fence_proxy_async();
    if (mode == 7) elsewhere[threadIdx.x] = 0;
    if (mode != 9) __syncthreads();

    float acc[N / 2];
    for (int j = 0; j < N / 2; ++j) acc[j] = __int_as_float(0x7fc00000);  // NaN: step 0 must not add it
    if (mode != 1) cn_wgmma_fence();
    for (int s = 0; s < steps; ++s) {
        unsigned long long da = cn_wgmma_desc(sa + 2 * s * lbo, lbo, sbo);
        const unsigned long long db = cn_wgmma_desc(sb + 2 * s * lbo, lbo, sbo);
        if (mode == 6) da |= 1ull << 62;
        if (mode == 7) da = cn_wgmma_desc(elsewhere, lbo, sbo);
        cn_wgmma<PREC, N>(acc, da, db, s > 0);
    }
    cn_wgmma_commit();
    if (mode == 4 && threadIdx.x == 0) *reinterpret_cast<uint4*>(sb) = make_uint4(1u, 2u, 3u, 4u);
    if (mode == 5) acc[0] = 1.0f;
    float early = 0.0f;
    if (mode == 8) early = acc[0];
    if (mode != 3) cn_wgmma_wait<0>();
    if (mode == 8) acc[0] = early;

    const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    for (int j = 0; j < N / 2; ++j) {
        const int row = 16 * w + g + 8 * ((j >> 1) & 1), col = 8 * (j >> 2) + 2 * t + (j & 1);
        out[row * N + col] = acc[j];
    }
}

extern "C" __global__ void wgmma_tf32_n64(const float* a, const float* b, float* d, int steps, int lbo, int mode) { tile<0, 64>(a, b, d, steps, lbo, mode); }
extern "C" __global__ void wgmma_tf32_n96(const float* a, const float* b, float* d, int steps, int lbo, int mode) { tile<0, 96>(a, b, d, steps, lbo, mode); }
extern "C" __global__ void wgmma_tf32_n128(const float* a, const float* b, float* d, int steps, int lbo, int mode) { tile<0, 128>(a, b, d, steps, lbo, mode); }
extern "C" __global__ void wgmma_bf16_n64(const unsigned short* a, const unsigned short* b, float* d, int steps, int lbo, int mode) { tile<1, 64>(a, b, d, steps, lbo, mode); }
extern "C" __global__ void wgmma_bf16_n96(const unsigned short* a, const unsigned short* b, float* d, int steps, int lbo, int mode) { tile<1, 96>(a, b, d, steps, lbo, mode); }
extern "C" __global__ void wgmma_bf16_n128(const unsigned short* a, const unsigned short* b, float* d, int steps, int lbo, int mode) { tile<1, 128>(a, b, d, steps, lbo, mode); }
