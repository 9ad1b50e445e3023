// Token and position embedding into the decoder's f32 residual stream.
#include <cuda_fp16.h>

#include "common.cuh"

// tokens: int [rows], row = s * t + i at position len + i; tok_emb: fp16 [n_vocab][n], or int8
// [n_vocab][n] with one fp16 scale per token in tok_scale (weight-only int8 engines; null for
// fp16); pos_emb: fp16 [n_ctx][n]; x: f32 [rows][n]; len: in device memory (graph replay). One
// block per row.
extern "C" __global__ void embed_tokens(const int* __restrict__ tokens, const void* __restrict__ tok_emb,
                                        const __half* __restrict__ tok_scale, const __half* __restrict__ pos_emb,
                                        float* __restrict__ x, int n, int t, const int* __restrict__ len_ptr) {
    pdl_wait();
    pdl_launch();
    const int len = *len_ptr;
    const int row = blockIdx.x;
    const size_t tok = (size_t)tokens[row];
    const size_t pos = (size_t)(len + row % t);
    if (tok_scale != nullptr) {
        const signed char* q = reinterpret_cast<const signed char*>(tok_emb) + tok * n;
        const float s = __half2float(tok_scale[tok]);
        for (int c = threadIdx.x; c < n; c += blockDim.x)
            x[(size_t)row * n + c] = (float)q[c] * s + __half2float(pos_emb[pos * n + c]);
    } else {
        const __half* e = reinterpret_cast<const __half*>(tok_emb) + tok * n;
        for (int c = threadIdx.x; c < n; c += blockDim.x)
            x[(size_t)row * n + c] = __half2float(e[c]) + __half2float(pos_emb[pos * n + c]);
    }
}
