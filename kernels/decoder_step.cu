// The decoder blocks of a one-token step in ONE persistent kernel (a "megakernel"), for a few
// rows (sequences x 1 token, at most DS_RMAX). A decode step at batch 1 is bound by streaming the
// weights (45 MB per large-v2 layer), but as separate launches it is ~350 small kernels, each
// paying launch, ramp-up and tail. Here one block per multiprocessor runs every phase of every
// layer, with a grid-wide barrier between dependent phases, and the weights, which do not depend
// on the data, stream into a ring buffer in shared memory ahead of use.
//
// Warp-specialised: the last warp of each block is the producer. It walks the block's weight
// slices of every layer in the order they are used and copies them (cp.async, 4 KB pieces, at
// most `ahead` pieces in flight) into the ring as soon as there is room, publishing in shared
// memory how many whole chunks have landed. The other 15 warps (the consumers) run the phases,
// syncing among themselves only (named barrier 1), waiting for a chunk's "ready" count before its
// GEMV and publishing the ring bytes they are done with. Bounding the copies in flight per block
// matters: when every block queued whole 100 KB slices at once, the global round trips of the
// dependency chain (barrier polls, activation loads) waited behind them (~4 us per barrier).
// In mode 0 the producer also prefetches each layer's LayerNorm parameters and bias slices into
// L2, and one consumer thread, at the start of each layer, this layer's cross K/V and the next
// layer's self-attention cache, so that the chain's loads hit L2.
//
// Measured on an H100 (large-v2, batch 1, whisper-trt bench, one run each): 2.54-2.58 ms per step
// against 2.41-2.44 ms for the separate kernels (CUDA graphs, PDL) in the same runs, so it stays
// opt-in; 1.75-1.77 ms without any weight traffic (mode 2): the dependency chain (8 phases, 6
// grid barriers, ~52 us per layer) is the floor of this design, and the weights add ~0.8 ms on
// top (phases whose weights or attention inputs are not in yet, round trips slower under load).
//
// Phases of a layer (block b owns rows N*b/G .. N*(b+1)/G of every dense layer's weight [N][K]):
//   1 LN1 (each block normalises the R rows itself) + QKV: q to `q`, k and v straight into the
//     KV cache at position len of the sequence's slot (kv_append folded in)
//   2 self-attention over the cache (len + 1 keys), one work item per (row, head) (split over
//     keys only past DS_KEYS keys); an item waits for its head's q, k and v rows (per-head
//     counters), not for a grid barrier
//   3 out projection of `att`, added into x
//   4 LN2 + cross-attention query
//   5 cross-attention (per-head counters again, no grid barrier) over the n_audio_ctx keys of
//     each sequence's utterance (cross K/V table), split over keys; each split writes its
//     partial (max, sum, unnormalised output)
//   6 cross out projection, added into x; when rows x heads are few, every block merges all
//     partials itself while staging its input (no separate merge); else the block that finished
//     the last split of a (row, head) merged them in phase 5
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
// threads, dynamic shared memory = ring_bytes + rows * (8n + 16) + the GEMV's partial tiles
// (15 warps x DS_TILES x 16 x rows rounded up to even, f32). `sync` (the grid barrier, the
// per-head counters and the split counters) must be zero at launch. n % 64 == 0, n <= 1280, n_layer <= DS_LAYERS, every
// dense slice of a block fits the ring, ceil(4n / grid) <= DS_BIAS, ceil(n / grid) <= DS_OWN.
#include <cuda_fp16.h>

#define DS_THREADS 512
// Consumer warps and threads (the last warp is the producer).
#define DS_CWARPS 15
#define DS_CTHREADS 480
#define DS_RMAX 8
#define DS_DH 64
#define DS_PART (DS_DH + 2)
// Keys of one attention work item at most: 60 groups of 8 consumer threads, 8 keys per group.
#define DS_GROUPS (DS_CTHREADS / 8)
#define DS_KEYS (8 * DS_GROUPS)
// Splits of one (row, head) at most, and keys per split at least.
#define DS_SPLITS 32
#define DS_MIN_KEYS 32
// Cross-attention partials merged by every consumer block: at most this many splits, and rows x
// heads x 32 at most 2 x DS_CTHREADS (two passes of one round trip each).
#define DS_MERGE_S 8
// Pieces (4 KB) in flight per block at most; chunks published but not yet reported.
#define DS_FLIGHT 12
#define DS_PIECE 256
#define DS_PENDING 16
// LayerNorm keeps a row in registers of two warps: n <= 2 x 32 lanes x 4 x DS_LN_VEC.
#define DS_LN_VEC 5
#define DS_LAYERS 32
// Bias values of one slice, own residual columns per row, at most.
#define DS_BIAS 192
#define DS_OWN 64
// 16-row weight tiles one pass of the GEMV computes at once.
#define DS_TILES 3
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
    // Zero at launch: [0] the grid barrier, [1 + head] rows of the head's q, k and v computed
    // (QKV, all layers so far), [1 + heads + head] rows of its cross-attention query computed,
    // [1 + 2 heads + row * heads + head] split counters.
    unsigned int* sync;
    // Null, or timestamps (globaltimer, ns) [layer * 8 + phase][4][grid]: phase start, inputs and
    // weights ready, computed, arrival at the barrier (thread 0 of each block), then [grid][4]:
    // globaltimer and clock64 at the start and the end of the kernel.
    unsigned long long* prof;
    long long cache_layer;  // elements of one layer of the cache
    long long kv_ld;        // row stride (elements) of the cross K/V
    int rows, n, n_head, n_layer, ctx, n_audio_ctx, ring_bytes;
    // 0: weights by the producer warp (cp.async) with L2 prefetch of the next
    // attention inputs, LayerNorm parameters and biases; 1: the same without the prefetches;
    // 2: no weights at all (timing only: the results are garbage).
    int mode;
    // 4 KB pieces of weights in flight per block (1 .. DS_FLIGHT); l2_ahead is unused (kept for
    // the layout).
    int ahead, l2_ahead;
};

// Shared state of a block besides the ring and the staged input rows.
struct Shared {
    float red[DS_CWARPS * DS_DH];  // attention partial outputs (the GEMV's are in dynamic memory)
    float red_m[DS_CWARPS], red_s[DS_CWARPS];
    float bias[DS_BIAS];
    float xown[DS_RMAX][DS_OWN];
    LayerW layers[DS_LAYERS];
    const __half* cross[DS_RMAX];
    int slots[DS_RMAX];
    int tokens[DS_RMAX];
    // Producer only: the index of the last piece of chunks issued but not yet reported.
    int plast[DS_PENDING];
    int last;
    // Producer -> consumers: chunks wholly in the ring. Consumers -> producer: ring bytes (stream
    // position, monotone) they are done with.
    int ready;
    int released;
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

// The consumer warps' barrier (the producer warp never joins it). A warp may come here diverged
// (thread 0 polling a flag while its other lanes wait): it reconverges first, and again after, so
// that the .aligned ldmatrix and mma that follow run converged.
__device__ __forceinline__ void ds_sync() {
    __syncwarp();
    asm volatile("barrier.sync 1, %0;\n" ::"n"(DS_CTHREADS) : "memory");
    __syncwarp();
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

__device__ __forceinline__ void ds_prefetch_line(const void* p) {
    asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p) : "memory");
}

#if DS_HAS_BULK
__device__ __forceinline__ void ds_prefetch_l2(const void* src, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;\n" ::"l"(src), "r"(bytes) : "memory");
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

// Grid-wide barrier of the consumer warps: every block arrives (release), then waits until all
// have (acquire). `target` counts the arrivals expected so far in this launch.
__device__ __forceinline__ void ds_barrier(unsigned int* ctr, unsigned int& target) {
    ds_sync();
    target += gridDim.x;
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;\n" ::"l"(ctr) : "memory");
        unsigned int v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(ctr) : "memory");
        } while (v < target);
    }
    ds_sync();
}

// After a block wrote its rows r0 .. r0 + nr of q (rows < n, head row / 64) and, for the QKV
// (qkv true), k and v (rows n .. 3n): adds the rows of each head to that head's counter `flags[h]`
// (release), so that its attention can start without a grid barrier.
__device__ __forceinline__ void ds_signal_heads(unsigned int* flags, int n, int r0, int nr) {
    ds_sync();
    if (threadIdx.x == 0) {
        for (int r = r0; r < r0 + nr;) {
            const int seg_end = min(r0 + nr, (r / DS_DH + 1) * DS_DH);
            const int h = (r % n) / DS_DH;
            asm volatile("red.release.gpu.global.add.u32 [%0], %1;\n" ::"l"(flags + h), "r"(seg_end - r) : "memory");
            r = seg_end;
        }
    }
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

// ---- the producer warp --------------------------------------------------------------------
// Chunks (this block's row slice of each dense layer, rows padded to 2K + 16 bytes so that
// ldmatrix reads of 8 rows hit distinct banks) go in the order they are used into a ring of
// `ring_bytes` bytes, addressed by a stream position (bytes, monotone) modulo its size. A piece
// is DS_PIECE 16-byte units of a chunk; every lane copies every 32nd unit of it (one cp.async
// group per piece). The consumers release a chunk after its GEMV (sh.released).

// Layer l's LayerNorm parameters (this block's share of their 128-byte lines) and this block's
// bias slices into L2.
__device__ void ds_prefetch_params(const StepParams& p, const Shared& sh, int l) {
    const int lane = threadIdx.x & 31, n = p.n, G = gridDim.x;
    const LayerW& L = sh.layers[l];
    const float* ln[6] = {L.ln1_g, L.ln1_b, L.ln2_g, L.ln2_b, L.ln3_g, L.ln3_b};
    const int lines = n / 32;  // 128-byte lines of one f32 vector
    for (int j = blockIdx.x + G * lane; j < 6 * lines; j += 32 * G) ds_prefetch_line(ln[j / lines] + (j % lines) * 32);
    if (lane < 6) {
        const Dense d = ds_dense(sh, n, 6 * l + lane);
        int r0, nr;
        ds_rows(d.N, r0, nr);
        if (nr > 0) {
            const char* b = reinterpret_cast<const char*>(d.b) + (size_t)r0 * (d.b32 ? 4 : 2);
            ds_prefetch_line(b);
            ds_prefetch_line(b + (nr - 1) * (d.b32 ? 4 : 2));
        }
    }
}

__device__ void ds_producer(const StepParams& p, Shared& sh, unsigned ring) {
    const int lane = threadIdx.x & 31;
    const int total = 6 * p.n_layer, cap = p.ring_bytes;
    if (p.mode == 2) {
        if (lane == 0) *reinterpret_cast<volatile int*>(&sh.ready) = total;
        return;
    }
    const bool hint = p.mode == 0;
    const int flight = max(1, min(p.ahead, DS_FLIGHT));
    int pos = 0;             // stream position of the current chunk
    int issued = 0, done = 0;  // pieces issued, pieces known complete
    int reported = 0;        // chunks published as ready
    // The consumers' released position, the same in every lane (read by lane 0: acquire).
    auto released = [&]() {
        int v = 0;
        if (lane == 0) v = *reinterpret_cast<volatile int*>(&sh.released);
        v = __shfl_sync(0xffffffffu, v, 0);
        __syncwarp();
        return v;
    };
    // Publishes the chunks whose last piece is complete (pieces complete in issue order).
    auto report = [&](int chunks_issued) {
        int r = reported;
        while (r < chunks_issued && sh.plast[r % DS_PENDING] < done) r++;
        if (r != reported) {
            __syncwarp();
            if (lane == 0) {
                __threadfence_block();  // the pieces' data (each lane waited for its own copies)
                *reinterpret_cast<volatile int*>(&sh.ready) = r;
            }
            reported = r;
        }
    };
    for (int c = 0; c < total; c++) {
        if (hint && c % 6 == 0) ds_prefetch_params(p, sh, c / 6);
        const Dense d = ds_dense(sh, p.n, c);
        int r0, nr;
        ds_rows(d.N, r0, nr);
        const int pitch = 2 * d.K + 16, per_row = d.K >> 3, units = nr * per_row;
        const char* src = reinterpret_cast<const char*>(d.w + (size_t)r0 * d.K);
        for (int u0 = 0; u0 < units; u0 += DS_PIECE) {
            const int u1 = min(u0 + DS_PIECE, units);
            const int need = pos + ((u1 - 1) / per_row + 1) * pitch;
            if (need - released() > cap) {
                // No room: let everything in flight land (so the consumers can go on), then wait.
                asm volatile("cp.async.wait_group 0;\n" ::: "memory");
                done = issued;
                report(c);
                while (need - released() > cap) __nanosleep(64);
            }
            for (int i = u0 + lane; i < u1; i += 32) {
                const int row = i / per_row, col = i - row * per_row;
                int off = (pos + row * pitch + col * 16) % cap;
                ds_cp_async16(ring + off, src + (size_t)i * 16);
            }
            ds_cp_async_commit();
            if (u1 == units) sh.plast[c % DS_PENDING] = issued;
            issued++;
            if (issued - done >= flight) {
                ds_cp_async_wait(flight - 1);
                done = issued - (flight - 1);
                report(c + (u1 == units ? 1 : 0));
            }
        }
        if (units == 0) sh.plast[c % DS_PENDING] = issued - 1;  // nothing to wait for
        pos += nr * pitch;
    }
    asm volatile("cp.async.wait_group 0;\n" ::: "memory");
    done = issued;
    report(total);
}

// ---- the consumers' GEMV -------------------------------------------------------------------

// The consumers' view of the ring: chunks done, the next chunk's ring offset and stream position.
struct Cons {
    int done, tail, pos;
};

// The bias of this block's slice of the next chunk, one value per thread (threads < nr): loaded
// at the start of a phase, so that its round trip overlaps the phase's other loads.
__device__ __forceinline__ float ds_bias(const Cons& cs, const StepParams& p, const Shared& sh) {
    const Dense d = ds_dense(sh, p.n, cs.done);
    int r0, nr;
    ds_rows(d.N, r0, nr);
    if ((int)threadIdx.x >= nr) return 0.f;
    return d.b32 ? __ldg(reinterpret_cast<const float*>(d.b) + r0 + threadIdx.x)
                 : __half2float(reinterpret_cast<const __half*>(d.b)[r0 + threadIdx.x]);
}

// y = W x + b for this block's slice of the next chunk's weight: R input rows in `xin` (fp16,
// row pitch 2K + 16 bytes), epi(slice row, global row, input row, f32 result) per output. Up to
// DS_TILES tiles of 16 weight rows at once; each warp takes K-steps of 16 (mma m16n8k16: weight
// rows as A, input rows as the 8 columns of B, loaded once for all tiles), the 15 warps' partial
// tiles are summed in shared memory. Called by the consumer threads.
template <class Epi>
__device__ void ds_gemv(Cons& cs, const StepParams& p, Shared& sh, unsigned ring, const char* xin, int phase, float bias,
                        Epi epi) {
    // Partial tiles of the 15 warps: [warp][tile][16 weight rows][RP input rows], RP = rows
    // rounded up to even (dynamic shared memory after the staged inputs; see FusedStep::ring_bytes).
    float* red = reinterpret_cast<float*>(const_cast<char*>(xin) + p.rows * (8 * p.n + 16));
    const int RP = (p.rows + 1) & ~1;
    const Dense d = ds_dense(sh, p.n, cs.done);
    int r0, nr;
    ds_rows(d.N, r0, nr);
    if ((int)threadIdx.x < nr) sh.bias[threadIdx.x] = bias;
    if (threadIdx.x == 0) {
        while (*reinterpret_cast<volatile int*>(&sh.ready) <= cs.done) {
        }
    }
    ds_sync();
    ds_mark(p, phase, 1);
    const int R = p.rows, K = d.K, cap = p.ring_bytes;
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
    for (int t0 = 0; t0 < nr; t0 += 16 * DS_TILES) {
        const int nt = min(DS_TILES, (nr - t0 + 15) >> 4);
        int a_base[DS_TILES];
#pragma unroll
        for (int t = 0; t < DS_TILES; t++) {
            const int row = min(t0 + 16 * t + a_row, nr - 1);  // rows past the slice: a valid row, dropped
            a_base[t] = cs.tail + row * pitch + a_col * 2;
        }
        float c[DS_TILES][4];
#pragma unroll
        for (int t = 0; t < DS_TILES; t++) c[t][0] = c[t][1] = c[t][2] = c[t][3] = 0.f;
        for (int ks = warp; ks < ksteps; ks += DS_CWARPS) {
            unsigned b0, b1;
            asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                         : "=r"(b0), "=r"(b1)
                         : "r"(b_base + ks * 32)
                         : "memory");
#pragma unroll
            for (int t = 0; t < DS_TILES; t++) {
                if (t < nt) {
                    int off = a_base[t] + ks * 32;
                    if (off >= cap) off -= cap;
                    unsigned a0, a1, a2, a3;
                    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                                 : "=r"(a0), "=r"(a1), "=r"(a2), "=r"(a3)
                                 : "r"(ring + off)
                                 : "memory");
                    asm volatile(
                        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                        "{%0, %1, %2, %3};\n"
                        : "+f"(c[t][0]), "+f"(c[t][1]), "+f"(c[t][2]), "+f"(c[t][3])
                        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
                }
            }
        }
        // Accumulator layout: c[j] is (row (lane >> 2) + 8 (j >> 1), column 2 (lane & 3) + (j & 1)).
        // Only the accumulator columns of real input rows (2 (lane & 3) < RP) are kept.
        if (2 * (lane & 3) < RP) {
#pragma unroll
            for (int t = 0; t < DS_TILES; t++) {
                if (t < nt) {
                    float* o = red + ((warp * DS_TILES + t) * 16 + (lane >> 2)) * RP + 2 * (lane & 3);
                    *reinterpret_cast<float2*>(o) = make_float2(c[t][0], c[t][1]);
                    *reinterpret_cast<float2*>(o + 8 * RP) = make_float2(c[t][2], c[t][3]);
                }
            }
        }
        ds_sync();
        ds_mark(p, phase, 2);
        for (int i = threadIdx.x; i < nt * 16 * R; i += DS_CTHREADS) {
            const int t = i / (16 * R), e = i - t * 16 * R;
            const int row = e / R, m = e - row * R;
            const int orow = t0 + 16 * t + row;
            if (orow < nr) {
                float v = 0.f;
#pragma unroll
                for (int w2 = 0; w2 < DS_CWARPS; w2++) v += red[((w2 * DS_TILES + t) * 16 + row) * RP + m];
                epi(orow, r0 + orow, m, v + sh.bias[orow]);
            }
        }
        if (t0 + 16 * DS_TILES < nr) ds_sync();  // red is written again by the next pass
    }
    // Release the chunk: every warp's ldmatrix reads of it came before the barrier above.
    const int bytes = nr * pitch;
    cs.tail += bytes;
    if (cs.tail >= cap) cs.tail -= cap;
    cs.pos += bytes;
    cs.done++;
    if (threadIdx.x == 0) *reinterpret_cast<volatile int*>(&sh.released) = cs.pos;
}

// ---- LayerNorm, attention, staging ---------------------------------------------------------

// xin row m (pitch 2n + 16 bytes) = fp16(LN(row m)) for m < rows; the row is x (f32, EMB false)
// or, for layer 0, the token + position embedding (EMB true). Warps 2i and 2i + 1 take a row,
// half each, in registers (n <= 2 x 32 lanes x 4 x DS_LN_VEC), 7 rows per pass; every load (x,
// gamma, beta) of a pass is issued before any arithmetic, so a pass pays one memory round trip.
// Called by the consumer threads.
template <bool EMB>
__device__ void ds_layernorm(const StepParams& p, Shared& sh, const float* g, const float* b, char* xin, int len) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, n = p.n;
    const int half = warp & 1;
    for (int m0 = 0; m0 < p.rows; m0 += DS_CWARPS / 2) {
        if (m0 > 0) ds_sync();  // red_s and red_m of the previous pass are read
        const int m = m0 + (warp >> 1);
        const bool active = warp < 2 * (DS_CWARPS / 2) && m < p.rows;
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
        ds_sync();
        const float mean = active ? (sh.red_s[warp & ~1] + sh.red_s[warp | 1]) / (float)n : 0.f;
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
        ds_sync();
        if (active) {
            const float rstd = 1.f / sqrtf((sh.red_m[warp & ~1] + sh.red_m[warp | 1]) / (float)n + 1e-5f);
            __half* out = reinterpret_cast<__half*>(xin + m * (2 * n + 16));
#pragma unroll
            for (int j = 0; j < DS_LN_VEC; j++) {
                const int c = ((2 * j + half) * 32 + lane) * 4;
                if (c < n) {
                    __half2* o = reinterpret_cast<__half2*>(out + c);
                    o[0] = __floats2half2_rn((v[j].x - mean) * rstd * gg[j].x + bb[j].x,
                                             (v[j].y - mean) * rstd * gg[j].y + bb[j].y);
                    o[1] = __floats2half2_rn((v[j].z - mean) * rstd * gg[j].z + bb[j].z,
                                             (v[j].w - mean) * rstd * gg[j].w + bb[j].w);
                }
            }
        }
    }
}

// xin row m (pitch 2K + 16 bytes) = src row m (fp16, K values, written in this launch). Loads
// go out in batches of 4 per thread before their stores (one round trip per batch).
__device__ void ds_stage(const StepParams& p, const __half* src, int K, char* xin) {
    const int per_row = K / 8, total = p.rows * per_row;
    for (int i0 = threadIdx.x; i0 < total; i0 += 4 * DS_CTHREADS) {
        uint4 v[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * DS_CTHREADS;
            const int m = i / per_row, c = i - m * per_row;
            if (i < total) v[u] = ds_ld_u4(src + (size_t)m * K + c * 8);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int i = i0 + u * DS_CTHREADS;
            const int m = i / per_row, c = i - m * per_row;
            if (i < total) *reinterpret_cast<uint4*>(xin + m * (2 * K + 16) + c * 8 * 2) = v[u];
        }
    }
}

// Splits of each (row, head) over nk keys. Self-attention (cache): only as many as DS_KEYS needs
// (one work item per (row, head) up to DS_KEYS keys: no merge). Cross-attention: as many as keep
// the work items within one wave of the grid, at least DS_MIN_KEYS keys per split, at most
// DS_KEYS.
__device__ __forceinline__ int ds_splits(int nk, int row_heads, bool cross) {
    int s = cross ? (int)gridDim.x / row_heads : 1;
    s = min(s, (nk + DS_MIN_KEYS - 1) / DS_MIN_KEYS);
    s = max(s, (nk + DS_KEYS - 1) / DS_KEYS);
    return max(1, min(s, DS_SPLITS));
}

// Whether the cross-attention partials are merged by every block while it stages the cross out
// projection's input (few rows x heads), instead of by the last split's block.
__device__ __forceinline__ bool ds_merge_later(const StepParams& p, int S) {
    return S > 1 && S <= DS_MERGE_S && p.rows * p.n_head * 32 <= 2 * DS_CTHREADS;
}

// Split sp of a (row, head) is in `base` ([splits][DS_PART], written by this block): count it,
// and if it was the last split to finish, merge all of them into out[0..64) (fp16) and reset
// the counter for the next phase (a grid barrier comes first). Called by the consumer threads.
__device__ void ds_finish_split(Shared& sh, const float* base, int splits, unsigned int* cnt_ptr, __half* out) {
    const int tid = threadIdx.x;
    ds_sync();
    if (tid == 0) {
        __threadfence();
        sh.last = atomicAdd(cnt_ptr, 1u) == (unsigned)splits - 1;
    }
    ds_sync();
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
    ds_sync();
}

// xin row m (pitch 2n + 16 bytes), columns h*64 .. h*64 + 64 = the merged cross-attention output
// of (row m, head h) from its S partials (p.part, [rows][heads][S][DS_PART]): every (row, head,
// pair of dims) in two passes, every partial load of both passes issued before any arithmetic
// (rows x heads x 32 <= 2 x DS_CTHREADS, S <= DS_MERGE_S). Called by the consumer threads.
__device__ void ds_merge_stage(const StepParams& p, int S, char* xin) {
    const int n = p.n, total = p.rows * p.n_head * 32;
    float2 ml[2][DS_MERGE_S], o[2][DS_MERGE_S];
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int e = threadIdx.x + u * DS_CTHREADS;
        const int pair = e >> 5, d = (e & 31) * 2;
        const float* base = p.part + (size_t)pair * S * DS_PART;
#pragma unroll
        for (int t = 0; t < DS_MERGE_S; t++) {
            ml[u][t] = make_float2(DS_NEG_INF, 0.f);
            o[u][t] = make_float2(0.f, 0.f);
            if (e < total && t < S) {
                ml[u][t] = __ldcg(reinterpret_cast<const float2*>(base + t * DS_PART));
                o[u][t] = __ldcg(reinterpret_cast<const float2*>(base + t * DS_PART + 2 + d));
            }
        }
    }
#pragma unroll
    for (int u = 0; u < 2; u++) {
        const int e = threadIdx.x + u * DS_CTHREADS;
        if (e < total) {
            const int pair = e >> 5, d = (e & 31) * 2;
            const int m = pair / p.n_head, h = pair - m * p.n_head;
            float M = DS_NEG_INF;
#pragma unroll
            for (int t = 0; t < DS_MERGE_S; t++) M = fmaxf(M, ml[u][t].x);
            float L = 0.f, a = 0.f, b = 0.f;
#pragma unroll
            for (int t = 0; t < DS_MERGE_S; t++) {
                if (t < S) {
                    const float w = expf(ml[u][t].x - M);  // 0 for an empty split
                    L += w * ml[u][t].y;
                    a += w * o[u][t].x;
                    b += w * o[u][t].y;
                }
            }
            *reinterpret_cast<__half2*>(xin + m * (2 * n + 16) + (h * DS_DH + d) * 2) = __floats2half2_rn(a / L, b / L);
        }
    }
}

// Attention of one query (64 dims) over keys k0 .. k0 + cnt (1 <= cnt <= DS_KEYS). With one
// split the normalised output goes to out[0..64) (fp16); else the running max, sum of exp and
// unnormalised output go to split sp of the (row, head)'s partials `base` ([splits][DS_PART]),
// and (cnt_ptr not null) the block that completes the last split merges them into out. Eight
// threads share a key (16 bytes each); every thread loads its keys and values at once, before any
// arithmetic. Called by the consumer threads.
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
        const int j = grp + DS_GROUPS * i;
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
        s[i] = (grp + DS_GROUPS * i < cnt) ? d : DS_NEG_INF;
        mx = fmaxf(mx, s[i]);
    }
    mx = ds_warp_max(mx);
    if (lane == 0) sh.red_m[warp] = mx;
    ds_sync();
    if (phase >= 0) ds_mark(p, phase, 1);
    mx = sh.red_m[0];
#pragma unroll
    for (int w = 1; w < DS_CWARPS; w++) mx = fmaxf(mx, sh.red_m[w]);
    float l = 0.f, acc[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int i = 0; i < 8; i++) {
        if (grp + DS_GROUPS * i < cnt) {
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
    ds_sync();
    if (phase >= 0) ds_mark(p, phase, 2);
    float a = 0.f, sum = 0.f;
    if (tid < DS_DH) {
#pragma unroll
        for (int w = 0; w < DS_CWARPS; w++) {
            a += sh.red[w * DS_DH + tid];
            sum += sh.red_s[w];
        }
    }
    if (splits == 1) {
        if (tid < DS_DH) out[tid] = __float2half_rn(a / sum);
        ds_sync();  // red, red_m, red_s are reused by the next item
        return;
    }
    float* mine = base + (size_t)sp * DS_PART;
    if (tid < DS_DH) mine[2 + tid] = a;
    if (tid == 0) {
        mine[0] = mx;
        mine[1] = sum;
    }
    if (cnt_ptr != nullptr) ds_finish_split(sh, base, splits, cnt_ptr, out);
    else ds_sync();  // red, red_m, red_s are reused by the next item
}

// Self-attention (cross false: over len + 1 cached keys of the sequence's slot) or cross-attention
// (over the n_audio_ctx keys of the sequence's utterance) of layer l: work items (row, head,
// split) spread over the blocks; the result goes to p.att (or, cross with ds_merge_later, stays
// in the partials).
__device__ void ds_attention(const StepParams& p, Shared& sh, int l, bool cross, int len, int phase) {
    // Rows of each head's inputs the dense phase before produces per layer (q, k, v / q).
    const unsigned need = (unsigned)(l + 1) * (cross ? DS_DH : 3 * DS_DH);
    const unsigned int* flags = p.sync + 1 + (cross ? p.n_head : 0);
    const int H = p.n_head, R = p.rows, n = p.n;
    const int nk = cross ? p.n_audio_ctx : len + 1;
    const int S = ds_splits(nk, R * H, cross);
    const bool later = cross && ds_merge_later(p, S);
    const int ks = (nk + S - 1) / S;
    for (int it = blockIdx.x; it < R * H * S; it += gridDim.x) {
        const int sp = it % S, h = (it / S) % H, m = it / (S * H);
        const int k0 = sp * ks, cnt = min(ks, nk - k0);
        // This (row, head)'s inputs: wait for the blocks that computed them, not for the grid.
        if (threadIdx.x == 0) {
            unsigned v;
            do {
                asm volatile("ld.acquire.gpu.global.u32 %0, [%1];\n" : "=r"(v) : "l"(flags + h) : "memory");
            } while (v < need);
        }
        ds_sync();
        const __half* q = p.q + (size_t)m * n + h * DS_DH;
        float* base = p.part + (size_t)(m * H + h) * S * DS_PART;
        unsigned int* counter = later ? nullptr : p.sync + 1 + 2 * H + m * H + h;
        __half* out = p.att + (size_t)m * n + h * DS_DH;
        if (cnt <= 0) {  // an empty split (S does not divide evenly): contributes nothing
            if (threadIdx.x < DS_DH) base[sp * DS_PART + 2 + threadIdx.x] = 0.f;
            if (threadIdx.x == 0) {
                base[sp * DS_PART] = DS_NEG_INF;
                base[sp * DS_PART + 1] = 0.f;
            }
            if (counter != nullptr) ds_finish_split(sh, base, S, counter, out);
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

// Mode 0: this block's share of attention inputs into L2 (thread 32): the cross K/V of layer
// `lc` (keys A*b/G .. A*(b+1)/G of every distinct utterance) and the self-attention cache of
// layer `ls` (positions len*b/G .. len*(b+1)/G of every row's slot).
__device__ void ds_prefetch_attn(const StepParams& p, const Shared& sh, int lc, int ls, int len) {
#if DS_HAS_BULK
    if (p.mode != 0 || threadIdx.x != 32) return;
    const int n = p.n;
    int k0, nk, p0, np;
    ds_rows(p.n_audio_ctx, k0, nk);
    ds_rows(len, p0, np);
    for (int m = 0; m < p.rows; m++) {
        bool seen = false;
        for (int m2 = 0; m2 < m; m2++) seen |= sh.cross[m2] == sh.cross[m];
        if (!seen && lc < p.n_layer) {
            for (int k = k0; k < k0 + nk; k++) ds_prefetch_l2(sh.cross[m] + (size_t)k * p.kv_ld + (size_t)lc * 2 * n, 4 * n);
        }
        if (np > 0 && ls < p.n_layer) {
            const size_t at = (size_t)ls * p.cache_layer + ((size_t)sh.slots[m] * p.ctx + p0) * n;
            ds_prefetch_l2(p.k_cache + at, np * n * 2);
            ds_prefetch_l2(p.v_cache + at, np * n * 2);
        }
    }
#endif
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
        if (threadIdx.x == 0) {
            sh.ready = 0;
            sh.released = 0;
        }
        __syncthreads();
    }
    // From here on the producer warp and the consumer warps never meet at a barrier.
    if (threadIdx.x >= DS_CTHREADS) {
        ds_producer(p, sh, ring);
        return;
    }
    Cons cs = {0, 0, 0};
    const int len = *p.len_ptr;
    ds_prefetch_attn(p, sh, 0, 0, len);
    unsigned int target = 0;

    // Phase 0: the embedding into this block's columns of x (the columns its residual adds own).
    int c0, nc;
    ds_rows(n, c0, nc);
    for (int e = threadIdx.x; e < R * nc; e += DS_CTHREADS) {
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
    const int S_cross = ds_splits(p.n_audio_ctx, R * p.n_head, true);
    const bool merge_later = ds_merge_later(p, S_cross);
    ds_mark_clock(p, 0);
    ds_mark(p, 0, 0);
    for (int l = 0; l < p.n_layer; l++) {
        const LayerW& L = sh.layers[l];
        __half* kc = p.k_cache + (size_t)l * p.cache_layer;
        __half* vc = p.v_cache + (size_t)l * p.cache_layer;
        // Cross K/V of this layer (3 phases ahead), the cache of the next (9 phases ahead).
        ds_prefetch_attn(p, sh, l, l + 1, len);
        // 1: LN1 + QKV; the new key and value go into the cache.
        float bias = ds_bias(cs, p, sh);
        if (l == 0) {
            ds_layernorm<true>(p, sh, L.ln1_g, L.ln1_b, xin, len);
        } else {
            ds_layernorm<false>(p, sh, L.ln1_g, L.ln1_b, xin, len);
        }
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 0, bias, [&](int, int row, int m, float v) {
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
        {
            int r0, nr;
            ds_rows(3 * n, r0, nr);
            ds_signal_heads(p.sync + 1, n, r0, nr);
        }
        ds_mark(p, 8 * l + 1, 0);
        // 2: self-attention.
        ds_attention(p, sh, l, false, len, 8 * l + 1);
        ds_mark(p, 8 * l + 1, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 2, 0);
        // 3: out projection into the residual stream.
        bias = ds_bias(cs, p, sh);
        ds_stage(p, p.att, n, xin);
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 2, bias, residual);
        ds_mark(p, 8 * l + 2, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 3, 0);
        // 4: LN2 + cross-attention query.
        bias = ds_bias(cs, p, sh);
        ds_layernorm<false>(p, sh, L.ln2_g, L.ln2_b, xin, len);
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 3, bias,
                [&](int, int row, int m, float v) { p.q[(size_t)m * n + row] = __float2half_rn(v); });
        ds_mark(p, 8 * l + 3, 3);
        {
            int r0, nr;
            ds_rows(n, r0, nr);
            ds_signal_heads(p.sync + 1 + p.n_head, n, r0, nr);
        }
        ds_mark(p, 8 * l + 4, 0);
        // 5: cross-attention.
        ds_attention(p, sh, l, true, len, 8 * l + 4);
        ds_mark(p, 8 * l + 4, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 5, 0);
        // 6: cross out projection (merging the partials first, when that was left to this phase).
        bias = ds_bias(cs, p, sh);
        if (merge_later) ds_merge_stage(p, S_cross, xin);
        else ds_stage(p, p.att, n, xin);
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 5, bias, residual);
        ds_mark(p, 8 * l + 5, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 6, 0);
        // 7: LN3 + fc1 + GELU (of the fp16-rounded value, as gelu_f16 after the GEMM).
        bias = ds_bias(cs, p, sh);
        ds_layernorm<false>(p, sh, L.ln3_g, L.ln3_b, xin, len);
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 6, bias, [&](int, int row, int m, float v) {
            p.u[(size_t)m * 4 * n + row] = __float2half_rn(ds_gelu(__half2float(__float2half_rn(v))));
        });
        ds_mark(p, 8 * l + 6, 3);
        ds_barrier(p.sync, target);
        ds_mark(p, 8 * l + 7, 0);
        // 8: fc2 into the residual stream.
        bias = ds_bias(cs, p, sh);
        ds_stage(p, p.u, 4 * n, xin);
        ds_gemv(cs, p, sh, ring, xin, 8 * l + 7, bias, residual);
        ds_mark(p, 8 * l + 7, 3);
        if (l + 1 < p.n_layer) {
            ds_barrier(p.sync, target);
            ds_mark(p, 8 * l + 8, 0);
        }
    }
    ds_mark_clock(p, 2);
}
