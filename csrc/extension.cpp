// extension.cpp: the Python module pdiff_fast._C. Importing it loads the torch ops that
// flatten.cpp, popcount_iou.cpp and norm_affine_act.cpp register; Python reaches them only as
// torch.ops.pdiff_fast.* (flatten_params, unflatten_params, unflatten_into, iou_matrix,
// norm_affine_act; pdiff_fast/ops/), so torch.compile and torch.export trace them. has_cuda is
// the one plain function. The C++ library built by CMakeLists.txt leaves this file out (it
// needs Python).
#include <torch/extension.h>

#include "flatten.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pdiff_fast C++/CUDA ops (registered as torch.ops.pdiff_fast.*): flatten/unflatten of "
            "parameter subsets, population evaluation";
  m.def("has_cuda", &pdiff_fast::has_cuda, "whether this build has the CUDA kernels");
}
