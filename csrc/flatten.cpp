// flatten.cpp: checks and dispatch of flatten_params / unflatten_params / unflatten_into;
// registered as the torch ops pdiff_fast::flatten_params / unflatten_params / unflatten_into
// (CPU, and CUDA when built WITH_CUDA; schemas in flatten.h). None of them is differentiable:
// an Autograd kernel runs them below autograd, so outputs never require grad and in-place
// writes into leaves that require grad (live parameters) are allowed, as before.
//
// Each op builds one segment table (segment_table.h) on the host: one entry per (model,
// tensor) pair with its source and destination pointers, dtypes and, for non-contiguous views,
// its strides. The table then runs in one pass: at::parallel_for on CPU, one kernel on CUDA.
#include "flatten.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/InferenceMode.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cstring>
#include <string>
#include <utility>

#include "cpu/flatten_cpu.h"
#include "segment_table.h"

#ifdef WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/flatten_cuda.h"
#endif

namespace pdiff_fast {
namespace {

int32_t dtype_code(at::ScalarType type, const char* op, const std::string& what) {
  switch (type) {
    case at::kHalf: return kFloat16;
    case at::kBFloat16: return kBFloat16;
    case at::kFloat: return kFloat32;
    case at::kDouble: return kFloat64;
    default:
      TORCH_CHECK(false, op, ": ", what, " has dtype ", type,
                  "; supported dtypes are float16, bfloat16, float32 and float64");
  }
}

std::string tensor_name(int64_t i, int64_t j) {
  return "model " + std::to_string(i) + " tensor " + std::to_string(j);
}

class Table {
 public:
  static constexpr int32_t kContiguous = -1;
  static constexpr int32_t kTooManyDims = -2;

  // The layout of a view with these sizes/strides: kContiguous, kTooManyDims, or an index.
  int32_t add_layout(at::IntArrayRef sizes, at::IntArrayRef strides) {
    std::vector<std::pair<int64_t, int64_t>> dims;  // (size, stride), size-1 dims dropped
    for (size_t d = 0; d < sizes.size(); ++d) {
      if (sizes[d] == 1) continue;
      if (!dims.empty() && dims.back().second == strides[d] * sizes[d]) {
        dims.back().first *= sizes[d];  // merge with the outer dim
        dims.back().second = strides[d];
      } else {
        dims.emplace_back(sizes[d], strides[d]);
      }
    }
    if (dims.empty() || (dims.size() == 1 && dims[0].second == 1)) return kContiguous;
    if (dims.size() > static_cast<size_t>(kMaxDims)) return kTooManyDims;
    Layout l{};
    l.ndim = static_cast<int32_t>(dims.size());
    for (size_t d = 0; d < dims.size(); ++d) {
      l.sizes[d] = dims[d].first;
      l.strides[d] = dims[d].second;
    }
    layouts_.push_back(l);
    return static_cast<int32_t>(layouts_.size() - 1);
  }

  void add(const void* src, int32_t src_dtype, int32_t src_layout, void* dst, int32_t dst_dtype,
           int32_t dst_layout, int64_t numel) {
    if (numel == 0) return;
    entries_.push_back({src, dst, numel, total_, src_dtype, dst_dtype, src_layout, dst_layout});
    total_ += numel;
  }

  void run(const at::Device& device, const char* op) {
    if (entries_.empty()) return;
    if (device.is_cpu()) {
      segment_copy_cpu(entries_.data(), static_cast<int64_t>(entries_.size()), layouts_.data(),
                       total_);
      return;
    }
#ifdef WITH_CUDA
    TORCH_CHECK(device.is_cuda(), op, ": tensors on ", device, " are not supported");
    // one pinned host buffer [entries | layouts] -> one asynchronous copy on the current stream
    // (a pageable buffer made it a blocking copy, a host sync per call); the caching host
    // allocator keeps the pinned buffer alive until the copy's stream has passed it
    const int64_t entry_bytes = static_cast<int64_t>(entries_.size() * sizeof(SegmentCopy));
    const int64_t layout_bytes = static_cast<int64_t>(layouts_.size() * sizeof(Layout));
    at::Tensor host = at::empty({entry_bytes + layout_bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
    std::memcpy(host.data_ptr(), entries_.data(), entry_bytes);
    if (layout_bytes) std::memcpy(host.data_ptr<uint8_t>() + entry_bytes, layouts_.data(), layout_bytes);
    c10::cuda::CUDAGuard guard(device);
    at::Tensor table = host.to(device, at::kByte, /*non_blocking=*/true);
    const auto* entries = reinterpret_cast<const SegmentCopy*>(table.data_ptr<uint8_t>());
    const auto* layouts = reinterpret_cast<const Layout*>(table.data_ptr<uint8_t>() + entry_bytes);
    const cudaError_t err = segment_copy_cuda(entries, static_cast<int64_t>(entries_.size()),
                                              layouts, total_, at::cuda::getCurrentCUDAStream());
    TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
#else
    TORCH_CHECK(false, op, ": tensors on ", device, " need a CUDA build of pdiff_fast._C "
                "(this one was built without CUDA; rebuild with FORCE_CUDA=1 on a CUDA machine)");
#endif
  }

 private:
  std::vector<SegmentCopy> entries_;
  std::vector<Layout> layouts_;
  int64_t total_ = 0;
};

void check_strided(const at::Tensor& t, const char* op, const std::string& name) {
  TORCH_CHECK(t.defined(), op, ": ", name, " is undefined (None)");
  TORCH_CHECK(t.layout() == at::kStrided, op, ": ", name, " has layout ", t.layout(),
              "; only dense (strided) tensors are supported");
}

// Row checks shared by unflatten_params / unflatten_into; returns the dtype code of flat.
int32_t check_flat(const at::Tensor& flat, int64_t n_expected, int64_t d_expected, const char* op) {
  check_strided(flat, op, "flat");
  TORCH_CHECK(flat.dim() == 2, op, ": flat must be a 2-D (N, D) tensor, got ", flat.dim(),
              " dims with shape ", flat.sizes());
  TORCH_CHECK(flat.size(0) > 0, op, ": flat has no rows (N = 0)");
  if (n_expected >= 0) {
    TORCH_CHECK(flat.size(0) == n_expected, op, ": flat has ", flat.size(0), " rows but ",
                n_expected, " models were given");
  }
  TORCH_CHECK(flat.size(1) == d_expected, op, ": wrong D: flat has ", flat.size(1),
              " columns but the segments hold ", d_expected, " values");
  return dtype_code(flat.scalar_type(), op, "flat");
}

}  // namespace

bool has_cuda() {
#ifdef WITH_CUDA
  return true;
#else
  return false;
#endif
}

at::Tensor flatten_params(at::TensorList sources, int64_t n_models, at::IntArrayRef numels,
                          at::ScalarType dtype) {
  const char* op = "flatten_params";
  TORCH_CHECK(n_models > 0, op, ": no models given (N = 0)");
  const int64_t n_segments = static_cast<int64_t>(numels.size());
  TORCH_CHECK(static_cast<int64_t>(sources.size()) == n_models * n_segments, op, ": sources has ",
              sources.size(), " tensors, expected n_models * n_segments = ", n_models, " * ",
              n_segments, " (model i's tensor j at index i * n_segments + j)");
  std::vector<int64_t> offsets(n_segments);
  int64_t dim = 0;
  for (int64_t j = 0; j < n_segments; ++j) {
    TORCH_CHECK(numels[j] >= 0, op, ": numels[", j, "] = ", numels[j], " is negative");
    offsets[j] = dim;
    dim += numels[j];
  }
  const int32_t out_code = dtype_code(dtype, op, "the requested row dtype");
  at::Device device(at::kCPU);
  if (n_segments > 0 && sources[0].defined()) device = sources[0].device();
  at::Tensor out = at::empty({n_models, dim}, at::TensorOptions().dtype(dtype).device(device));
  auto* out_ptr = static_cast<char*>(out.data_ptr());
  const int64_t out_size = out.element_size();
  Table table;
  std::vector<at::Tensor> keep;  // contiguous copies of views with too many dims
  for (int64_t i = 0; i < n_models; ++i) {
    for (int64_t j = 0; j < n_segments; ++j) {
      at::Tensor t = sources[i * n_segments + j];
      const std::string name = tensor_name(i, j);
      check_strided(t, op, name);
      TORCH_CHECK(t.device() == device, op, ": mismatched devices: ", name, " is on ", t.device(),
                  " but model 0 tensor 0 is on ", device);
      TORCH_CHECK(t.numel() == numels[j], op, ": ", name, " has ", t.numel(),
                  " values, the spec says ", numels[j]);
      const int32_t code = dtype_code(t.scalar_type(), op, name);
      int32_t layout = table.add_layout(t.sizes(), t.strides());
      if (layout == Table::kTooManyDims) {
        keep.push_back(t.contiguous());
        t = keep.back();
        layout = Table::kContiguous;
      }
      table.add(t.const_data_ptr(), code, layout, out_ptr + (i * dim + offsets[j]) * out_size,
                out_code, Table::kContiguous, t.numel());
    }
  }
  table.run(device, op);
  return out;
}

std::vector<at::Tensor> unflatten_params(const at::Tensor& flat, at::IntArrayRef sizes,
                                         at::IntArrayRef ndims, at::IntArrayRef dtype_codes) {
  const char* op = "unflatten_params";
  TORCH_CHECK(ndims.size() == dtype_codes.size(), op, ": ", ndims.size(), " shapes but ",
              dtype_codes.size(), " dtypes");
  std::vector<at::ScalarType> dtypes;
  for (size_t j = 0; j < dtype_codes.size(); ++j) {
    const int64_t c = dtype_codes[j];
    TORCH_CHECK(c >= 0 && c < static_cast<int64_t>(at::ScalarType::NumOptions), op,
                ": dtype_codes[", j, "] = ", c, " is not a c10::ScalarType code");
    dtypes.push_back(static_cast<at::ScalarType>(c));
  }
  // segment j's shape: sizes[first[j], first[j] + ndims[j])
  std::vector<at::IntArrayRef> shapes;
  size_t first = 0;
  for (size_t j = 0; j < ndims.size(); ++j) {
    TORCH_CHECK(ndims[j] >= 0, op, ": ndims[", j, "] = ", ndims[j], " is negative");
    TORCH_CHECK(first + ndims[j] <= sizes.size(), op, ": the ndims add up to more than the ",
                sizes.size(), " sizes given");
    shapes.push_back(sizes.slice(first, ndims[j]));
    first += ndims[j];
  }
  TORCH_CHECK(first == sizes.size(), op, ": the ndims add up to ", first, " but ", sizes.size(),
              " sizes were given");
  std::vector<int64_t> numels;
  int64_t dim = 0;
  for (size_t j = 0; j < shapes.size(); ++j) {
    int64_t n = 1;
    for (int64_t s : shapes[j]) {
      TORCH_CHECK(s >= 0, op, ": shape ", j, " has a negative size ", s);
      n *= s;
    }
    numels.push_back(n);
    dim += n;
  }
  const int32_t flat_code = check_flat(flat, -1, dim, op);
  const int64_t n_models = flat.size(0);
  const int64_t row_stride = flat.stride(0), col_stride = flat.stride(1);
  const auto* flat_ptr = static_cast<const char*>(flat.const_data_ptr());
  const int64_t flat_size = flat.element_size();
  Table table;
  const int32_t row_layout =
      table.add_layout({std::max<int64_t>(dim, 1)}, {col_stride});  // shared by all rows
  std::vector<at::Tensor> outs;
  int64_t offset = 0;
  for (size_t j = 0; j < shapes.size(); ++j) {
    const int32_t code = dtype_code(dtypes[j], op, "dtypes[" + std::to_string(j) + "]");
    std::vector<int64_t> shape{n_models};
    shape.insert(shape.end(), shapes[j].begin(), shapes[j].end());
    at::Tensor out = at::empty(shape, flat.options().dtype(dtypes[j]));
    auto* out_ptr = static_cast<char*>(out.data_ptr());
    for (int64_t i = 0; i < n_models; ++i) {
      const char* src = flat_ptr + (i * row_stride + offset * col_stride) * flat_size;
      table.add(src, flat_code, row_layout, out_ptr + i * numels[j] * out.element_size(), code,
                Table::kContiguous, numels[j]);
    }
    outs.push_back(out);
    offset += numels[j];
  }
  table.run(flat.device(), op);
  return outs;
}

void unflatten_into(const at::Tensor& flat, at::TensorList targets, int64_t n_models) {
  const char* op = "unflatten_into";
  TORCH_CHECK(n_models > 0, op, ": no models given (N = 0)");
  TORCH_CHECK(static_cast<int64_t>(targets.size()) % n_models == 0, op, ": targets has ",
              targets.size(), " tensors, not a multiple of n_models = ", n_models,
              " (model i's tensor j at index i * n_segments + j)");
  const int64_t n_segments = static_cast<int64_t>(targets.size()) / n_models;
  int64_t dim = 0;
  for (int64_t j = 0; j < n_segments; ++j) {
    check_strided(targets[j], op, tensor_name(0, j));
    dim += targets[j].numel();
  }
  const int32_t flat_code = check_flat(flat, n_models, dim, op);
  const at::Device device = flat.device();
  const int64_t row_stride = flat.stride(0), col_stride = flat.stride(1);
  const auto* flat_ptr = static_cast<const char*>(flat.const_data_ptr());
  const int64_t flat_size = flat.element_size();
  Table table;
  const int32_t row_layout = table.add_layout({std::max<int64_t>(dim, 1)}, {col_stride});
  std::vector<std::pair<at::Tensor, at::Tensor>> staged;  // (target, contiguous stand-in)
  std::vector<at::Tensor> written;
  for (int64_t i = 0; i < n_models; ++i) {
    int64_t offset = 0;
    for (int64_t j = 0; j < n_segments; ++j) {
      at::Tensor t = targets[i * n_segments + j];
      const std::string name = tensor_name(i, j);
      check_strided(t, op, name);
      TORCH_CHECK(t.device() == device, op, ": mismatched devices: ", name, " is on ", t.device(),
                  " but flat is on ", device);
      TORCH_CHECK(t.numel() == targets[j].numel(), op, ": ", name, " has ", t.numel(),
                  " values, model 0 tensor ", j, " has ", targets[j].numel());
      const int32_t code = dtype_code(t.scalar_type(), op, name);
      at::assert_no_internal_overlap(t);
      TORCH_CHECK(!t.is_inference() || c10::InferenceMode::is_enabled(), op, ": ", name,
                  " is an inference tensor; in-place updates to it need torch.inference_mode()");
      written.push_back(t);
      int32_t layout = table.add_layout(t.sizes(), t.strides());
      if (layout == Table::kTooManyDims) {
        at::Tensor stand_in = at::empty(t.sizes(), t.options());
        staged.emplace_back(t, stand_in);
        t = stand_in;
        layout = Table::kContiguous;
      }
      const char* src = flat_ptr + (i * row_stride + offset * col_stride) * flat_size;
      table.add(src, flat_code, row_layout, t.data_ptr(), code, layout, t.numel());
      offset += t.numel();
    }
  }
  table.run(device, op);
  for (auto& [target, stand_in] : staged) target.detach().copy_(stand_in);  // no autograd
  for (auto& t : written) t.unsafeGetTensorImpl()->bump_version();
}

// --- torch ops ------------------------------------------------------------------------------

namespace {

// Autograd kernels: the ops are not differentiable (flatten reads parameters as data; unflatten
// writes them as data), so each runs the op below autograd, as torch's docs ask of a
// non-differentiable op (and torch.library.opcheck checks): outputs do not require grad.
template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

at::Tensor flatten_params_autograd(at::TensorList sources, int64_t n_models, at::IntArrayRef numels,
                                   at::ScalarType dtype) {
  static const auto handle = op_handle<decltype(flatten_params)>("pdiff_fast::flatten_params");
  at::AutoDispatchBelowADInplaceOrView guard;
  return handle.call(sources, n_models, numels, dtype);
}

std::vector<at::Tensor> unflatten_params_autograd(const at::Tensor& flat, at::IntArrayRef sizes,
                                                  at::IntArrayRef ndims,
                                                  at::IntArrayRef dtype_codes) {
  static const auto handle =
      op_handle<decltype(unflatten_params)>("pdiff_fast::unflatten_params");
  at::AutoDispatchBelowADInplaceOrView guard;
  return handle.call(flat, sizes, ndims, dtype_codes);
}

void unflatten_into_autograd(const at::Tensor& flat, at::TensorList targets, int64_t n_models) {
  static const auto handle = op_handle<decltype(unflatten_into)>("pdiff_fast::unflatten_into");
  at::AutoDispatchBelowADInplaceOrView guard;  // the kernel bumps the targets' versions itself
  handle.call(flat, targets, n_models);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(pdiff_fast, m) {
  m.def("flatten_params(Tensor[] sources, int n_models, int[] numels, ScalarType dtype) -> Tensor");
  // dtype codes, not ScalarType[]: torch.export cannot serialize a ScalarType[] argument
  m.def("unflatten_params(Tensor flat, int[] sizes, int[] ndims, int[] dtype_codes) -> Tensor[]");
  m.def("unflatten_into(Tensor flat, Tensor(a!)[] targets, int n_models) -> ()");
}

TORCH_LIBRARY_IMPL(pdiff_fast, CPU, m) {
  m.impl("flatten_params", &flatten_params);
  m.impl("unflatten_params", &unflatten_params);
  m.impl("unflatten_into", &unflatten_into);
}

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pdiff_fast, CUDA, m) {
  m.impl("flatten_params", &flatten_params);
  m.impl("unflatten_params", &unflatten_params);
  m.impl("unflatten_into", &unflatten_into);
}
#endif

// A call with no tensor arguments (flatten_params of N = 0 models or of no segments) leaves the
// dispatcher no backend to pick; this kernel takes it (the checks then name the problem, or
// return the (N, 0) rows). It also takes tensors of a device with no kernel registered above
// (CUDA tensors in a build without CUDA), so the error names the build rather than the dispatcher.
TORCH_LIBRARY_IMPL(pdiff_fast, CompositeExplicitAutograd, m) {
  m.impl("flatten_params", &flatten_params);
}

TORCH_LIBRARY_IMPL(pdiff_fast, Autograd, m) {
  m.impl("flatten_params", &flatten_params_autograd);
  m.impl("unflatten_params", &unflatten_params_autograd);
  m.impl("unflatten_into", &unflatten_into_autograd);
}

}  // namespace pdiff_fast
