// Token and position embedding into the decoder's f32 residual stream.
#include <cuda_fp16.h>

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

// tokens: int [rows], row = s * t + i at position len + i; tok_emb: fp16 [n_vocab][n];
// pos_emb: fp16 [n_ctx][n]; x: f32 [rows][n]; len: in device memory (graph replay). One block per row.
extern "C" __global__ void embed_tokens(const int* __restrict__ tokens, const __half* __restrict__ tok_emb,
                                        const __half* __restrict__ pos_emb, float* __restrict__ x, int n, int t,
                                        const int* __restrict__ len_ptr) {
    pdl_wait();
    pdl_launch();
    const int len = *len_ptr;
    const int row = blockIdx.x;
    const size_t tok = (size_t)tokens[row];
    const size_t pos = (size_t)(len + row % t);
    for (int c = threadIdx.x; c < n; c += blockDim.x)
        x[(size_t)row * n + c] = __half2float(tok_emb[tok * n + c]) + __half2float(pos_emb[pos * n + c]);
}
