// Encoder self-attention, flash style: the T x T score matrix never leaves the chip. Each block
// takes 64 query rows of one head of one window (4 warps of 16 rows) and walks the keys in tiles
// of 64, keeping a running row max and sum (online softmax, f32) and the output in registers.
// Products run on the tensor cores (mma.sync m16n8k16, fp16 in, f32 accumulate; sm_80+).
//
// qkv: fp16 [batch][T][3n], query in columns 0..n (already scaled by d_head^-1/2), key in n..2n,
// value in 2n..3n; head h owns columns h*64..h*64+63 of each. out: fp16 [batch][T][n].
// Requires d_head = 64 and n % 8 == 0 (every Whisper size).
#include <cuda_fp16.h>

#define DH 64
#define BQ 64
#define BK 64
#define PAD 8
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ unsigned pack_half2(float a, float b) {
    __half2 h = __floats2half2_rn(a, b);  // a in the low half
    return *reinterpret_cast<unsigned*>(&h);
}

__device__ __forceinline__ unsigned ld_u32(const __half* p) { return *reinterpret_cast<const unsigned*>(p); }

// c[16x8] += a[16x16] * b[16x8]; fragments as the PTX ISA lays them out for m16n8k16.
__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

extern "C" __global__ void __launch_bounds__(128) flash_attention(const __half* __restrict__ qkv,
                                                                  __half* __restrict__ out, int T, int n) {
    // Keys row-major and values transposed, so that both B fragments are single 32-bit reads;
    // the padding makes those reads conflict-free (row stride 36 words).
    __shared__ __align__(16) __half ks[BK][DH + PAD];
    __shared__ __align__(16) __half vt[DH][BK + PAD];

    const int h = blockIdx.y, b = blockIdx.z;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t = lane & 3;
    const size_t ld = 3 * (size_t)n;
    const __half* base = qkv + (size_t)b * T * ld;
    const __half* qb = base + h * DH;
    const __half* kb = base + n + h * DH;
    const __half* vb = base + 2 * n + h * DH;

    // This warp's 16 query rows as A fragments (rows past T are zero and never written).
    const int r0 = blockIdx.x * BQ + warp * 16 + g, r1 = r0 + 8;
    unsigned qa[4][4];
#pragma unroll
    for (int kk = 0; kk < 4; kk++) {
        int c = kk * 16 + 2 * t;
        qa[kk][0] = r0 < T ? ld_u32(qb + r0 * ld + c) : 0u;
        qa[kk][1] = r1 < T ? ld_u32(qb + r1 * ld + c) : 0u;
        qa[kk][2] = r0 < T ? ld_u32(qb + r0 * ld + c + 8) : 0u;
        qa[kk][3] = r1 < T ? ld_u32(qb + r1 * ld + c + 8) : 0u;
    }

    float o[8][4];
#pragma unroll
    for (int j = 0; j < 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    // Running max and (per-thread partial) sum of rows r0 and r1.
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.f, l1 = 0.f;

    for (int k0 = 0; k0 < T; k0 += BK) {
        __syncthreads();  // the previous tile is consumed
        // K tile: each thread copies 16-byte pieces of key rows (zeros past T).
        for (int i = threadIdx.x; i < BK * DH / 8; i += blockDim.x) {
            int r = i >> 3, c = (i & 7) * 8;
            uint4 kv = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + r < T) kv = *reinterpret_cast<const uint4*>(kb + (size_t)(k0 + r) * ld + c);
            *reinterpret_cast<uint4*>(&ks[r][c]) = kv;
        }
        // V tile, transposed on the way in; consecutive threads take consecutive keys.
        for (int i = threadIdx.x; i < BK * DH / 8; i += blockDim.x) {
            int r = i & (BK - 1), c = (i / BK) * 8;
            uint4 vv = make_uint4(0u, 0u, 0u, 0u);
            if (k0 + r < T) vv = *reinterpret_cast<const uint4*>(vb + (size_t)(k0 + r) * ld + c);
            const __half* vh = reinterpret_cast<const __half*>(&vv);
#pragma unroll
            for (int e = 0; e < 8; e++) vt[c + e][r] = vh[e];
        }
        __syncthreads();

        // S = Q K^T for this warp's 16 rows and the tile's 64 keys (8 n-tiles of 8).
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const __half* kr = &ks[j * 8 + g][kk * 16 + 2 * t];
                mma16816(s[j], qa[kk], ld_u32(kr), ld_u32(kr + 8));
            }
        }
        if (k0 + BK > T) {
#pragma unroll
            for (int j = 0; j < 8; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (k0 + j * 8 + 2 * t + (e & 1) >= T) s[j][e] = NEG_INF;
        }

        // Online softmax. Each row lives in the 4 threads of a quad.
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            mx0 = fmaxf(mx0, fmaxf(s[j][0], s[j][1]));
            mx1 = fmaxf(mx1, fmaxf(s[j][2], s[j][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        // The first tile always holds valid keys, so mx is finite and exp(-inf) = 0 resets.
        const float a0 = expf(m0 - mx0), a1 = expf(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        l0 *= a0;
        l1 *= a1;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            o[j][0] *= a0;
            o[j][1] *= a0;
            o[j][2] *= a1;
            o[j][3] *= a1;
            s[j][0] = expf(s[j][0] - m0);
            s[j][1] = expf(s[j][1] - m0);
            s[j][2] = expf(s[j][2] - m1);
            s[j][3] = expf(s[j][3] - m1);
            l0 += s[j][0] + s[j][1];
            l1 += s[j][2] + s[j][3];
        }

        // O += P V: the S accumulators of two n-tiles are exactly one A fragment of P.
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            unsigned pa[4] = {pack_half2(s[2 * kk][0], s[2 * kk][1]), pack_half2(s[2 * kk][2], s[2 * kk][3]),
                              pack_half2(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_half2(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int j = 0; j < 8; j++) {
                const __half* vr = &vt[j * 8 + g][kk * 16 + 2 * t];
                mma16816(o[j], pa, ld_u32(vr), ld_u32(vr + 8));
            }
        }
    }

    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float inv0 = 1.f / l0, inv1 = 1.f / l1;
    __half* ob = out + (size_t)b * T * n + h * DH + 2 * t;
#pragma unroll
    for (int j = 0; j < 8; j++) {
        if (r0 < T)
            *reinterpret_cast<__half2*>(ob + (size_t)r0 * n + j * 8) = __floats2half2_rn(o[j][0] * inv0, o[j][1] * inv0);
        if (r1 < T)
            *reinterpret_cast<__half2*>(ob + (size_t)r1 * n + j * 8) = __floats2half2_rn(o[j][2] * inv1, o[j][3] * inv1);
    }
}
