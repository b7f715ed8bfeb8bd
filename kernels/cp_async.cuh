// cp_async.cuh: asynchronous global -> shared copies (issue 12, part 2).
//
//   cn_cp_async<BYTES>(dst, src, valid)  cp.async.{ca,cg}.shared.global [dst], [src], BYTES, valid ? BYTES : 0
//                                        (BYTES 4, 8 or 16; .cg for 16, which bypasses L1; an invalid
//                                        copy reads nothing and writes BYTES zeros: padding, edges)
//   cn_cp_async_commit()                 cp.async.commit_group: closes this thread's open group
//   cn_cp_async_wait<N>()                cp.async.wait_group N: all but the N newest groups have landed
//   cn_cp_async_wait_all()               cp.async.wait_all
//
// The data is in shared memory only after the wait that covers its group, and other
// threads see it only after that wait and a __syncthreads. On emu the copy lands
// exactly at that wait (csrc/emu/emu_cp_async.h), so a missing wait reads old data
// there as it may on a GPU. dst and src must be aligned to BYTES. Below sm_80 (no
// cp.async) the copies are plain loads and stores and the waits do nothing.
#pragma once

template <int BYTES>
static __device__ __forceinline__ void cn_cp_async(void* dst, const void* src, bool valid)
{
    static_assert(BYTES == 4 || BYTES == 8 || BYTES == 16, "cp.async copies 4, 8 or 16 bytes");
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    const int n = valid ? BYTES : 0;
    if (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" :: "r"(s), "l"(src), "r"(n) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" :: "r"(s), "l"(src), "n"(BYTES), "r"(n)
                     : "memory");
#elif defined(__CUDA_ARCH__)
    if (BYTES == 16) *(uint4*)dst = valid ? *(const uint4*)src : make_uint4(0u, 0u, 0u, 0u);
    else if (BYTES == 8) *(uint2*)dst = valid ? *(const uint2*)src : make_uint2(0u, 0u);
    else *(unsigned*)dst = valid ? *(const unsigned*)src : 0u;
#else
    emu_cp_async(dst, src, BYTES, valid ? BYTES : 0, __FILE__, __LINE__);
#endif
}

static __device__ __forceinline__ void cn_cp_async_commit()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_commit();
#endif
}

template <int N>
static __device__ __forceinline__ void cn_cp_async_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;\n" :: "n"(N) : "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_wait(N);
#endif
}

static __device__ __forceinline__ void cn_cp_async_wait_all()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_all;\n" ::: "memory");
#elif !defined(__CUDA_ARCH__)
    emu_cp_async_commit();
    emu_cp_async_wait(0);
#endif
}
