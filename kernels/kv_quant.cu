// The int8 KV cache (`build --int8-kv`): quantizing each window's cross K/V, and recording the
// ranges of keys and values for calibration (new self-attention keys and values: kv_append_i8 in
// kv_cache.cu). Scales are f32 [4][n_layer][n_head] (self K, self V, cross K, cross V;
// src/kv_quant.rs); a value v of head h is stored as round(v / scale) clamped to -127..127
// (round half away from zero, as the CPU reference does; quant8 in common.cuh), 0 where the
// scale is 0.
#include <cuda_fp16.h>

#include "common.cuh"

#define DH 64

// The cross-attention K/V of one window, fp16 [rows][n_layer * 2n] (layer l's keys in columns
// l*2n..l*2n+n, its values after them), into int8 of the same layout. scales: all of them,
// f32 [4][n_layer][n_head].
extern "C" __global__ void quantize_cross_kv(const __half* __restrict__ src, signed char* __restrict__ dst, int rows,
                                             int n, int n_layer, const float* __restrict__ scales) {
    const int n_head = n / DH;
    const int cols = n_layer * 2 * n;
    const size_t total = (size_t)rows * (cols / 8);
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const int c = (int)(idx % (cols / 8)) * 8;
        const int l = c / (2 * n), kind = 2 + (c % (2 * n)) / n, h = (c % n) / DH;
        const float s = scales[(kind * n_layer + l) * n_head + h];
        *reinterpret_cast<uint2*>(dst + idx * 8) = quant8(src + idx * 8, s);
    }
}

// Calibration: the largest |x| of every head of `rows` rows of x (fp16, row stride ld) over the
// columns 0..cols, folded into stats (f32 [4][n_layer][n_head], by atomic max on the bit
// patterns, which order like the values for non-negative floats). Column c belongs to segment
// c / n: layer layer0 + seg / 2, kind kind0 + seg % 2 (self K/V of one layer: kind0 0, cols 2n;
// the cross K/V of all layers: kind0 2, layer0 0, cols n_layer * 2n), head (c % n) / 64.
// Grid: (cols / 64, row blocks), 256 threads.
extern "C" __global__ void kv_absmax(const __half* __restrict__ x, int rows, long long ld, int n, int n_layer,
                                     int kind0, int layer0, float* __restrict__ stats) {
    __shared__ float red[8];
    pdl_wait();
    pdl_launch();
    const int c0 = blockIdx.x * DH;
    const int rows_per_block = (rows + gridDim.y - 1) / gridDim.y;
    const int r0 = blockIdx.y * rows_per_block, r1 = min(rows, r0 + rows_per_block);
    float m = 0.f;
    for (int idx = threadIdx.x; idx < (r1 - r0) * DH; idx += blockDim.x) {
        const int r = r0 + idx / DH, c = c0 + idx % DH;
        m = fmaxf(m, fabsf(__half2float(x[(size_t)r * ld + c])));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) m = fmaxf(m, red[w]);
        const int seg = c0 / n, h = (c0 % n) / DH;
        const int layer = layer0 + seg / 2, kind = kind0 + seg % 2;
        atomicMax(reinterpret_cast<int*>(stats) + (kind * n_layer + layer) * (n / DH) + h, __float_as_int(m));
    }
}
