"""`fastneurons info`: the CUDA lines (torch CUDA, _C runtime, driver, each GPU's capability and kernel image)."""
from fastneurons.info import describe, describe_cuda, format_lines

BUILT = dict(cuda_runtime_version=13000, cuda_driver_version=13000, cuda_architectures="75-real,80-real,90",
             cuda_compiler_version="13.0", cuda_device_capabilities=[90, 70], openmp=True)


def test_cuda_lines_name_versions_and_each_gpu_with_its_image():
    compiled = dict(BUILT)
    lines = describe_cuda(compiled, "13.0", [("NVIDIA H200", 90), ("Tesla V100", 70)])
    assert lines["kernel_cuda_runtime"] == "13.0" and lines["cuda_driver"] == "13.0"
    assert lines["kernel_cuda_architectures"] == "75-real,80-real,90"
    assert lines["gpus"] == ["cuda:0 NVIDIA H200 (compute 9.0, kernel image: yes)",
                             "cuda:1 Tesla V100 (compute 7.0, kernel image: NO)"]
    assert "no kernel image for compute capability 7.0" in lines["cuda_problem"]
    assert compiled == {"openmp": True}          # the CUDA keys are taken out of the compiled dict


def test_a_driver_older_than_the_runtime_is_the_problem_shown():
    lines = describe_cuda(dict(BUILT, cuda_driver_version=12040), "12.4", [("Tesla T4", 75)])
    assert lines["gpus"] == ["cuda:0 Tesla T4 (compute 7.5, kernel image: yes)"]
    assert "CUDA runtime 13.0, the driver supports CUDA 12.4 and torch uses CUDA 12.4" in lines["cuda_problem"]


def test_a_build_without_cuda():
    lines = describe_cuda({"cuda_devices": 0, "cuda_runtime_version": None}, None, [])
    assert lines["kernel_cuda_runtime"].startswith("none") and lines["gpus"] == []
    assert lines["cuda_problem"] == "none"


def test_describe_on_this_machine_has_the_cuda_lines():
    info = describe()
    for key in ("torch_cuda", "kernel_cuda_runtime", "cuda_driver", "gpus", "cuda_problem"):
        assert key in info
    assert "kernel_cuda_runtime" in format_lines(info)
