// host_device.h: PDIFF_HD marks the small inline helpers shared by the CPU and CUDA kernels
// (__host__ __device__ under nvcc, plain inline elsewhere). No PyTorch headers.
#pragma once

#if defined(__CUDACC__)
#define PDIFF_HD __host__ __device__ __forceinline__
#else
#define PDIFF_HD inline
#endif
