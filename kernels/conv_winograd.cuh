// conv_winograd.cuh: the transforms of Winograd's minimal filtering F(2x2, 3x3)
// (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016), shared by
// conv_winograd_in.cu, conv_winograd_out.cu.
//
// A 2x2 output tile Y of a 3x3 correlation of a 4x4 input patch d with filter g is
//   Y = A^T [ (G g G^T) (.) (B^T d B) ] A            ((.) elementwise, 16 products)
// with
//   B^T = | 1  0 -1  0 |    G = | 1    0    0   |    A^T = | 1  1  1  0 |
//         | 0  1  1  0 |        | 1/2  1/2  1/2 |          | 0  1 -1 -1 |
//         | 0 -1  1  0 |        | 1/2 -1/2  1/2 |
//         | 0  1  0 -1 |        | 0    0    1   |
// and, by the chain rule through the same identity, the filter gradient of one tile
// with output gradient dY (2x2) is  G^T [ (A dY A^T) (.) (B^T d B) ] G.
// Every coefficient is 0, +-1 or +-1/2: the transforms are adds and exact halvings.
// The 16 transform positions xi = 4 * i + j (row i, column j of the 4x4 matrices).
//
// Each 2-D transform L X R^T is done as the 1-D one along the columns, then along the
// rows; the helpers below work in place on small register arrays.
#pragma once

// The tile an element-wise transform thread handles: ``id`` in [0, planes x N x TH x TW)
// walks tiles fastest, then images, then planes (channels or filters); (p0, q0) is the
// tile's top-left output position (2x2 tiles).
struct CnwTile { int plane, n, p0, q0; };

static __device__ __forceinline__ CnwTile cnw_tile(int id, int N, int TH, int TW)
{
    const int tiles = TH * TW;
    const int T = N * tiles;
    CnwTile tile;
    tile.plane = id / T;
    const int t = id - tile.plane * T;
    tile.n = t / tiles;
    const int r = t - tile.n * tiles;
    const int th = r / TW;
    tile.p0 = 2 * th;
    tile.q0 = 2 * (r - th * TW);
    return tile;
}

// B^T v for a 4-vector.
static __device__ __forceinline__ void cnw_bt(float& v0, float& v1, float& v2, float& v3)
{
    const float a = v0 - v2, b = v1 + v2, c = v2 - v1, d = v1 - v3;
    v0 = a; v1 = b; v2 = c; v3 = d;
}

// G v for a 3-vector, into 4 (the halvings are exact).
static __device__ __forceinline__ void cnw_g(float g0, float g1, float g2, float (&o)[4])
{
    const float t = g0 + g2;
    o[0] = g0;
    o[1] = 0.5f * (t + g1);
    o[2] = 0.5f * (t - g1);
    o[3] = g2;
}

// A^T v for a 4-vector, into 2.
static __device__ __forceinline__ void cnw_at(float v0, float v1, float v2, float v3, float (&o)[2])
{
    o[0] = v0 + v1 + v2;
    o[1] = v1 - v2 - v3;
}

// A v for a 2-vector, into 4.
static __device__ __forceinline__ void cnw_a(float v0, float v1, float (&o)[4])
{
    o[0] = v0;
    o[1] = v0 + v1;
    o[2] = v0 - v1;
    o[3] = -v1;
}

// G^T v for a 4-vector, into 3.
static __device__ __forceinline__ void cnw_gt(float v0, float v1, float v2, float v3, float (&o)[3])
{
    const float h = 0.5f * (v1 + v2);
    o[0] = v0 + h;
    o[1] = 0.5f * (v1 - v2);
    o[2] = h + v3;
}

// d <- B^T d B (4x4 input patch to its transform).
static __device__ __forceinline__ void cnw_input_tile(float (&d)[4][4])
{
#pragma unroll
    for (int j = 0; j < 4; ++j) cnw_bt(d[0][j], d[1][j], d[2][j], d[3][j]);
#pragma unroll
    for (int i = 0; i < 4; ++i) cnw_bt(d[i][0], d[i][1], d[i][2], d[i][3]);
}

// u = G g G^T (3x3 filter to its 4x4 transform).
static __device__ __forceinline__ void cnw_filter_tile(const float (&g)[3][3], float (&u)[4][4])
{
    float t[4][3];
#pragma unroll
    for (int s = 0; s < 3; ++s) {
        float o[4];
        cnw_g(g[0][s], g[1][s], g[2][s], o);
#pragma unroll
        for (int i = 0; i < 4; ++i) t[i][s] = o[i];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) cnw_g(t[i][0], t[i][1], t[i][2], u[i]);
}

// y = A^T m A (4x4 products to the 2x2 output tile).
static __device__ __forceinline__ void cnw_output_tile(const float (&m)[4][4], float (&y)[2][2])
{
    float t[2][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float o[2];
        cnw_at(m[0][j], m[1][j], m[2][j], m[3][j], o);
        t[0][j] = o[0];
        t[1][j] = o[1];
    }
#pragma unroll
    for (int i = 0; i < 2; ++i) cnw_at(t[i][0], t[i][1], t[i][2], t[i][3], y[i]);
}

// v = A dy A^T (2x2 output-gradient tile to its 4x4 transform).
static __device__ __forceinline__ void cnw_grad_tile(const float (&dy)[2][2], float (&v)[4][4])
{
    float t[4][2];
#pragma unroll
    for (int j = 0; j < 2; ++j) {
        float o[4];
        cnw_a(dy[0][j], dy[1][j], o);
#pragma unroll
        for (int i = 0; i < 4; ++i) t[i][j] = o[i];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) cnw_a(t[i][0], t[i][1], v[i]);
}

// dw = G^T s G (4x4 summed products to the 3x3 filter gradient).
static __device__ __forceinline__ void cnw_filter_grad_tile(const float (&s)[4][4], float (&dw)[3][3])
{
    float t[3][4];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        float o[3];
        cnw_gt(s[0][j], s[1][j], s[2][j], s[3][j], o);
#pragma unroll
        for (int r = 0; r < 3; ++r) t[r][j] = o[r];
    }
#pragma unroll
    for (int r = 0; r < 3; ++r) cnw_gt(t[r][0], t[r][1], t[r][2], t[r][3], dw[r]);
}
