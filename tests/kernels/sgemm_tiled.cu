// sgemm_tiled.cu — C = A · B in float32: a tiled shared-memory SGEMM with register
// blocking. It is a test kernel of the toolchain (emu vs cuda vs NumPy: tiled shared
// memory, barriers) and the benchmark of the emulator's speed, not part of the library:
// the network's fully-connected layers use cuBLAS/NumPy matmul. Its launch description
// is benchmarks/sgemm_kernel.py (used by tests/test_sgemm.py and benchmarks/sgemm.py).
//
// Layout: row-major and contiguous. A is M×K, B is K×N, C is M×N (C is written, not
// accumulated into). Any M, N, K ≥ 1 works (K = 0 writes zeros); every global
// access is bounds-guarded, so no dimension needs to be a multiple of a tile. Indices
// are `int`: M·K, K·N and M·N must each stay below 2^31 (the launcher checks).
//
// Template parameters: BM×BN is the tile of C one block computes, BK the depth of
// the K slice staged in shared memory per step, TM×TN the tile of C each thread
// keeps in registers.
//
// Launch: block = (BN/TN, BM/TM, 1) threads; grid = (ceil(N/BN), ceil(M/BM), 1);
// no dynamic shared memory (static: BK·(BM+PAD) + BK·BN floats).
//
// Per K step: all threads copy A's BM×BK slice (transposed, k-major, so a thread's
// TM rows are contiguous) and B's BK×BN slice into shared memory, zero-filling
// outside the matrices; __syncthreads; each thread does BK rank-1 updates of its
// TM×TN register tile; __syncthreads before the next copy overwrites the tiles.
// Two barriers per BK·TM·TN multiply-adds: on the emulator (one fiber per CUDA
// thread, two context switches per barrier) a fat register tile and a deep BK keep
// the switch cost small. The register tile is held transposed, acc[j][i]: g++
// vectorises the update along i (TM floats of A's column, contiguous in shared
// memory, times a broadcast B value), and with acc[i][j] it chose the same axis but
// needed a transpose per step (1.6× slower on the emulator). On a GPU the layout
// of a register array is immaterial.

template <int BM, int BN, int BK, int TM, int TN>
__global__ void sgemm_tiled(const float* __restrict__ A, const float* __restrict__ B,
                            float* __restrict__ C, int M, int N, int K)
{
    constexpr int THREADS_X = BN / TN;
    constexpr int THREADS_Y = BM / TM;
    constexpr int THREADS = THREADS_X * THREADS_Y;
    // Pad the rows of the transposed A tile: without it, the k-major stores of the
    // copy (a warp writes up to 32 values of k for a few m) would all hit one
    // shared-memory bank on a GPU. 4 floats keeps each row 16-byte aligned.
    constexpr int PAD = 4;
    static_assert(BM % TM == 0 && BN % TN == 0, "the thread tile must divide the block tile");
    static_assert((BM * BK) % THREADS == 0 && (BK * BN) % THREADS == 0,
                  "every thread copies the same number of tile elements");

    __shared__ float As[BK][BM + PAD];  // As[k][m] = A[row0 + m][k0 + k]
    __shared__ float Bs[BK][BN];        // Bs[k][n] = B[k0 + k][col0 + n]

    const int tx = threadIdx.x;
    const int ty = threadIdx.y;
    const int tid = ty * THREADS_X + tx;
    const int row0 = blockIdx.y * BM;
    const int col0 = blockIdx.x * BN;
    const int am = ty * TM;  // this thread's rows within the tile
    const int bn = tx * TN;  // this thread's columns within the tile

    float acc[TN][TM];  // acc[j][i] accumulates C[row0 + am + i][col0 + bn + j]
    for (int j = 0; j < TN; ++j)
        for (int i = 0; i < TM; ++i)
            acc[j][i] = 0.0f;

    for (int k0 = 0; k0 < K; k0 += BK) {
        // A's slice: consecutive threads read consecutive k of a row (coalesced along K).
        for (int e = tid; e < BM * BK; e += THREADS) {
            const int m = e / BK;
            const int k = e % BK;
            const int r = row0 + m;
            const int c = k0 + k;
            As[k][m] = (r < M && c < K) ? A[r * K + c] : 0.0f;
        }
        // B's slice: consecutive threads read consecutive n of a row (coalesced along N).
        for (int e = tid; e < BK * BN; e += THREADS) {
            const int k = e / BN;
            const int n = e % BN;
            const int r = k0 + k;
            const int c = col0 + n;
            Bs[k][n] = (r < K && c < N) ? B[r * N + c] : 0.0f;
        }
        __syncthreads();

        for (int k = 0; k < BK; ++k) {
            float a[TM];
            float b[TN];
            for (int i = 0; i < TM; ++i)
                a[i] = As[k][am + i];
            for (int j = 0; j < TN; ++j)
                b[j] = Bs[k][bn + j];
            for (int i = 0; i < TM; ++i)
                for (int j = 0; j < TN; ++j)
                    acc[j][i] = fmaf(a[i], b[j], acc[j][i]);
        }
        __syncthreads();
    }

    const int r0 = row0 + am;
    const int c0 = col0 + bn;
    if (r0 + TM <= M && c0 + TN <= N) {
        for (int i = 0; i < TM; ++i)
            for (int j = 0; j < TN; ++j)
                C[(r0 + i) * N + c0 + j] = acc[j][i];
    } else {
        for (int i = 0; i < TM; ++i)
            for (int j = 0; j < TN; ++j)
                if (r0 + i < M && c0 + j < N)
                    C[(r0 + i) * N + c0 + j] = acc[j][i];
    }
}
