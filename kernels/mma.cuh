// mma.cuh: warp-level tensor-core matrix multiply-accumulate (issue 12, part 1).
//
//   cn_mma_tf32(d, a, b, c)   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   cn_mma_bf16(d, a, b, c)   mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//   cn_mma_f16(d, a, b, c)    mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32
//   cn_tf32(x)                cvt.rna.tf32.f32 (round to nearest, ties away; low 13 bits 0)
//   cn_bf16x2(lo, hi)         cvt.rn.bf16x2.f32: lo in the low half (the lower k or row index)
//   cn_f16x2(lo, hi)          cvt.rn.f16x2.f32, likewise
//   cn_ldmatrix<N, TRANS>(d, row)  ldmatrix.sync.aligned.m8n8.x{N}[.trans].shared.b16
//
// d, c: float[4]; a: unsigned[4]; b: unsigned[2] (d may be c). Every lane of the warp
// must call together (the .aligned form), each holding its fragments in the layouts
// of the PTX ISA (9.7.14.5; g = lane >> 2, t = lane % 4):
//   tf32 m16n8k8:  a0 (g, t)  a1 (g+8, t)  a2 (g, t+4)  a3 (g+8, t+4);  b0 (k=t, n=g)  b1 (k=t+4, n=g)
//   16-bit m16n8k16, two elements a register, the lower index in the low half:
//                  a0 (g, 2t..2t+1)  a1 (g+8, 2t..)  a2 (g, 2t+8..)  a3 (g+8, 2t+8..);
//                  b0 (k=2t..2t+1, n=g)  b1 (k=2t+8..2t+9, n=g)
//   C/D:           c0, c1 (g, 2t, 2t+1)  c2, c3 (g+8, 2t, 2t+1)
// On a GPU these are the PTX instructions; on emu, csrc/emu/emu_mma.h gathers the 32
// lanes' registers through the same layouts and computes the product exactly as
// documented there (so a layout mistake gives the same wrong answer on both).
// ldmatrix: matrix i < N (8 x 8 16-bit elements) has its rows at the addresses `row`
// of lanes 8i .. 8i + 7 (16 bytes each, 16-byte aligned, in shared memory); lane
// (g, t) receives in d[i] the elements (row g, columns 2t, 2t+1), or with TRANS
// (rows 2t, 2t+1, column g), the lower index in the low half. A 16-bit operand stored
// one k a row (rows of 8 consecutive m or n) so reaches the fragments above by TRANS;
// on emu csrc/emu/emu_ldmatrix.h exchanges the rows through the same layouts.
#pragma once

static __device__ __forceinline__ unsigned cn_tf32(float x)
{
#if defined(__CUDA_ARCH__)
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(x));
    return r;
#else
    return emu_cvt_rna_tf32(x);
#endif
}

static __device__ __forceinline__ unsigned cn_bf16x2(float lo, float hi)
{
#if defined(__CUDA_ARCH__)
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return emu_cvt_rn_bf16x2(hi, lo);
#endif
}

static __device__ __forceinline__ unsigned cn_f16x2(float lo, float hi)
{
#if defined(__CUDA_ARCH__)
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
#else
    return emu_cvt_rn_f16x2(hi, lo);
#endif
}

static __device__ __forceinline__ void cn_mma_tf32(float* d, const unsigned* a, const unsigned* b, const float* c)
{
#if defined(__CUDA_ARCH__)
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    emu_mma_m16n8k8_tf32(d, a, b, c);
#endif
}

static __device__ __forceinline__ void cn_mma_bf16(float* d, const unsigned* a, const unsigned* b, const float* c)
{
#if defined(__CUDA_ARCH__)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    emu_mma_m16n8k16_bf16(d, a, b, c);
#endif
}

static __device__ __forceinline__ void cn_mma_f16(float* d, const unsigned* a, const unsigned* b, const float* c)
{
#if defined(__CUDA_ARCH__)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]),
                   "f"(c[0]), "f"(c[1]), "f"(c[2]), "f"(c[3]));
#else
    emu_mma_m16n8k16_f16(d, a, b, c);
#endif
}

template <int N, bool TRANS>
static __device__ __forceinline__ void cn_ldmatrix(unsigned* d, const void* row)
{
    static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
#if defined(__CUDA_ARCH__)
    const unsigned s = (unsigned)__cvta_generic_to_shared(row);
    if (N == 4 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(s) : "memory");
    else if (N == 4)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3]) : "r"(s) : "memory");
    else if (N == 2 && TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(d[0]), "=r"(d[1]) : "r"(s) : "memory");
    else if (N == 2)
        asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                     : "=r"(d[0]), "=r"(d[1]) : "r"(s) : "memory");
    else if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(d[0]) : "r"(s) : "memory");
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(d[0]) : "r"(s) : "memory");
#else
    emu_ldmatrix(d, N, TRANS, row);
#endif
}
