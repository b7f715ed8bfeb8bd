// arith_fp_mode.cu — floating-point mode of the GPU build (issue 10, item 6;
// tests/test_emu_arith.py): FMA contraction (NVRTC -fmad=true, the default) and
// flushing of single-precision subnormals (-ftz=true, which CuPy forces).
// Layout: 1-D float arrays of n elements; launch: any 1-D grid covering n threads.

// out[i] = a*b + c in one expression (contracted into one FMA), and the same product
// and sum through __fmul_rn/__fadd_rn (never contracted). dot[i] = a running sum of
// a[i+j]*b[i+j] over 16 terms, each step one FMA on a GPU.
extern "C" __global__ void contract(const float* a, const float* b, const float* c,
                                    float* out, float* separate, float* dot, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[i] = a[i] * b[i] + c[i];
    separate[i] = __fadd_rn(__fmul_rn(a[i], b[i]), c[i]);
    float s = c[i];
    for (int j = 0; j < 16; ++j) {
        const int k = (i + j) % n;
        s += a[k] * b[k];
    }
    dot[i] = s;
}

// Subnormals: products and sums whose exact results are subnormal, subnormal inputs
// to a sum and a comparison, and a float->double conversion of a subnormal.
extern "C" __global__ void subnormal_ops(const float* x, const float* y, float* out, int* below,
                                         double* wide, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    out[3 * i + 0] = x[i] * y[i];
    out[3 * i + 1] = x[i] + y[i];
    out[3 * i + 2] = x[i] - y[i];
    below[i] = x[i] < y[i] ? 1 : 0;
    wide[i] = (double)x[i];
}
