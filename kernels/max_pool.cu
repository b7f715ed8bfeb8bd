// max_pool.cu: 2-D max-pooling (overlapping windows allowed: stride < kernel), forward
// and backward.
//
//   y[n, c, oh, ow] = max over the window rows oh*sh - ph + i (0 <= i < kh) and columns
//                     ow*sw - pw + j (0 <= j < kw) of x[n, c, ., .]
//   OH = (H + 2 ph - kh) / sh + 1, OW likewise (floor: PyTorch's default).
//
// Padding counts as -inf: it is never chosen (the host requires pad <= kernel / 2, so
// every window holds at least one element of x). Ties go to the first element in
// row-major window order; a NaN wins over every number, and the first NaN of a window
// is chosen, so NaN propagates and its position receives the gradient (pool_window.cuh).
//
// The argmax is kept as the offset i * kw + j inside the window (IndexT: unsigned char
// for windows of up to 256 elements, int above), written by max_pool_forward_index.
//
// Backward, without write races and deterministic: one thread per INPUT element
// gathers the gradients of the outputs whose windows cover it (oh in
// [ceil((h + ph - kh + 1) / sh), floor((h + ph) / sh)], ow likewise) and whose argmax
// is it, summing them in row-major output order; nothing is written twice, no
// atomics, and dx needs no zeroing. max_pool_backward reads the saved argmax;
// max_pool_backward_recompute finds each covering window's argmax again from x.
//
// Layout: NCHW float32, C-contiguous; `planes` = N * C; a plane (H * W, OH * OW) must
// have at most 2^31 - 1 - 1024 elements (ops/max_pool.py).
//
// Launch (every kernel): four elements per thread (outputs in the forward, inputs in the
// backward) of the planes laid end to end, so small maps (pool5's 6x6) leave no lane
// idle: a warp covers 128 consecutive elements whatever the plane size. The planes go
// in groups of `group` (a multiple of 4 unless 4 planes overflow 32-bit indices; the
// host makes it as large as it may on a GPU, 4 on emu); inside a group indices are
// 32-bit and the plane, row and column of an element come from multiply-high divisions
// by constants the host packs (cn_pool_div). blockDim = (256) (a multiple of 32);
// grid.x = ceil(group elements / (4 * blockDim.x)), grid.y = groups (at most 65535, few
// on emu), looping over the rest.
// Forward: the warp's 128 elements are interleaved (lane + 32 k), so loads of
// neighbouring windows coalesce and y's stores are plain coalesced floats; the uint8
// argmax of a full chunk is stored as one uchar4 per lane after a shuffle (when the
// argmax is 4-byte aligned and group * OH * OW is a multiple of 4, so every chunk starts
// at a multiple of 4 bytes), else byte by byte. Backward where kernel <= 2 x stride
// (AlexNet's 3/2; max_pool_backward<IndexT, PATH > 0>): its own launch shape, a thread per
// 8 columns of one row (cn_pool_backward_pair). Other backwards: a thread takes four
// consecutive inputs and stores them as one float4 when dx is 16-byte aligned and group
// * H * W is a multiple of 4, else element by element; each input still gathers in the
// order above, so dx is the same, bit for bit, whatever the launch shape.
#include "common.cuh"
#include "pool_window.cuh"

struct cn_pool_shape {
    int H, W, OH, OW, kh, kw, sh, sw, ph, pw;
};

static __device__ __forceinline__ cn_pool_shape cn_pool_make(int H, int W, int OH, int OW, int kh,
                                                             int kw, int sh, int sw, int ph, int pw)
{
    cn_pool_shape p;
    p.H = H; p.W = W; p.OH = OH; p.OW = OW;
    p.kh = kh; p.kw = kw; p.sh = sh; p.sw = sw; p.ph = ph; p.pw = pw;
    return p;
}

// n / d for 0 <= n < 2^31 and a divisor 1 <= d < 2^31 packed by the host
// (ops/max_pool.divisor): l = ceil(log2 d), m = floor(2^32 (2^l - d) / d) + 1,
// n / d = (umulhi(n, m) + n) >> l (Granlund & Montgomery's round-up method; the sum
// stays below 2^32 because n < 2^31).
static __device__ __forceinline__ int cn_pool_div(int n, unsigned long long d)
{
    return (int)((__umulhi((unsigned)n, (unsigned)d) + (unsigned)n) >> (unsigned)(d >> 32));
}

// The maximum of the window of output (oh, ow) in one plane and its window offset.
static __device__ __forceinline__ float cn_pool_window(const float* __restrict__ plane,
                                                       const cn_pool_shape& p, int oh, int ow,
                                                       int& offset)
{
    const int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
    int i0, i1, j0, j1;
    cn_pool_clip(h0, p.kh, p.H, i0, i1);
    cn_pool_clip(w0, p.kw, p.W, j0, j1);
    return cn_pool_max(plane + (long long)(h0 + i0) * p.W + (w0 + j0), p.W, i0, i1, j0, j1, p.kw,
                       offset);
}

// The outputs whose windows cover input row h: [lo, hi] (empty when lo > hi); `ds` is
// the packed divisor of the stride.
static __device__ __forceinline__ void cn_pool_cover(int h, int k, int s, unsigned long long ds,
                                                     int pad, int outs, int& lo, int& hi)
{
    const int first = h + pad - k + 1;  // oh * s >= first
    lo = first > 0 ? cn_pool_div(first + s - 1, ds) : 0;
    hi = min(cn_pool_div(h + pad, ds), outs - 1);
}

// The launch shape of every kernel below: the quads of this thread, one per group of
// planes. `base` is the group's first plane, `count` its elements (32-bit), `e` the
// quad's first element in the group; (pl, r, c) its plane in the group, row and column
// (rows of `cols` elements, planes of `size`).
#define CN_POOL_FOR_EACH_QUAD(base, count, e, planes, group, size)                           \
    const int e = (int)(4u * (blockIdx.x * blockDim.x + threadIdx.x));                      \
    for (long long base = (long long)blockIdx.y * (group); base < (planes);                 \
         base += (long long)gridDim.y * (group))                                            \
        for (int count = (int)min((long long)(group), (planes) - base) * (size); e < count; \
             count = 0)

// Next element of a row-major walk over planes of rows x cols.
static __device__ __forceinline__ void cn_pool_step(int& pl, int& r, int& c, int rows, int cols)
{
    if (++c == cols) {
        c = 0;
        if (++r == rows) {
            r = 0;
            ++pl;
        }
    }
}

// The forward's elements: warp w of the grid takes the 128 elements 128 w + 32 k + lane
// (k < 4) of a group, so a load instruction's lanes read consecutive windows (stride-2
// columns, few sectors) and y's stores are coalesced. The argmax bytes of a full chunk
// are moved across the warp (four shuffles of each lane's packed bytes) so that lane l
// stores elements 4l..4l+3 as one uchar4: one 128-byte store per warp.
template <typename IndexT, bool INDEX>
static __device__ __forceinline__ void cn_pool_forward(const float* __restrict__ x,
                                                       float* __restrict__ y,
                                                       IndexT* __restrict__ argmax,
                                                       long long planes, const cn_pool_shape& p,
                                                       int group, unsigned long long div_plane,
                                                       unsigned long long div_row)
{
    const int size = p.OH * p.OW;
    const bool bytes = INDEX && sizeof(IndexT) == 1 &&
                       ((unsigned long long)argmax & 3ull) == 0ull &&
                       ((long long)group * size) % 4 == 0;
    const int lane = threadIdx.x & 31;
    const int chunk = (int)(4u * ((blockIdx.x * blockDim.x + threadIdx.x) & ~31u));
    for (long long base = (long long)blockIdx.y * group; base < planes;
         base += (long long)gridDim.y * group) {
        const int count = (int)min((long long)group, planes - base) * size;
        if (chunk >= count) continue;  // the whole warp
        const float* xg = x + base * p.H * (long long)p.W;
        const long long at = base * size;
        unsigned packed = 0u;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const int e = chunk + 32 * k + lane;
            if (e < count) {
                const int pl = cn_pool_div(e, div_plane);
                const int o = e - pl * size;
                const int r = cn_pool_div(o, div_row);
                int off;
                y[at + e] = cn_pool_window(xg + (long long)pl * p.H * p.W, p, r, o - r * p.OW,
                                           off);
                if (INDEX) {
                    packed |= (unsigned)off << (8 * k);
                    if (!bytes || chunk + 128 > count) argmax[at + e] = (IndexT)off;
                }
            }
        }
        if (INDEX && bytes && chunk + 128 <= count) {
            // element 4 lane + j is element 32 k' + lane' with k' = lane / 8 and
            // lane' = 4 (lane % 8) + j: byte k' of lane' 's packed word
            const unsigned shift = 8u * (unsigned)(lane >> 3);
            unsigned char b[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                b[j] = (unsigned char)(__shfl_sync(0xffffffffu, packed, 4 * (lane & 7) + j) >> shift);
            *reinterpret_cast<uchar4*>(argmax + at + chunk + 4 * lane) =
                make_uchar4(b[0], b[1], b[2], b[3]);
        }
    }
}

// y only (no backward will follow).
extern "C" __global__ void max_pool_forward(const float* __restrict__ x, float* __restrict__ y,
                                            long long planes, int H, int W, int OH, int OW,
                                            int kh, int kw, int sh, int sw, int ph, int pw,
                                            int group, unsigned long long div_plane,
                                            unsigned long long div_row)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    cn_pool_forward<unsigned char, false>(x, y, nullptr, planes, p, group, div_plane, div_row);
}

// y and the argmax of every window (for the backward).
template <typename IndexT>
__global__ void max_pool_forward_index(const float* __restrict__ x, float* __restrict__ y,
                                       IndexT* __restrict__ argmax, long long planes, int H, int W,
                                       int OH, int OW, int kh, int kw, int sh, int sw, int ph,
                                       int pw, int group, unsigned long long div_plane,
                                       unsigned long long div_row)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    cn_pool_forward<IndexT, true>(x, y, argmax, planes, p, group, div_plane, div_row);
}

// dx, a quad of inputs per thread: each input gathers the gradients of the covering
// windows whose argmax it is (saved, or found again from x when RECOMPUTE), in
// row-major output order.
template <typename IndexT, bool RECOMPUTE>
static __device__ __forceinline__ void cn_pool_backward(
    const float* __restrict__ x, const float* __restrict__ dy, const IndexT* __restrict__ argmax,
    float* __restrict__ dx, long long planes, const cn_pool_shape& p, int group,
    unsigned long long div_plane, unsigned long long div_row, unsigned long long div_sh,
    unsigned long long div_sw)
{
    const int size = p.H * p.W, osize = p.OH * p.OW;
    const bool vec = cn_aligned16(dx) && ((long long)group * size) % 4 == 0;
    CN_POOL_FOR_EACH_QUAD(base, count, e, planes, group, size) {
        int pl = cn_pool_div(e, div_plane);
        const int o = e - pl * size;
        int h = cn_pool_div(o, div_row);
        int w = o - h * p.W;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            if (e + k < count) {
                int oh0, oh1, ow0, ow1;
                cn_pool_cover(h, p.kh, p.sh, div_sh, p.ph, p.OH, oh0, oh1);
                cn_pool_cover(w, p.kw, p.sw, div_sw, p.pw, p.OW, ow0, ow1);
                const long long plane = base + pl;
                const float* dyp = dy + plane * osize;
                float sum = 0.0f;
                for (int oh = oh0; oh <= oh1; ++oh) {
                    const int i = h - (oh * p.sh - p.ph);
                    for (int ow = ow0; ow <= ow1; ++ow) {
                        const int q = oh * p.OW + ow;
                        int chosen;
                        if (RECOMPUTE)
                            cn_pool_window(x + plane * size, p, oh, ow, chosen);
                        else
                            chosen = (int)argmax[plane * osize + q];
                        if (chosen == i * p.kw + (w - (ow * p.sw - p.pw))) sum += dyp[q];
                    }
                }
                acc[k] = sum;
            }
            cn_pool_step(pl, h, w, p.H, p.W);
        }
        const long long at = base * size + e;
        if (vec && e + 4 <= count) {
            *reinterpret_cast<float4*>(dx + at) = make_float4(acc[0], acc[1], acc[2], acc[3]);
        } else {
#pragma unroll
            for (int k = 0; k < 4; ++k)
                if (e + k < count) dx[at + k] = acc[k];
        }
    }
}

// The backward when at most two windows cover an input along each axis (kh <= 2 sh,
// kw <= 2 sw: AlexNet's 3x3 stride-2 windows): input h is covered by oh = b and
// oh = b - 1 at most, b = (h + ph) / sh, at window rows i = r and r + sh,
// r = (h + ph) - b sh (columns alike). Launch shape of this path: a thread per
// CN_POOL_PAIR_COLS columns w0.. of one input row (Q = ceil(W / COLS) threads a row, rows
// of the group's planes end to end: grid.x = ceil(rows x Q / blockDim.x)), so the row's
// two windows are found once and the columns step (b, r) without dividing; each input
// tests its (up to) four windows in row-major output order, as the general gather does
// (same bits); dx goes out as float4s when W % 4 == 0. div_h and div_q are the packed
// divisors of H and Q.
#define CN_POOL_PAIR_COLS 8  // columns per thread (ops/max_pool.PAIR_COLS), a multiple of 4

// The PAIR path's columns for sw = 2 (S2: AlexNet's 3/2): the thread's columns w0 + k,
// k < COLS, are covered by the windows cb0 - 1 .. cb0 + (COLS - 1 + R0) / 2 (cb0 = (w0 +
// pw) / 2, R0 = (w0 + pw) % 2): column k at c = k + R0 lies in window cb0 + c / 2 at
// offset c % 2 and in the one before at offset c % 2 + 2 (when < kw). Each of those
// windows' argmax and dy is read once per row (up: the window row above, lo: this one;
// -1, never an argmax, where a window does not exist), then every column sums its (up to)
// four in row-major output order, as the general path does (same bits).
template <typename IndexT, int R0>
static __device__ __forceinline__ void cn_pool_pair2_columns(
    const float* __restrict__ dyu, const float* __restrict__ dyl, const IndexT* __restrict__ au,
    const IndexT* __restrict__ al, bool up, bool lo, int cb0, int OW, int kw, int tu, int tl,
    float* acc)
{
    constexpr int WINDOWS = (CN_POOL_PAIR_COLS - 1 + R0) / 2 + 2;
    int ua[WINDOWS], la[WINDOWS];
    float ud[WINDOWS], ld[WINDOWS];
#pragma unroll
    for (int j = 0; j < WINDOWS; ++j) {
        const int cb = cb0 - 1 + j;
        const bool ok = cb >= 0 && cb < OW;
        ua[j] = up && ok ? (int)au[cb] : -1;
        ud[j] = up && ok ? dyu[cb] : 0.0f;
        la[j] = lo && ok ? (int)al[cb] : -1;
        ld[j] = lo && ok ? dyl[cb] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < CN_POOL_PAIR_COLS; ++k) {
        const int c = k + R0, r = c % 2, right = c / 2 + 1, left = right - 1;
        const bool has_left = r + 2 < kw, has_right = r < kw;
        float sum = 0.0f;
        if (has_left && ua[left] == tu + r + 2) sum += ud[left];
        if (has_right && ua[right] == tu + r) sum += ud[right];
        if (has_left && la[left] == tl + r + 2) sum += ld[left];
        if (has_right && la[right] == tl + r) sum += ld[right];
        acc[k] = sum;
    }
}

template <typename IndexT, bool S2, int R0>
static __device__ __forceinline__ void cn_pool_backward_pair(
    const float* __restrict__ dy, const IndexT* __restrict__ argmax, float* __restrict__ dx,
    long long planes, const cn_pool_shape& p, int group, unsigned long long div_h,
    unsigned long long div_q, unsigned long long div_sh, unsigned long long div_sw)
{
    const int Q = (p.W + CN_POOL_PAIR_COLS - 1) / CN_POOL_PAIR_COLS, osize = p.OH * p.OW;
    const bool vec = cn_aligned16(dx) && p.W % 4 == 0;
    const int t = (int)(blockIdx.x * blockDim.x + threadIdx.x);
    for (long long base = (long long)blockIdx.y * group; base < planes;
         base += (long long)gridDim.y * group) {
        if (t >= (int)min((long long)group, planes - base) * p.H * Q) continue;
        const int row = cn_pool_div(t, div_q);  // the row among the group's
        const int w0 = CN_POOL_PAIR_COLS * (t - row * Q);
        const int pl = cn_pool_div(row, div_h);
        const int h = row - pl * p.H;
        const int rb = cn_pool_div(h + p.ph, div_sh), rr = h + p.ph - rb * p.sh;
        int cb = cn_pool_div(w0 + p.pw, div_sw), cr = w0 + p.pw - cb * p.sw;
        // rows: upper window b - 1 (window row rr + sh), lower b (window row rr)
        const bool up = rb >= 1 && rb - 1 < p.OH && rr + p.sh < p.kh;
        const bool lo = rb < p.OH && rr < p.kh;
        const long long at_up = (base + pl) * (long long)osize + (rb - 1) * p.OW;
        const float* dyu = dy + at_up;
        const float* dyl = dyu + p.OW;
        const IndexT* au = argmax + at_up;
        const IndexT* al = au + p.OW;
        const int tu = (rr + p.sh) * p.kw, tl = rr * p.kw;
        float acc[CN_POOL_PAIR_COLS];
        if (S2) {  // p.sw == 2, cr == R0 = p.pw % 2 (w0 is a multiple of 8)
            cn_pool_pair2_columns<IndexT, R0>(dyu, dyl, au, al, up, lo, cb, p.OW, p.kw, tu, tl,
                                              acc);
        } else {
#pragma unroll
        for (int k = 0; k < CN_POOL_PAIR_COLS; ++k) {
            // columns: left window b - 1 (window column cr + sw), right b (cr); past the
            // row's end (w0 + k >= W) the sum is computed from valid windows, not stored
            const bool left = cb >= 1 && cb - 1 < p.OW && cr + p.sw < p.kw;
            const bool right = cb < p.OW && cr < p.kw;
            float sum = 0.0f;
            if (up && left && (int)au[cb - 1] == tu + cr + p.sw) sum += dyu[cb - 1];
            if (up && right && (int)au[cb] == tu + cr) sum += dyu[cb];
            if (lo && left && (int)al[cb - 1] == tl + cr + p.sw) sum += dyl[cb - 1];
            if (lo && right && (int)al[cb] == tl + cr) sum += dyl[cb];
            acc[k] = sum;
            const bool next = ++cr == p.sw;
            cr = next ? 0 : cr;
            cb = next ? cb + 1 : cb;
        }
        }
        float* out = dx + ((base + pl) * p.H + h) * (long long)p.W + w0;
#pragma unroll
        for (int k = 0; k < CN_POOL_PAIR_COLS; k += 4) {
            if (vec) {  // W % 4 == 0: the row's float4s end at W
                if (w0 + k < p.W)
                    *reinterpret_cast<float4*>(out + k) =
                        make_float4(acc[k], acc[k + 1], acc[k + 2], acc[k + 3]);
            } else {
#pragma unroll
                for (int j = k; j < k + 4; ++j)
                    if (w0 + j < p.W) out[j] = acc[j];
            }
        }
    }
}

// dx from dy and the saved argmax. PATH (ops/max_pool.backward_path): 0 the general
// gather; where at most two windows cover an input per axis (the host checks kh <= 2 sh
// and kw <= 2 sw) the PAIR path, 2 and 3 with stride-2 columns (R0 = pw % 2 = 0, 1), 1
// for other strides.
template <typename IndexT, int PATH>
__global__ void max_pool_backward(const float* __restrict__ dy, const IndexT* __restrict__ argmax,
                                  float* __restrict__ dx, long long planes, int H, int W, int OH,
                                  int OW, int kh, int kw, int sh, int sw, int ph, int pw,
                                  int group, unsigned long long div_plane,
                                  unsigned long long div_row, unsigned long long div_sh,
                                  unsigned long long div_sw)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    if (PATH > 0)
        cn_pool_backward_pair<IndexT, PATH >= 2, PATH == 3>(dy, argmax, dx, planes, p, group,
                                                            div_plane, div_row, div_sh, div_sw);
    else
        cn_pool_backward<IndexT, false>(nullptr, dy, argmax, dx, planes, p, group, div_plane,
                                        div_row, div_sh, div_sw);
}

// dx from dy and x: each covering window's argmax is found again.
extern "C" __global__ void max_pool_backward_recompute(
    const float* __restrict__ x, const float* __restrict__ dy, float* __restrict__ dx,
    long long planes, int H, int W, int OH, int OW, int kh, int kw, int sh, int sw, int ph,
    int pw, int group, unsigned long long div_plane, unsigned long long div_row,
    unsigned long long div_sh, unsigned long long div_sw)
{
    const cn_pool_shape p = cn_pool_make(H, W, OH, OW, kh, kw, sh, sw, ph, pw);
    cn_pool_backward<unsigned char, true>(x, dy, nullptr, dx, planes, p, group, div_plane,
                                          div_row, div_sh, div_sw);
}
