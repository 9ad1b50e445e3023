// Encoder self-attention, FlashAttention-2 style: the T x T score matrix never leaves the chip.
// A block takes BQ query rows of one head of one window; each warp owns FA_WM tiles of 16 rows,
// its Q fragments in registers for the whole pass. Key/value tiles of BK rows stream through
// shared memory with cp.async, FA_STAGES deep, and reach the tensor cores through ldmatrix
// (.trans for V). The softmax is online (running row max and sum in f32), in base 2 on scores
// prescaled by log2(e); P goes from the S accumulators straight into the PV product as fp16
// A fragments. Products run on mma.sync m16n8k16 (fp16 in, f32 accumulate; sm_80+).
//
// qkv: fp16 [batch][T][3n], query in columns 0..n (already scaled by d_head^-1/2), key in n..2n,
// value in 2n..3n; head h owns columns h*64..h*64+63 of each. out: fp16 [batch][T][n].
// Requires d_head = 64 and n % 8 == 0 (every Whisper size). Grid: (ceil(T / BQ), heads, batch),
// FA_WARPS * 32 threads (the launcher in kernels.rs has them as FLASH_BQ and FLASH_THREADS).
//
// H100, 32 windows of large-v2 (T = 1500, 20 heads) per launch, standalone timing: 1.24-1.28 ms
// (about 295 TFLOP/s) with these defaults (4 warps of 32 rows, 2 stages, 2 blocks of 220-236
// registers per multiprocessor); 8 warps of 16 rows 1.41-1.62 ms, 4 warps of 16 rows 1.37-1.41,
// 8 warps of 32 rows 1.32-1.40, 3 stages 1.24-1.30, Q read from shared memory by ldmatrix at
// every tile 1.24 (3 blocks per multiprocessor at 168 registers: 1.27), tree-shaped row max and
// sum 1.23 (no gain); the previous kernel (plain loads, V transposed through registers, 16 rows
// per warp) 3.33 ms.
#include <cuda_fp16.h>

#ifndef FA_WARPS
#define FA_WARPS 4
#endif
#ifndef FA_WM
#define FA_WM 2
#endif
#ifndef FA_STAGES
#define FA_STAGES 2
#endif
#ifndef FA_MINB
#define FA_MINB 2
#endif

#define DH 64
#define BK 64
#define BQ (FA_WARPS * FA_WM * 16)
#define THREADS (FA_WARPS * 32)
#define LOG2E 1.4426950408889634f
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ unsigned smem_addr(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// 16 bytes global -> shared, bypassing L1; zeros when !valid (src is then not read).
__device__ __forceinline__ void cp_async16(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, unsigned addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

// c[16x8] += a[16x16] * b[16x8]; fragments as the PTX ISA lays them out for m16n8k16.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 2^x (ex2.approx: about 2 ulp; 2^-inf = 0).
__device__ __forceinline__ float ex2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
}

__device__ __forceinline__ unsigned pack_half2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);  // a in the low half
    return *reinterpret_cast<unsigned*>(&h);
}

__device__ __forceinline__ unsigned ld_u32(const __half* p) { return *reinterpret_cast<const unsigned*>(p); }

// One BK x DH tile (rows k0.. of `src`, row stride ld) into shared memory at `dst`, rows of 128
// bytes whose 16-byte chunks are XOR-swizzled by (row & 7), so that the 8 rows an ldmatrix
// reads, and the 8 chunks of a row cp.async writes, fall in distinct banks. Rows past T are zeros.
__device__ __forceinline__ void load_tile(unsigned dst, const __half* src, size_t ld, int k0, int T, int tid) {
#pragma unroll
    for (int i = 0; i < BK * DH / 8 / THREADS; i++) {
        const int idx = tid + i * THREADS, r = idx >> 3, c = idx & 7;
        const bool ok = k0 + r < T;
        cp_async16(dst + r * (DH * 2) + ((c ^ (r & 7)) << 4), src + (size_t)(ok ? k0 + r : 0) * ld + c * 8, ok);
    }
}

#if defined(__CUDA_ARCH_FEAT_SM90_ALL) && !defined(FA_NO_WGMMA)
// sm_90a (H100, when NVRTC compiles for sm_90a): the same blocking (128 query rows, 128 threads,
// BK keys per tile, swizzled cp.async tiles) on Hopper's warpgroup MMA. The 4 warps form one
// warpgroup; it owns two 64-row halves of the block's rows, each multiplied as m64n64k16 wgmma
// with Q (S = Q K^T) or P (O += P V) from registers and K / V read by the tensor cores straight
// from shared memory (128-byte swizzle descriptors matching load_tile's layout; V as the
// MN-major, transposed operand), so no ldmatrix traffic. The halves ping-pong: the softmax of
// one half runs while the other half's wgmma is in flight.
// H100, the standalone timing above: 1.055-1.071 ms (350 TFLOP/s) against 1.238-1.251 for the
// mma.sync kernel in the same runs; in the large-v2 encoder at batch 32, 1.28-1.31 ms of
// attention per window against 1.46-1.50. Measured and left out, each slower: 3 stages
// (1.076), keeping half 1's P V in flight into the next tile with 3 stages (1.162), 3 blocks per
// multiprocessor at 168 registers (1.084, spills), moving the softmax offset only when a row max
// grows by more than 2^8 so O is rarely rescaled (1.080), a quarter or half of the exponentials
// as a polynomial on the FMA pipe (1.101, 1.243 with the previous one).
// Q stays in shared memory (FA_QSMEM, default): the S products read it there as the A operand
// (wgmma from two descriptors), which frees the 32 registers a thread held Q in and lets 3 blocks
// (166 registers, 48 KB) share a multiprocessor instead of 2: 0.925-0.926 ms against
// 1.057-1.058 for Q in registers in the same run (398 vs 349 TFLOP/s); in the large-v2 encoder at
// batch 32, 1.163 ms of attention per window against 1.294. Measured and left out, each slower
// (1.043-1.061 for Q in registers in that run): 256 query rows per block, two warpgroups sharing
// every K/V tile (1.127; 3 stages 1.161; the warpgroups taking turns through named barriers
// 1.152), and the same plus a producer warpgroup streaming the tiles with cp.async and full/empty
// mbarriers, setmaxnreg 40/232 (1.063; 24/240 1.090; turns 1.067).
static_assert(THREADS == 128 && BQ == 128, "the wgmma path is one warpgroup over two 64-row halves");
#ifndef FA_QSMEM
#define FA_QSMEM 1
#endif
#ifndef FA_WG_MINB
#define FA_WG_MINB (FA_QSMEM ? 3 : 2)
#endif

// Shared-memory matrix descriptor: start address, leading byte offset 16 (unused by these
// layouts), stride byte offset 1024 (the next 8 rows of 128 bytes), 128-byte swizzle.
__device__ __forceinline__ unsigned long long wg_desc(unsigned addr) {
    return (unsigned long long)((addr & 0x3FFFF) >> 4) | (1ull << 16) | ((unsigned long long)(1024 >> 4) << 32) | (1ull << 62);
}

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wg_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accesses of accumulator registers across a wgmma wait.
__device__ __forceinline__ void reg_fence(float* r) {
#pragma unroll
    for (int i = 0; i < 32; i++) asm volatile("" : "+f"(r[i])::"memory");
}
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }

// d[64x64] (+)= a[64x16] (registers, mma.m16n8k16 A layout per warp) * B[16x64] (descriptor);
// TB = 1: B is MN-major (V), 0: K-major (K). acc = 0 overwrites d.
template <int TB>
__device__ __forceinline__ void wgmma64(float* d, const unsigned* a, unsigned long long desc, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "{%32, %33, %34, %35}, %36, p, 1, 1, %38;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc), "r"(acc), "n"(TB));
}

// d[64x64] (+)= A[64x16] * B[16x64], both K-major from shared memory (descriptors).
__device__ __forceinline__ void wgmma64ss(float* d, unsigned long long da, unsigned long long db, int acc) {
    asm volatile(
        "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
        "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 "
        "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
        "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
        "%32, %33, p, 1, 1, 0, 0;\n}\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]),
          "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]),
          "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]),
          "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
        : "l"(da), "l"(db), "r"(acc));
}

// Online softmax of one half's S (raw scores; row g in elements 0, 1 and row g + 8 in 2, 3 of
// each 8-key group j at s[4j..4j+3]) into P fragments, rescaling that half's O.
__device__ __forceinline__ void wg_softmax(float* s, float* o, float* m, float* l, unsigned (*pa)[4], int k0, int T, int t) {
    if (k0 + BK > T) {
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                if (k0 + j * 8 + 2 * t + (e & 1) >= T) s[4 * j + e] = NEG_INF;
    }
    float mx0 = m[0], mx1 = m[1];
#pragma unroll
    for (int j = 0; j < 8; j++) {
        mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
        mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    {
        const float a0 = ex2((m[0] - mx0) * LOG2E), a1 = ex2((m[1] - mx1) * LOG2E);
        m[0] = mx0;
        m[1] = mx1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            o[4 * j] *= a0;
            o[4 * j + 1] *= a0;
            o[4 * j + 2] *= a1;
            o[4 * j + 3] *= a1;
        }
        l[0] *= a0;
        l[1] *= a1;
    }
    const float ms0 = m[0] * LOG2E, ms1 = m[1] * LOG2E;
    float l0 = 0.f, l1 = 0.f;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        const float p0 = ex2(fmaf(s[4 * j], LOG2E, -ms0)), p1 = ex2(fmaf(s[4 * j + 1], LOG2E, -ms0));
        const float p2 = ex2(fmaf(s[4 * j + 2], LOG2E, -ms1)), p3 = ex2(fmaf(s[4 * j + 3], LOG2E, -ms1));
        l0 += p0 + p1;
        l1 += p2 + p3;
        // n-tiles 2kk and 2kk + 1 of S are the A fragment of P for k-step kk.
        pa[j >> 1][(j & 1) * 2] = pack_half2(p0, p1);
        pa[j >> 1][(j & 1) * 2 + 1] = pack_half2(p2, p3);
    }
    l[0] += l0;
    l[1] += l1;
}

extern "C" __global__ void __launch_bounds__(THREADS, FA_WG_MINB)
    flash_attention(const __half* __restrict__ qkv, __half* __restrict__ out, int T, int n) {
    // [stage][K, V][BK * DH]; 1024-byte aligned tiles, as the 128-byte swizzle requires.
    __shared__ __align__(1024) __half smem[FA_STAGES][2][BK * DH];
#if FA_QSMEM
    __shared__ __align__(1024) __half qsm[2][BK * DH];  // the block's 128 query rows, as K tiles
#endif

    const int h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const size_t ld = 3 * (size_t)n;
    const __half* base = qkv + (size_t)b * T * ld;
    const __half* qb = base + h * DH;
    const __half* kb = base + n + h * DH;
    const __half* vb = base + 2 * n + h * DH;
    const int ntiles = (T + BK - 1) / BK;

#if FA_QSMEM
    load_tile(smem_addr(qsm[0]), qb, ld, blockIdx.x * BQ, T, tid);
    load_tile(smem_addr(qsm[1]), qb, ld, blockIdx.x * BQ + 64, T, tid);
#endif
#pragma unroll
    for (int s = 0; s < FA_STAGES - 1; s++) {
        if (s < ntiles) {
            load_tile(smem_addr(smem[s][0]), kb, ld, s * BK, T, tid);
            load_tile(smem_addr(smem[s][1]), vb, ld, s * BK, T, tid);
        }
        cp_async_commit();
    }

    // Half hf holds rows blockIdx.x * 128 + hf * 64 + 16 * warp + g (and + 8).
    const int row0 = blockIdx.x * BQ + warp * 16 + g;
#if !FA_QSMEM
    unsigned qa[2][4][4];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        const int r0 = row0 + hf * 64, r1 = r0 + 8;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const int c = kk * 16 + 2 * t;
            qa[hf][kk][0] = r0 < T ? ld_u32(qb + r0 * ld + c) : 0u;
            qa[hf][kk][1] = r1 < T ? ld_u32(qb + r1 * ld + c) : 0u;
            qa[hf][kk][2] = r0 < T ? ld_u32(qb + r0 * ld + c + 8) : 0u;
            qa[hf][kk][3] = r1 < T ? ld_u32(qb + r1 * ld + c + 8) : 0u;
        }
    }
#endif

    float o[2][32];
    float m[2][2], l[2][2];
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
#pragma unroll
        for (int i = 0; i < 32; i++) o[hf][i] = 0.f;
        m[hf][0] = m[hf][1] = NEG_INF;
        l[hf][0] = l[hf][1] = 0.f;
    }

    for (int it = 0; it < ntiles; it++) {
        const int st = it % FA_STAGES;
        cp_async_wait<FA_STAGES - 2>();
        fence_proxy_async();  // the tile's cp.async writes, visible to the tensor cores' reads
        __syncthreads();      // tile `it` is in, and every wgmma of the stage refilled next is done
        {
            const int nt = it + FA_STAGES - 1;
            if (nt < ntiles) {
                const int ns = nt % FA_STAGES;
                load_tile(smem_addr(smem[ns][0]), kb, ld, nt * BK, T, tid);
                load_tile(smem_addr(smem[ns][1]), vb, ld, nt * BK, T, tid);
            }
            cp_async_commit();
        }
        const unsigned ks = smem_addr(smem[st][0]), vs = smem_addr(smem[st][1]);
        const int k0 = it * BK;

        // S of both halves, one commit group each.
        float s[2][32];
        wg_fence();
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
#pragma unroll
            for (int kk = 0; kk < 4; kk++)
#if FA_QSMEM
                wgmma64ss(s[hf], wg_desc(smem_addr(qsm[hf]) + kk * 32), wg_desc(ks + kk * 32), kk);
#else
                wgmma64<0>(s[hf], qa[hf][kk], wg_desc(ks + kk * 32), kk);
#endif
            wg_commit();
        }
        unsigned pa[4][4];
        // Half 0's S is in once at most one group (half 1's S) is pending; half 1's once at most
        // one (half 0's P V) is: each half's softmax runs while the other's MMA does.
#pragma unroll
        for (int hf = 0; hf < 2; hf++) {
            wg_wait<1>();
            reg_fence(s[hf]);
            reg_fence(o[hf]);
            wg_softmax(s[hf], o[hf], m[hf], l[hf], pa, k0, T, t);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < 4; kk++) wgmma64<1>(o[hf], pa[kk], wg_desc(vs + kk * (16 * DH * 2)), 1);
            wg_commit();
        }
        wg_wait<0>();
        reg_fence(o[0]);
        reg_fence(o[1]);
    }

    __half* ob = out + (size_t)b * T * n + h * DH + 2 * t;
#pragma unroll
    for (int hf = 0; hf < 2; hf++) {
        float l0 = l[hf][0], l1 = l[hf][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = 1.f / l0, inv1 = 1.f / l1;
        const int r0 = row0 + hf * 64, r1 = r0 + 8;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (r0 < T)
                *reinterpret_cast<__half2*>(ob + (size_t)r0 * n + j * 8) =
                    __floats2half2_rn(o[hf][4 * j] * inv0, o[hf][4 * j + 1] * inv0);
            if (r1 < T)
                *reinterpret_cast<__half2*>(ob + (size_t)r1 * n + j * 8) =
                    __floats2half2_rn(o[hf][4 * j + 2] * inv1, o[hf][4 * j + 3] * inv1);
        }
    }
}
#else
extern "C" __global__ void __launch_bounds__(THREADS, FA_MINB)
    flash_attention(const __half* __restrict__ qkv, __half* __restrict__ out, int T, int n) {
    // [stage][K, V][BK * DH]
    __shared__ __align__(128) __half smem[FA_STAGES][2][BK * DH];

    const int h = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
    const int g = lane >> 2, t = lane & 3;
    const size_t ld = 3 * (size_t)n;
    const __half* base = qkv + (size_t)b * T * ld;
    const __half* qb = base + h * DH;
    const __half* kb = base + n + h * DH;
    const __half* vb = base + 2 * n + h * DH;
    const int ntiles = (T + BK - 1) / BK;

    // Start the first tiles' copies, then read Q while they fly.
#pragma unroll
    for (int s = 0; s < FA_STAGES - 1; s++) {
        if (s < ntiles) {
            load_tile(smem_addr(smem[s][0]), kb, ld, s * BK, T, tid);
            load_tile(smem_addr(smem[s][1]), vb, ld, s * BK, T, tid);
        }
        cp_async_commit();
    }

    // This warp's query rows as A fragments (rows past T are zero and never written).
    const int row0 = blockIdx.x * BQ + warp * (16 * FA_WM) + g;
    unsigned qa[FA_WM][4][4];
#pragma unroll
    for (int mi = 0; mi < FA_WM; mi++) {
        const int r0 = row0 + mi * 16, r1 = r0 + 8;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            const int c = kk * 16 + 2 * t;
            qa[mi][kk][0] = r0 < T ? ld_u32(qb + r0 * ld + c) : 0u;
            qa[mi][kk][1] = r1 < T ? ld_u32(qb + r1 * ld + c) : 0u;
            qa[mi][kk][2] = r0 < T ? ld_u32(qb + r0 * ld + c + 8) : 0u;
            qa[mi][kk][3] = r1 < T ? ld_u32(qb + r1 * ld + c + 8) : 0u;
        }
    }

    float o[FA_WM][8][4];
    // Running max (raw score units) and per-thread partial sum of rows g and g + 8 of each tile.
    float m[FA_WM][2], l[FA_WM][2];
#pragma unroll
    for (int mi = 0; mi < FA_WM; mi++) {
#pragma unroll
        for (int j = 0; j < 8; j++) o[mi][j][0] = o[mi][j][1] = o[mi][j][2] = o[mi][j][3] = 0.f;
        m[mi][0] = m[mi][1] = NEG_INF;
        l[mi][0] = l[mi][1] = 0.f;
    }

    // Per-lane ldmatrix offsets (bytes within a tile). K (non-transposed): lane -> key row
    // (lane >> 4) * 8 + (lane & 7) of a 16-key pair of n-tiles, d chunk 2 kk + ((lane >> 3) & 1).
    // V (transposed): key row ((lane >> 3) & 1) * 8 + (lane & 7) of a 16-key k-step, d chunk
    // 2 jp + (lane >> 4). Every such row is a multiple of 8 plus (lane & 7): swizzle by lane & 7.
    const int sw = lane & 7;
    const unsigned k_row = (unsigned)(((lane >> 4) * 8 + sw) * DH * 2);
    const int k_chunk = (lane >> 3) & 1;
    const unsigned v_row = (unsigned)((((lane >> 3) & 1) * 8 + sw) * DH * 2);
    const int v_chunk = lane >> 4;

    for (int it = 0; it < ntiles; it++) {
        cp_async_wait<FA_STAGES - 2>();
        __syncthreads();  // tile `it` is in, and everyone is done with the stage refilled next
        {
            const int nt = it + FA_STAGES - 1;
            if (nt < ntiles) {
                const int st = nt % FA_STAGES;
                load_tile(smem_addr(smem[st][0]), kb, ld, nt * BK, T, tid);
                load_tile(smem_addr(smem[st][1]), vb, ld, nt * BK, T, tid);
            }
            cp_async_commit();
        }
        const int st = it % FA_STAGES;
        const unsigned ks = smem_addr(smem[st][0]), vs = smem_addr(smem[st][1]);

        // S = Q K^T for this warp's rows and the tile's BK keys (8 n-tiles of 8).
        float s[FA_WM][8][4];
#pragma unroll
        for (int mi = 0; mi < FA_WM; mi++)
#pragma unroll
            for (int j = 0; j < 8; j++) s[mi][j][0] = s[mi][j][1] = s[mi][j][2] = s[mi][j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                unsigned kf[4];
                ldsm_x4(kf, ks + jp * (16 * DH * 2) + k_row + (((2 * kk + k_chunk) ^ sw) << 4));
#pragma unroll
                for (int mi = 0; mi < FA_WM; mi++) {
                    mma16816(s[mi][2 * jp], qa[mi][kk], kf[0], kf[1]);
                    mma16816(s[mi][2 * jp + 1], qa[mi][kk], kf[2], kf[3]);
                }
            }
        }
        const int k0 = it * BK;
        if (k0 + BK > T) {
#pragma unroll
            for (int mi = 0; mi < FA_WM; mi++)
#pragma unroll
                for (int j = 0; j < 8; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++)
                        if (k0 + j * 8 + 2 * t + (e & 1) >= T) s[mi][j][e] = NEG_INF;
        }

        // Online softmax; each row lives in the 4 threads of a quad.
        unsigned pa[FA_WM][4][4];
#pragma unroll
        for (int mi = 0; mi < FA_WM; mi++) {
            float mx0 = m[mi][0], mx1 = m[mi][1];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                mx0 = fmaxf(mx0, fmaxf(s[mi][j][0], s[mi][j][1]));
                mx1 = fmaxf(mx1, fmaxf(s[mi][j][2], s[mi][j][3]));
            }
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
            // The first tile always holds valid keys, so mx is finite; 2^-inf = 0 resets.
            const float ms0 = mx0 * LOG2E, ms1 = mx1 * LOG2E;
            const float a0 = ex2(m[mi][0] * LOG2E - ms0), a1 = ex2(m[mi][1] * LOG2E - ms1);
            m[mi][0] = mx0;
            m[mi][1] = mx1;
            // (Measured on an H100 and left out, each slower: skipping this rescale when no row
            // max moved, exp2 on fp16 pairs, row sums on the tensor cores.)
#pragma unroll
            for (int j = 0; j < 8; j++) {
                o[mi][j][0] *= a0;
                o[mi][j][1] *= a0;
                o[mi][j][2] *= a1;
                o[mi][j][3] *= a1;
            }
            float l0 = 0.f, l1 = 0.f;
            unsigned p[8][2];
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const float p0 = ex2(fmaf(s[mi][j][0], LOG2E, -ms0)), p1 = ex2(fmaf(s[mi][j][1], LOG2E, -ms0));
                const float p2 = ex2(fmaf(s[mi][j][2], LOG2E, -ms1)), p3 = ex2(fmaf(s[mi][j][3], LOG2E, -ms1));
                l0 += p0 + p1;
                l1 += p2 + p3;
                p[j][0] = pack_half2(p0, p1);
                p[j][1] = pack_half2(p2, p3);
            }
            l[mi][0] = l[mi][0] * a0 + l0;
            l[mi][1] = l[mi][1] * a1 + l1;
            // The S accumulators of n-tiles 2kk and 2kk+1 are exactly the A fragment of P for
            // k-step kk.
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                pa[mi][kk][0] = p[2 * kk][0];
                pa[mi][kk][1] = p[2 * kk][1];
                pa[mi][kk][2] = p[2 * kk + 1][0];
                pa[mi][kk][3] = p[2 * kk + 1][1];
            }
        }

        // O += P V.
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                unsigned vf[4];
                ldsm_x4_trans(vf, vs + kk * (16 * DH * 2) + v_row + (((2 * jp + v_chunk) ^ sw) << 4));
#pragma unroll
                for (int mi = 0; mi < FA_WM; mi++) {
                    mma16816(o[mi][2 * jp], pa[mi][kk], vf[0], vf[1]);
                    mma16816(o[mi][2 * jp + 1], pa[mi][kk], vf[2], vf[3]);
                }
            }
        }
    }

    __half* ob = out + (size_t)b * T * n + h * DH + 2 * t;
#pragma unroll
    for (int mi = 0; mi < FA_WM; mi++) {
        // Each thread summed its own columns: add the quad's partial sums.
        float l0 = l[mi][0], l1 = l[mi][1];
        l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
        l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
        l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
        const float inv0 = 1.f / l0, inv1 = 1.f / l1;
        const int r0 = row0 + mi * 16, r1 = r0 + 8;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (r0 < T)
                *reinterpret_cast<__half2*>(ob + (size_t)r0 * n + j * 8) =
                    __floats2half2_rn(o[mi][j][0] * inv0, o[mi][j][1] * inv0);
            if (r1 < T)
                *reinterpret_cast<__half2*>(ob + (size_t)r1 * n + j * 8) =
                    __floats2half2_rn(o[mi][j][2] * inv1, o[mi][j][3] * inv1);
        }
    }
}
#endif
