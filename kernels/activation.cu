// Elementwise activations.
#include <cuda_fp16.h>

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

__device__ __forceinline__ unsigned gelu_pair(unsigned v) {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&v));
    __half2 r = __floats2half2_rn(gelu_erf(f.x), gelu_erf(f.y));
    return *reinterpret_cast<unsigned*>(&r);
}

// In place on n fp16 values: x = gelu(x), the exact erf form (torch's default, the CPU
// backend's). Used after a GEMM whose epilogue added the bias. 16-byte accesses (8 values per
// thread and step) when x is 16-byte aligned; the tail and unaligned arrays go value by value.
extern "C" __global__ void gelu_f16(__half* __restrict__ x, long long n) {
    const long long stride = (long long)gridDim.x * blockDim.x;
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x;
    long long done = 0;
    if ((reinterpret_cast<size_t>(x) & 15) == 0) {
        const long long vecs = n / 8;
        uint4* x8 = reinterpret_cast<uint4*>(x);
        for (long long i = first; i < vecs; i += stride) {
            uint4 v = x8[i];
            v.x = gelu_pair(v.x);
            v.y = gelu_pair(v.y);
            v.z = gelu_pair(v.z);
            v.w = gelu_pair(v.w);
            x8[i] = v;
        }
        done = vecs * 8;
    }
    for (long long i = done + first; i < n; i += stride) x[i] = __float2half_rn(gelu_erf(__half2float(x[i])));
}
