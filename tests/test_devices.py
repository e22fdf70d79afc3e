"""Device naming, the GPU of a torchrun rank and `--dtype auto`: pure functions with the CUDA facts injected."""
import pytest
import torch

from fastneurons.devices import (canonical_device, dtype_from_config, rank_device, resolve_dtype, same_device,
                                 visible_device_count)


def test_an_index_less_cuda_device_is_the_current_one():
    assert torch.device("cuda") != torch.device("cuda:0")      # the torch behaviour the counter tripped on
    assert canonical_device("cuda", current_index=0) == torch.device("cuda:0")
    assert canonical_device(torch.device("cuda"), current_index=3) == torch.device("cuda:3")
    assert canonical_device("cuda:1", current_index=0) == torch.device("cuda:1")
    assert canonical_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert same_device("cuda", "cuda:0") and not same_device("cuda", "cuda:1")


def test_visible_device_count_follows_cuda_rules():
    assert visible_device_count({}) is None
    assert visible_device_count({"CUDA_VISIBLE_DEVICES": "3"}) == 1
    assert visible_device_count({"CUDA_VISIBLE_DEVICES": "0,1, 2"}) == 3
    assert visible_device_count({"CUDA_VISIBLE_DEVICES": "GPU-8a1c,GPU-77f0"}) == 2
    assert visible_device_count({"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == 1
    assert visible_device_count({"CUDA_VISIBLE_DEVICES": ""}) == 0


def test_rank_device_uses_local_rank_unless_each_rank_sees_one_gpu():
    assert rank_device(2, 4, {}) == torch.device("cuda:2")
    assert rank_device(2, 4, {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}) == torch.device("cuda:2")
    assert rank_device(5, 1, {"CUDA_VISIBLE_DEVICES": "5"}) == torch.device("cuda:0")
    with pytest.raises(ValueError, match="LOCAL_RANK 3 needs GPU 3 but 2 GPU"):
        rank_device(3, 2, {})


@pytest.mark.parametrize("checkpoint, bf16, expected", [
    (torch.float16, True, torch.float16),      # OPT, Pythia: stored (and trained) in fp16
    (torch.bfloat16, True, torch.bfloat16),    # Llama 3, Gemma, Qwen
    (torch.bfloat16, False, torch.float32),    # a T4: never fp16 for a bf16 model (it overflows)
    (torch.float32, True, torch.bfloat16),     # GPT-2: fp32 on disk, bf16 keeps its range
    (None, True, torch.bfloat16),              # GGUF or unknown
    (None, False, torch.float32),
])
def test_auto_dtype_on_gpu_prefers_the_checkpoint_then_bf16(checkpoint, bf16, expected):
    assert resolve_dtype("auto", torch.device("cuda:0"), checkpoint, bf16_supported=bf16) == expected


def test_auto_dtype_on_cpu_and_explicit_dtypes():
    assert resolve_dtype("auto", torch.device("cpu"), torch.bfloat16, bf16_supported=True) == torch.float32
    assert resolve_dtype("float16", torch.device("cuda:0"), torch.bfloat16) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_dtype_from_config():
    assert dtype_from_config({"torch_dtype": "bfloat16"}) == torch.bfloat16
    assert dtype_from_config({"dtype": "float16"}) == torch.float16
    assert dtype_from_config({"torch_dtype": "torch.float32"}) == torch.float32
    assert dtype_from_config({}) is None and dtype_from_config({"torch_dtype": "Size"}) is None


def test_checkpoint_dtype_is_read_from_config_json(tmp_path):
    from fastneurons.recording.runner import _checkpoint_dtype

    (tmp_path / "config.json").write_text('{"model_type": "opt", "torch_dtype": "float16"}')
    assert _checkpoint_dtype(str(tmp_path)) == torch.float16
    (tmp_path / "config.json").write_text('{"model_type": "llama", "dtype": "bfloat16"}')
    assert _checkpoint_dtype(str(tmp_path)) == torch.bfloat16
    assert _checkpoint_dtype(str(tmp_path / "missing")) is None
    (tmp_path / "model.gguf").write_bytes(b"GGUF")
    assert _checkpoint_dtype(str(tmp_path / "model.gguf")) is None
