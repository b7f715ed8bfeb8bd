// pool_window.cuh: one max-pooling window, shared by max_pool.cu and lrn_max_pool.cu so
// that both choose the same element.
//
// Window (oh, ow) covers rows h0 + i, h0 = oh * sh - ph, 0 <= i < kh (columns alike).
// Rows and columns outside the input are padding (-inf, never chosen): the window is
// clipped to i in [i0, i1), j in [j0, j1). The chosen element is the maximum, the first
// in row-major window order among equals; a NaN beats every number and the first NaN
// is chosen. Its window offset i * kw + j is the argmax the backward uses.
#pragma once

// [first, end) of the window offsets along one axis that fall inside [0, size).
static __device__ __forceinline__ void cn_pool_clip(int start, int k, int size, int& first, int& end)
{
    first = start < 0 ? -start : 0;
    end = min(k, size - start);
}

// The maximum over offsets [i0, i1) x [j0, j1) of a window whose element (i, j) is at
// p[(i - i0) * row_stride + (j - j0)], and its offset i * kw + j.
static __device__ __forceinline__ float cn_pool_max(const float* __restrict__ p, int row_stride,
                                                    int i0, int i1, int j0, int j1, int kw,
                                                    int& offset)
{
    float best = p[0];
    int where = i0 * kw + j0;
    for (int i = i0; i < i1; ++i) {
        const float* row = p + (i - i0) * row_stride;
        for (int j = j0; j < j1; ++j) {
            const float v = row[j - j0];
            // strictly greater, or the first NaN; as selects, not a branch (the emulator's
            // CPU mispredicts a data-dependent branch; a GPU predicates either way)
            const bool take = v > best || (v != v && best == best);
            best = take ? v : best;
            where = take ? i * kw + j : where;
        }
    }
    offset = where;
    return best;
}
