// Decoder attention with one query row per block (4 warps), for one head (blockIdx.y):
// - decoder_self_attention: causal, over the sequence's KV cache slot (beam-aware: a slot table
//   maps sequences to cache slots, so reordering beams mostly remaps slots instead of copying);
// - cross_attention: over the cross-attention K/V of the utterance, computed once per window by
//   one GEMM for all decoder layers.
// Scores live in shared memory (n_keys floats, dynamic); softmax in f32 (max subtracted first,
// as torch does); products accumulate in f32. d_head = 64: lane l holds dims 2l and 2l+1.
#include <cuda_fp16.h>

#define DH 64
#define WARPS 4
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// softmax(q . k_j) . v over j < n_keys; q, k rows, v rows are fp16 vectors of DH values with
// row strides ldk, ldv. `sc` holds n_keys floats of shared memory.
__device__ void attend_one(const __half* __restrict__ q, const __half* __restrict__ k, long long ldk,
                           const __half* __restrict__ v, long long ldv, int n_keys, __half* __restrict__ out,
                           float* sc) {
    __shared__ float red[WARPS];
    __shared__ float2 acc_s[WARPS][DH / 2];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float2 qv = __half22float2(reinterpret_cast<const __half2*>(q)[lane]);
    float mx = NEG_INF;
    for (int j = warp; j < n_keys; j += WARPS) {
        const float2 kv = __half22float2(reinterpret_cast<const __half2*>(k + (size_t)j * ldk)[lane]);
        const float d = warp_sum(qv.x * kv.x + qv.y * kv.y);
        if (lane == 0) sc[j] = d;
        mx = fmaxf(mx, d);
    }
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
#pragma unroll
    for (int w = 1; w < WARPS; w++) mx = fmaxf(mx, red[w]);
    __syncthreads();  // everyone has read red[] before it is reused

    float sum = 0.f;
    for (int j = threadIdx.x; j < n_keys; j += blockDim.x) {
        const float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();  // sc[] holds the probabilities, red[] the partial sums
    sum = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) sum += red[w];

    float2 acc = make_float2(0.f, 0.f);
    for (int j = warp; j < n_keys; j += WARPS) {
        const float p = sc[j];
        const float2 vv = __half22float2(reinterpret_cast<const __half2*>(v + (size_t)j * ldv)[lane]);
        acc.x += p * vv.x;
        acc.y += p * vv.y;
    }
    acc_s[warp][lane] = acc;
    __syncthreads();
    if (warp == 0) {
        float2 a = acc_s[0][lane];
#pragma unroll
        for (int w = 1; w < WARPS; w++) {
            a.x += acc_s[w][lane].x;
            a.y += acc_s[w][lane].y;
        }
        const float inv = 1.f / sum;
        reinterpret_cast<__half2*>(out)[lane] = __floats2half2_rn(a.x * inv, a.y * inv);
    }
}

// Rows are sequence-major: row = s * t + i is token i of sequence s, at position len + i, and
// sees cache positions 0..len+i (its own key included: kv_append ran first).
// qkv: fp16 [rows][3n] (query pre-scaled); k_cache, v_cache: this layer's fp16 [slots][ctx][n];
// slots: int [n_seq]; out: fp16 [rows][n]. `len` is read from device memory, so that a captured
// CUDA graph replays every step unchanged. Dynamic shared memory: ctx floats.
extern "C" __global__ void __launch_bounds__(128) decoder_self_attention(const __half* __restrict__ qkv,
                                                                         const __half* __restrict__ k_cache,
                                                                         const __half* __restrict__ v_cache,
                                                                         const int* __restrict__ slots,
                                                                         __half* __restrict__ out, int n, int t,
                                                                         const int* __restrict__ len_ptr, int ctx) {
    extern __shared__ float sc[];
    const int row = blockIdx.x, h = blockIdx.y;
    const int s = row / t, i = row % t;
    const int len = *len_ptr;
    const size_t slot_base = (size_t)slots[s] * ctx * n + h * DH;
    attend_one(qkv + (size_t)row * 3 * n + h * DH, k_cache + slot_base, n, v_cache + slot_base, n, len + i + 1,
               out + (size_t)row * n + h * DH, sc);
}

// q: fp16 [rows][ldq] (pre-scaled query of head h at column h*64); kv: this layer's cross keys
// (columns 0..n) and values (n..2n) of the utterance, [n_keys] rows of stride ldkv.
// out: fp16 [rows][n]. Dynamic shared memory: n_keys floats.
extern "C" __global__ void __launch_bounds__(128) cross_attention(const __half* __restrict__ q, int ldq,
                                                                  const __half* __restrict__ kv, long long ldkv,
                                                                  int n_keys, __half* __restrict__ out, int n) {
    extern __shared__ float sc[];
    const int row = blockIdx.x, h = blockIdx.y;
    attend_one(q + (size_t)row * ldq + h * DH, kv + h * DH, ldkv, kv + n + h * DH, ldkv, n_keys,
               out + (size_t)row * n + h * DH, sc);
}
