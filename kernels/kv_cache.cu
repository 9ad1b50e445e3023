// The decoder's self-attention KV cache: [layer][slot][ctx][n] fp16 for keys and for values.
// Sequences map to slots through a slot table, so beam reordering remaps slots and copies only
// where one source continues into several beams, and then only the filled positions.
#include <cuda_fp16.h>

#include "common.cuh"

// Writes the keys and values of the new tokens of one layer. qkv: fp16 [rows][3n] (key in
// columns n..2n, value in 2n..3n); row = s * t + i goes to position len + i of slot slots[s]
// (len read from device memory, for graph replay).
// Requires n % 8 == 0 (16-byte pieces).
// The loop both appends share: store(src, dst) writes the 8 values of qkv at src (a key; the
// value is n further) to element dst of this layer's caches.
template <typename Store>
__device__ __forceinline__ void append_rows(const __half* __restrict__ qkv, const int* __restrict__ slots, int rows,
                                            int n, int t, const int* __restrict__ len_ptr, int ctx, Store store) {
    pdl_wait();
    pdl_launch();
    const int len = *len_ptr;
    const int per_row = n / 8;
    const int total = rows * per_row;
    for (int idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += gridDim.x * blockDim.x) {
        const int row = idx / per_row, c = (idx % per_row) * 8;
        const int s = row / t, i = row % t;
        store(qkv + (size_t)row * 3 * n + c + n, ((size_t)slots[s] * ctx + len + i) * n + c, c);
    }
}

// Writes the keys and values of the new tokens of one layer. qkv: fp16 [rows][3n] (key in
// columns n..2n, value in 2n..3n); row = s * t + i goes to position len + i of slot slots[s]
// (len read from device memory, for graph replay).
// Requires n % 8 == 0 (16-byte pieces).
extern "C" __global__ void kv_append(const __half* __restrict__ qkv, __half* __restrict__ k_cache,
                                     __half* __restrict__ v_cache, const int* __restrict__ slots, int rows, int n,
                                     int t, const int* __restrict__ len_ptr, int ctx) {
    append_rows(qkv, slots, rows, n, t, len_ptr, ctx, [&](const __half* src, size_t dst, int) {
        *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(src);
        *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(src + n);
    });
}

// kv_append for the int8 cache (`--int8-kv`): this layer's int8 caches [slots][ctx][n]; ks, vs:
// its scales of keys and values, f32 [n / 64].
extern "C" __global__ void kv_append_i8(const __half* __restrict__ qkv, signed char* __restrict__ k_cache,
                                        signed char* __restrict__ v_cache, const int* __restrict__ slots, int rows,
                                        int n, int t, const int* __restrict__ len_ptr, int ctx,
                                        const float* __restrict__ ks, const float* __restrict__ vs) {
    append_rows(qkv, slots, rows, n, t, len_ptr, ctx, [&](const __half* src, size_t dst, int c) {
        *reinterpret_cast<uint2*>(k_cache + dst) = quant8(src, ks[c / 64]);
        *reinterpret_cast<uint2*>(v_cache + dst) = quant8(src + n, vs[c / 64]);
    });
}

// For every layer and every pair p: positions 0..len of slot pairs[2p] are copied into slot
// pairs[2p + 1], keys and values. k_cache, v_cache: the whole cache, [n_layer][n_slots][ctx][n].
extern "C" __global__ void kv_copy(__half* __restrict__ k_cache, __half* __restrict__ v_cache,
                                   const int* __restrict__ pairs, int n_pairs, int n_layer, int n_slots, int ctx,
                                   int n, int len) {
    const size_t per_slot = (size_t)len * n / 8;  // 16-byte pieces to copy per (layer, pair)
    const size_t total = (size_t)n_layer * n_pairs * per_slot;
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t piece = idx % per_slot;
        const size_t lp = idx / per_slot;
        const int p = (int)(lp % n_pairs), l = (int)(lp / n_pairs);
        const size_t layer = (size_t)l * n_slots;
        const size_t src = (layer + pairs[2 * p]) * ctx * n + piece * 8;
        const size_t dst = (layer + pairs[2 * p + 1]) * ctx * n + piece * 8;
        *reinterpret_cast<uint4*>(k_cache + dst) = *reinterpret_cast<const uint4*>(k_cache + src);
        *reinterpret_cast<uint4*>(v_cache + dst) = *reinterpret_cast<const uint4*>(v_cache + src);
    }
}
