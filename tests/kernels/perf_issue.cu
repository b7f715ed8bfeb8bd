// Small kernels with known dynamic instruction counts, for the issue term of the launch
// model (tests/test_perf_model.py): one thread per output, 1-D grid, any block size.
//
// perf_trip: each thread sums n strided loads in a rolled loop (#pragma unroll 1), so the
//   loop's one LDG runs n times per warp: its trip count is n.
// perf_fp64: the same loop, with a chain of 16 dependent double-precision FMAs per
//   iteration (FP64 pipe at 64 results per clock per SM on sm_90: 2 clocks a warp).
// perf_copy: out[i] = in[i], no loop.
// perf_rare: the rolled loop of perf_trip whose two loads are both conditional: the first
//   on a test of the data that always holds (in[] >= 0, so s >= 0: taken in every pass),
//   the second in pass 3 only. The loop still runs n times per warp.

extern "C" __global__ void perf_trip(float* __restrict__ out, const float* __restrict__ in,
                                     int n, int stride) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;
#pragma unroll 1
    for (int i = 0; i < n; ++i) s += in[i * stride + t];
    out[t] = s;
}

extern "C" __global__ void perf_fp64(float* __restrict__ out, const float* __restrict__ in,
                                     int n, int stride) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    double s = 0.0;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        double v = in[i * stride + t];
#pragma unroll
        for (int j = 0; j < 16; ++j) v = fma(v, 0.999, 1e-3 * (j + 1));
        s += v;
    }
    out[t] = (float)s;
}

extern "C" __global__ void perf_copy(float* __restrict__ out, const float* __restrict__ in) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = in[t];
}

extern "C" __global__ void perf_rare(float* __restrict__ out, const float* __restrict__ in,
                                     int n, int stride) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        if (s >= 0.0f) s += in[i * stride + t];
        if (i == 3) s *= in[t];
    }
    out[t] = s;
}
