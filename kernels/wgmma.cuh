// wgmma.cuh: Hopper's warpgroup-level tensor-core MMA (sm_90a; issue 12).
//
//   cn_wgmma_desc(p, lbo, sbo)    a matrix descriptor: K-major, no swizzle, at shared address p
//   cn_wgmma_fence()              wgmma.fence.sync.aligned
//   cn_wgmma<PREC, N>(d, da, db, scale_d)
//                                 wgmma.mma_async.sync.aligned.m64nNk8.f32.tf32.tf32 (PREC 0)
//                                 or .m64nNk16.f32.bf16.bf16 (PREC 1), both operands K-major:
//                                 D = A B^T + (scale_d ? D : 0), N = 64, 96 or 128
//   cn_wgmma_commit()             wgmma.commit_group.sync.aligned
//   cn_wgmma_wait<N>()            wgmma.wait_group.sync.aligned N
//   cn_fence_proxy_async()        fence.proxy.async.shared::cta
//
// A warpgroup is 4 consecutive warps; its 128 threads execute each instruction together,
// with the same descriptors. A (64 x K) and B (N x K) lie in shared memory, K-major
// without swizzle: element (row, k) at start + (row % 8) * 16 + (row / 8) * SBO +
// (k % T) * size + (k / T) * LBO, T = 16 / size the elements of a 16-byte chunk (TF32 4,
// BF16 8): 8-row x 16-byte core matrices of 128 contiguous bytes. K is two chunks. d:
// float[N / 2], warp w of the group holding rows 16w + g + 8e0 and columns 8i + 2t + e1
// in d[4i + 2e0 + e1] (g = lane / 4, t = lane % 4; the layout of mma's C, N / 8 times).
// The product is asynchronous: d holds it only after a wgmma.wait_group covers its
// commit group, and until then neither d nor the operands' shared memory may be
// touched; a wgmma.fence orders earlier register accesses before the next mma_async
// (the kernels fence before each slice's batch). Data written to shared memory by
// cp.async or stores reaches the tensor core only after the writer's fence.proxy.async
// and a barrier. On emu, csrc/emu/emu_wgmma.h and emu_async_proxy.h model all of this
// and fault where a rule is broken (PTX ISA 9.7.15). The GPU build needs sm_90a (the
// module's feature_arch); the operand lists below are spelled out because PTX has no
// register ranges.
#pragma once

static __device__ __forceinline__ unsigned long long cn_wgmma_desc(const void* p, unsigned lbo, unsigned sbo)
{
#if defined(__CUDA_ARCH__)
    const unsigned long long a = (unsigned)__cvta_generic_to_shared(p);
    return ((a & 0x3ffffull) >> 4) | ((unsigned long long)((lbo >> 4) & 0x3fff) << 16) |
           ((unsigned long long)((sbo >> 4) & 0x3fff) << 32);
#else
    return emu_wgmma_desc(p, lbo, sbo);
#endif
}

static __device__ __forceinline__ void cn_wgmma_fence()
{
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#else
    emu_wgmma_fence();
#endif
}

static __device__ __forceinline__ void cn_wgmma_commit()
{
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#else
    emu_wgmma_commit();
#endif
}

template <int N>
static __device__ __forceinline__ void cn_wgmma_wait()
{
#if defined(__CUDA_ARCH__)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#else
    emu_wgmma_wait(N);
#endif
}

static __device__ __forceinline__ void cn_fence_proxy_async()
{
#if defined(__CUDA_ARCH__)
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#else
    emu_fence_proxy_async();
#endif
}

// The accumulator operands of an m64nN product (N / 2 registers): their PTX names
// (%0 ..) and their C++ bindings, each list extending the one before.
#define CN_WG_REGS32 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, " \
    "%20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define CN_WG_REGS48 CN_WG_REGS32 \
    ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define CN_WG_REGS64 CN_WG_REGS48 \
    ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define CN_WG_OUTS32 \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
    "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), \
    "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), \
    "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
#define CN_WG_OUTS48 CN_WG_OUTS32, \
    "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), \
    "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47])
#define CN_WG_OUTS64 CN_WG_OUTS48, \
    "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), \
    "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
// One wgmma.mma_async of R accumulators (N = 2R): INSTR the instruction, TAIL its
// immediates after the scale-d predicate; da, db and scale_d follow the accumulators.
#define CN_WG_MMA(INSTR, TAIL, R, A, B, P) \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #P ", 0;\n" INSTR " {" CN_WG_REGS##R "}, %" #A ", %" #B \
                 ", p, " TAIL ";\n}\n" \
                 : CN_WG_OUTS##R : "l"(da), "l"(db), "r"(scale_d))

template <int PREC, int N>
static __device__ __forceinline__ void cn_wgmma(float* d, unsigned long long da, unsigned long long db, int scale_d)
{
    static_assert(PREC == 0 || PREC == 1, "wgmma: PREC 0 (TF32) or 1 (BF16)");
    static_assert(N == 64 || N == 96 || N == 128, "wgmma: N is 64, 96 or 128 here");
#if defined(__CUDA_ARCH__)
    if constexpr (PREC == 0 && N == 64)
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n64k8.f32.tf32.tf32", "1, 1", 32, 32, 33, 34);
    else if constexpr (PREC == 0 && N == 96)
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n96k8.f32.tf32.tf32", "1, 1", 48, 48, 49, 50);
    else if constexpr (PREC == 0)
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n128k8.f32.tf32.tf32", "1, 1", 64, 64, 65, 66);
    else if constexpr (N == 64)
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", "1, 1, 0, 0", 32, 32, 33, 34);
    else if constexpr (N == 96)
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16", "1, 1, 0, 0", 48, 48, 49, 50);
    else
        CN_WG_MMA("wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", "1, 1, 0, 0", 64, 64, 65, 66);
#else
    emu_wgmma(d, N, PREC, da, db, scale_d);
#endif
}
