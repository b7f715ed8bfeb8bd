// conv_tc_forward_wgmma.cu: 2-D convolution forward (and backward data at unit stride)
// on tensor cores from channels-last operands, by Hopper's warpgroup MMA (issue 12;
// sm_90a only): the body and its layouts in conv_tc_forward_nhwc.cuh (the same loader,
// arithmetic order and epilogue as conv_tc_forward_nhwc.cu, so the same bits), the
// engine CnTcWgEngine in conv_tc_wgmma.cuh.
//
// Launch: block = 128 threads (one warpgroup); grid = (ceil(N*P*Q / BN), ceil(Kg / BM),
// groups); BN = 128 or 96, BM = 128 or 64 (default 128: three-argument names); dynamic
// shared memory CnTcWgEngine<PREC, BN, BM>::SHARED_BYTES (ops/conv_tc.py
// wgmma_shared_bytes: 72 KiB TF32, 36 KiB BF16 at 128 x 128).
#include "conv_tc_forward_nhwc.cuh"
#include "conv_tc_wgmma.cuh"

template <int PREC, int BN, bool SMALL, int BM = 128>
__global__ void __launch_bounds__(CN_TC_THREADS)
conv_tc_forward_wgmma(const void* __restrict__ x, const void* __restrict__ w,
                      const float* __restrict__ bias, float* __restrict__ y,
                      int N, int C, int H, int W, int K, int R, int S, int P, int Q,
                      int sh, int sw, int ph, int pw, int groups, int has_bias, int relu)
{
    extern __shared__ __align__(128) unsigned char cn_wg_smem[];
    CnTcWgEngine<PREC, BN, BM> eng{cn_wg_smem};
    cn_tc_forward_nhwc<PREC, BN, SMALL, BM>(eng, x, w, bias, y, N, C, H, W, K, R, S, P, Q, sh, sw, ph, pw, groups,
                                            has_bias, relu);
}
