// LayerNorm over rows of the f32 residual stream, writing the fp16 input of the next GEMM.
// The residual add itself is fused into the GEMM that precedes it (cuBLASLt, beta = 1 on the
// f32 stream), so LayerNorm only reads the stream once it holds the sum.
#include <cuda_fp16.h>

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// One warp per row. Moments in two passes (mean, then centred variance), all in f32, like the
// CPU backend (which uses f64). y = (x - mean) / sqrt(var + eps) * gamma + beta.
// x: f32 [rows][n]; gamma, beta: f32 [n]; y: fp16 [rows][n] with row stride ldy.
extern "C" __global__ void layernorm_f32_f16(const float* __restrict__ x, const float* __restrict__ gamma,
                                             const float* __restrict__ beta, __half* __restrict__ y, int rows,
                                             int n, int ldy, float eps) {
    int row = (int)((blockIdx.x * (unsigned)blockDim.x + threadIdx.x) >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* xr = x + (size_t)row * n;
    float s = 0.f;
    for (int i = lane; i < n; i += 32) s += xr[i];
    float mean = warp_sum(s) / (float)n;
    float v = 0.f;
    for (int i = lane; i < n; i += 32) {
        float d = xr[i] - mean;
        v += d * d;
    }
    float var = warp_sum(v) / (float)n;
    float rstd = 1.f / sqrtf(var + eps);
    __half* yr = y + (size_t)row * ldy;
    for (int i = lane; i < n; i += 32) yr[i] = __float2half_rn((xr[i] - mean) * rstd * gamma[i] + beta[i]);
}
