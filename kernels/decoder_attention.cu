// Decoder attention with one query row per block (4 warps), for one head (blockIdx.y):
// - decoder_self_attention: causal, over the sequence's KV cache slot (beam-aware: a slot table
//   maps sequences to cache slots, so reordering beams mostly remaps slots instead of copying);
// - cross_attention: over the cross-attention K/V of the utterance, computed once per window by
//   one GEMM for all decoder layers.
// Scores live in shared memory (n_keys floats, dynamic); softmax in f32 (max subtracted first,
// as torch does); products accumulate in f32. d_head = 64: lane l holds dims 2l and 2l+1.
#include <cuda_fp16.h>

#include "common.cuh"

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
    pdl_wait();
    pdl_launch();
    const int row = blockIdx.x, h = blockIdx.y;
    const int s = row / t, i = row % t;
    const int len = *len_ptr;
    const size_t slot_base = (size_t)slots[s] * ctx * n + h * DH;
    attend_one(qkv + (size_t)row * 3 * n + h * DH, k_cache + slot_base, n, v_cache + slot_base, n, len + i + 1,
               out + (size_t)row * n + h * DH, sc);
}

// The cross keys and values a query row attends to: sequence row / t reads the utterance whose
// cross K/V ([n_keys][ldkv] fp16, every decoder layer's keys and values side by side) starts at
// kv_table[row / t]; this layer's keys are at column kv_off, its values at kv_off + n. A table
// lets one step serve sequences of different utterances (batched files).
__device__ __forceinline__ const __half* cross_kv(const unsigned long long* kv_table, long long kv_off, int t,
                                                  int row) {
    return reinterpret_cast<const __half*>(kv_table[row / t]) + kv_off;
}

// q: fp16 [rows][ldq] (pre-scaled query of head h at column h*64); keys and values: see cross_kv.
// out: fp16 [rows][n]. Dynamic shared memory: n_keys floats.
extern "C" __global__ void __launch_bounds__(128) cross_attention(const __half* __restrict__ q, int ldq,
                                                                  const unsigned long long* __restrict__ kv_table,
                                                                  long long kv_off, int t, long long ldkv,
                                                                  int n_keys, __half* __restrict__ out, int n) {
    extern __shared__ float sc[];
    pdl_wait();
    pdl_launch();
    const int row = blockIdx.x, h = blockIdx.y;
    const __half* kv = cross_kv(kv_table, kv_off, t, row);
    attend_one(q + (size_t)row * ldq + h * DH, kv + h * DH, ldkv, kv + n + h * DH, ldkv, n_keys,
               out + (size_t)row * n + h * DH, sc);
}

// ---- Split over keys (flash decoding) -------------------------------------------------------
// One query row has too few heads to fill the GPU, and one block walking 1500 keys is bound by
// memory latency. These kernels give each block at most SPLIT keys of one (row, head) and write
// its partial result (running max m, sum l of exp(s - m), unnormalised output acc[64]) to a
// scratch buffer. Given a counter per (row, head) (zero before the launch), the block that
// finishes last merges the splits itself and resets the counter (one kernel instead of two);
// without one, attention_combine merges them.
#define SPLIT 128
#define PART (DH + 2)

// The keys and values of one split, in registers: thread (grp, sub) holds dims sub*8..sub*8+7 of
// keys and values grp, grp + 16, ... (SPLIT / 16 of each). All of them are requested at once, so
// a split costs one memory round trip instead of one per 16 keys. P holds 8 dims: uint4 for
// fp16 keys and values, uint2 for the int8 KV cache, whose splits are SPLIT_I8 keys. (256 keys,
// the registers and bytes in flight of an fp16 split, measured worse: H100, large-v2, step at
// batch 1 / 32 against fp16 in the same run 1.941 / 4.857 vs 1.709 / 6.286 ms, where 128 gave
// 1.720 / 4.111 vs 1.627 / 5.579 on an H200.)
#define SPLIT_I8 128
template <typename P, int S>
struct SplitKvT {
    static const int N = S;
    typedef P Piece;
    P k[S / 16];
    P v[S / 16];
};
typedef SplitKvT<uint4, SPLIT> SplitKv;
typedef SplitKvT<uint2, SPLIT_I8> SplitKv8;

__device__ __forceinline__ void zero8(uint4& p) { p = make_uint4(0u, 0u, 0u, 0u); }
__device__ __forceinline__ void zero8(uint2& p) { p = make_uint2(0u, 0u); }

template <typename KV>
__device__ __forceinline__ void zero_split(KV& kv) {
#pragma unroll
    for (int p = 0; p < KV::N / 16; p++) {
        zero8(kv.k[p]);
        zero8(kv.v[p]);
    }
}

// 8 dims as floats: fp16, or int8 levels (the caller applies the scale).
__device__ __forceinline__ void dims8(const uint4& p, float (&f)[8]) {
    const __half2* h2 = reinterpret_cast<const __half2*>(&p);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 x = __half22float2(h2[e]);
        f[2 * e] = x.x;
        f[2 * e + 1] = x.y;
    }
}
__device__ __forceinline__ void dims8(const uint2& p, float (&f)[8]) { unpack_i8x8(p, f); }

// Loads keys and values lo..hi of a split (rows ldk / ldv elements apart; T is __half or
// signed char, P the matching 8-dim piece), leaving the others as they are; 128 threads.
template <typename T, typename KV>
__device__ __forceinline__ void load_split(const T* k, long long ldk, const T* v, long long ldv, int lo, int hi,
                                           KV& kv) {
    const int grp = threadIdx.x >> 3, sub = threadIdx.x & 7;
#pragma unroll
    for (int p = 0; p < KV::N / 16; p++) {
        const int j = p * 16 + grp;
        if (j >= lo && j < hi) {
            kv.k[p] = *reinterpret_cast<const typename KV::Piece*>(k + (size_t)j * ldk + sub * 8);
            kv.v[p] = *reinterpret_cast<const typename KV::Piece*>(v + (size_t)j * ldv + sub * 8);
        }
    }
}

// Partial attention of query q over the nk keys and values of `kv` (load_split's); 128 threads.
// Eight threads share a key (16 bytes each, 8 dims), so a pass covers 16 keys. nk <= 0: an empty
// split (causal rows shorter than the grid). With `out` (the split is the row's only one), the
// normalised result goes there (fp16, DH values) instead of a partial to `part`: merge_parts's
// numbers for one split (weight exp(0) = 1). ks, vs: the scales of int8 keys and values (the
// query is multiplied by ks, the output by vs); 1 for fp16.
template <typename KV>
__device__ void attend_part(const __half* __restrict__ q, const KV& kv, int nk, float* __restrict__ part,
                            __half* __restrict__ out = nullptr, float ks = 1.f, float vs = 1.f) {
    __shared__ float sc[KV::N];
    __shared__ float qs[DH];
    __shared__ float red[WARPS];
    __shared__ float acc_s[16][DH];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int grp = tid >> 3, sub = tid & 7;
    if (nk <= 0) {  // contributes nothing
        if (tid < DH) part[2 + tid] = 0.f;
        if (tid == 0) {
            part[0] = NEG_INF;
            part[1] = 0.f;
        }
        return;
    }
    if (tid < DH) qs[tid] = __half2float(q[tid]) * ks;
    __syncthreads();
    // Scores. Every thread runs every pass, so the shuffles never diverge.
#pragma unroll
    for (int p = 0; p < KV::N / 16; p++) {
        const int j = p * 16 + grp;
        float f[8];
        dims8(kv.k[p], f);
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < 4; e++) d += qs[sub * 8 + 2 * e] * f[2 * e] + qs[sub * 8 + 2 * e + 1] * f[2 * e + 1];
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        d += __shfl_xor_sync(0xffffffffu, d, 4);
        if (j < nk && sub == 0) sc[j] = d;
    }
    __syncthreads();
    float mx = NEG_INF;
    for (int j = tid; j < nk; j += blockDim.x) mx = fmaxf(mx, sc[j]);
    mx = warp_max(mx);
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
#pragma unroll
    for (int w = 1; w < WARPS; w++) mx = fmaxf(mx, red[w]);
    __syncthreads();
    float sum = 0.f;
    for (int j = tid; j < nk; j += blockDim.x) {
        const float e = expf(sc[j] - mx);
        sc[j] = e;
        sum += e;
    }
    sum = warp_sum(sum);
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.f;
#pragma unroll
    for (int w = 0; w < WARPS; w++) sum += red[w];
    // P V: each thread accumulates 8 dims over the keys of its group.
    float acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int p = 0; p < KV::N / 16; p++) {
        const int j = p * 16 + grp;
        if (j < nk) {
            const float pj = sc[j];
            float f[8];
            dims8(kv.v[p], f);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] += pj * f[e];
        }
    }
#pragma unroll
    for (int e = 0; e < 8; e++) acc_s[grp][sub * 8 + e] = acc[e];
    __syncthreads();
    if (tid < DH) {
        float a = 0.f;
#pragma unroll
        for (int g2 = 0; g2 < 16; g2++) a += acc_s[g2][tid];
        a *= vs;
        if (out != nullptr) {
            out[tid] = __float2half_rn(a / sum);
            return;
        }
        part[2 + tid] = a;
    }
    if (tid == 0 && out == nullptr) {
        part[0] = mx;
        part[1] = sum;
    }
}

// Splits merge_parts loads in one round trip (more: two passes over memory).
#define MERGE_MAX 16

// The merge of the n_splits partial results at p (one (row, head)) into out[0..DH), called by
// every thread of the block (thread d < DH writes out[d]). Up to MERGE_MAX splits every value is
// requested at once, the splits' (max, sum) through shared memory: one round trip at the end of
// the chain instead of two. The sums run in the same order either way.
__device__ __forceinline__ void merge_parts(const float* p, int n_splits, __half* __restrict__ out) {
    __shared__ float ml[MERGE_MAX][2];
    const int d = threadIdx.x;
    float m = NEG_INF, l = 0.f, o = 0.f;
    if (n_splits <= MERGE_MAX) {
        float os[MERGE_MAX];
#pragma unroll
        for (int s = 0; s < MERGE_MAX; s++) os[s] = (s < n_splits && d < DH) ? __ldcg(p + s * PART + 2 + d) : 0.f;
        if (d < n_splits) {
            ml[d][0] = __ldcg(p + d * PART);
            ml[d][1] = __ldcg(p + d * PART + 1);
        }
        __syncthreads();
        if (d >= DH) return;
        for (int s = 0; s < n_splits; s++) m = fmaxf(m, ml[s][0]);
#pragma unroll
        for (int s = 0; s < MERGE_MAX; s++) {
            if (s < n_splits) {
                const float w = expf(ml[s][0] - m);  // 0 for empty splits (m_s = -inf); split 0 is never empty
                l += w * ml[s][1];
                o += w * os[s];
            }
        }
    } else {
        if (d >= DH) return;
        for (int s = 0; s < n_splits; s++) m = fmaxf(m, __ldcg(p + s * PART));
        for (int s = 0; s < n_splits; s++) {
            const float w = expf(__ldcg(p + s * PART) - m);
            l += w * __ldcg(p + s * PART + 1);
            o += w * __ldcg(p + s * PART + 2 + d);
        }
    }
    out[d] = __float2half_rn(o / l);
}

// After this block wrote its partial result: with a counter, the last of the `splits` blocks of
// (row, head) (partials gridDim.z apart) merges them into out (row stride n) and resets the
// counter for the next launch.
__device__ void merge_if_last(const float* part, unsigned* cnt, __half* __restrict__ out, int n, int splits) {
    if (cnt == nullptr) return;
    __shared__ int last;
    const int row = blockIdx.x, h = blockIdx.y;
    const size_t rh = (size_t)row * gridDim.y + h;
    __threadfence();  // this block's partial result is visible before the count says so
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(cnt + rh, 1u) == (unsigned)splits - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    merge_parts(part + rh * gridDim.z * PART, splits, out + (size_t)row * n + h * DH);
    if (threadIdx.x == 0) cnt[rh] = 0u;
}

// decoder_self_attention over splits: grid (rows, heads, n_splits), 128 threads; part: f32
// [rows][heads][n_splits][DH + 2]; cnt: u32 [rows][heads] or null (see merge_if_last), out as
// decoder_self_attention. Other arguments as decoder_self_attention. Only the splits that hold
// keys of the row take part (the others exit at once); a row with one such split (up to SPLIT
// positions) writes its result directly, with no partials and no merge. len, the slot table and
// the cache below position len were written before the step's first kernel (host copies, earlier
// steps; that kernel is launched without PDL), so those keys and values load before the wait;
// only the step's own positions (the QKV kernel's append) load after it.
template <typename T, typename KV>
__device__ __forceinline__ void self_split(const __half* __restrict__ qkv, const T* __restrict__ k_cache,
                                           const T* __restrict__ v_cache, const int* __restrict__ slots,
                                           float* __restrict__ part, unsigned* __restrict__ cnt,
                                           __half* __restrict__ out, int n, int t, const int* __restrict__ len_ptr,
                                           int ctx, const float* __restrict__ ks, const float* __restrict__ vs) {
    pdl_launch();
    const int row = blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
    const int s = row / t, i = row % t;
    const int len = *len_ptr;
    const int n_keys = len + i + 1;
    const int used = (n_keys + KV::N - 1) / KV::N;
    const int k0 = sp * KV::N, nk = min(KV::N, n_keys - k0);
    float* p = part + (((size_t)row * gridDim.y + h) * gridDim.z + sp) * PART;
    KV kv;
    zero_split(kv);
    if (sp >= used) {
        // Without a counter attention_combine merges every split: this one's empty partial.
        if (cnt == nullptr) attend_part(nullptr, kv, 0, p);
        return;
    }
    const float k_scale = ks != nullptr ? ks[h] : 1.f, v_scale = vs != nullptr ? vs[h] : 1.f;
    const size_t base = ((size_t)slots[s] * ctx + k0) * n + h * DH;
    const int before = min(nk, len - k0);  // keys of earlier steps
    load_split(k_cache + base, n, v_cache + base, n, 0, before, kv);
    pdl_wait();
    load_split(k_cache + base, n, v_cache + base, n, max(before, 0), nk, kv);
    const __half* q = qkv + (size_t)row * 3 * n + h * DH;
    if (cnt != nullptr && used == 1) {
        attend_part(q, kv, nk, p, out + (size_t)row * n + h * DH, k_scale, v_scale);
        return;
    }
    attend_part(q, kv, nk, p, nullptr, k_scale, v_scale);
    merge_if_last(part, cnt, out, n, used);
}

extern "C" __global__ void __launch_bounds__(128) decoder_self_attention_split(
    const __half* __restrict__ qkv, const __half* __restrict__ k_cache, const __half* __restrict__ v_cache,
    const int* __restrict__ slots, float* __restrict__ part, unsigned* __restrict__ cnt, __half* __restrict__ out,
    int n, int t, const int* __restrict__ len_ptr, int ctx) {
    self_split<__half, SplitKv>(qkv, k_cache, v_cache, slots, part, cnt, out, n, t, len_ptr, ctx, nullptr, nullptr);
}

// The same over the int8 cache (`--int8-kv`): k_cache, v_cache int8 [slots][ctx][n]; ks, vs:
// this layer's scales of keys and values, f32 [heads]. Splits of SPLIT_I8 keys.
extern "C" __global__ void __launch_bounds__(128) decoder_self_attention_split_i8(
    const __half* __restrict__ qkv, const signed char* __restrict__ k_cache, const signed char* __restrict__ v_cache,
    const int* __restrict__ slots, float* __restrict__ part, unsigned* __restrict__ cnt, __half* __restrict__ out,
    int n, int t, const int* __restrict__ len_ptr, int ctx, const float* __restrict__ ks, const float* __restrict__ vs) {
    self_split<signed char, SplitKv8>(qkv, k_cache, v_cache, slots, part, cnt, out, n, t, len_ptr, ctx, ks, vs);
}

// cross_attention over splits: grid (rows, heads, n_splits), 128 threads; part, cnt, out as
// above. Requires n % 8 == 0 and 16-byte aligned key/value rows. The split's keys and values
// (written before the step) are loaded into registers before griddepcontrol.wait, so under
// Programmatic Dependent Launch they arrive while the query's kernel runs. (An earlier version
// asked L2 for them there and loaded 16 keys per round trip after the wait; copying them to
// shared memory took 37 KB per block: fewer resident blocks, and slower in isolation, 16.2 vs
// 11.4 us at 4 rows on the H100.)
template <typename T, typename KV>
__device__ __forceinline__ void cross_split(const __half* __restrict__ q, int ldq, const T* kv_base, long long ldkv,
                                            int n_keys, float* __restrict__ part, unsigned* __restrict__ cnt,
                                            __half* __restrict__ out, int n, const float* __restrict__ ks,
                                            const float* __restrict__ vs) {
    const int row = blockIdx.x, h = blockIdx.y, sp = blockIdx.z;
    const int k0 = sp * KV::N, nk = min(KV::N, n_keys - k0);
    const T* kvp = kv_base + (size_t)k0 * ldkv + h * DH;
    // The split's keys and values into registers, all at once, before the wait.
    KV kv;
    zero_split(kv);
    load_split(kvp, ldkv, kvp + n, ldkv, 0, nk, kv);
    const float k_scale = ks != nullptr ? ks[h] : 1.f, v_scale = vs != nullptr ? vs[h] : 1.f;
    pdl_launch();
    pdl_wait();
    float* p = part + (((size_t)row * gridDim.y + h) * gridDim.z + sp) * PART;
    attend_part(q + (size_t)row * ldq + h * DH, kv, nk, p, nullptr, k_scale, v_scale);
    merge_if_last(part, cnt, out, n, gridDim.z);
}

extern "C" __global__ void __launch_bounds__(128) cross_attention_split(const __half* __restrict__ q, int ldq,
                                                                        const unsigned long long* __restrict__ kv_table,
                                                                        long long kv_off, int t, long long ldkv,
                                                                        int n_keys, float* __restrict__ part,
                                                                        unsigned* __restrict__ cnt,
                                                                        __half* __restrict__ out, int n) {
    cross_split<__half, SplitKv>(q, ldq, cross_kv(kv_table, kv_off, t, blockIdx.x), ldkv, n_keys, part, cnt, out, n,
                               nullptr, nullptr);
}

// The same over int8 cross keys and values (`--int8-kv`): the table's entries point at int8
// [n_keys][ldkv]; kv_off and ldkv count bytes; ks, vs: this layer's scales, f32 [heads]. Splits
// of SPLIT_I8 keys.
extern "C" __global__ void __launch_bounds__(128) cross_attention_split_i8(
    const __half* __restrict__ q, int ldq, const unsigned long long* __restrict__ kv_table, long long kv_off, int t,
    long long ldkv, int n_keys, float* __restrict__ part, unsigned* __restrict__ cnt, __half* __restrict__ out, int n,
    const float* __restrict__ ks, const float* __restrict__ vs) {
    const signed char* kv = reinterpret_cast<const signed char*>(kv_table[blockIdx.x / t]) + kv_off;
    cross_split<signed char, SplitKv8>(q, ldq, kv, ldkv, n_keys, part, cnt, out, n, ks, vs);
}

// Merges the n_splits partial results of every (row, head): grid (rows, heads), DH threads.
// out: fp16 [rows][n], head h in columns h*64..h*64+63.
extern "C" __global__ void attention_combine(const float* __restrict__ part, int n_splits, __half* __restrict__ out,
                                             int n) {
    pdl_launch();
    pdl_wait();
    const int row = blockIdx.x, h = blockIdx.y;
    merge_parts(part + ((size_t)row * gridDim.y + h) * n_splits * PART, n_splits, out + (size_t)row * n + h * DH);
}
