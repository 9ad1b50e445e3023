// Helpers shared by the kernel files (each .cu compiles alone; NVRTC gets this header by name).
#pragma once

// Programmatic Dependent Launch (sm_90+): pdl_wait() before touching anything an earlier kernel
// of the stream writes, pdl_launch() to let the next kernel's blocks be scheduled (they wait for
// this grid's completion themselves). Both do nothing when the kernel was launched without the
// programmatic attribute, and compile to nothing before sm_90.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void pdl_wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void pdl_launch() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
#else
__device__ __forceinline__ void pdl_wait() {}
__device__ __forceinline__ void pdl_launch() {}
#endif

// The 8 int8 values of q as exact floats: each byte, made unsigned by ^ 0x80, goes under the
// exponent of 2^23 by one byte permute (0x4B0000uu is 2^23 + u), and 2^23 + 128 comes off again.
// (An integer-to-float conversion per value would cost more issue slots than the bytes allow.)
__device__ __forceinline__ void unpack_i8x8(const uint2& q, float (&f)[8]) {
    const unsigned lo = q.x ^ 0x80808080u, hi = q.y ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; j++) {
        f[j] = __int_as_float(__byte_perm(lo, 0x4B000000u, 0x7650 + j)) - 8388736.f;
        f[4 + j] = __int_as_float(__byte_perm(hi, 0x4B000000u, 0x7650 + j)) - 8388736.f;
    }
}

// The int8 KV cache's rounding (src/kv_quant.rs): round(v / s) half away from zero, clamped to
// -127..127; 0 where the scale is 0.
__device__ __forceinline__ int q8(float v, float s) {
    if (s == 0.f) return 0;
    return (int)fminf(fmaxf(roundf(v / s), -127.f), 127.f);
}

// 8 fp16 values (16 bytes at src) as 8 int8 levels under scale s.
__device__ __forceinline__ uint2 quant8(const __half* src, float s) {
    const uint4 raw = *reinterpret_cast<const uint4*>(src);
    const __half2* h2 = reinterpret_cast<const __half2*>(&raw);
    unsigned w[2];
#pragma unroll
    for (int half_ = 0; half_ < 2; half_++) {
        const float2 a = __half22float2(h2[2 * half_]), b = __half22float2(h2[2 * half_ + 1]);
        w[half_] = (unsigned)(q8(a.x, s) & 0xff) | ((unsigned)(q8(a.y, s) & 0xff) << 8) |
                   ((unsigned)(q8(b.x, s) & 0xff) << 16) | ((unsigned)(q8(b.y, s) & 0xff) << 24);
    }
    return make_uint2(w[0], w[1]);
}
