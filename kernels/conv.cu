// The encoder's convolutional front end around two cuBLASLt GEMMs:
//   conv1 (k3, pad 1) = im2col_conv1 + GEMM (+bias, fp16 out),
//   conv2 (k3, stride 2, pad 1) = im2col_conv2_gelu (conv1's GELU fused into the gather) + GEMM
//   (+bias, f32 out, straight into the residual stream) + gelu_pos (conv2's GELU and the
//   positional embedding, fused, in place).
// GELU is the exact erf form (torch's default), as the CPU backend computes it.
#include <cuda_fp16.h>

__device__ __forceinline__ float gelu_erf(float x) { return 0.5f * x * (1.f + erff(x * 0.70710678118654752f)); }

// mel: fp16 [batch][n_mels][n_frames] (rounded on the host, as conv1's fp16 GEMM reads it) ->
// col: fp16 [batch][n_frames][3 * n_mels], tap-major: col[b][f][j * n_mels + c] =
// mel[b][c][f + j - 1] (zero outside the frames).
extern "C" __global__ void im2col_conv1(const __half* __restrict__ mel, __half* __restrict__ col, int batch, int n_mels,
                                        int n_frames) {
    size_t total = (size_t)batch * n_frames * 3 * n_mels;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int k = (int)(i % (size_t)(3 * n_mels));
        size_t bf = i / (size_t)(3 * n_mels);
        int f = (int)(bf % (size_t)n_frames);
        int b = (int)(bf / (size_t)n_frames);
        int j = k / n_mels, c = k % n_mels;
        int src = f + j - 1;
        col[i] = (src >= 0 && src < n_frames) ? mel[((size_t)b * n_mels + c) * n_frames + src] : __float2half_rn(0.f);
    }
}

// conv2's input rows with conv1's GELU applied on the way: h1: fp16 [batch][n_frames][n] (conv1
// output, bias added) -> col: fp16 [batch][ctx][3n] with col[b][t][j * n + c] =
// gelu(h1[b][2t + j - 1][c]), zero outside the frames (ctx = n_frames / 2).
extern "C" __global__ void im2col_conv2_gelu(const __half* __restrict__ h1, __half* __restrict__ col, int batch,
                                             int n_frames, int n) {
    const int ctx = n_frames / 2;
    size_t total = (size_t)batch * ctx * 3 * n;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        int k = (int)(i % (size_t)(3 * n));
        size_t bt = i / (size_t)(3 * n);
        int t = (int)(bt % (size_t)ctx);
        int b = (int)(bt / (size_t)ctx);
        int j = k / n, c = k % n;
        int src = 2 * t + j - 1;
        float v = (src >= 0 && src < n_frames) ? gelu_erf(__half2float(h1[((size_t)b * n_frames + src) * n + c])) : 0.f;
        col[i] = __float2half_rn(v);
    }
}

// In place on the f32 residual stream: x[b][t][c] = gelu(x[b][t][c]) + pos[t][c] (pos fp16 [ctx][n]).
extern "C" __global__ void gelu_pos(float* __restrict__ x, const __half* __restrict__ pos, int batch, int ctx, int n) {
    size_t per = (size_t)ctx * n;
    size_t total = (size_t)batch * per;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        x[i] = gelu_erf(x[i]) + __half2float(pos[i % per]);
    }
}
