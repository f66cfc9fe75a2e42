// extension.cpp: the Python module pdiff_fast._C. Importing it loads the torch ops that
// flatten.cpp, popcount_iou.cpp and norm_affine_act.cpp register (torch.ops.pdiff_fast.*);
// flatten_params / unflatten_params / unflatten_into are reached only that way
// (pdiff_fast/ops/flatten_params.py), iou_matrix and norm_affine_act are also bound here.
// The C++ library built by CMakeLists.txt leaves this file out (it needs Python).
#include <torch/extension.h>

#include "flatten.h"
#include "norm_affine_act.h"
#include "popcount_iou.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "pdiff_fast C++/CUDA ops: flatten/unflatten of parameter subsets, population evaluation";
  m.def("iou_matrix", &pdiff_fast::iou_matrix, py::arg("a_bits"), py::arg("b_bits"),
        "(Na, W), (Nb, W) packed bitsets -> (Na, Nb) float32 IoU, 1.0 for two empty sets");
  m.def("norm_affine_act", &pdiff_fast::norm_affine_act, py::arg("x"), py::arg("weight"),
        py::arg("bias"), py::arg("running_mean") = py::none(), py::arg("running_var") = py::none(),
        py::arg("eps") = 1e-5, py::arg("act") = "relu", py::arg("negative_slope") = 0.01,
        "act(x * scale[n, c] + shift[n, c]) for N models' norm affines: x (B, C, L) or "
        "(N, B, C, L), weight/bias (N, C), BatchNorm running stats (C,) or None");
  m.def("has_cuda", &pdiff_fast::has_cuda, "whether this build has the CUDA kernels");
}
