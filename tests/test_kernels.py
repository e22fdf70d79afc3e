"""The fused counting pass (fastneurons.kernels) against its naive torch reference, exact equality."""

import sys

import numpy as np
import pytest
import torch

import fastneurons
from fastneurons import kernels
from fastneurons.kernels import count_activations, count_activations_naive, pack_bits, unpack_bits, words_for

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def right_padded_positions(lengths, seq_len):
    """int32 [B, S]: 0..len-1 then -1 for each sequence length."""
    steps = torch.arange(seq_len)[None, :]
    lengths = torch.as_tensor(lengths)[:, None]
    return torch.where(steps < lengths, steps, -1).to(torch.int32)


def make_pre(shape, dtype, generator, ties=True):
    """Random pre-activations; with ties, many values fall exactly on 0, 0.5 and -0.25."""
    if ties:
        values = torch.randint(-8, 9, shape, generator=generator).float() / 4
    else:
        values = torch.randn(shape, generator=generator)
    return values.to(dtype)


def outputs(num_neurons, num_positions, rows, device, fill=0):
    """Fresh accumulators (optionally pre-filled, to check that the pass adds) and a garbage bits tensor."""
    return {
        "active": torch.full((num_neurons,), fill, dtype=torch.int64, device=device),
        "pos_active": torch.full((num_positions, num_neurons), fill, dtype=torch.int64, device=device),
        "bits": torch.full(tuple(rows) + (words_for(num_neurons),), -1, dtype=torch.int64, device=device),
        "nan_count": torch.full((1,), fill, dtype=torch.int64, device=device),
    }


def check_against_naive(pre, positions, counted, threshold, num_positions, fill=3):
    """Run both implementations on the same inputs and assert identical counts and bits."""
    rows, num_neurons = tuple(pre.shape[:-1]), pre.shape[-1]
    fast = outputs(num_neurons, num_positions, rows, pre.device, fill)
    slow = outputs(num_neurons, num_positions, rows, torch.device("cpu"), fill)
    returned = count_activations(pre, positions, counted, threshold, **fast)
    assert returned is fast["bits"]
    count_activations_naive(pre.cpu(), positions.cpu(), counted.cpu(), threshold, **slow)
    for name in slow:
        assert torch.equal(fast[name].cpu(), slow[name]), name
    return fast


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_neurons", [1, 63, 64, 65, 200, 1000])
def test_matches_naive_right_padded(device, dtype, num_neurons):
    generator = torch.Generator().manual_seed(num_neurons)
    batch, seq_len, num_positions = 3, 7, 9
    pre = make_pre((batch, seq_len, num_neurons), dtype, generator).to(device)
    positions = right_padded_positions([7, 4, 0], seq_len)
    counted = positions >= 1
    check_against_naive(pre, positions.to(device), counted.to(device), 0.0, num_positions)


@pytest.mark.parametrize("threshold", [0.0, 0.5, -0.2, -0.25])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_thresholds_and_values_at_threshold(device, dtype, threshold):
    generator = torch.Generator().manual_seed(1)
    pre = make_pre((2, 5, 130), dtype, generator).to(device)
    pre[0, 0, :] = threshold  # exactly at the threshold (after rounding to dtype): never above it
    positions = right_padded_positions([5, 3], 5)
    counted = torch.rand(2, 5, generator=generator) < 0.6
    fast = check_against_naive(pre, positions.to(device), counted.to(device), threshold, 5)
    at_threshold = pre[0, 0, :].float().cpu() > torch.tensor(threshold, dtype=torch.float32)
    assert torch.equal(unpack_bits(fast["bits"][0, 0].cpu(), 130), at_threshold)


def test_bits_layout_is_little_endian_uint64(device):
    num_neurons = 130
    pre = torch.full((1, num_neurons), -1.0, device=device)
    on = [0, 1, 63, 64, 127, 129]
    pre[0, on] = 1.0
    f = outputs(num_neurons, 1, (1,), device)
    count_activations(pre, torch.zeros(1, dtype=torch.int32, device=device),
                      torch.ones(1, dtype=torch.bool, device=device), 0.0, **f)
    words = f["bits"].cpu().numpy().view(np.uint64)[0]
    found = [64 * w + j for w in range(words.size) for j in range(64) if (int(words[w]) >> j) & 1]
    assert found == on
    assert f["active"].nonzero().flatten().tolist() == on


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_nans_are_counted_and_never_active(device, dtype):
    generator = torch.Generator().manual_seed(2)
    pre = make_pre((2, 6, 100), dtype, generator)
    pre[0, 1, 5] = float("nan")
    pre[1, 2, :10] = float("nan")
    pre[1, 5, 7] = float("nan")  # a padding row: not counted
    pre = pre.to(device)
    positions = right_padded_positions([6, 4], 6)
    counted = positions >= 1
    fast = check_against_naive(pre, positions.to(device), counted.to(device), -10.0, 6, fill=0)
    assert int(fast["nan_count"]) == 11
    assert not unpack_bits(fast["bits"][1, 2].cpu(), 100)[:10].any()


def test_flat_rows_with_packed_sequences(device):
    """[N, F] input: several sequences back to back, positions restarting at 0, some padding rows."""
    generator = torch.Generator().manual_seed(3)
    positions = torch.tensor([0, 1, 2, 3, 0, 1, -1, -1, 0, 1, 2, 0, -1], dtype=torch.int32)
    pre = make_pre((positions.numel(), 257), torch.float32, generator, ties=False).to(device)
    counted = (positions >= 0) & (torch.rand(positions.numel(), generator=generator) < 0.7)
    check_against_naive(pre, positions.to(device), counted.to(device), 0.1, 4)


def test_left_padding_and_arbitrary_position_order(device):
    generator = torch.Generator().manual_seed(4)
    positions = torch.tensor([[-1, -1, 0, 1, 2], [0, 1, 2, 3, 4], [-1, 0, 1, 2, 3], [4, 3, 0, 2, 1]],
                             dtype=torch.int32)
    pre = make_pre((4, 5, 300), torch.bfloat16, generator).to(device)
    counted = positions >= 1
    check_against_naive(pre, positions.to(device), counted.to(device), 0.0, 5)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_strided_slice_of_a_bigger_tensor(device, dtype):
    generator = torch.Generator().manual_seed(5)
    big = make_pre((6, 9, 200), dtype, generator).to(device)
    pre = big[1::2, 2:8, 20:150]  # strides (2*9*200, 200, 1): not contiguous, last dim is
    assert not pre.is_contiguous() and pre.stride(-1) == 1
    positions = right_padded_positions([6, 2, 5], 6)
    counted = positions >= 0
    check_against_naive(pre, positions.to(device), counted.to(device), 0.0, 6)
    flat = big[0, :, 10:140]  # [N, F] with a row stride larger than F
    flat_positions = torch.arange(9, dtype=torch.int32)
    check_against_naive(flat, flat_positions.to(device), (flat_positions >= 1).to(device), 0.0, 9)


def test_accumulates_across_calls_and_overwrites_bits(device):
    generator = torch.Generator().manual_seed(6)
    first = make_pre((2, 4, 70), torch.float32, generator).to(device)
    second = make_pre((2, 4, 70), torch.float32, generator).to(device)
    positions = right_padded_positions([4, 3], 4).to(device)
    counted = positions >= 1
    fast = outputs(70, 4, (2, 4), device)
    slow = outputs(70, 4, (2, 4), torch.device("cpu"))
    for pre in (first, second):
        count_activations(pre, positions, counted, 0.0, **fast)
        count_activations_naive(pre.cpu(), positions.cpu(), counted.cpu(), 0.0, **slow)
    for name in slow:
        assert torch.equal(fast[name].cpu(), slow[name]), name
    expected_bits = pack_bits((second.cpu() > 0) & (positions.cpu() >= 0)[..., None])
    assert torch.equal(fast["bits"].cpu(), expected_bits)


def test_optional_outputs_and_empty_input(device):
    pre = torch.randn(3, 4, 10, device=device)
    positions = right_padded_positions([4, 4, 1], 4).to(device)
    active = torch.zeros(10, dtype=torch.int64, device=device)
    pos_active = torch.zeros(4, 10, dtype=torch.int64, device=device)
    assert count_activations(pre, positions, positions >= 1, 0.0, active, pos_active) is None
    assert int(pos_active.sum()) == int((pre > 0)[positions >= 0].sum())
    empty = torch.zeros(0, 10, device=device)
    none = torch.zeros(0, dtype=torch.int32, device=device)
    count_activations(empty, none, none >= 0, 0.0, active, pos_active)


def test_every_negative_position_is_padding(device):
    """CPU and CUDA agree: positions < -1 are padding like -1 (the CPU used to refuse them)."""
    generator = torch.Generator().manual_seed(8)
    positions = torch.tensor([[0, 1, -2, 2], [-7, 0, 1, -2147483648]], dtype=torch.int32)
    pre = make_pre((2, 4, 100), torch.float32, generator).to(device)
    fast = check_against_naive(pre, positions.to(device), (positions >= 1).to(device), 0.0, 3)
    assert not fast["bits"][0, 2].any() and not fast["bits"][1, 0].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_rows_split_into_chunks_and_row_groups(device, dtype):
    """Enough rows that every word is split over many warps (CUDA) and row groups end mid-sequence."""
    generator = torch.Generator().manual_seed(9)
    lengths = [300, 257, 1, 0, 123, 299, 64]
    positions = right_padded_positions(lengths, 300)
    positions[4] = torch.roll(positions[4], 50)                     # left padding in one row
    pre = make_pre((len(lengths), 300, 1000), dtype, generator).to(device)
    pre[2, 0, 5] = float("nan")
    counted = (positions >= 1) & (torch.rand(positions.shape, generator=generator) < 0.9)
    check_against_naive(pre, positions.to(device), counted.to(device), 0.25, 300)


def test_pack_and_unpack_are_inverse():
    on = torch.rand(3, 5, 131) < 0.3
    bits = pack_bits(on)
    assert bits.shape == (3, 5, 3) and bits.dtype == torch.int64
    assert torch.equal(unpack_bits(bits, 131), on)


def valid_call(device="cpu"):
    pre = torch.zeros(2, 3, 70, device=device)
    positions = torch.zeros(2, 3, dtype=torch.int32, device=device)
    return dict(pre=pre, positions=positions, counted=positions >= 1, threshold=0.0,
                active=torch.zeros(70, dtype=torch.int64, device=device),
                pos_active=torch.zeros(4, 70, dtype=torch.int64, device=device),
                bits=torch.zeros(2, 3, 2, dtype=torch.int64, device=device),
                nan_count=torch.zeros(1, dtype=torch.int64, device=device))


@pytest.mark.parametrize("change, error, message", [
    (dict(pre=torch.zeros(2, 3, 70, dtype=torch.float64)), TypeError, "float32, float16 or bfloat16"),
    (dict(pre=torch.zeros(70)), ValueError, r"\[B, S, F\] or \[N, F\]"),
    (dict(pre=torch.zeros(2, 3, 140)[..., ::2]), ValueError, "contiguous in its last"),
    (dict(positions=torch.zeros(2, 3, dtype=torch.int64)), TypeError, "positions must be torch.int32"),
    (dict(positions=torch.zeros(3, 2, dtype=torch.int32)), ValueError, "positions must have shape"),
    (dict(positions=torch.full((2, 3), 4, dtype=torch.int32)), ValueError, r"in \[0, 4\)"),
    (dict(counted=torch.ones(2, 3, dtype=torch.uint8)), TypeError, "counted must be torch.bool"),
    (dict(active=torch.zeros(71, dtype=torch.int64)), ValueError, "active must have shape"),
    (dict(active=torch.zeros(70, dtype=torch.int32)), TypeError, "active must be torch.int64"),
    (dict(pos_active=torch.zeros(4, 69, dtype=torch.int64)), ValueError, "pos_active must have shape"),
    (dict(bits=torch.zeros(2, 3, 1, dtype=torch.int64)), ValueError, "bits must have shape"),
    (dict(nan_count=torch.zeros(2, dtype=torch.int64)), ValueError, "nan_count must have shape"),
    (dict(threshold=float("nan")), ValueError, "threshold"),
    (dict(threshold="high"), TypeError, "threshold"),
    (dict(active=torch.zeros(140, dtype=torch.int64)[::2]), ValueError, "active must be contiguous"),
])
def test_bad_input_raises_clear_error(change, error, message):
    call = valid_call()
    call.update(change)
    with pytest.raises(error, match=message):
        count_activations(**call)


@pytest.mark.cuda
def test_mixed_devices_are_refused():
    call = valid_call("cuda")
    call["active"] = call["active"].cpu()
    with pytest.raises(ValueError, match="active is on cpu"):
        count_activations(**call)


@pytest.mark.cuda
def test_cuda_ignores_positions_beyond_table_in_pos_active():
    """On CUDA positions >= T are not checked (no sync): such rows add nothing to pos_active."""
    call = valid_call("cuda")
    call["pre"].fill_(1.0)
    call["positions"] = torch.tensor([[0, 1, 9], [0, 5, 3]], dtype=torch.int32, device="cuda")
    call["counted"] = torch.ones(2, 3, dtype=torch.bool, device="cuda")
    count_activations(**call)
    assert call["pos_active"][:, 0].tolist() == [2, 1, 0, 1]
    assert int(call["active"][0]) == 6


@pytest.mark.parametrize("runtime, driver, torch_cuda, message", [
    (13000, 12040, "12.4", "driver is too old for _C's runtime; rebuild _C with torch's CUDA 12 toolkit"),
    (13000, 12080, "13.0", "update the NVIDIA driver to one for CUDA 13"),
    (13000, 13000, "12.8", "same CUDA major; rebuild _C with torch's CUDA 12"),
    (12040, 0, "12.4", "no NVIDIA driver"),
    (12040, 12020, None, "CUDA build of torch"),
])
def test_cuda_version_mismatch_is_refused_naming_all_three(runtime, driver, torch_cuda, message):
    problem = kernels.cuda_build_problem(runtime, driver, torch_cuda)
    assert message in problem
    assert f"runtime {kernels.cuda_version_text(runtime)}" in problem and "torch uses CUDA" in problem
    assert f"supports CUDA {kernels.cuda_version_text(driver)}" in problem


@pytest.mark.parametrize("runtime, driver, torch_cuda", [(13000, 13000, "13.0"), (12040, 13000, "12.4"),
                                                         (12080, 12040, "12.1")])
def test_cuda_versions_that_fit(runtime, driver, torch_cuda):
    assert kernels.cuda_build_problem(runtime, driver, torch_cuda) is None   # minor versions are compatible


def test_the_first_cuda_call_refuses_a_mismatched_build(monkeypatch):
    """require_cuda_build runs before any kernel work on a CUDA tensor; injected versions that do not fit."""
    real = kernels.load_extension()

    class Mismatched:
        CountArgs = real.CountArgs

        def info(self):
            return dict(real.info(), backends=["cpu", "cuda"], cuda_runtime_version=13000,
                        cuda_driver_version=12040, cuda_architectures="75-real,80-real,90")

        def count_activations(self, *args):
            raise AssertionError("the kernel must not run")

    monkeypatch.setattr(kernels, "_EXTENSION", Mismatched())
    monkeypatch.setattr(kernels, "_CHECKED_DEVICES", set())
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    with pytest.raises(RuntimeError, match="CUDA runtime 13.0, the driver supports CUDA 12.4 and torch uses CUDA 12.4"):
        kernels.require_cuda_build(0)


@pytest.mark.parametrize("capability, architectures, expected", [
    (75, "75-real,80-real,90", True),     # T4
    (86, "75-real,80-real,90", True),     # A10/3090: sm_80 SASS runs on 8.6
    (89, "80-real", True),                # L4
    (90, "75-real,80-real,90", True),     # H100/H200
    (100, "75-real,80-real,90", True),    # Blackwell: compute_90 PTX, JIT-compiled
    (100, "75-real,80-real,90-real", False),
    (70, "75-real,80-real,90", False),    # V100: nothing older than 7.5
    (75, "80;90", False),                 # the old default had no T4 image
    (90, "90a-real", True), (91, "90a-real", False),
    (86, "80-virtual", True), (75, "80-virtual", False),
    (90, "native", None),
])
def test_kernel_image_for_a_compute_capability(capability, architectures, expected):
    assert kernels.has_kernel_image(capability, architectures) is expected
    problem = kernels.cuda_device_problem(capability, architectures)
    assert (problem is not None) == (expected is False)
    if problem:
        assert f"compute capability {capability // 10}.{capability % 10}" in problem


def test_pinned_host_copies_pass_cpu_tensors_through():
    tensor = torch.arange(5)
    assert kernels.PinnedHostCopies().copy("bits", tensor) is tensor


@pytest.mark.cuda
def test_pinned_host_copies_reuse_one_pinned_buffer_per_key():
    copies = kernels.PinnedHostCopies()
    first = copies.copy("bits", torch.arange(10, device="cuda"))
    assert first.is_pinned() and first.tolist() == list(range(10))
    pointer = first.data_ptr()
    second = copies.copy("bits", torch.arange(4, device="cuda") * 3)
    assert second.data_ptr() == pointer and second.tolist() == [0, 3, 6, 9]


@pytest.mark.cuda
def test_read_device_bytes_reads_everything():
    data = torch.randint(-2**62, 2**62, (1 << 16,), dtype=torch.int64, device="cuda")
    out = torch.zeros(1, dtype=torch.int64, device="cuda")
    kernels.read_device_bytes(data, out)
    expected = 0
    for word in data.cpu().tolist():
        expected ^= word
    assert int(out) == expected


def test_missing_extension_message(monkeypatch):
    monkeypatch.setattr(kernels, "_EXTENSION", None)
    monkeypatch.setitem(sys.modules, "fastneurons._C", None)
    monkeypatch.delattr(fastneurons, "_C", raising=False)
    with pytest.raises(ImportError, match="pip install ."):
        kernels.load_extension()


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_neurons", [63, 64, 200, 1000])
def test_every_cpu_code_path_matches_naive(monkeypatch, isa, dtype, num_neurons):
    """The CPU pass has generic, AVX2 and AVX-512 row functions; each must give the same counts."""
    monkeypatch.setenv("FASTNEURONS_CPU_ISA", isa)
    generator = torch.Generator().manual_seed(7)
    pre = make_pre((3, 6, num_neurons), dtype, generator)
    pre[1, 2, 3] = float("nan")
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, -1, -1], [-1, 0, 1, 2, 3, 4]], dtype=torch.int32)
    counted = positions >= 1
    check_against_naive(pre, positions, counted, -0.25, 6)


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
@pytest.mark.parametrize("num_neurons", [63, 200, 1000])
def test_uint16_pos_active_adds_the_same_counts_modulo_2_16(monkeypatch, isa, num_neurons):
    """On the CPU pos_active may be uint16 (recent counts a caller drains): the same sums, wrapping at
    2^16, for every ISA's loops."""
    monkeypatch.setenv("FASTNEURONS_CPU_ISA", isa)
    generator = torch.Generator().manual_seed(num_neurons)
    pre = make_pre((4, 6, num_neurons), torch.float32, generator)
    positions = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 1, 2, 3, -1, -1], [-1, 0, 1, 2, 3, 4], [5, 5, 5, 1, 1, 0]],
                             dtype=torch.int32)
    counted = positions >= 1
    wide = torch.randint(0, 2 ** 16, (6, num_neurons), generator=generator)
    narrow = wide.to(torch.uint16)
    count_activations(pre, positions, counted, 0.0, torch.zeros(num_neurons, dtype=torch.int64), narrow)
    count_activations_naive(pre, positions, counted, 0.0, torch.zeros(num_neurons, dtype=torch.int64), wide)
    assert torch.equal(narrow.long(), wide % 2 ** 16)


def test_build_info_and_describe():
    compiled = kernels.load_extension().info()
    assert "cpu" in compiled["backends"] and compiled["max_threads"] >= 1
    assert compiled["cpu_isa"] in ("generic", "avx2", "avx512")
    described = fastneurons.info()
    assert described["version"] == fastneurons.__version__ and described["kernels_built"]
    assert "backends" in fastneurons.info.format_info()


def test_kernel_benchmark_runs_and_agrees_with_eager_torch():
    from fastneurons.bench.kernel import bench_kernel, format_table

    result = bench_kernel(tokens=64, neurons=200, max_positions=32, dtype="bfloat16", repeats=1, batch_size=4)
    assert result["results_agree"] and result["tokens"] == 64 and result["fused_s"] > 0
    assert "| cpu | 64 | 200 | bfloat16 |" in format_table([result])
