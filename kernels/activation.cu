// Elementwise activations.
#include <cuda_fp16.h>

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// In place on n fp16 values: x = gelu(x), the exact erf form (torch's default, the CPU
// backend's). Used after the MLP's first GEMM (bias added there).
extern "C" __global__ void gelu_f16(__half* __restrict__ x, long long n) {
    const long long pairs = n / 2;
    __half2* x2 = reinterpret_cast<__half2*>(x);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < pairs; i += (long long)gridDim.x * blockDim.x) {
        const float2 v = __half22float2(x2[i]);
        x2[i] = __floats2half2_rn(gelu_erf(v.x), gelu_erf(v.y));
    }
    if (n % 2 == 1 && blockIdx.x == 0 && threadIdx.x == 0) x[n - 1] = __float2half_rn(gelu_erf(__half2float(x[n - 1])));
}
