// Dense layers with weight-only int8 quantization (W8A16) at many rows (the encoder, batched
// prefill): y[m][n] (+)= scale[n] * (x[m][.] · w[n][.]) + bias[n] on the tensor cores (mma.sync
// m16n8k16, fp16 in, f32 accumulate; sm_80+). The int8 weights travel raw (half of fp16's bytes)
// through a cp.async pipeline (GW8_STAGES k tiles of 32) and become fp16 in registers. int8 is
// exact in fp16, so the products are exact and scale[n] is applied once per output in the
// epilogue: v = scale * sum + bias in f32, then gemv_store's numbers by mode (gemv.cu).
//
// Roles are swapped in the mma (it computes y^T = w x^T): the weights are the A operand, so the
// int8 -> fp16 conversion writes each A fragment's registers in place; x is the B operand. The
// mma's k index is only a labelling, so each k32 tile is relabelled to suit 16-byte loads: lane
// (g = lane / 4, c = lane % 4) reads weight rows g and g + 8's bytes 8c..8c+7 (8-byte ld.shared
// each) and x row g's halves 8c..8c+7 (one 16-byte ld.shared); k16 step s takes k 8c+4s..8c+4s+3
// from both (A pairs: bytes +0,+1 and +2,+3; B: words 2s, 2s+1 of the x load, adjacent registers as
// the mma wants them: no register moves). No ldmatrix, no padding: with 64-byte x rows and 32-byte
// w rows every access (cp.async stores, 16-byte loads per quarter warp, 8-byte loads per half
// warp) covers 128 contiguous bytes, free of bank conflicts.
// int8 -> fp16, 4 at a time: xor 0x80 (q + 128 as a byte), byte_perm into halves 0x64XX
// (= 1024 + q + 128), sub.f16x2 of 1152 (exact): 2.5 instructions per pair.
//
// w: int8 [N][K] (torch layout), scale: fp16 [N], x: fp16 [M][ldx], bias: [N] or null, fp16 for
// modes 0-1, f32 for modes 2-3. mode: 0 y = fp16(v); 1 y = fp16(gelu(fp16(v))) (exact erf GELU of
// the rounded value); 2 y = v (f32); 3 y += v (f32, the residual stream in place). y row stride ldy.
// Requires K % 32 == 0, ldx % 8 == 0, x and w 16-byte aligned, N * K < 2^32 and M * ldx < 2^31
// (32-bit source offsets); any M >= 1, N >= 1 (rows past M or N load as zeros and are not
// stored), any ldy and alignment of y (one scalar store per output).
//
// Launch (1-D grid; consecutive blocks walk GW8_GROUP row tiles of one column tile, then the next
// column tile, so the blocks in flight share weight tiles and x rows in L2):
//   gemm_w8:     grid ceil(M / GW8_BM) * ceil(N / GW8_BN), GW8_THREADS threads, GW8_SMEM bytes of
//                dynamic shared memory (128 x 128 tiles, 8 warps of 64 x 32; 2 blocks per SM).
//   gemm_w8_m32: grid ceil(M / GW8_M32_BM) * ceil(N / GW8_M32_BN), GW8_M32_THREADS threads,
//                GW8_M32_SMEM bytes (32 x 64 tiles, 4 warps of 32 x 16: more blocks at small M).
// Both need at most 48 KB, so no CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES.
// Programmatic Dependent Launch: the first weight tiles are requested before griddepcontrol.wait
// (weights never depend on an earlier kernel); x, scale, bias and y are read only after it.
#include <cuda_fp16.h>

#include "common.cuh"

#define GW8_BK 32
#define GW8_STAGES 4
#define GW8_GROUP 16
#define GW8_BM 128
#define GW8_BN 128
#define GW8_THREADS 256
#define GW8_M32_BM 32
#define GW8_M32_BN 64
#define GW8_M32_THREADS 128
// Per stage: BM rows of 32 fp16 inputs + BN rows of 32 int8 weights.
#define GW8_SMEM (GW8_STAGES * (GW8_BM * GW8_BK * 2 + GW8_BN * GW8_BK))              // 49152
#define GW8_M32_SMEM (GW8_STAGES * (GW8_M32_BM * GW8_BK * 2 + GW8_M32_BN * GW8_BK))  // 16384

__device__ __forceinline__ float gw8_gelu(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// 16 bytes global -> shared, bypassing L1; zeros when !valid (src is then not read).
__device__ __forceinline__ void gw8_cp16(unsigned dst, const void* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void gw8_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void gw8_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// c[16x8] += a[16x16] * b[16x8]; fragments as the PTX ISA lays them out for m16n8k16.
__device__ __forceinline__ void gw8_mma(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four int8 (bytes 0..3 of q) to fp16 pairs: lo = (byte 0, byte 1), hi = (byte 2, byte 3), the
// lower byte in the lower half.
__device__ __forceinline__ void gw8_cvt4(unsigned q, unsigned& lo, unsigned& hi) {
    const unsigned u = q ^ 0x80808080u;  // q + 128 in each byte
    const unsigned l = __byte_perm(u, 0x64646464u, 0x5150), h = __byte_perm(u, 0x64646464u, 0x5352);
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(lo) : "r"(l), "r"(0x64806480u));  // - 1152 (1024 + 128)
    asm("sub.f16x2 %0, %1, %2;\n" : "=r"(hi) : "r"(h), "r"(0x64806480u));
}

// Output y[at] = v (bias added) as `mode` says (gemv_store's numbers).
__device__ __forceinline__ void gw8_store(void* __restrict__ y, size_t at, int mode, float v) {
    if (mode == 0) {
        reinterpret_cast<__half*>(y)[at] = __float2half_rn(v);
    } else if (mode == 1) {
        reinterpret_cast<__half*>(y)[at] = __float2half_rn(gw8_gelu(__half2float(__float2half_rn(v))));
    } else if (mode == 2) {
        reinterpret_cast<float*>(y)[at] = v;
    } else {
        float* p = reinterpret_cast<float*>(y) + at;
        *p = *p + v;
    }
}

// Output feature n's bias, in the output's type (fp16 for modes 0-1, f32 for 2-3); 0 without one.
__device__ __forceinline__ float gw8_bias(const void* __restrict__ bias, int mode, int n) {
    if (bias == nullptr) return 0.f;
    return mode < 2 ? __half2float(reinterpret_cast<const __half*>(bias)[n]) : reinterpret_cast<const float*>(bias)[n];
}

// Block `bid`'s tile origin (rows m0 of x, rows n0 of w). Raster: groups of GW8_GROUP row tiles,
// the row tile varying fastest within a group.
template <int BM, int BN>
__device__ __forceinline__ void gw8_tile(int M, int N, int bid, int& m0, int& n0) {
    const int tiles_m = (M + BM - 1) / BM, tiles_n = (N + BN - 1) / BN;
    const int per_group = GW8_GROUP * tiles_n, grp = bid / per_group, in_grp = bid - grp * per_group;
    const int first_m = grp * GW8_GROUP, gm = min(tiles_m - first_m, GW8_GROUP);
    m0 = (first_m + in_grp % gm) * BM;
    n0 = (in_grp / gm) * BN;
}

// One BM x BN output tile per block; WARPS_M x WARPS_N warps, each (BM / WARPS_M) x (BN / WARPS_N).
template <int BM, int BN, int WARPS_M, int WARPS_N>
__device__ __forceinline__ void gw8_body(const signed char* __restrict__ w, const __half* __restrict__ scale,
                                         const __half* __restrict__ x, const void* __restrict__ bias,
                                         void* __restrict__ y, int M, int N, int K, int ldx, int ldy, int mode) {
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N, NA = WN / 16, MB = WM / 8;
    constexpr int XB = BM * GW8_BK * 2, WB = BN * GW8_BK;  // bytes per stage
    static_assert(NA >= 1 && MB >= 1 && WN % 16 == 0 && WM % 8 == 0, "warp tile");
    static_assert((BM * 4) % THREADS == 0 && (BN * 2) % THREADS == 0, "loader");
    extern __shared__ __align__(128) unsigned char gw8_smem[];
    const unsigned xs0 = (unsigned)__cvta_generic_to_shared(gw8_smem), ws0 = xs0 + GW8_STAGES * XB;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, c = lane & 3;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    int m0, n0;
    gw8_tile<BM, BN>(M, N, blockIdx.x, m0, n0);
    const int ktiles = K / GW8_BK;

    // This thread's cp.async sources as 32-bit byte offsets (row clamped to 0 past the end: zeros,
    // nothing read; 64-bit pointers here cost the main loop spills) and destinations: weight rows
    // of 32 bytes (2 chunks), x rows of 64 bytes (4 chunks) per stage.
    constexpr int WC = BN * 2 / THREADS, XC = BM * 4 / THREADS;
    unsigned woff[WC], xoff[XC];
    bool wok[WC], xok[XC];
#pragma unroll
    for (int i = 0; i < WC; i++) {
        const int idx = tid + i * THREADS, n = n0 + (idx >> 1);
        wok[i] = n < N;
        woff[i] = (unsigned)(wok[i] ? n : 0) * (unsigned)K + (idx & 1) * 16;
    }
#pragma unroll
    for (int i = 0; i < XC; i++) {
        const int idx = tid + i * THREADS, m = m0 + (idx >> 2);
        xok[i] = m < M;
        xoff[i] = ((unsigned)(xok[i] ? m : 0) * (unsigned)ldx + (idx & 3) * 8) * 2;
    }
    const unsigned char* wb = reinterpret_cast<const unsigned char*>(w);
    const unsigned char* xb = reinterpret_cast<const unsigned char*>(x);
    auto load_w = [&](int st, int kt) {
#pragma unroll
        for (int i = 0; i < WC; i++)
            gw8_cp16(ws0 + st * WB + (tid + i * THREADS) * 16, wb + woff[i] + kt * GW8_BK, wok[i]);
    };
    auto load_x = [&](int st, int kt) {
#pragma unroll
        for (int i = 0; i < XC; i++)
            gw8_cp16(xs0 + st * XB + (tid + i * THREADS) * 16, xb + xoff[i] + kt * (GW8_BK * 2), xok[i]);
    };

    // Prologue: the weights of stages 0..STAGES-2 as one commit group before the PDL wait, then
    // each stage's x as its own group. Groups complete in order, so the main loop's "all but the
    // STAGES-2 newest" still means "stage kt's x and w have landed".
#pragma unroll
    for (int s = 0; s < GW8_STAGES - 1; s++)
        if (s < ktiles) load_w(s, s);
    gw8_commit();
    pdl_wait();
    pdl_launch();
#pragma unroll
    for (int s = 0; s < GW8_STAGES - 1; s++) {
        if (s < ktiles) load_x(s, s);
        gw8_commit();
    }

    // acc[i][j]: weight rows (n) 16i + g, 16i + g + 8 by x rows (m) 8j + 2c, 8j + 2c + 1.
    float acc[NA][MB][4];
#pragma unroll
    for (int i = 0; i < NA; i++)
#pragma unroll
        for (int j = 0; j < MB; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    // Plain C++ loads (not asm) so that the compiler orders them after the barrier yet schedules
    // them freely among the mma.
    const unsigned char* xa = gw8_smem + (wm * WM + g) * (GW8_BK * 2) + c * 16;  // + stage, + 8-row tile
    const unsigned char* wa = gw8_smem + GW8_STAGES * XB + (wn * WN + g) * GW8_BK + c * 8;
    for (int kt = 0; kt < ktiles; kt++) {
        gw8_wait<GW8_STAGES - 2>();
        __syncthreads();  // stage kt visible to all; stage kt - 1 (refilled below) read by all
        const int nk = kt + GW8_STAGES - 1;
        if (nk < ktiles) {
            load_w(nk % GW8_STAGES, nk);
            load_x(nk % GW8_STAGES, nk);
        }
        gw8_commit();
        const int st = kt % GW8_STAGES;
        // a[i][s]: k16 step s's A fragment of weight tile i (rows g and g + 8, bytes 8c + 4s..+3).
        unsigned a[NA][2][4];
#pragma unroll
        for (int i = 0; i < NA; i++) {
            const unsigned char* p = wa + st * WB + i * 16 * GW8_BK;
            const uint2 q0 = *reinterpret_cast<const uint2*>(p), q1 = *reinterpret_cast<const uint2*>(p + 8 * GW8_BK);
#pragma unroll
            for (int s = 0; s < 2; s++) {
                gw8_cvt4(s ? q0.y : q0.x, a[i][s][0], a[i][s][2]);
                gw8_cvt4(s ? q1.y : q1.x, a[i][s][1], a[i][s][3]);
            }
        }
#pragma unroll
        for (int j = 0; j < MB; j++) {
            const uint4 bx = *reinterpret_cast<const uint4*>(xa + st * XB + j * 8 * (GW8_BK * 2));  // x row g
#pragma unroll
            for (int i = 0; i < NA; i++) {
                gw8_mma(acc[i][j], a[i][0], bx.x, bx.y);
                gw8_mma(acc[i][j], a[i][1], bx.z, bx.w);
            }
        }
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");  // only empty groups are left

    // The tile origin again, from %ctaid / %tid read anew (kept live across the loop, it leaves
    // the loop no spare register).
    {
        unsigned b_, t_;
        asm volatile("mov.u32 %0, %%ctaid.x;" : "=r"(b_));
        asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t_));
        gw8_tile<BM, BN>(M, N, (int)b_, m0, n0);
        m0 += (int)(t_ >> 5) / WARPS_N * WM + 2 * (t_ & 3);
        n0 += (int)(t_ >> 5) % WARPS_N * WN + (t_ & 31) / 4;
    }
    // Epilogue: one value per store (consecutive lanes g hold consecutive n: 8 outputs of a row
    // per quad-strided group), so any ldy and any alignment of y.
#pragma unroll
    for (int i = 0; i < NA; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int n = n0 + i * 16 + h * 8;
            if (n >= N) continue;
            const float sc = __half2float(scale[n]), bn = gw8_bias(bias, mode, n);
#pragma unroll
            for (int j = 0; j < MB; j++) {
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int m = m0 + j * 8 + e;
                    if (m < M) gw8_store(y, (size_t)m * ldy + n, mode, sc * acc[i][j][2 * h + e] + bn);
                }
            }
        }
    }
}

extern "C" __global__ void __launch_bounds__(GW8_THREADS, 2)
    gemm_w8(const signed char* __restrict__ w, const __half* __restrict__ scale, const __half* __restrict__ x,
            const void* __restrict__ bias, void* __restrict__ y, int M, int N, int K, int ldx, int ldy, int mode) {
    gw8_body<GW8_BM, GW8_BN, 2, 4>(w, scale, x, bias, y, M, N, K, ldx, ldy, mode);
}

extern "C" __global__ void __launch_bounds__(GW8_M32_THREADS, 4)
    gemm_w8_m32(const signed char* __restrict__ w, const __half* __restrict__ scale, const __half* __restrict__ x,
                const void* __restrict__ bias, void* __restrict__ y, int M, int N, int K, int ldx, int ldy, int mode) {
    gw8_body<GW8_M32_BM, GW8_M32_BN, 1, 4>(w, scale, x, bias, y, M, N, K, ldx, ldy, mode);
}
