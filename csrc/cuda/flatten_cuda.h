// flatten_cuda.h: CUDA kernel of the segment copies behind flatten_params /
// unflatten_params / unflatten_into (see ../segment_table.h). Raw pointers only: this header
// and its .cu include no PyTorch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "../segment_table.h"

namespace pdiff_fast {

// Perform every copy in `entries` on `stream`. `entries` (n_entries, sorted by `start`,
// covering [0, total)) and `layouts` live in device memory, as do the buffers they point to.
// Returns the launch status.
cudaError_t segment_copy_cuda(const SegmentCopy* entries, int64_t n_entries,
                              const Layout* layouts, int64_t total, cudaStream_t stream);

}  // namespace pdiff_fast
