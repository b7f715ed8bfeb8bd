// Small kernels with known machine-code figures, for tests/test_perf_sass.py.
//
// perf_ffma_loop: a loop kept rolled (#pragma unroll 1) whose body is 8 independent
//   FFMAs (fmaf, no fast math, so ptxas cannot merge them) and the loop control.
// perf_nested: an outer rolled loop around an inner rolled loop of 4 FFMAs.
// perf_no_loop: straight-line code (one FFMA, no branch back).
// perf_shared<N>: N floats of static shared memory (4*N bytes), filled by a strided loop,
//   a barrier; __launch_bounds__(128).

extern "C" __global__ void perf_ffma_loop(float* __restrict__ out, const float* __restrict__ in,
                                          int n) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float b = in[t];
    float acc[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[j] = in[t + j + 1];
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[j] = fmaf(acc[j], b, 1.0f + j);
    }
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) s += acc[j];
    out[t] = s;
}

extern "C" __global__ void perf_nested(float* __restrict__ out, const float* __restrict__ in,
                                       int n, int m) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    const float b = in[t];
    float acc[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[j] = in[t + j + 1];
#pragma unroll 1
    for (int i = 0; i < n; ++i) {
        acc[0] += in[t + i];
#pragma unroll 1
        for (int k = 0; k < m; ++k) {
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[j] = fmaf(acc[j], b, 2.0f + j);
        }
    }
    out[t] = acc[0] + acc[1] + acc[2] + acc[3];
}

extern "C" __global__ void perf_no_loop(float* __restrict__ out, const float* __restrict__ in) {
    const int t = blockIdx.x * blockDim.x + threadIdx.x;
    out[t] = fmaf(in[t], in[t + 1], in[t + 2]);
}

template <int N>
__global__ void __launch_bounds__(128) perf_shared(float* __restrict__ out, const float* __restrict__ in) {
    __shared__ float tile[N];
    for (int i = threadIdx.x; i < N; i += blockDim.x) tile[i] = in[i];
    __syncthreads();
    out[threadIdx.x] = tile[(threadIdx.x * 7) % N];
}
