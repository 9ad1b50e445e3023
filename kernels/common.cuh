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
