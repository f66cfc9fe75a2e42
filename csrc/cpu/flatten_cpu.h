// flatten_cpu.h: CPU kernel of the segment copies behind flatten_params / unflatten_params /
// unflatten_into (see ../segment_table.h).
#pragma once

#include <cstdint>

#include "../segment_table.h"

namespace pdiff_fast {

// Perform every copy in `entries` (host memory, sorted by `start`, covering [0, total)).
// `layouts` holds the strided layouts the entries point to. Parallel over elements.
void segment_copy_cpu(const SegmentCopy* entries, int64_t n_entries, const Layout* layouts,
                      int64_t total);

}  // namespace pdiff_fast
