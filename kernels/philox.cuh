// philox.cuh: the Philox4x32-10 counter-based generator (Salmon, Moraes, Dror, Shaw,
// "Parallel random numbers: as easy as 1, 2, 3", SC 2011), the device twin of
// src/convnet/ops/philox.py. Same counter and key give the same four words on every
// device, so masks drawn from it are bit-identical on cpu, emu and cuda.
//
// Stream convention (shared with the NumPy side): key = (seed low 32, seed high 32);
// element i of a flat tensor takes word i % 4 of the block whose counter is
// (j low 32, j high 32, 0, 0), j = i / 4.
#pragma once

#define CN_PHILOX_M0 0xD2511F53u
#define CN_PHILOX_M1 0xCD9E8D57u
#define CN_PHILOX_W0 0x9E3779B9u
#define CN_PHILOX_W1 0xBB67AE85u

struct cn_philox_block {
    unsigned int w[4];
};

// One Philox round: two 32x32 -> 64 multiplies, then the S-box permutation.
static __device__ __forceinline__ void cn_philox_round(unsigned int c[4], unsigned int k0,
                                                       unsigned int k1)
{
    const unsigned long long p0 = (unsigned long long)CN_PHILOX_M0 * c[0];
    const unsigned long long p1 = (unsigned long long)CN_PHILOX_M1 * c[2];
    const unsigned int hi0 = (unsigned int)(p0 >> 32), lo0 = (unsigned int)p0;
    const unsigned int hi1 = (unsigned int)(p1 >> 32), lo1 = (unsigned int)p1;
    const unsigned int c1 = c[1], c3 = c[3];
    c[0] = hi1 ^ c1 ^ k0;
    c[1] = lo1;
    c[2] = hi0 ^ c3 ^ k1;
    c[3] = lo0;
}

// Philox4x32-10 of counter (c0, c1, c2, c3) under key (k0, k1).
static __device__ __forceinline__ cn_philox_block cn_philox4x32_10(
    unsigned int c0, unsigned int c1, unsigned int c2, unsigned int c3,
    unsigned int k0, unsigned int k1)
{
    unsigned int c[4] = {c0, c1, c2, c3};
    for (int r = 0; r < 10; ++r) {
        if (r > 0) {  // the key is bumped before every round but the first
            k0 += CN_PHILOX_W0;
            k1 += CN_PHILOX_W1;
        }
        cn_philox_round(c, k0, k1);
    }
    cn_philox_block out;
    out.w[0] = c[0];
    out.w[1] = c[1];
    out.w[2] = c[2];
    out.w[3] = c[3];
    return out;
}

// The four words for elements 4j .. 4j+3 of the stream of `seed`.
static __device__ __forceinline__ cn_philox_block cn_philox_group(unsigned long long seed,
                                                                  unsigned long long j)
{
    return cn_philox4x32_10((unsigned int)j, (unsigned int)(j >> 32), 0u, 0u,
                            (unsigned int)seed, (unsigned int)(seed >> 32));
}
