// conv_tc_forward_nhwc.cu: 2-D convolution forward (and backward data at unit stride)
// on tensor cores from channels-last operands, by mma.sync (issue 12): the body and its
// layouts in conv_tc_forward_nhwc.cuh, the engine CnTcMmaEngine there (2 x 2 warps,
// conv_tc_common.cuh).
//
// Launch: block = 128 threads; grid = (ceil(N*P*Q / BN), ceil(Kg / BM), groups);
// BN = 128 or 96, BM = 128 or 64 (default 128: three-argument names); 40 KiB (TF32)
// or 24 KiB (BF16) of static shared memory at 128 x 128.
#include "conv_tc_forward_nhwc.cuh"

template <int PREC, int BN, bool SMALL, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_forward_nhwc(const void* __restrict__ x, const void* __restrict__ w,
                     const float* __restrict__ bias, float* __restrict__ y,
                     int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                     int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    __shared__ __align__(16) CnTcKSmem<PREC, BN, BM> sm;
    CnTcMmaEngine<PREC, BN, BM> eng{sm};
    cn_tc_forward_nhwc<PREC, BN, SMALL, BM>(eng, x, w, bias, y, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups,
                                            has_bias, relu);
}
