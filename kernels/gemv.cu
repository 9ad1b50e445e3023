// Dense layers of decode steps (a few rows): y[m][n] (+)= x[m][.] · w[n][.] + bias[n], the
// weight-streaming shape that cuBLASLt serves poorly at M = 1..8. One warp per output feature
// reads its weight row with 16-byte streaming loads, eight in flight per lane (the first ones
// issued before the fused LayerNorm, the next column's during the reduction); x goes to shared
// memory once per block (normalised there when LayerNorm is fused; else when it is small, see
// xs_bytes), otherwise it stays in L1/L2. f32 accumulation, like cuBLASLt.
#include <cuda_fp16.h>

#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 4
// LayerNorm fusion keeps a row in registers: K <= 32 lanes x 10 float4.
#define GEMV_LN_VEC 10
// 16-byte weight loads per lane issued together (8: K up to 2048 in one round trip).
#define GEMV_U 8

__device__ __forceinline__ float gemv_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float gemv_gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// w: fp16 [N][K] (torch layout). bias [N] or null, in the output's type (as cuBLASLt takes it).
// Input: when ln_g is null, x is fp16 [M][ldx]. Otherwise x is the f32 residual stream [M][K]
// (K % 128 == 0, K <= 1280) and each block first computes LayerNorm(x) (two-pass moments in
// f32, gamma ln_g, beta ln_b) rounded to fp16 into shared memory: layernorm_f32_f16's numbers.
// mode: 0 fp16 out; 1 fp16 out, then exact GELU of the rounded value (gelu_f16's numbers);
// 2 f32 out; 3 f32 out added to y (the residual stream, in place). y row stride ldy.
// K % 8 == 0 and 16-byte aligned rows; ldx % 8 == 0.
// KV append (mode 0, QKV of a decoder layer, N = 3 nkv): when kc is not null, the outputs of
// columns nkv..2nkv (keys) and 2nkv..3nkv (values) of row r = s * t + i also go to position
// *len_ptr + i of cache slot slots[s] of kc / vc ([slot][ctx][nkv] fp16): kv_append's job.
// pf, pf_bytes (16-byte multiple): the next dense layer's weights, or null: on sm_90 the blocks
// ask the L2 cache to fetch them (cp.async.bulk.prefetch: no registers, no shared memory), so the
// weight stream runs on across the kernel boundary and the attention kernels between.
// Launch: GEMV_WARPS * 32 threads, xs_bytes of dynamic shared memory: M*K*2 when LayerNorm is
// fused, M*K*2 or 0 (x read from global memory) otherwise; any grid (it strides over N).
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, 5)
    gemv_f16(const __half* __restrict__ w, const void* __restrict__ xin, const float* __restrict__ ln_g,
             const float* __restrict__ ln_b, float eps, const void* __restrict__ bias, void* __restrict__ y, int M,
             int N, int K, int ldx, int ldy, int mode, int xs_bytes, __half* __restrict__ kc,
             __half* __restrict__ vc, const int* __restrict__ slots, const int* __restrict__ len_ptr, int t, int ctx,
             const unsigned char* __restrict__ pf, long long pf_bytes) {
    extern __shared__ __align__(16) __half xs[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int stride = gridDim.x * GEMV_WARPS;
    // Weight chunks in flight: GEMV_U 16-byte loads per lane (K <= 32 * 8 * GEMV_U in one round).
    uint4 wv[GEMV_U];
    auto load = [&](int n, int k0) {
        const __half* wr = w + (size_t)n * K;
#pragma unroll
        for (int u = 0; u < GEMV_U; u++) {
            const int k = k0 + u * 256;
            wv[u] = (n < N && k < K) ? __ldcs(reinterpret_cast<const uint4*>(wr + k)) : make_uint4(0u, 0u, 0u, 0u);
        }
    };
    int n = blockIdx.x * GEMV_WARPS + warp;
    // The first weights are on their way while the block normalises its input. They never
    // depend on an earlier kernel, so under Programmatic Dependent Launch they are issued before
    // the wait (while the previous kernel finishes); x, y and everything else only after it.
    load(n, lane * 8);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (pf != nullptr) {
        const long long share = (pf_bytes / gridDim.x + 15) & ~15LL;
        const long long b1 = min(pf_bytes, share * (blockIdx.x + 1));
        for (long long o = share * blockIdx.x + threadIdx.x * 4096LL; o < b1; o += blockDim.x * 4096LL) {
            const unsigned size = (unsigned)min(4096LL, b1 - o);
            asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(pf + o), "r"(size) : "memory");
        }
    }
#endif
    // The bias is a weight too: read before the wait (the next column's during a reduction).
    auto bias_of = [&](int c) -> float {
        if (bias == nullptr || c >= N) return 0.f;
        return mode < 2 ? __half2float(reinterpret_cast<const __half*>(bias)[c]) : reinterpret_cast<const float*>(bias)[c];
    };
    float bn = bias_of(n);
    pdl_launch();
    pdl_wait();
    const __half* x = reinterpret_cast<const __half*>(xin);
    int lx = ldx;
    if (ln_g != nullptr) {
        const float* xf = reinterpret_cast<const float*>(xin);
        for (int m = warp; m < M; m += GEMV_WARPS) {
            const float4* xr = reinterpret_cast<const float4*>(xf + (size_t)m * K);
            float4 v[GEMV_LN_VEC];
            float s = 0.f;
#pragma unroll
            for (int j = 0; j < GEMV_LN_VEC; j++) {
                const int i = j * 32 + lane;
                v[j] = i * 4 < K ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);
                s += (v[j].x + v[j].y) + (v[j].z + v[j].w);
            }
            const float mean = gemv_warp_sum(s) / (float)K;
            float q = 0.f;
#pragma unroll
            for (int j = 0; j < GEMV_LN_VEC; j++) {
                if ((j * 32 + lane) * 4 < K) {
                    const float a = v[j].x - mean, b = v[j].y - mean, c = v[j].z - mean, d = v[j].w - mean;
                    q += a * a + b * b + c * c + d * d;
                }
            }
            const float rstd = 1.f / sqrtf(gemv_warp_sum(q) / (float)K + eps);
#pragma unroll
            for (int j = 0; j < GEMV_LN_VEC; j++) {
                const int i = (j * 32 + lane) * 4;
                if (i < K) {
                    const float4 g = *reinterpret_cast<const float4*>(ln_g + i);
                    const float4 b = *reinterpret_cast<const float4*>(ln_b + i);
                    __half2* o = reinterpret_cast<__half2*>(xs + (size_t)m * K + i);
                    o[0] = __floats2half2_rn((v[j].x - mean) * rstd * g.x + b.x, (v[j].y - mean) * rstd * g.y + b.y);
                    o[1] = __floats2half2_rn((v[j].z - mean) * rstd * g.z + b.z, (v[j].w - mean) * rstd * g.w + b.w);
                }
            }
        }
        __syncthreads();
        x = xs;
        lx = K;
    } else if (xs_bytes > 0) {
        const int per_row = K >> 3;
        for (int idx = threadIdx.x; idx < M * per_row; idx += blockDim.x) {
            const int m = idx / per_row, c = (idx - m * per_row) * 8;
            *reinterpret_cast<uint4*>(xs + (size_t)m * K + c) = *reinterpret_cast<const uint4*>(x + (size_t)m * ldx + c);
        }
        __syncthreads();
        x = xs;
        lx = K;
    }
    const int len = kc != nullptr ? *len_ptr : 0;
    const int nkv = N / 3;
    for (; n < N; n += stride) {
        // Residual: lane m fetches row m's old value now, not after the reduction.
        const float y_old = (mode == 3 && lane < M) ? reinterpret_cast<const float*>(y)[(size_t)lane * ldy + n] : 0.f;
        float acc[GEMV_MAX_M];
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++) acc[m] = 0.f;
        for (int k0 = lane * 8; k0 < K; k0 += 256 * GEMV_U) {
            if (k0 != lane * 8) load(n, k0);
#pragma unroll
            for (int u = 0; u < GEMV_U; u++) {
                const int k = k0 + u * 256;
                if (k >= K) break;
                const __half2* w2 = reinterpret_cast<const __half2*>(&wv[u]);
                float2 wf[4];
#pragma unroll
                for (int j = 0; j < 4; j++) wf[j] = __half22float2(w2[j]);
#pragma unroll
                for (int m = 0; m < GEMV_MAX_M; m++) {
                    if (m < M) {
                        const uint4 xv = *reinterpret_cast<const uint4*>(x + (size_t)m * lx + k);
                        const __half2* x2 = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            const float2 xf = __half22float2(x2[j]);
                            acc[m] = fmaf(wf[j].x, xf.x, acc[m]);
                            acc[m] = fmaf(wf[j].y, xf.y, acc[m]);
                        }
                    }
                }
            }
        }
        // The next column's first weights load during this one's reduction.
        if (n + stride < N) load(n + stride, lane * 8);
        const float bn_next = bias_of(n + stride);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++) {
            if (m < M) {
                const float v = gemv_warp_sum(acc[m]) + bn;
                const float old = __shfl_sync(0xffffffffu, y_old, m);
                if (lane == 0) {
                    const size_t at = (size_t)m * ldy + n;
                    if (mode == 0) {
                        const __half h = __float2half_rn(v);
                        reinterpret_cast<__half*>(y)[at] = h;
                        if (kc != nullptr && n >= nkv) {
                            const int sq = m / t, i = m - sq * t;
                            const size_t pos = ((size_t)slots[sq] * ctx + len + i) * nkv;
                            if (n < 2 * nkv) kc[pos + n - nkv] = h;
                            else vc[pos + n - 2 * nkv] = h;
                        }
                    } else if (mode == 1) {
                        reinterpret_cast<__half*>(y)[at] = __float2half_rn(gemv_gelu(__half2float(__float2half_rn(v))));
                    } else if (mode == 2) {
                        reinterpret_cast<float*>(y)[at] = v;
                    } else {
                        reinterpret_cast<float*>(y)[at] = old + v;
                    }
                }
            }
        }
        bn = bn_next;
    }
}
