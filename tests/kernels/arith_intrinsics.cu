// arith_intrinsics.cu — known-answer kernels for the arithmetic intrinsics (issue 10,
// item 6; tests/test_emu_arith.py): each thread takes one input (or one tuple of
// inputs) and writes one result per intrinsic, in the order the test lists them.
// Layout: inputs are 1-D arrays of n elements; outputs are n x K, row-major.
// Launch: any 1-D grid covering n threads.

#define ARITH_UNARY 28
extern "C" __global__ void arith_float_unary(const float* x, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    float* o = out + (long long)i * ARITH_UNARY;
    o[0] = __expf(v);
    o[1] = __exp10f(v);
    o[2] = __logf(v);
    o[3] = __log2f(v);
    o[4] = __log10f(v);
    o[5] = __sinf(v);
    o[6] = __cosf(v);
    o[7] = __tanf(v);
    float s, c;
    __sincosf(v, &s, &c);
    o[8] = s;
    o[9] = c;
    o[10] = __saturatef(v);
    o[11] = rsqrtf(v);
    o[12] = __frsqrt_rn(v);
    o[13] = __frcp_rn(v);
    o[14] = __frcp_rz(v);
    o[15] = __frcp_rd(v);
    o[16] = __frcp_ru(v);
    o[17] = __fsqrt_rn(v);
    o[18] = __fsqrt_rz(v);
    o[19] = __fsqrt_rd(v);
    o[20] = __fsqrt_ru(v);
    o[21] = __int2float_rn(__float2int_rz(v));
    o[22] = __uint2float_rz(__float_as_uint(v));
    o[23] = __uint2float_rd(__float_as_uint(v));
    o[24] = __uint2float_ru(__float_as_uint(v));
    o[25] = __uint2float_rn(__float_as_uint(v));
    o[26] = __ll2float_rn((long long)__float_as_uint(v) << 20);
    o[27] = __double2float_rn((double)v * 0.5);
}

#define ARITH_BINARY 18
extern "C" __global__ void arith_float_binary(const float* a, const float* b, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = a[i], y = b[i];
    float* o = out + (long long)i * ARITH_BINARY;
    o[0] = __fdividef(x, y);
    o[1] = __powf(x, y);
    o[2] = __fadd_rn(x, y);
    o[3] = __fadd_rz(x, y);
    o[4] = __fadd_rd(x, y);
    o[5] = __fadd_ru(x, y);
    o[6] = __fsub_rn(x, y);
    o[7] = __fsub_rz(x, y);
    o[8] = __fsub_rd(x, y);
    o[9] = __fsub_ru(x, y);
    o[10] = __fmul_rn(x, y);
    o[11] = __fmul_rz(x, y);
    o[12] = __fmul_rd(x, y);
    o[13] = __fmul_ru(x, y);
    o[14] = __fdiv_rn(x, y);
    o[15] = __fdiv_rz(x, y);
    o[16] = __fdiv_rd(x, y);
    o[17] = __fdiv_ru(x, y);
}

#define ARITH_FMA 5
extern "C" __global__ void arith_fma(const float* a, const float* b, const float* c, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float* o = out + (long long)i * ARITH_FMA;
    o[0] = __fmaf_rn(a[i], b[i], c[i]);
    o[1] = __fmaf_rz(a[i], b[i], c[i]);
    o[2] = __fmaf_rd(a[i], b[i], c[i]);
    o[3] = __fmaf_ru(a[i], b[i], c[i]);
    o[4] = __fadd_rn(__fmul_rn(a[i], b[i]), c[i]);  // never contracted
}

// float -> integer in the four modes: int, unsigned, long long, unsigned long long.
extern "C" __global__ void arith_f2i(const float* x, int* i32, unsigned* u32, long long* i64,
                                     unsigned long long* u64, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float v = x[i];
    i32[4 * i + 0] = __float2int_rn(v);
    i32[4 * i + 1] = __float2int_rz(v);
    i32[4 * i + 2] = __float2int_rd(v);
    i32[4 * i + 3] = __float2int_ru(v);
    u32[4 * i + 0] = __float2uint_rn(v);
    u32[4 * i + 1] = __float2uint_rz(v);
    u32[4 * i + 2] = __float2uint_rd(v);
    u32[4 * i + 3] = __float2uint_ru(v);
    i64[4 * i + 0] = __float2ll_rn(v);
    i64[4 * i + 1] = __float2ll_rz(v);
    i64[4 * i + 2] = __float2ll_rd(v);
    i64[4 * i + 3] = __float2ll_ru(v);
    u64[4 * i + 0] = __float2ull_rn(v);
    u64[4 * i + 1] = __float2ull_rz(v);
    u64[4 * i + 2] = __float2ull_rd(v);
    u64[4 * i + 3] = __float2ull_ru(v);
}

// integer -> float in the four modes, from int and from long long.
extern "C" __global__ void arith_i2f(const int* x, const long long* y, float* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float* o = out + 8 * i;
    o[0] = __int2float_rn(x[i]);
    o[1] = __int2float_rz(x[i]);
    o[2] = __int2float_rd(x[i]);
    o[3] = __int2float_ru(x[i]);
    o[4] = __ll2float_rn(y[i]);
    o[5] = __ll2float_rz(y[i]);
    o[6] = __ll2float_rd(y[i]);
    o[7] = __ll2float_ru(y[i]);
}

#define ARITH_INT 20
extern "C" __global__ void arith_int(const unsigned* a, const unsigned* b, const unsigned* c,
                                     unsigned* out, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned x = a[i], y = b[i], z = c[i];
    unsigned* o = out + (long long)i * ARITH_INT;
    o[0] = (unsigned)__mul24((int)x, (int)y);
    o[1] = __umul24(x, y);
    o[2] = (unsigned)__mulhi((int)x, (int)y);
    o[3] = __umulhi(x, y);
    o[4] = (unsigned)__hadd((int)x, (int)y);
    o[5] = (unsigned)__rhadd((int)x, (int)y);
    o[6] = __uhadd(x, y);
    o[7] = __urhadd(x, y);
    o[8] = __sad((int)x, (int)y, z);
    o[9] = __usad(x, y, z);
    o[10] = (unsigned)__popc(x);
    o[11] = (unsigned)__clz((int)x);
    o[12] = (unsigned)__ffs((int)x);
    o[13] = __brev(x);
    o[14] = __byte_perm(x, y, z);
    o[15] = __funnelshift_l(x, y, z);
    o[16] = __funnelshift_lc(x, y, z);
    o[17] = __funnelshift_r(x, y, z);
    o[18] = __funnelshift_rc(x, y, z);
    o[19] = (unsigned)__popcll(((unsigned long long)x << 32) | y) + 100u * (unsigned)__clzll((long long)y);
}
