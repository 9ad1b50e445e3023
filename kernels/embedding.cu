// Token and position embedding into the decoder's f32 residual stream.
#include <cuda_fp16.h>

#include "common.cuh"

// tokens: int [rows], row = s * t + i at position len + i; tok_emb: fp16 [n_vocab][n];
// pos_emb: fp16 [n_ctx][n]; x: f32 [rows][n]; len: in device memory (graph replay). One block per row.
extern "C" __global__ void embed_tokens(const int* __restrict__ tokens, const __half* __restrict__ tok_emb,
                                        const __half* __restrict__ pos_emb, float* __restrict__ x, int n, int t,
                                        const int* __restrict__ len_ptr) {
    pdl_wait();
    pdl_launch();
    const int len = *len_ptr;
    const int row = blockIdx.x;
    const size_t tok = (size_t)tokens[row];
    const size_t pos = (size_t)(len + row % t);
    for (int c = threadIdx.x; c < n; c += blockDim.x)
        x[(size_t)row * n + c] = __half2float(tok_emb[tok * n + c]) + __half2float(pos_emb[pos * n + c]);
}
