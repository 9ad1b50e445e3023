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

// ---- Log-probabilities and top-k per row (greedy and beam search selection) -----------------
#define TOPK_MAX 16
#define TOPK_THREADS 1024

// (value, index) pairs ordered best first: larger value, then lower index (torch.argmax/topk).
__device__ __forceinline__ bool better(float av, int ai, float bv, int bi) {
    return av > bv || (av == bv && ai < bi);
}

__device__ __forceinline__ void warp_best(float& v, int& i) {
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (better(ov, oi, v, i)) {
            v = ov;
            i = oi;
        }
    }
}

// The best (value, index) over the block; every thread gets it. Uses sv/si (32 entries each).
__device__ void block_best(float& v, int& i, float* sv, int* si) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    warp_best(v, i);
    __syncthreads();  // sv/si free from the previous use
    if (lane == 0) {
        sv[warp] = v;
        si[warp] = i;
    }
    __syncthreads();
    v = lane < warps ? sv[lane] : NEG_INF;
    i = lane < warps ? si[lane] : 0x7fffffff;
    warp_best(v, i);
}

__device__ float block_max(float x, float* s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    __syncthreads();
    if (lane == 0) s[warp] = x;
    __syncthreads();
    x = lane < warps ? s[lane] : NEG_INF;
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

__device__ float block_sum(float x, float* s) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    __syncthreads();
    if (lane == 0) s[warp] = x;
    __syncthreads();
    x = lane < warps ? s[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}

// The decoding rules' masks, then the selection of greedy or beam search, per row of f32
// logits [rows][v]: logit j is -inf where (mask[j] & mask_bits) != 0 (mask: u8 [v]; bit 0
// SuppressTokens, bit 1 SuppressBlank). lse = logsumexp of the masked row. out: u32 [rows][k][2]
// (token id, f32 bits of its log-probability), best first:
// - k == 1: the argmax of the masked logits (lowest index on ties) and logit - lse;
// - k > 1 (at most TOPK_MAX): the k largest log-probabilities logit - lse (lowest index first
//   on ties).
// One block of TOPK_THREADS threads per row.
extern "C" __global__ void __launch_bounds__(TOPK_THREADS) topk_logprobs(const float* __restrict__ logits,
                                                                      const unsigned char* __restrict__ mask,
                                                                      int mask_bits, int v, int k,
                                                                      unsigned int* __restrict__ out) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float* row = logits + (size_t)blockIdx.x * v;
    unsigned int* o = out + (size_t)blockIdx.x * k * 2;
    const int tid = threadIdx.x;
    float mx = NEG_INF;
    for (int j = tid; j < v; j += blockDim.x) {
        const float x = (mask[j] & mask_bits) ? NEG_INF : row[j];
        mx = fmaxf(mx, x);
    }
    mx = block_max(mx, sv);
    float sum = 0.0f;
    if (mx != NEG_INF) {
        for (int j = tid; j < v; j += blockDim.x) {
            const float x = (mask[j] & mask_bits) ? NEG_INF : row[j];
            sum += expf(x - mx);
        }
    }
    sum = block_sum(sum, sv);
    const float lse = mx == NEG_INF ? NEG_INF : mx + logf(sum);

    if (k == 1) {
        float bv = NEG_INF;
        int bi = 0x7fffffff;
        for (int j = tid; j < v; j += blockDim.x) {
            const float x = (mask[j] & mask_bits) ? NEG_INF : row[j];
            if (better(x, j, bv, bi)) {
                bv = x;
                bi = j;
            }
        }
        block_best(bv, bi, sv, si);
        if (tid == 0) {
            o[0] = bi == 0x7fffffff ? 0u : (unsigned int)bi;
            o[1] = __float_as_uint(bv - lse);
        }
        return;
    }

    // This thread's k best log-probabilities, best first (its indices rise, so a later equal
    // value never goes before an earlier one).
    float tv[TOPK_MAX];
    int ti[TOPK_MAX];
    int count = 0;
    for (int j = tid; j < v; j += blockDim.x) {
        const float y = ((mask[j] & mask_bits) ? NEG_INF : row[j]) - lse;
        if (count == k && !(y > tv[k - 1])) continue;
        int p = count < k ? count++ : k - 1;
        while (p > 0 && y > tv[p - 1]) {
            tv[p] = tv[p - 1];
            ti[p] = ti[p - 1];
            --p;
        }
        tv[p] = y;
        ti[p] = j;
    }
    // k rounds: the block's best head wins, its thread moves on.
    int head = 0;
    for (int r = 0; r < k; ++r) {
        float bv = head < count ? tv[head] : NEG_INF;
        int bi = head < count ? ti[head] : 0x7fffffff;
        block_best(bv, bi, sv, si);
        if (head < count && ti[head] == bi) ++head;
        if (tid == 0) {
            o[2 * r] = bi == 0x7fffffff ? 0u : (unsigned int)bi;
            o[2 * r + 1] = __float_as_uint(bv);
        }
    }
}
