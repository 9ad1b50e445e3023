// LayerNorm over rows of the f32 residual stream, writing the fp16 input of the next GEMM.
// The residual add itself is fused into the GEMM that precedes it (cuBLASLt, beta = 1 on the
// f32 stream), so LayerNorm only reads the stream once it holds the sum.
#include <cuda_fp16.h>

#include "common.cuh"

// Rows of up to LN_VEC * 128 values are held in registers (16-byte loads, read once).
#define LN_VEC 12

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
    // Every thread waits, idle ones too: a grid that could finish before its predecessor would
    // let the next kernel's wait pass early.
    pdl_wait();
    pdl_launch();
    if (row >= rows) return;
    const float* xr = x + (size_t)row * n;
    __half* yr = y + (size_t)row * ldy;
    const bool aligned = ((reinterpret_cast<size_t>(x) | reinterpret_cast<size_t>(gamma) | reinterpret_cast<size_t>(beta)) & 15) == 0 &&
                         (reinterpret_cast<size_t>(y) & 7) == 0;
    if (aligned && n % 4 == 0 && ldy % 4 == 0 && n <= LN_VEC * 128) {
        // Fast path: the row in registers, float4 loads, 8-byte stores.
        float4 v[LN_VEC];
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < LN_VEC; i++) {
            const int c = (i * 32 + lane) * 4;
            v[i] = c < n ? *reinterpret_cast<const float4*>(xr + c) : make_float4(0.f, 0.f, 0.f, 0.f);
            s += (v[i].x + v[i].y) + (v[i].z + v[i].w);
        }
        const float mean = warp_sum(s) / (float)n;
        float q = 0.f;
#pragma unroll
        for (int i = 0; i < LN_VEC; i++) {
            const int c = (i * 32 + lane) * 4;
            if (c < n) {
                const float a = v[i].x - mean, b = v[i].y - mean, d = v[i].z - mean, e = v[i].w - mean;
                q += (a * a + b * b) + (d * d + e * e);
            }
        }
        const float rstd = 1.f / sqrtf(warp_sum(q) / (float)n + eps);
#pragma unroll
        for (int i = 0; i < LN_VEC; i++) {
            const int c = (i * 32 + lane) * 4;
            if (c < n) {
                const float4 gm = *reinterpret_cast<const float4*>(gamma + c);
                const float4 bt = *reinterpret_cast<const float4*>(beta + c);
                __half2 lo = __floats2half2_rn((v[i].x - mean) * rstd * gm.x + bt.x, (v[i].y - mean) * rstd * gm.y + bt.y);
                __half2 hi = __floats2half2_rn((v[i].z - mean) * rstd * gm.z + bt.z, (v[i].w - mean) * rstd * gm.w + bt.w);
                uint2 out;
                out.x = *reinterpret_cast<unsigned*>(&lo);
                out.y = *reinterpret_cast<unsigned*>(&hi);
                *reinterpret_cast<uint2*>(yr + c) = out;
            }
        }
        return;
    }
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
    for (int i = lane; i < n; i += 32) yr[i] = __float2half_rn((xr[i] - mean) * rstd * gamma[i] + beta[i]);
}
