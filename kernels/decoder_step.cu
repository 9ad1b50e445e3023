// The decoder blocks of a one-token step in ONE persistent kernel (a "megakernel"), for a few
// rows (sequences x 1 token, at most DS_RMAX). A decode step at batch 1 is bound by streaming the
// weights (45 MB per large-v2 layer), but as separate launches it is ~350 small kernels, each
// paying launch, ramp-up and tail. Here one block per multiprocessor runs every phase of every
// layer, with a grid-wide barrier between dependent phases, and the weights, which do not depend
// on the data, stream into a ring buffer in shared memory (cp.async, or bulk copies behind an L2
// prefetch stream on sm_90: `mode`): while a block waits at a barrier or computes attention, its
// slices of the next dense layers are already on their way.
//
// Measured on an H100 (large-v2, batch 1): correct, but 2.96 ms per step against 2.54 ms for the
// separate kernels in a CUDA graph, so it is opt-in (src/backends/cuda/step.rs). The phases are
// latency-bound: without any weight traffic (mode 2) the kernel still takes 1.69 ms, ~53 us per
// layer of grid barriers (~0.9 us each) and global round trips (~1-1.5 us each here) between them;
// with the weights streaming, round trips and barrier releases wait behind the copies in flight.
//
// Phases of a layer (block b owns rows N*b/G .. N*(b+1)/G of every dense layer's weight [N][K]):
//   1 LN1 (each block normalises the R rows itself) + QKV: q to `q`, k and v straight into the
//     KV cache at position len of the sequence's slot (kv_append folded in)
//   2 self-attention over the cache (len + 1 keys), split over keys; the block that finishes the
//     last split of a (row, head) merges the splits into `att`
//   3 out projection of `att`, added into x
//   4 LN2 + cross-attention query
//   5 cross-attention over the n_audio_ctx keys of each sequence's utterance (cross K/V table)
//   6 cross out projection, added into x
//   7 LN3 + fc1 + exact GELU into u
//   8 fc2, added into x
// The token and position embedding is phase 0 (each block writes its own columns of x, and
// computes layer 0's LN1 from the embedding directly, so no barrier is needed for it). Each block
// keeps its own columns of x in shared memory, so the residual adds read nothing from memory.
//
// Numerics are the separate kernels': LN in f32 (two-pass moments) rounded to fp16, fp16 weights
// and activations, f32 accumulation (tensor-core mma m16n8k16 with f32 accumulators), bias added
// in f32, fp16 outputs rounded once (GELU of the rounded fc1 output, as gelu_f16), the residual
// stream x in f32, softmax in f32 with the maximum subtracted.
//
// Launch: grid = multiprocessor count (all blocks resident: cooperative launch), DS_THREADS
// threads, dynamic shared memory = ring_bytes + rows * (8n + 16). `sync` (the grid barrier and
// the split counters) must be zero at launch. n % 64 == 0, n <= 1280, n_layer <= DS_LAYERS, every
// dense slice of a block fits the ring, ceil(4n / grid) <= DS_BIAS, ceil(n / grid) <= DS_OWN.
#include <cuda_fp16.h>

#define DS_THREADS 512
#define DS_WARPS 16
#define DS_RMAX 8
#define DS_DH 64
#define DS_PART (DS_DH + 2)
// Keys of one attention work item at most: 64 groups of 8 threads, 8 keys per group.
#define DS_KEYS 512
// Splits of one (row, head) at most, and keys per split at least.
#define DS_SPLITS 32
#define DS_MIN_KEYS 32
// Weight chunks (dense-layer slices) in flight at most (cp.async groups, mbarriers).
#define DS_FLIGHT 12
// LayerNorm keeps a row in registers of two warps: n <= 2 x 32 lanes x 4 x DS_LN_VEC.
#define DS_LN_VEC 5
#define DS_LAYERS 32
// Bias values of one slice, own residual columns per row, at most.
#define DS_BIAS 192
#define DS_OWN 64
#define DS_NEG_INF __int_as_float(0xff800000)

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define DS_HAS_BULK 1
#else
#define DS_HAS_BULK 0
#endif

// One decoder layer's weights (engine tensors, see layout.rs).
struct LayerW {
    const float* ln1_g;
    const float* ln1_b;
    const __half* qkv_w;  // [3n][n], query pre-scaled
    const __half* qkv_b;
    const __half* out_w;  // [n][n]
    const float* out_b;
    const float* ln2_g;
    const float* ln2_b;
    const __half* q_w;  // cross-attention query [n][n], pre-scaled
    const __half* q_b;
    const __half* co_w;  // cross-attention out [n][n]
    const float* co_b;
    const float* ln3_g;
    const float* ln3_b;
    const __half* fc1_w;  // [4n][n]
    const __half* fc1_b;
    const __half* fc2_w;  // [n][4n]
    const float* fc2_b;
};

// Mirrors StepParams in src/backends/cuda/step.rs (repr(C)).
struct StepParams {
    const LayerW* layers;
    const __half* tok_emb;  // [n_vocab][n]
    const __half* pos_emb;  // [n_ctx][n]
    const int* tokens;      // [rows]
    const int* len_ptr;     // positions filled before this token
    const int* slots;       // cache slot of each sequence
    const unsigned long long* cross_table;  // address of each sequence's cross K/V
    float* x;                               // f32 [rows][n], the residual stream
    __half* q;                              // fp16 [rows][n]
    __half* att;                            // fp16 [rows][n], attention output
    __half* u;                              // fp16 [rows][4n]
    float* part;                            // f32 [rows][heads][splits][DS_PART]
    __half* k_cache;                        // fp16 [layer][slot][ctx][n]
    __half* v_cache;
    // Zero at launch: [0] the grid barrier, [1 + row * heads + head] split counters.
    unsigned int* sync;
    // Null, or timestamps (globaltimer, ns) [layer * 8 + phase][4][grid]: phase start, inputs and
    // weights ready, computed, arrival at the barrier (thread 0 of each block), then [grid][4]:
    // globaltimer and clock64 at the start and the end of the kernel.
    unsigned long long* prof;
    long long cache_layer;  // elements of one layer of the cache
    long long kv_ld;        // row stride (elements) of the cross K/V
    int rows, n, n_head, n_layer, ctx, n_audio_ctx, ring_bytes;
    // 0: weights by cp.async; 1: by bulk copies, with the DRAM stream running ahead into L2
    // (bulk prefetches, sm_90; else as 0); 2: not at all (timing only: the results are garbage).
    int mode;
    // Chunks copied into shared memory ahead of use (1 .. DS_FLIGHT), and prefetched into L2
    // ahead of use (mode 1), with the next layer's attention keys and values.
    int ahead, l2_ahead;
};

// Shared state of a block besides the ring and the staged input rows.
struct Shared {
    float red[DS_WARPS * 128];
    float red_m[DS_WARPS], red_s[DS_WARPS];
    float bias[DS_BIAS];
    float xown[DS_RMAX][DS_OWN];
    LayerW layers[DS_LAYERS];
    unsigned long long mbar[DS_FLIGHT];
    const __half* cross[DS_RMAX];
    int slots[DS_RMAX];
    int tokens[DS_RMAX];
    int last;
};

// ---- small helpers ----------------------------------------------------------------------------

__device__ __forceinline__ float ds_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float ds_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

__device__ __forceinline__ float ds_gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

__device__ __forceinline__ unsigned ds_smem_addr(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void ds_cp_async16(unsigned dst, const void* src) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
}

__device__ __forceinline__ void ds_cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }

// Waits until at most `pending` of this thread's newest cp.async groups are still in flight.
__device__ __forceinline__ void ds_cp_async_wait(int pending) {
    switch (pending) {
#define DS_WAIT_CASE(N) \
    case N: asm volatile("cp.async.wait_group " #N ";\n" ::: "memory"); break;
        DS_WAIT_CASE(1)
        DS_WAIT_CASE(2)
        DS_WAIT_CASE(3)
        DS_WAIT_CASE(4)
        DS_WAIT_CASE(5)
        DS_WAIT_CASE(6)
        DS_WAIT_CASE(7)
        DS_WAIT_CASE(8)
        DS_WAIT_CASE(9)
        DS_WAIT_CASE(10)
        DS_WAIT_CASE(11)
#undef DS_WAIT_CASE
        default: asm volatile("cp.async.wait_group 0;\n" ::: "memory"); break;
    }
}

#if DS_HAS_BULK
__device__ __forceinline__ void ds_mbar_init(unsigned mbar) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;\n" ::"r"(mbar) : "memory");
}

__device__ __forceinline__ void ds_mbar_expect(unsigned mbar, unsigned bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(mbar), "r"(bytes) : "memory");
}

__device__ __forceinline__ void ds_bulk_copy(unsigned dst, const void* src, unsigned bytes, unsigned mbar) {
    asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
                 "l"(src), "r"(bytes), "r"(mbar)
                 : "memory");
}

__device__ __forceinline__ void ds_mbar_wait(unsigned mbar, unsigned parity) {
    unsigned done = 0;
    while (!done) {
        asm volatile(
            "{\n .reg .pred p;\n mbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n selp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(mbar), "r"(parity)
            : "memory");
    }
}
#endif

// Data other blocks wrote in this launch is read from L2 (ld.global.cg), never through L1.
__device__ __forceinline__ float4 ds_ld_f4(const float* p) { return __ldcg(reinterpret_cast<const float4*>(p)); }
__device__ __forceinline__ uint4 ds_ld_u4(const void* p) { return __ldcg(reinterpret_cast<const uint4*>(p)); }

__device__ __forceinline__ void ds_unpack8(const uint4& raw, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int e = 0; e < 4; e++) {
        const float2 v = __half22float2(h[e]);
        f[2 * e] = v.x;
        f[2 * e + 1] = v.y;
    }
}

__device__ __forceinline__ void ds_mark(const StepParams& p, int phase, int event) {
    if (p.prof != nullptr && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        p.prof[((size_t)phase * 4 + event) * gridDim.x + blockIdx.x] = t;
    }
}

// Profiling: globaltimer and clock64 at the start (at = 0) or end (at = 2) of the kernel, after
// the phase timestamps ([grid][4]), for the multiprocessor clock.
__device__ __forceinline__ void ds_mark_clock(const StepParams& p, int at) {
    if (p.prof != nullptr && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        unsigned long long* q = p.prof + (size_t)p.n_layer * 8 * 4 * gridDim.x + blockIdx.x * 4 + at;
        q[0] = t;
        q[1] = clock64();
    }
}

// Grid-wide barrier: every block arrives (release), then waits until all have (acquire).
// `target` counts the arrivals expected so far in this launch. Thread 0 never has copies in flight.
__device__ __forceinline__ void ds_barrier(unsigned int* ctr, unsigned int& target) {
    __syncthreads();
    target += gridDim.x;
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(ctr) : "memory");
        unsigned int v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(ctr) : "memory");
        } while (v < target);
    }
    __syncthreads();
}

// Rows r0 .. r0 + nr of an N-row weight that this block owns.
__device__ __forceinline__ void ds_rows(int N, int& r0, int& nr) {
    const long long G = gridDim.x, b = blockIdx.x;
    r0 = static_cast<int>(N * b / G);
    nr = static_cast<int>(N * (b + 1) / G) - r0;
}

// Dense layer c % 6 of layer c / 6 (in the order the phases use them): weight, bias and its
// type, shape.
struct Dense {
    const __half* w;
    const void* b;
    bool b32;
    int N, K;
};

__device__ __forceinline__ Dense ds_dense(const Shared& sh, int n, int c) {
    const LayerW& L = sh.layers[c / 6];
    switch (c % 6) {
        case 0: return {L.qkv_w, L.qkv_b, false, 3 * n, n};
        case 1: return {L.out_w, L.out_b, true, n, n};
        case 2: return {L.q_w, L.q_b, false, n, n};
        case 3: return {L.co_w, L.co_b, true, n, n};
        case 4: return {L.fc1_w, L.fc1_b, false, 4 * n, n};
        default: return {L.fc2_w, L.fc2_b, true, n, 4 * n};
    }
}

// ---- the weight ring ----------------------------------------------------------------------
// Chunks (this block's row slice of each dense layer, rows padded to 2K + 16 bytes so that
// ldmatrix reads of 8 rows hit distinct banks) are copied in the order they are used into a ring
// of `cap` bytes; a chunk is released after its GEMV. Every thread keeps the same copy of this
// state (it depends on sizes only). Warp 0 copies nothing: its thread 0 arrives at the grid
// barriers, whose release must not wait for copies in flight.
struct Ring {
    int cap, head, tail, used, issued, done, total, l2;
};

#if DS_HAS_BULK
__device__ __forceinline__ void ds_prefetch_l2(const void* src, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
}
#endif

// Mode 1: this block's share of layer l's attention inputs into L2 (thread 32): the cross K/V
// rows of keys A*b/G .. A*(b+1)/G of every distinct utterance, and cache positions
// len*b/G .. len*(b+1)/G of every row's slot.
__device__ void ds_prefetch_layer(const StepParams& p, const Shared& sh, int l, int len) {
#if DS_HAS_BULK
    if (p.mode != 1 || threadIdx.x != 32 || l >= p.n_layer) return;
    const int n = p.n;
    int k0, nk, p0, np;
    ds_rows(p.n_audio_ctx, k0, nk);
    ds_rows(len, p0, np);
    for (int m = 0; m < p.rows; m++) {
        bool seen = false;
        for (int m2 = 0; m2 < m; m2++) seen |= sh.cross[m2] == sh.cross[m];
        if (!seen) {
            for (int k = k0; k < k0 + nk; k++) ds_prefetch_l2(sh.cross[m] + (size_t)k * p.kv_ld + (size_t)l * 2 * n, 4 * n);
        }
        if (np > 0) {
            const size_t at = (size_t)l * p.cache_layer + ((size_t)sh.slots[m] * p.ctx + p0) * n;
            ds_prefetch_l2(p.k_cache + at, np * n * 2);
            ds_prefetch_l2(p.v_cache + at, np * n * 2);
        }
    }
#endif
}

__device__ void ds_ring_issue(Ring& r, const StepParams& p, Shared& sh, unsigned ring) {
#if DS_HAS_BULK
    // The DRAM stream: whole slices (contiguous) into L2, l2_ahead chunks ahead.
    if (p.mode == 1) {
        while (r.l2 < r.total && r.l2 < r.done + p.l2_ahead) {
            if (threadIdx.x == 32) {
                const Dense d = ds_dense(sh, p.n, r.l2);
                int r0, nr;
                ds_rows(d.N, r0, nr);
                if (nr > 0) ds_prefetch_l2(d.w + (size_t)r0 * d.K, nr * 2 * d.K);
            }
            r.l2++;
        }
    }
#endif
    while (r.issued < r.total && r.issued - r.done < min(p.ahead, DS_FLIGHT)) {
        const Dense d = ds_dense(sh, p.n, r.issued);
        int r0, nr;
        ds_rows(d.N, r0, nr);
        const int pitch = 2 * d.K + 16;
        const int bytes = nr * pitch;
        if (bytes > r.cap - r.used) break;
        const char* src = reinterpret_cast<const char*>(d.w + (size_t)r0 * d.K);
        if (p.mode == 1 && DS_HAS_BULK) {
#if DS_HAS_BULK
            if (threadIdx.x == 32) {
                const unsigned mbar = ds_smem_addr(&sh.mbar[r.issued % DS_FLIGHT]);
                // The space was last read by ldmatrix (generic proxy); the copy engine writes it.
                asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
                ds_mbar_expect(mbar, nr * 2 * d.K);
                for (int row = 0; row < nr; row++) {
                    int off = r.head + row * pitch;
                    if (off >= r.cap) off -= r.cap;
                    const int first = min(2 * d.K, r.cap - off);
                    ds_bulk_copy(ring + off, src + (size_t)row * 2 * d.K, first, mbar);
                    if (first < 2 * d.K) ds_bulk_copy(ring, src + (size_t)row * 2 * d.K + first, 2 * d.K - first, mbar);
                }
            }
#endif
        } else if (p.mode == 0 || p.mode == 1) {
            const int per_row = d.K >> 3;
            for (int i = (int)threadIdx.x - 32; i < nr * per_row; i += DS_THREADS - 32) {
                if (i < 0) break;
                const int row = i / per_row, col = i - row * per_row;
                int off = r.head + row * pitch + col * 16;
                if (off >= r.cap) off -= r.cap;
                ds_cp_async16(ring + off, src + (size_t)i * 16);
            }
            ds_cp_async_commit();
        }
        r.head += bytes;
        if (r.head >= r.cap) r.head -= r.cap;
        r.used += bytes;
        r.issued++;
    }
}

// y = W x + b for this block's slice of the next chunk's weight: R input rows in `xin` (fp16,
// row pitch 2K + 16 bytes), epi(global row, input row, f32 result) per output. Tiles of 16 weight
// rows; each warp takes K-steps of 16 (mma m16n8k16: weight rows as A, input rows as the 8
// columns of B), the 16 warps' partial tiles are summed in shared memory.
// The bias of this block's slice of the next chunk, one value per thread (threads < nr): loaded
// at the start of a phase, so that its round trip overlaps the phase's other loads.
__device__ __forceinline__ float ds_bias(const Ring& r, const StepParams& p, const Shared& sh) {
    const Dense d = ds_dense(sh, p.n, r.done);
    int r0, nr;
    ds_rows(d.N, r0, nr);
    if ((int)threadIdx.x >= nr) return 0.f;
    return d.b32 ? __ldg(reinterpret_cast<const float*>(d.b) + r0 + threadIdx.x)
                 : __half2float(reinterpret_cast<const __half*>(d.b)[r0 + threadIdx.x]);
}

template <class Epi>
__device__ void ds_gemv(Ring& r, const StepParams& p, Shared& sh, unsigned ring, const char* xin, int phase, float bias,
                        Epi epi) {
    const Dense d = ds_dense(sh, p.n, r.done);
    int r0, nr;
    ds_rows(d.N, r0, nr);
    if ((int)threadIdx.x < nr) sh.bias[threadIdx.x] = bias;
    if (r.issued == r.done) ds_ring_issue(r, p, sh, ring);  // the ring is empty, so it fits
    if (p.mode == 1 && DS_HAS_BULK) {
#if DS_HAS_BULK
        ds_mbar_wait(ds_smem_addr(&sh.mbar[r.done % DS_FLIGHT]), (r.done / DS_FLIGHT) & 1);
#endif
    } else if (p.mode == 0 || p.mode == 1) {
        ds_cp_async_wait(r.issued - r.done - 1);
    }
    __syncthreads();
    ds_mark(p, phase, 1);
    const int R = p.rows, K = d.K;
    const int pitch = 2 * K + 16;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int ksteps = K >> 4;
    // ldmatrix.x4 (A): lane l gives row (l & 7) + 8 ((l >> 3) & 1), column 8 (l >> 4) of the tile;
    // ldmatrix.x2 (B): lanes 0..15 give input row (l & 7) at column 8 ((l >> 3) & 1).
    const int a_row = (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_col = (lane >> 4) * 8;
    int bm = lane & 7;
    if (bm >= R) bm = 0;  // columns past R: any valid row, their results are dropped
    const unsigned b_base = ds_smem_addr(xin) + bm * pitch + ((lane >> 3) & 1) * 16;
    for (int t0 = 0; t0 < nr; t0 += 16) {
        const int row = min(t0 + a_row, nr - 1);  // rows past the slice: a valid row, dropped
        const int a_base = r.tail + row * pitch + a_col * 2;
        float c[4] = {0.f, 0.f, 0.f, 0.f};
        for (int ks = warp; ks < ksteps; ks += DS_WARPS) {
            int off = a_base + ks * 32;
            if (off >= r.cap) off -= r.cap;
            unsigned a0, a1, a2, a3, b0, b1;
            asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                         : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                         : "r"(ring + off)
                         : "memory");
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                         : "=r"(b0), "=r"(b1)
                         : "r"(b_base + ks * 32)
                         : "memory");
            asm volatile(
                "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                "{%0, %1, %2, %3};\n"
                : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
        }
        // Accumulator layout: c[j] is (row (lane >> 2) + 8 (j >> 1), column 2 (lane & 3) + (j & 1)).
#pragma unroll
        for (int j = 0; j < 4; j++) sh.red[warp * 128 + lane * 4 + j] = c[j];
        __syncthreads();
        if (threadIdx.x < 128) {
            float v = 0.f;
#pragma unroll
            for (int w2 = 0; w2 < DS_WARPS; w2++) v += sh.red[w2 * 128 + threadIdx.x];
            const int l = threadIdx.x >> 2, j = threadIdx.x & 3;
            const int orow = t0 + (l >> 2) + (j >> 1) * 8;
            const int m = (l & 3) * 2 + (j & 1);
            if (orow < nr && m < R) epi(orow, r0 + orow, m, v + sh.bias[orow]);
        }
        __syncthreads();
    }
    ds_mark(p, phase, 2);
    // Release the chunk and refill the ring.
    const int bytes = nr * pitch;
    r.tail += bytes;
    if (r.tail >= r.cap) r.tail -= r.cap;
    r.used -= bytes;
    r.done++;
    ds_ring_issue(r, p, sh, ring);
}

// ---- LayerNorm, attention, staging ---------------------------------------------------------

// xin row m (pitch 2n + 16 bytes) = fp16(LN(row m)) for m < rows; the row is x (f32, EMB false)
// or, for layer 0, the token + position embedding (EMB true). Warps 2m and 2m + 1 take row m,
// half each, in registers (n <= 2 x 32 lanes x 4 x DS_LN_VEC); every load (x, gamma, beta) is
// issued before any arithmetic, so the phase pays one memory round trip. Called by all threads.
template <bool EMB>
__device__ void ds_layernorm(const StepParams& p, Shared& sh, const float* g, const float* b, char* xin, int len) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = p.n;
    const int m = warp >> 1, half = warp & 1;
    const bool active = m < p.rows;
    float4 v[DS_LN_VEC], gg[DS_LN_VEC], bb[DS_LN_VEC];
#pragma unroll
    for (int j = 0; j < DS_LN_VEC; j++) {
        const int c = ((2 * j + half) * 32 + lane) * 4;
        v[j] = make_float4(0.f, 0.f, 0.f, 0.f);
        gg[j] = v[j];
        bb[j] = v[j];
        if (active && c < n) {
            if (EMB) {
                const uint2 te = *reinterpret_cast<const uint2*>(p.tok_emb + (size_t)sh.tokens[m] * n + c);
                const uint2 pe = *reinterpret_cast<const uint2*>(p.pos_emb + (size_t)len * n + c);
                const float2 t0 = __half22float2(*reinterpret_cast<const __half2*>(&te.x));
                const float2 t1 = __half22float2(*reinterpret_cast<const __half2*>(&te.y));
                const float2 q0 = __half22float2(*reinterpret_cast<const __half2*>(&pe.x));
                const float2 q1 = __half22float2(*reinterpret_cast<const __half2*>(&pe.y));
                v[j] = make_float4(t0.x + q0.x, t0.y + q0.y, t1.x + q1.x, t1.y + q1.y);
            } else {
                v[j] = ds_ld_f4(p.x + (size_t)m * n + c);
            }
            gg[j] = __ldg(reinterpret_cast<const float4*>(g + c));
            bb[j] = __ldg(reinterpret_cast<const float4*>(b + c));
        }
    }
    float s = 0.f;
#pragma unroll
    for (int j = 0; j < DS_LN_VEC; j++) s += (v[j].x + v[j].y) + (v[j].z + v[j].w);
    s = ds_warp_sum(s);
    if (lane == 0) sh.red_s[warp] = s;
    __syncthreads();
    const float mean = active ? (sh.red_s[2 * m] + sh.red_s[2 * m + 1]) / (float)n : 0.f;
    float q = 0.f;
#pragma unroll
    for (int j = 0; j < DS_LN_VEC; j++) {
        if (((2 * j + half) * 32 + lane) * 4 < n) {
            const float a = v[j].x - mean, b2 = v[j].y - mean, c = v[j].z - mean, d = v[j].w - mean;
            q += a * a + b2 * b2 + c * c + d * d;
        }
    }
    q = ds_warp_sum(q);
    if (lane == 0) sh.red_m[warp] = q;
    __syncthreads();
    if (!active) return;
    const float rstd = 1.f / sqrtf((sh.red_m[2 * m] + sh.red_m[2 * m + 1]) / (float)n + 1e-5f);
    __half* out = reinterpret_cast<__half*>(xin + m * (2 * n + 16));
#pragma unroll
    for (int j = 0; j < DS_LN_VEC; j++) {
        const int c = ((2 * j + half) * 32 + lane) * 4;
        if (c < n) {
            __half2* o = reinterpret_cast<__half2*>(out + c);
            o[0] = __floats2half2_rn((v[j].x - mean) * rstd * gg[j].x + bb[j].x, (v[j].y - mean) * rstd * gg[j].y + bb[j].y);
            o[1] = __floats2half2_rn((v[j].z - mean) * rstd * gg[j].z + bb[j].z, (v[j].w - mean) * rstd * gg[j].w + bb[j].w);
        }
    }
}

// xin row m (pitch 2K + 16 bytes) = src row m (fp16, K values, written in this launch). Loads
// go out in batches of 4 per thread before their stores (one round trip per batch).
__device__ void ds_stage(const StepParams& p, const __half* src, int K, char* xin) {
    const int per_row = K / 8, total = p.rows * per_row;
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * DS_THREADS) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * DS_THREADS;
            const int m = i / per_row, c = i - m * per_row;
            if (i < total) v[u] = ds_ld_u4(src + (size_t)m * K + c * 8);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * DS_THREADS;
            const int m = i / per_row, c = i - m * per_row;
            if (i < total) *reinterpret_cast<uint4*>(xin + m * (2 * K + 16) + c * 16) = v[u];
        }
    }
}

// Splits of each (row, head) over nk keys: as many as keep the work items within one wave of the
// grid, at least DS_MIN_KEYS keys per split, at most DS_KEYS.
__device__ __forceinline__ int ds_splits(int nk, int row_heads) {
    int s = (int)gridDim.x / row_heads;
    s = min(s, (nk + DS_MIN_KEYS - 1) / DS_MIN_KEYS);
    s = max(s, (nk + DS_KEYS - 1) / DS_KEYS);
    return max(1, min(s, DS_SPLITS));
}

// Split sp of a (row, head) is in `base` ([splits][DS_PART], written by this block): count it,
// and if it was the last split to finish, merge all of them into out[0..64) (fp16) and reset
// the counter for the next phase (a grid barrier comes first). Called by all threads.
__device__ void ds_finish_split(Shared& sh, const float* base, int splits, unsigned int* cnt_ptr, __half* out) {
    const int tid = threadIdx.x;
    __syncthreads();
    if (tid == 0) {
        __threadfence();
        sh.last = atomicAdd(cnt_ptr, 1u) == (unsigned)splits - 1;
    }
    __syncthreads();
    if (sh.last) {
        // Every split's partial is visible: each block fenced before it counted.
        __threadfence();
        if (tid < DS_DH) {
            float M = DS_NEG_INF;
            for (int t = 0; t < splits; t++) M = fmaxf(M, __ldcg(base + t * DS_PART));
            float L = 0.f, o = 0.f;
            for (int t = 0; t < splits; t++) {
                const float w = expf(__ldcg(base + t * DS_PART) - M);  // 0 for an empty split
                L += w * __ldcg(base + t * DS_PART + 1);
                o += w * __ldcg(base + t * DS_PART + 2 + tid);
            }
            out[tid] = __float2half_rn(o / L);
        }
        if (tid == 0) *cnt_ptr = 0u;
    }
    __syncthreads();
}

// Attention of one query (64 dims) over keys k0 .. k0 + cnt (1 <= cnt <= DS_KEYS). With one
// split the normalised output goes to out[0..64) (fp16); else the running max, sum of exp and
// unnormalised output go to split sp of the (row, head)'s partials `base` ([splits][DS_PART]),
// and the block that completes the last split (counter `cnt_ptr`) merges them into out. Eight threads share
// a key (16 bytes each); every thread loads its keys and values at once, before any arithmetic.
template <bool CACHE>
__device__ void ds_attend(const StepParams& p, int phase, Shared& sh, const __half* q, const __half* k, const __half* v,
                          long long ld, int k0, int cnt, float* base, int sp, int splits, unsigned int* cnt_ptr,
                          __half* out) {
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, grp = tid >> 3, sub = tid & 7;
    float qf[8];
    ds_unpack8(ds_ld_u4(q + sub * 8), qf);
    uint4 kr[8], vr[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const int j = grp + 64 * i;
        kr[i] = make_uint4(0u, 0u, 0u, 0u);
        vr[i] = kr[i];
        if (j < cnt) {
            const size_t at = (size_t)(k0 + j) * ld + sub * 8;
            // The cache was written in this launch (this position) by other blocks: L2 reads.
            kr[i] = CACHE ? ds_ld_u4(k + at) : __ldg(reinterpret_cast<const uint4*>(k + at));
            vr[i] = CACHE ? ds_ld_u4(v + at) : __ldg(reinterpret_cast<const uint4*>(v + at));
        }
    }
    float s[8];
    float mx = DS_NEG_INF;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float kf[8];
        ds_unpack8(kr[i], kf);
        float d = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) d = fmaf(qf[e], kf[e], d);
        d += __shfl_xor_sync(0xffffffffu, d, 1);
        d += __shfl_xor_sync(0xffffffffu, d, 2);
        d += __shfl_xor_sync(0xffffffffu, d, 4);
        s[i] = (grp + 64 * i < cnt) ? d : DS_NEG_INF;
        mx = fmaxf(mx, s[i]);
    }
    mx = ds_warp_max(mx);
    if (lane == 0) sh.red_m[warp] = mx;
    __syncthreads();
    if (phase >= 0) ds_mark(p, phase, 1);
    mx = sh.red_m[0];
#pragma unroll
    for (int w = 1; w < DS_WARPS; w++) mx = fmaxf(mx, sh.red_m[w]);
    float l = 0.f, acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (grp + 64 * i < cnt) {
            const float pr = expf(s[i] - mx);
            l += pr;
            float vf[8];
            ds_unpack8(vr[i], vf);
#pragma unroll
            for (int e = 0; e < 8; e++) acc[e] = fmaf(pr, vf[e], acc[e]);
        }
    }
    // The 8 threads of a group hold the same probabilities: count each key once.
    l = ds_warp_sum(sub == 0 ? l : 0.f);
#pragma unroll
    for (int e = 0; e < 8; e++) {
        acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 8);
        acc[e] += __shfl_xor_sync(0xffffffffu, acc[e], 16);
    }
    if (lane == 0) sh.red_s[warp] = l;
    if (lane < 8) {
#pragma unroll
        for (int e = 0; e < 8; e++) sh.red[warp * DS_DH + lane * 8 + e] = acc[e];
    }
    __syncthreads();
    if (phase >= 0) ds_mark(p, phase, 2);
    float a = 0.f, sum = 0.f;
    if (tid < DS_DH) {
#pragma unroll
        for (int w = 0; w < DS_WARPS; w++) {
            a += sh.red[w * DS_DH + tid];
            sum += sh.red_s[w];
        }
    }
    if (splits == 1) {
        if (tid < DS_DH) out[tid] = __float2half_rn(a / sum);
        __syncthreads();  // red, red_m, red_s are reused by the next item
        return;
    }
    float* mine = base + (size_t)sp * DS_PART;
    if (tid < DS_DH) mine[2 + tid] = a;
    if (tid == 0) {
        mine[0] = mx;
        mine[1] = sum;
    }
    ds_finish_split(sh, base, splits, cnt_ptr, out);
}

// Self-attention (cross false: over len + 1 cached keys of the sequence's slot) or cross-attention
// (over the n_audio_ctx keys of the sequence's utterance) of layer l: work items (row, head,
// split) spread over the blocks; the result goes to p.att.
__device__ void ds_attention(const StepParams& p, Shared& sh, int l, bool cross, int len, int phase) {
    const int H = p.n_head, R = p.rows, n = p.n;
    const int nk = cross ? p.n_audio_ctx : len + 1;
    const int S = ds_splits(nk, R * H);
    const int ks = (nk + S - 1) / S;
    for (int it = blockIdx.x; it < R * H * S; it += gridDim.x) {
        const int sp = it % S, h = (it / S) % H, m = it / (S * H);
        const int k0 = sp * ks, cnt = min(ks, nk - k0);
        const __half* q = p.q + (size_t)m * n + h * DS_DH;
        float* base = p.part + (size_t)(m * H + h) * S * DS_PART;
        unsigned int* counter = p.sync + 1 + m * H + h;
        __half* out = p.att + (size_t)m * n + h * DS_DH;
        if (cnt <= 0) {  // an empty split (S does not divide evenly): contributes nothing
            if (threadIdx.x < DS_DH) base[sp * DS_PART + 2 + threadIdx.x] = 0.f;
            if (threadIdx.x == 0) {
                base[sp * DS_PART] = DS_NEG_INF;
                base[sp * DS_PART + 1] = 0.f;
            }
            ds_finish_split(sh, base, S, counter, out);
            continue;
        }
        if (cross) {
            const __half* kv = sh.cross[m] + (size_t)l * 2 * n + h * DS_DH;
            ds_attend<false>(p, it == (int)blockIdx.x ? phase : -1, sh, q, kv, kv + n, p.kv_ld, k0, cnt, base, sp, S,
                             counter, out);
        } else {
            const size_t at = (size_t)l * p.cache_layer + (size_t)sh.slots[m] * p.ctx * n + h * DS_DH;
            ds_attend<true>(p, it == (int)blockIdx.x ? phase : -1, sh, q, p.k_cache + at, p.v_cache + at, n, k0, cnt, base,
                            sp, S, counter, out);
        }
    }
}

// ---- the kernel -----------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(DS_THREADS, 1) decoder_step(const StepParams p) {
    extern __shared__ __align__(128) char ds_smem[];
    __shared__ Shared sh;
    const unsigned ring = ds_smem_addr(ds_smem);
    char* xin = ds_smem + p.ring_bytes;
    const int n = p.n, R = p.rows;
    // Tables into shared memory: layer weight addresses, slots, tokens, cross K/V addresses.
    {
        const unsigned long long* src = reinterpret_cast<const unsigned long long*>(p.layers);
        unsigned long long* dst = reinterpret_cast<unsigned long long*>(sh.layers);
        const int words = p.n_layer * (int)(sizeof(LayerW) / 8);
        for (int i = threadIdx.x; i < words; i += DS_THREADS) dst[i] = src[i];
        if (threadIdx.x < R) {
            sh.slots[threadIdx.x] = p.slots[threadIdx.x];
            sh.tokens[threadIdx.x] = p.tokens[threadIdx.x];
            sh.cross[threadIdx.x] = reinterpret_cast<const __half*>(p.cross_table[threadIdx.x]);
        }
#if DS_HAS_BULK
        if (threadIdx.x == 0) {
            for (int i = 0; i < DS_FLIGHT; i++) ds_mbar_init(ds_smem_addr(&sh.mbar[i]));
            asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
        }
#endif
        __syncthreads();
    }
    Ring r = {p.ring_bytes, 0, 0, 0, 0, 0, 6 * p.n_layer, 0};
    ds_ring_issue(r, p, sh, ring);
    const int len = *p.len_ptr;
    ds_prefetch_layer(p, sh, 0, len);
    unsigned int target = 0;

    // Phase 0: the embedding into this block's columns of x (the columns its residual adds own).
    int c0, nc;
    ds_rows(n, c0, nc);
    for (int e = threadIdx.x; e < R * nc; e += DS_THREADS) {
        const int m = e / nc, c = e % nc;
        const float v = __half2float(p.tok_emb[(size_t)sh.tokens[m] * n + c0 + c]) +
                        __half2float(p.pos_emb[(size_t)len * n + c0 + c]);
        sh.xown[m][c] = v;
        p.x[(size_t)m * n + c0 + c] = v;
    }
    // Residual add into this block's columns (column i of the slice, global column col).
    auto residual = [&](int i, int col, int m, float v) {
        const float y = sh.xown[m][i] + v;
        sh.xown[m][i] = y;
        p.x[(size_t)m * n + col] = y;
    };
    ds_mark_clock(p, 0);
    ds_mark(p, 0, 0);
    for (int l = 0; l < p.n_layer; l++) {
        const LayerW& L = sh.layers[l];
        __half* kc = p.k_cache + (size_t)l * p.cache_layer;
        __half* vc = p.v_cache + (size_t)l * p.cache_layer;
        ds_prefetch_layer(p, sh, l + 1, len);
        // 1: LN1 + QKV; the new key and value go into the cache.
        float bias = ds_bias(r, p, sh);
        if (l == 0) {
            ds_layernorm<true>(p, sh, L.ln1_g, L.ln1_b, xin, len);
        } else {
            ds_layernorm<false>(p, sh, L.ln1_g, L.ln1_b, xin, len);
        }
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 0, bias, [&](int, int row, int m, float v) {
            const __half h = __float2half_rn(v);
            if (row < n) {
                p.q[(size_t)m * n + row] = h;
            } else {
                const size_t at = ((size_t)sh.slots[m] * p.ctx + len) * n;
                if (row < 2 * n) kc[at + row - n] = h;
                else vc[at + row - 2 * n] = h;
            }
        });
        ds_mark(p, 8 * l + 0, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 1, 0);
        // 2: self-attention.
        ds_attention(p, sh, l, false, len, 8 * l + 1);
        ds_mark(p, 8 * l + 1, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 2, 0);
        // 3: out projection into the residual stream.
        bias = ds_bias(r, p, sh);
        ds_stage(p, p.att, n, xin);
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 2, bias, residual);
        ds_mark(p, 8 * l + 2, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 3, 0);
        // 4: LN2 + cross-attention query.
        bias = ds_bias(r, p, sh);
        ds_layernorm<false>(p, sh, L.ln2_g, L.ln2_b, xin, len);
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 3, bias,
                [&](int, int row, int m, float v) { p.q[(size_t)m * n + row] = __float2half_rn(v); });
        ds_mark(p, 8 * l + 3, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 4, 0);
        // 5: cross-attention.
        ds_attention(p, sh, l, true, len, 8 * l + 4);
        ds_mark(p, 8 * l + 4, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 5, 0);
        // 6: cross out projection.
        bias = ds_bias(r, p, sh);
        ds_stage(p, p.att, n, xin);
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 5, bias, residual);
        ds_mark(p, 8 * l + 5, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 6, 0);
        // 7: LN3 + fc1 + GELU (of the fp16-rounded value, as gelu_f16 after the GEMM).
        bias = ds_bias(r, p, sh);
        ds_layernorm<false>(p, sh, L.ln3_g, L.ln3_b, xin, len);
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 6, bias, [&](int, int row, int m, float v) {
            p.u[(size_t)m * 4 * n + row] = __float2half_rn(ds_gelu(__half2float(__float2half_rn(v))));
        });
        ds_mark(p, 8 * l + 6, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 7, 0);
        // 8: fc2 into the residual stream.
        bias = ds_bias(r, p, sh);
        ds_stage(p, p.u, 4 * n, xin);
        __syncthreads();
        ds_gemv(r, p, sh, ring, xin, 8 * l + 7, bias, residual);
        ds_mark(p, 8 * l + 7, 3);
        if (l + 1 < p.n_layer) {
            ds_barrier(p.sync, target);
            ds_mark(p, 8 * l + 8, 0);
        }
    }
    ds_mark_clock(p, 2);
}
