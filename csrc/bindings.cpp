// pybind11 module fastneurons._C: CountArgs, one dispatch function per op, and build info.
// Tensors arrive as raw data_ptr() integers; validation is done once in fastneurons/kernels.py.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "counting.h"
#include "cpu/count_cpu.h"
#if defined(FASTNEURONS_WITH_CUDA)
#include "cuda/count_cuda.h"
#endif

namespace py = pybind11;
using fastneurons::CountArgs;

namespace {

// Exposes a pointer member of CountArgs to Python as an integer address.
template <typename T>
void def_pointer(py::class_<CountArgs>& cls, const char* name, T* CountArgs::*member) {
  cls.def_property(
      name, [member](const CountArgs& a) { return reinterpret_cast<uintptr_t>(a.*member); },
      [member](CountArgs& a, uintptr_t address) { a.*member = reinterpret_cast<T*>(address); });
}

void count_activations(const CountArgs& args, const std::string& device_type, uintptr_t stream) {
  if (device_type == "cpu") {
    py::gil_scoped_release release;
    fastneurons::count_cpu(args);
    return;
  }
  if (device_type == "cuda") {
#if defined(FASTNEURONS_WITH_CUDA)
    py::gil_scoped_release release;
    fastneurons::count_cuda(args, reinterpret_cast<cudaStream_t>(stream));
    return;
#else
    (void)stream;
    throw std::runtime_error(
        "fastneurons._C was built without CUDA: reinstall with nvcc on PATH (pip install .)");
#endif
  }
  throw std::invalid_argument("device_type must be 'cpu' or 'cuda', got '" + device_type + "'");
}

uint64_t read_bytes(uintptr_t address, int64_t nbytes, int32_t threads) {
  py::gil_scoped_release release;
  return fastneurons::read_bytes_cpu(reinterpret_cast<const void*>(address), nbytes, threads);
}

void read_bytes_cuda(uintptr_t address, int64_t nbytes, uintptr_t out, int32_t device, uintptr_t stream) {
#if defined(FASTNEURONS_WITH_CUDA)
  py::gil_scoped_release release;
  fastneurons::read_bytes_cuda(reinterpret_cast<const void*>(address), nbytes,
                               reinterpret_cast<int64_t*>(out), device,
                               reinterpret_cast<cudaStream_t>(stream));
#else
  (void)address, (void)nbytes, (void)out, (void)device, (void)stream;
  throw std::runtime_error("fastneurons._C was built without CUDA: reinstall with nvcc on PATH (pip install .)");
#endif
}

py::dict info() {
  py::dict d;
  py::list backends;
  backends.append("cpu");
#if defined(FASTNEURONS_WITH_CUDA)
  backends.append("cuda");
  d["cuda_devices"] = fastneurons::cuda_device_count();
  d["cuda_runtime_version"] = fastneurons::cuda_runtime_version();
  d["cuda_driver_version"] = fastneurons::cuda_driver_version();
  d["cuda_device_capabilities"] = fastneurons::cuda_device_capabilities();
  d["cuda_compiler_version"] = std::to_string(FASTNEURONS_NVCC_MAJOR) + "." +
                               std::to_string(FASTNEURONS_NVCC_MINOR);
  d["cuda_architectures"] = std::string(FASTNEURONS_CUDA_ARCHITECTURES);
#else
  d["cuda_devices"] = 0;
  d["cuda_runtime_version"] = py::none();
  d["cuda_driver_version"] = py::none();
  d["cuda_device_capabilities"] = py::list();
  d["cuda_compiler_version"] = py::none();
  d["cuda_architectures"] = py::none();
#endif
  d["backends"] = backends;
#if defined(_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["max_threads"] = fastneurons::cpu_max_threads();
  d["cpu_isa"] = std::string(fastneurons::cpu_isa_name());
#if defined(__clang__)
  d["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  d["compiler"] = std::string("gcc ") + __VERSION__;
#else
  d["compiler"] = std::string("unknown");
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "fastneurons compiled kernels: the fused activation counting pass (CPU and CUDA).";

  py::class_<CountArgs> args(m, "CountArgs", "Arguments of one counting pass (see counting.h).");
  args.def(py::init<>());
  def_pointer(args, "pre", &CountArgs::pre);
  def_pointer(args, "positions", &CountArgs::positions);
  def_pointer(args, "counted", &CountArgs::counted);
  def_pointer(args, "active", &CountArgs::active);
  def_pointer(args, "pos_active", &CountArgs::pos_active);
  def_pointer(args, "bits", &CountArgs::bits);
  def_pointer(args, "nan_count", &CountArgs::nan_count);
  args.def_readwrite("B", &CountArgs::B)
      .def_readwrite("S", &CountArgs::S)
      .def_readwrite("F", &CountArgs::F)
      .def_readwrite("W", &CountArgs::W)
      .def_readwrite("T", &CountArgs::T)
      .def_readwrite("stride_b", &CountArgs::stride_b)
      .def_readwrite("stride_s", &CountArgs::stride_s)
      .def_readwrite("threshold", &CountArgs::threshold)
      .def_readwrite("dtype", &CountArgs::dtype)
      .def_readwrite("pos_type", &CountArgs::pos_type)
      .def_readwrite("threads", &CountArgs::threads)
      .def_readwrite("device_index", &CountArgs::device_index);

  m.attr("DTYPE_FLOAT32") = static_cast<int>(fastneurons::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(fastneurons::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(fastneurons::kBFloat16);
  m.attr("POS_INT64") = static_cast<int>(fastneurons::kPosInt64);
  m.attr("POS_UINT16") = static_cast<int>(fastneurons::kPosUInt16);

  m.def("count_activations", &count_activations, py::arg("args"), py::arg("device_type") = "cpu",
        py::arg("stream") = 0,
        "One fused counting pass; device_type 'cpu' or 'cuda' (stream: cudaStream_t as int).");
  m.def("read_bytes", &read_bytes, py::arg("address"), py::arg("nbytes"), py::arg("threads") = 0,
        "Reads nbytes at address with threads threads and returns an XOR checksum (benchmarks).");
  m.def("read_bytes_cuda", &read_bytes_cuda, py::arg("address"), py::arg("nbytes"), py::arg("out"),
        py::arg("device"), py::arg("stream") = 0,
        "Reads nbytes of device memory (16-byte vectors) and XORs them into the int64 at out (benchmarks).");
  m.def("info", &info, "Compiled backends, OpenMP threads, CUDA devices, versions (1000*major+10*minor) and architectures.");
}
