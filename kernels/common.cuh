// common.cuh: small helpers shared by the elementwise kernels.
//
// Grid-stride loops over 64-bit indices: every kernel that walks a flat array takes
// its length as `long long`, and each thread starts at its global index and steps by
// the number of threads in the grid, so any grid size covers any length.
#pragma once

// The global index of the calling thread in a 1-D launch, as a 64-bit integer
// (blockIdx.x * blockDim.x overflows 32 bits for grids of more than 2^31 threads).
static __device__ __forceinline__ long long cn_global_thread()
{
    return (long long)blockIdx.x * (long long)blockDim.x + (long long)threadIdx.x;
}

// The number of threads in a 1-D grid: the stride of a grid-stride loop.
static __device__ __forceinline__ long long cn_grid_threads()
{
    return (long long)gridDim.x * (long long)blockDim.x;
}

// Whether a pointer is 16-byte aligned, so it may be read or written as float4.
static __device__ __forceinline__ bool cn_aligned16(const void* p)
{
    return ((unsigned long long)p & 15ull) == 0ull;
}
