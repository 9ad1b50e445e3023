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

// acc + the 8 fp16 weights in wv times the 8 fp16 inputs in xv: every GEMV kernel's inner step,
// in one order of fmaf (so they all give the same bits).
__device__ __forceinline__ float gemv_dot8(const uint4& wv, const uint4& xv, float acc) {
    const __half2* w2 = reinterpret_cast<const __half2*>(&wv);
    const __half2* x2 = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const float2 wf = __half22float2(w2[j]);
        const float2 xf = __half22float2(x2[j]);
        acc = fmaf(wf.x, xf.x, acc);
        acc = fmaf(wf.y, xf.y, acc);
    }
    return acc;
}

// acc[m] += gemv_dot8 of wv and row m's 8 inputs at column k of x (row stride lx), rows m < M.
__device__ __forceinline__ void gemv_fma_rows(const uint4& wv, const __half* x, int lx, int k, int M,
                                              float (&acc)[GEMV_MAX_M]) {
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++) {
        if (m < M) acc[m] = gemv_dot8(wv, *reinterpret_cast<const uint4*>(x + (size_t)m * lx + k), acc[m]);
    }
}

// Output feature c's bias, in the output's type (fp16 for modes 0-1, f32 for 2-3); 0 without one.
__device__ __forceinline__ float gemv_bias(const void* __restrict__ bias, int mode, int c) {
    if (bias == nullptr) return 0.f;
    return mode < 2 ? __half2float(reinterpret_cast<const __half*>(bias)[c]) : reinterpret_cast<const float*>(bias)[c];
}

// LayerNorm (two-pass moments in f32, gamma ln_g, beta ln_b) of the M f32 rows of K at xf into
// fp16 rows at xs: layernorm_f32_f16's numbers. Warp `warp` of `warps` takes rows warp, warp +
// warps, ...; K % 128 == 0, K <= 32 * 4 * GEMV_LN_VEC (a row stays in registers).
__device__ __forceinline__ void gemv_layernorm(const float* __restrict__ xf, const float* __restrict__ ln_g,
                                               const float* __restrict__ ln_b, float eps, __half* xs, int M, int K,
                                               int warp, int warps, int lane) {
    for (int m = warp; m < M; m += warps) {
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
}

// Output feature n of row m, value v (bias added; old: the residual's value in mode 3), as `mode`
// says; the QKV mode also appends the key or value to the cache (see gemv_f16).
__device__ __forceinline__ void gemv_store(void* __restrict__ y, int ldy, int mode, int m, int n, float v, float old,
                                           int nkv, __half* __restrict__ kc, __half* __restrict__ vc,
                                           const int* __restrict__ slots, int len, int t, int ctx) {
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
// Launch: GEMV_WARPS * 32 threads, xs_bytes of dynamic shared memory: M*K*2 when LayerNorm is
// fused, M*K*2 or 0 (x read from global memory) otherwise; any grid (it strides over N).
extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32, 5)
    gemv_f16(const __half* __restrict__ w, const void* __restrict__ xin, const float* __restrict__ ln_g,
             const float* __restrict__ ln_b, float eps, const void* __restrict__ bias, void* __restrict__ y, int M,
             int N, int K, int ldx, int ldy, int mode, int xs_bytes, __half* __restrict__ kc,
             __half* __restrict__ vc, const int* __restrict__ slots, const int* __restrict__ len_ptr, int t, int ctx) {
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
    // The bias is a weight too: read before the wait (the next column's during a reduction).
    auto bias_of = [&](int c) -> float { return c < N ? gemv_bias(bias, mode, c) : 0.f; };
    float bn = bias_of(n);
    pdl_launch();
    pdl_wait();
    const __half* x = reinterpret_cast<const __half*>(xin);
    int lx = ldx;
    if (ln_g != nullptr) {
        gemv_layernorm(reinterpret_cast<const float*>(xin), ln_g, ln_b, eps, xs, M, K, warp, GEMV_WARPS, lane);
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
                gemv_fma_rows(wv[u], x, lx, k, M, acc);
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
                if (lane == 0) gemv_store(y, ldy, mode, m, n, v, old, nkv, kc, vc, slots, len, t, ctx);
            }
        }
        bn = bn_next;
    }
}

// ---- One input row, weights streamed through a shared-memory ring ---------------------------
// The decode step at batch 1 is a chain of ~260 short kernels, each too short for gemv_f16's
// warps (one output feature at a time, 2.5 KB in flight per warp at K = 1280) to reach the
// memory's rate before it ends: there, a dense layer's time follows the bytes in flight per
// multiprocessor. gemv1_f16 keeps G1A_DEPTH 16-byte copies per lane in flight all the way
// through: each warp owns a contiguous share of rows [r0, r1), and with 16-byte chunk c of lane l
// of row j at column c*256 + l*8 its weights are one linear stream (item i at w + r0*K + l*8 +
// i*256), copied by cp.async into a per-warp shared-memory ring (one commit group per item) and
// consumed and refilled slot by slot across row ends. Each lane reads back only the chunks it
// copied itself, so waiting on its own groups is all the ordering needed. The first G1A_DEPTH
// items are requested before griddepcontrol.wait (weights never depend on an earlier kernel).
// Two blocks of G1_WARPS warps per multiprocessor: 192 KB in flight on each.
// Measured (H200, large-v2 batch 1 CUDA-graph step, whisper-trt bench --engine): 1.747 / 1.756 ms;
// the same stream through a 16-slot register ring (128 KB per multiprocessor; commit 30d6414)
// 1.829 / 1.827 in the same run, and with one block per multiprocessor (leaving room for the next
// kernel to start early under PDL) 1.883 / 1.890; earlier, with the attention kernels of then,
// the register ring 2.01 at two blocks, 2.50 at one, 3.58 with 4 warps, against 2.31-2.34 for
// gemv_f16 and 3.29 for a kernel that bulk-copied each block's whole weight slice to shared
// memory before the wait (one block per multiprocessor; commit 30d6414).
// Sums in gemv_f16's order (per lane k ascending, the same fmaf sequence, the same warp
// reduction), so both kernels give the same bits.
// M = 1 only; K % 256 == 0 and K <= G1_MAX_K; with LayerNorm (x the f32 residual row) K <= 1280.
// Arguments as gemv_f16 (y row 0 only: no ldx/ldy). Launch: 32 to G1_WARPS * 32 threads (whole
// warps), any grid; dynamic shared memory warps * G1A_DEPTH * 512 bytes.
#define G1_WARPS 8
#define G1A_DEPTH 24
#define G1_MAX_K 5120

// The end of row `row` (j-th of the warp's rows): the warp's sum, bias and residual, stored. Kept
// out of line: the unrolled loop calls it once per row, and inlined G1A_DEPTH times it costs
// registers.
__device__ __noinline__ void gemv1_finish(float s, int j, int row, float bias_lane, float old_lane,
                                          const void* __restrict__ bias, void* __restrict__ y, int N, int mode,
                                          int nkv, __half* __restrict__ kc, __half* __restrict__ vc,
                                          const int* __restrict__ slots, int len, int t, int ctx,
                                          const __half* __restrict__ scales, float scale_lane) {
    float v = gemv_warp_sum(s);
    float bn = 0.f, old = 0.f;
    if (j < 32) {
        bn = __shfl_sync(0xffffffffu, bias_lane, j);
        old = __shfl_sync(0xffffffffu, old_lane, j);
        if (scales != nullptr) v *= __shfl_sync(0xffffffffu, scale_lane, j);
    } else {
        bn = gemv_bias(bias, mode, row);
        if (mode == 3) old = reinterpret_cast<const float*>(y)[row];
        if (scales != nullptr) v *= __half2float(scales[row]);
    }
    if ((threadIdx.x & 31) == 0) gemv_store(y, N, mode, 0, row, v + bn, old, nkv, kc, vc, slots, len, t, ctx);
}

// gemv1_f16's input, after the wait: LayerNorm of the f32 row (ln_g set) or the fp16
// row, into xs (K values; the caller synchronises the block before reading it).
__device__ __forceinline__ void gemv1_stage_x(const void* __restrict__ xin, const float* __restrict__ ln_g,
                                              const float* __restrict__ ln_b, float eps, __half* xs, int K, int warp,
                                              int warps, int lane) {
    if (ln_g != nullptr) {
        gemv_layernorm(reinterpret_cast<const float*>(xin), ln_g, ln_b, eps, xs, 1, K, warp, warps, lane);
    } else {
        const uint4* x8 = reinterpret_cast<const uint4*>(xin);
        for (int i = threadIdx.x; i < (K >> 3); i += blockDim.x) reinterpret_cast<uint4*>(xs)[i] = x8[i];
    }
}

__device__ __forceinline__ void g1a_copy(void* smem, const void* gmem) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned)__cvta_generic_to_shared(smem)), "l"(gmem)
                 : "memory");
}
__device__ __forceinline__ void g1a_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void g1a_wait_oldest() { asm volatile("cp.async.wait_group %0;" ::"n"(G1A_DEPTH - 1) : "memory"); }

extern "C" __global__ void __launch_bounds__(G1_WARPS * 32)
    gemv1_f16(const __half* __restrict__ w, const void* __restrict__ xin, const float* __restrict__ ln_g,
              const float* __restrict__ ln_b, float eps, const void* __restrict__ bias, void* __restrict__ y, int N,
              int K, int mode, __half* __restrict__ kc, __half* __restrict__ vc, const int* __restrict__ slots,
              const int* __restrict__ len_ptr, int t, int ctx) {
    __shared__ __align__(16) __half xs[G1_MAX_K];
    extern __shared__ __align__(16) uint4 ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const long long W = (long long)gridDim.x * warps, gw = (long long)blockIdx.x * warps + warp;
    const int r0 = (int)(N * gw / W), r1 = (int)(N * (gw + 1) / W);
    const int cpr = K >> 8;
    const int total = (r1 - r0) * cpr;
    const uint4* ws = reinterpret_cast<const uint4*>(w + (size_t)r0 * K + lane * 8);
    uint4* my = ring + (size_t)warp * G1A_DEPTH * 32 + lane;  // slot s of this lane: my[s * 32]
#pragma unroll
    for (int u = 0; u < G1A_DEPTH; u++) {
        if (u < total) g1a_copy(my + u * 32, ws + (size_t)u * 32);
        g1a_commit();
    }
    const float bias_lane = r0 + lane < r1 ? gemv_bias(bias, mode, r0 + lane) : 0.f;
    // LayerNorm's gamma and beta are weights too: into L1 before the wait, so that the
    // normalisation after it waits on one round trip (x), not two.
    if (ln_g != nullptr && warp == warps - 1) {
        for (int i = lane * 32; i < K; i += 32 * 32) {
            asm volatile("prefetch.global.L1 [%0];" ::"l"(ln_g + i));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(ln_b + i));
        }
    }
    pdl_launch();
    pdl_wait();
    gemv1_stage_x(xin, ln_g, ln_b, eps, xs, K, warp, warps, lane);
    const float old_lane = (mode == 3 && r0 + lane < r1) ? reinterpret_cast<const float*>(y)[r0 + lane] : 0.f;
    const int len = kc != nullptr ? *len_ptr : 0;
    const int nkv = N / 3;
    __syncthreads();
    float s = 0.f;
    int c = 0, row = r0;
    for (int base = 0; base < total; base += G1A_DEPTH) {
#pragma unroll
        for (int u = 0; u < G1A_DEPTH; u++) {
            const int i = base + u;
            if (i < total) {  // the same in every lane
                g1a_wait_oldest();  // item i (committed G1A_DEPTH groups ago) has landed
                const uint4 wv = my[u * 32];
                const uint4 xv = *reinterpret_cast<const uint4*>(xs + c * 256 + lane * 8);
                s = gemv_dot8(wv, xv, s);
                if (i + G1A_DEPTH < total) g1a_copy(my + u * 32, ws + (size_t)(i + G1A_DEPTH) * 32);
                g1a_commit();
                if (++c == cpr) {
                    gemv1_finish(s, row - r0, row, bias_lane, old_lane, bias, y, N, mode, nkv, kc, vc, slots, len, t, ctx,
                                 nullptr, 1.f);
                    s = 0.f;
                    c = 0;
                    row++;
                }
            }
        }
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
}

// ---- int8 weights (weight-only quantization, issue 4) -----------------------------------------
// w: int8 [N][K] (torch layout) with one fp16 scale per output feature: weight (n, k) is
// w[n][k] * scales[n]. The kernels sum q * x in f32 and multiply the sum by the row's scale
// before the bias, so each weight byte is streamed once and never widened to fp16 in memory.
// Everything else (LayerNorm fusion, modes, KV append, PDL) as the fp16 kernels above.

// acc + the 8 unpacked weights wf times the 8 fp16 inputs in xv (ascending k).
__device__ __forceinline__ float gemv_dot8_i8(const float (&wf)[8], const uint4& xv, float acc) {
    const __half2* x2 = reinterpret_cast<const __half2*>(&xv);
#pragma unroll
    for (int j = 0; j < 4; j++) {
        const float2 xf = __half22float2(x2[j]);
        acc = fmaf(wf[2 * j], xf.x, acc);
        acc = fmaf(wf[2 * j + 1], xf.y, acc);
    }
    return acc;
}

// ---- int8 weights at a few rows (M <= 8) on the tensor cores ---------------------------------
// A GEMV with per-row FMAs (gemv_f16) runs out of issue slots before bandwidth at 5-8 rows; here
// one mma.sync m16n8k16 multiplies 16 output features (the mma's rows, from the int8 weights
// converted to fp16 in registers: exact) by the 8 input rows (the mma's columns; rows past M are
// zeros). A block of GMI_WARPS warps owns 16 features; warp j takes the k32 tiles j, j + GMI_WARPS,
// ..., the partial sums meet in shared memory, and 128 threads finish the 16 x 8 outputs (scale,
// bias, mode, KV append as gemv_f16). The k index inside a k32 tile is only a labelling (as in
// gemm_w8.cu): lane (g = lane / 4, c = lane % 4) loads bytes 8c..8c+7 of weight rows g and g + 8
// (8-byte streaming loads, GMI_U tiles in flight, the first before the PDL wait) and halves
// 8c..8c+7 of input row g (one 16-byte shared load); mma step s takes k 8c+4s..8c+4s+3 of both.
// Arguments as gemv_i8 would take them (gemv_f16's plus `scales`); K % 32 == 0, K <= G1_MAX_K.
// Launch: ceil(N / 16) blocks of GMI_WARPS * 32 threads, 8 * K * 2 bytes of dynamic shared memory
// (the input rows, LayerNorm applied when ln_g is set).
#define GMI_WARPS 8
#define GMI_U 4

// Four int8 (bytes 0..3 of q) as two fp16 pairs, lo = (byte 0, byte 1), hi = (byte 2, byte 3):
// q ^ 0x80 (q + 128) under the fp16 exponent of 1024 by a byte permute, then - 1152 (exact).
__device__ __forceinline__ void gmi_cvt4(unsigned q, unsigned& lo, unsigned& hi) {
    const unsigned u = q ^ 0x80808080u;
    const unsigned l = __byte_perm(u, 0x64646464u, 0x5150), h = __byte_perm(u, 0x64646464u, 0x5352);
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(lo) : "r"(l), "r"(0x64806480u));
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(hi) : "r"(h), "r"(0x64806480u));
}

__device__ __forceinline__ void gmi_mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(GMI_WARPS * 32)
    gemv_mma_i8(const signed char* __restrict__ w, const __half* __restrict__ scales, const void* __restrict__ xin,
                const float* __restrict__ ln_g, const float* __restrict__ ln_b, float eps, const void* __restrict__ bias,
                void* __restrict__ y, int M, int N, int K, int ldx, int ldy, int mode, __half* __restrict__ kc,
                __half* __restrict__ vc, const int* __restrict__ slots, const int* __restrict__ len_ptr, int t, int ctx) {
    extern __shared__ __align__(16) __half xs[];  // [8][K]
    __shared__ float part[GMI_WARPS][16][9];      // (padded: the finishing threads read across warps)
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, c = lane & 3;
    const int n0 = blockIdx.x * 16;
    const int tiles = K >> 5;
    // Rows past N read row N - 1 (never stored).
    const signed char* wa = w + (size_t)min(n0 + g, N - 1) * K + 8 * c;
    const signed char* wb = w + (size_t)min(n0 + g + 8, N - 1) * K + 8 * c;
    uint2 qa[GMI_U], qb[GMI_U];
    auto load = [&](int j, int tile) {
        if (tile < tiles) {
            qa[j] = __ldcs(reinterpret_cast<const uint2*>(wa + tile * 32));
            qb[j] = __ldcs(reinterpret_cast<const uint2*>(wb + tile * 32));
        }
    };
#pragma unroll
    for (int j = 0; j < GMI_U; j++) load(j, warp + j * GMI_WARPS);
    // The finishing thread's feature f and row m: its scale and bias are weights too.
    const int f = threadIdx.x >> 3, m = threadIdx.x & 7, n = n0 + f;
    const bool fin = threadIdx.x < 128 && n < N && m < M;
    const float sc = fin ? __half2float(scales[n]) : 0.f, bn = fin ? gemv_bias(bias, mode, n) : 0.f;
    pdl_launch();
    pdl_wait();
    if (ln_g != nullptr) {
        gemv_layernorm(reinterpret_cast<const float*>(xin), ln_g, ln_b, eps, xs, M, K, warp, GMI_WARPS, lane);
    } else {
        const __half* x = reinterpret_cast<const __half*>(xin);
        const int per_row = K >> 3;
        for (int idx = threadIdx.x; idx < M * per_row; idx += blockDim.x) {
            const int r = idx / per_row, col = (idx - r * per_row) * 8;
            *reinterpret_cast<uint4*>(xs + (size_t)r * K + col) = *reinterpret_cast<const uint4*>(x + (size_t)r * ldx + col);
        }
    }
    for (int idx = threadIdx.x; idx < (8 - M) * (K >> 3); idx += blockDim.x)
        reinterpret_cast<uint4*>(xs + (size_t)M * K)[idx] = make_uint4(0u, 0u, 0u, 0u);
    const float old = (fin && mode == 3) ? reinterpret_cast<const float*>(y)[(size_t)m * ldy + n] : 0.f;
    const int len = kc != nullptr ? *len_ptr : 0;
    __syncthreads();
    float acc[4] = {0.f, 0.f, 0.f, 0.f};
    const __half* xr = xs + (size_t)g * K + 8 * c;
    for (int base = warp; base < tiles; base += GMI_U * GMI_WARPS) {
#pragma unroll
        for (int j = 0; j < GMI_U; j++) {
            const int tile = base + j * GMI_WARPS;
            if (tile < tiles) {
                const uint4 xv = *reinterpret_cast<const uint4*>(xr + tile * 32);
                unsigned a[4];
                gmi_cvt4(qa[j].x, a[0], a[2]);
                gmi_cvt4(qb[j].x, a[1], a[3]);
                gmi_mma(acc, a, xv.x, xv.y);
                gmi_cvt4(qa[j].y, a[0], a[2]);
                gmi_cvt4(qb[j].y, a[1], a[3]);
                gmi_mma(acc, a, xv.z, xv.w);
                load(j, tile + GMI_U * GMI_WARPS);
            }
        }
    }
    // C fragment: acc[0..1] feature g, rows 2c and 2c + 1; acc[2..3] feature g + 8.
    part[warp][g][2 * c] = acc[0];
    part[warp][g][2 * c + 1] = acc[1];
    part[warp][g + 8][2 * c] = acc[2];
    part[warp][g + 8][2 * c + 1] = acc[3];
    __syncthreads();
    if (fin) {
        float v = 0.f;
#pragma unroll
        for (int j = 0; j < GMI_WARPS; j++) v += part[j][f][m];
        gemv_store(y, ldy, mode, m, n, v * sc + bn, old, N / 3, kc, vc, slots, len, t, ctx);
    }
}

// gemv1_f16 with int8 weights. The warp's rows r0..r1 are one contiguous run of (r1 - r0) * K
// bytes, streamed as in gemv1_f16 in 16-byte items (item i of lane l: bytes i * 512 + l * 16 of
// the run, copied by cp.async.cg into the same shared-memory ring). With K % 16 == 0 a lane's 16
// bytes never straddle two rows, but an item can (K = 1280 is 2.5 items): each lane tracks the
// row and column of its own chunk, and where rows end inside an item the warp finishes each of
// them with the lanes whose chunk lies in it (plus every lane's partial sum from earlier items).
// (Items of 8 bytes, lane l always at columns c * 256 + l * 8 as in gemv1_f16, measured slower
// than the fp16 kernel: H200, large-v2 batch 1 step 1.866 ms against 1.625.)
// Arguments as gemv1_f16 plus `scales`; launch as gemv1_f16 (same ring bytes). K % 16 == 0.
__device__ __forceinline__ float gemv_dot16_i8(const uint4& q, const __half* x, float acc) {
    float wf[8];
    unpack_i8x8(make_uint2(q.x, q.y), wf);
    acc = gemv_dot8_i8(wf, *reinterpret_cast<const uint4*>(x), acc);
    unpack_i8x8(make_uint2(q.z, q.w), wf);
    return gemv_dot8_i8(wf, *reinterpret_cast<const uint4*>(x + 8), acc);
}

extern "C" __global__ void __launch_bounds__(G1_WARPS * 32)
    gemv1_i8(const signed char* __restrict__ w, const __half* __restrict__ scales, const void* __restrict__ xin,
             const float* __restrict__ ln_g, const float* __restrict__ ln_b, float eps, const void* __restrict__ bias,
             void* __restrict__ y, int N, int K, int mode, __half* __restrict__ kc, __half* __restrict__ vc,
             const int* __restrict__ slots, const int* __restrict__ len_ptr, int t, int ctx) {
    __shared__ __align__(16) __half xs[G1_MAX_K];
    extern __shared__ __align__(16) uint4 ring[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int warps = blockDim.x >> 5;
    const long long W = (long long)gridDim.x * warps, gw = (long long)blockIdx.x * warps + warp;
    const int r0 = (int)(N * gw / W), r1 = (int)(N * (gw + 1) / W);
    const int rows = r1 - r0;
    const int bytes = rows * K;                  // the warp's run
    const int items = (bytes + 511) >> 9;
    const signed char* run = w + (size_t)r0 * K + lane * 16;
    uint4* my = ring + (size_t)warp * G1A_DEPTH * 32 + lane;  // slot s of this lane: my[s * 32]
#pragma unroll
    for (int u = 0; u < G1A_DEPTH; u++) {
        if (u * 512 + lane * 16 < bytes) g1a_copy(my + u * 32, run + u * 512);
        g1a_commit();
    }
    const float bias_lane = r0 + lane < r1 ? gemv_bias(bias, mode, r0 + lane) : 0.f;
    const float scale_lane = r0 + lane < r1 ? __half2float(scales[r0 + lane]) : 0.f;
    if (ln_g != nullptr && warp == warps - 1) {
        for (int i = lane * 32; i < K; i += 32 * 32) {
            asm volatile("prefetch.global.L1 [%0];" ::"l"(ln_g + i));
            asm volatile("prefetch.global.L1 [%0];" ::"l"(ln_b + i));
        }
    }
    pdl_launch();
    pdl_wait();
    gemv1_stage_x(xin, ln_g, ln_b, eps, xs, K, warp, warps, lane);
    const float old_lane = (mode == 3 && r0 + lane < r1) ? reinterpret_cast<const float*>(y)[r0 + lane] : 0.f;
    const int len = kc != nullptr ? *len_ptr : 0;
    const int nkv = N / 3;
    __syncthreads();
    float s = 0.f;
    int rl = (lane * 16) / K, col = lane * 16 - rl * K;  // this lane's chunk: row (of the run), column
    int row = 0, row_end = K;                            // the first unfinished row and its end
    for (int base = 0; base < items; base += G1A_DEPTH) {
#pragma unroll
        for (int u = 0; u < G1A_DEPTH; u++) {
            const int i = base + u;
            if (i < items) {  // the same in every lane
                g1a_wait_oldest();
                const float dot = rl < rows ? gemv_dot16_i8(my[u * 32], xs + col, 0.f) : 0.f;
                if ((i + G1A_DEPTH) * 512 + lane * 16 < bytes) g1a_copy(my + u * 32, run + (size_t)(i + G1A_DEPTH) * 512);
                g1a_commit();
                // Rows that end inside this item, in order (several when K < 512).
                while (row < rows && row_end <= (i + 1) * 512) {
                    gemv1_finish(s + (rl == row ? dot : 0.f), row, r0 + row, bias_lane, old_lane, bias, y, N, mode, nkv, kc, vc,
                                 slots, len, t, ctx, scales, scale_lane);
                    s = 0.f;
                    row++;
                    row_end += K;
                }
                if (rl == row) s += dot;
                col += 512;
                while (col >= K) {
                    col -= K;
                    rl++;
                }
            }
        }
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
}
