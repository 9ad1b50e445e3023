// Logits post-processing on the GPU: masked argmax per row, so a greedy step can copy one token
// id per sequence instead of the whole vocabulary.
#include <cuda_fp16.h>

#define NEG_INF __int_as_float(0xff800000)

// logits: f32 [rows][v]; mask: nullable u8 [v], nonzero = suppressed (-inf). ids: int [rows] gets
// the index of the largest unsuppressed logit (the lowest such index on ties, as torch.argmax);
// vals: f32 [rows] its value. One block (power-of-two threads, at most 1024) per row.
extern "C" __global__ void masked_argmax(const float* __restrict__ logits, const unsigned char* __restrict__ mask,
                                         int v, int* __restrict__ ids, float* __restrict__ vals) {
    __shared__ float best_v[1024];
    __shared__ int best_i[1024];
    const float* row = logits + (size_t)blockIdx.x * v;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < v; j += blockDim.x) {
        const float x = (mask != nullptr && mask[j]) ? NEG_INF : row[j];
        if (x > bv || (x == bv && j < bi)) {
            bv = x;
            bi = j;
        }
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            const float ov = best_v[threadIdx.x + s];
            const int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        // Every entry masked: report index 0 with -inf rather than an out-of-range id.
        ids[blockIdx.x] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
        vals[blockIdx.x] = best_v[0];
    }
}
