"""The fused counting pass on torch tensors: validates once, then calls the compiled fastneurons._C.

This is the only module that touches ``_C``. ``count_activations`` is backend neutral (CPU or CUDA
tensors); ``count_activations_naive`` is the slow, obvious torch reference every test compares to.
"""

from __future__ import annotations

import torch

BITS_PER_WORD = 64

_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
_EXTENSION = None
_NOT_BUILT = "fastneurons._C is not built: run pip install ."


def load_extension():
    """Return the compiled module ``fastneurons._C``; raise a clear ImportError if it is missing."""
    global _EXTENSION
    if _EXTENSION is None:
        try:
            from fastneurons import _C
        except ImportError as error:
            raise ImportError(_NOT_BUILT) from error
        _EXTENSION = _C
    return _EXTENSION


def words_for(num_neurons: int) -> int:
    """Number of 64-bit words that hold one bit per neuron: ``ceil(num_neurons / 64)``."""
    return (num_neurons + BITS_PER_WORD - 1) // BITS_PER_WORD


def count_activations(pre, positions, counted, threshold, active, pos_active, bits=None, nan_count=None):
    """Count which neurons are active (``pre > threshold``) in one fused pass over the rows of ``pre``.

    ``pre`` [B, S, F] or [N, F] (float32/16/bf16, last dim contiguous), ``positions`` int32 [B, S]
    (-1 = padding), ``counted`` bool [B, S]. Adds into ``active`` int64 [F], ``pos_active`` [T, F]
    and ``nan_count`` int64 [1]; ``pos_active`` is int64, or on the CPU uint16, which wraps modulo
    2^16: the caller adds it into int64 totals before any position passes 65,535 rows
    (`NeuronCounter` does). Overwrites ``bits`` int64 [B, S, ceil(F/64)] when given and returns it.
    Values are compared as float32 with the threshold rounded to float32; NaN is never active; every
    position < 0 is padding. On CUDA it runs on the current stream without a host sync, so positions
    >= T are not checked there: such rows add nothing to ``pos_active`` (they do count in the rest).
    The first CUDA call on a device checks that ``_C`` can run there.
    """
    _check_inputs(pre, positions, counted, active, pos_active, bits, nan_count)
    threshold = check_threshold(threshold)
    if pre.device.type == "cpu":
        check_positions_in_table(positions, pos_active.shape[0])
    return count_activations_checked(pre, positions, counted, threshold, active, pos_active, bits, nan_count)


def check_positions_in_table(positions: torch.Tensor, num_positions: int) -> None:
    """Refuse positions >= ``num_positions`` (the rows of pos_active); one reduction, so it syncs on CUDA."""
    if positions.numel():
        high = int(positions.max())
        if high >= num_positions:
            raise ValueError(
                f"positions must be in [0, {num_positions}) (pos_active has {num_positions} rows) or "
                f"negative (padding), got {high}"
            )


def count_activations_checked(pre, positions, counted, threshold: float, active, pos_active, bits=None,
                              nan_count=None):
    """``count_activations`` on inputs its checks already passed: for a caller that checks once what
    does not change between calls (`NeuronCounter`: its own outputs, a batch's positions for all its
    layers), since between a model's layers each torch op costs tens of microseconds."""
    if pre.shape[:-1].numel() == 0:
        return bits
    _C = load_extension()
    args = _C.CountArgs()
    if pre.dim() == 3:
        args.B, args.S = pre.shape[0], pre.shape[1]
        args.stride_b, args.stride_s = pre.stride(0), pre.stride(1)
    else:
        args.B, args.S = 1, pre.shape[0]
        args.stride_b, args.stride_s = 0, pre.stride(0)
    args.F = pre.shape[-1]
    args.W = words_for(args.F)
    args.T = pos_active.shape[0]
    args.threshold = threshold
    args.dtype = _DTYPE_CODES[pre.dtype]
    args.pos_type = _C.POS_UINT16 if pos_active.dtype == torch.uint16 else _C.POS_INT64
    args.pre = pre.data_ptr()
    args.positions = positions.data_ptr()
    args.counted = counted.data_ptr()
    args.active = active.data_ptr()
    args.pos_active = pos_active.data_ptr()
    args.bits = bits.data_ptr() if bits is not None else 0
    args.nan_count = nan_count.data_ptr() if nan_count is not None else 0
    if pre.device.type == "cuda":
        args.device_index = pre.device.index if pre.device.index is not None else torch.cuda.current_device()
        require_cuda_build(args.device_index)
        stream = torch.cuda.current_stream(pre.device).cuda_stream
        _C.count_activations(args, "cuda", stream)
    else:
        args.threads = torch.get_num_threads()
        _C.count_activations(args, "cpu", 0)
    return bits


def cuda_version_text(version) -> str:
    """CUDA's integer version (1000 * major + 10 * minor, e.g. 12040) as "12.4"; "none" for 0/None."""
    if not version:
        return "none"
    return f"{int(version) // 1000}.{int(version) % 1000 // 10}"


def cuda_build_problem(runtime: int, driver: int, torch_cuda) -> str | None:
    """Why a ``_C`` linked against CUDA runtime ``runtime`` cannot run next to this driver and torch, or None.

    ``runtime``/``driver`` are CUDA's integer versions (``driver``: the newest CUDA the driver supports,
    0 without one), ``torch_cuda`` is ``torch.version.cuda`` ("12.4" or None). Within a major version the
    driver runs any newer minor runtime (minor version compatibility), across majors it does not; and
    torch of another major means the machine was set up for that major.
    """
    runtime_major, driver_major = int(runtime) // 1000, int(driver or 0) // 1000
    torch_major = int(str(torch_cuda).split(".")[0]) if torch_cuda else None
    versions = (f"fastneurons._C uses CUDA runtime {cuda_version_text(runtime)}, the driver supports CUDA "
                f"{cuda_version_text(driver)} and torch uses CUDA {torch_cuda or 'none (a CPU build)'}")
    if not driver:
        return f"{versions}: no NVIDIA driver is loaded"
    if torch_major is None:
        return f"{versions}: install a CUDA build of torch"
    if runtime_major <= driver_major and runtime_major == torch_major:
        return None
    rebuild = (f"rebuild _C with torch's CUDA {torch_major} toolkit (CUDACXX=/usr/local/cuda-{torch_major}.x/bin/nvcc "
               "pip install --no-build-isolation --force-reinstall .)")
    if runtime_major > driver_major:
        fix = rebuild if torch_major <= driver_major else f"update the NVIDIA driver to one for CUDA {torch_major}"
        return f"{versions}: the driver is too old for _C's runtime; {fix}"
    return f"{versions}: _C and torch must use the same CUDA major; {rebuild}"


def has_kernel_image(capability: int, architectures: str) -> bool | None:
    """Whether code built for ``architectures`` (CMAKE_CUDA_ARCHITECTURES: "75-real,80-real,90") runs on a GPU
    of compute ``capability`` (10 * major + minor): SASS sm_XY runs on X.Y..X.9, sm_XYa only on X.Y; PTX
    compute_XY is JIT-compiled on any capability >= X.Y. None when the list cannot be read ("native")."""
    found = False
    for entry in str(architectures).replace(";", ",").split(","):
        name, _, kind = entry.strip().partition("-")
        digits = name.rstrip("af")
        if not digits.isdigit() or kind not in ("", "real", "virtual"):
            return None
        arch = int(digits)
        specific = name != digits
        sass = kind in ("", "real") and (capability == arch if specific else
                                         capability // 10 == arch // 10 and capability >= arch)
        ptx = kind in ("", "virtual") and not specific and capability >= arch
        found = found or sass or ptx
    return found


def cuda_device_problem(capability: int, architectures: str) -> str | None:
    """Why ``_C`` has no kernel image for a GPU of compute ``capability``, or None."""
    if has_kernel_image(capability, architectures) is False:
        return (f"fastneurons._C has no kernel image for compute capability {capability // 10}.{capability % 10} "
                f"(built for {architectures}): rebuild with CMAKE_ARGS=-DCMAKE_CUDA_ARCHITECTURES="
                f"{capability}-real pip install --no-build-isolation --force-reinstall .")
    return None


_CHECKED_DEVICES: set = set()


def require_cuda_build(device_index: int) -> None:
    """Refuse, before any work, a ``_C`` that cannot run on CUDA device ``device_index`` (once per device)."""
    if device_index in _CHECKED_DEVICES:
        return
    compiled = load_extension().info()
    if "cuda" not in compiled["backends"]:
        raise RuntimeError("fastneurons._C was built without CUDA: reinstall it on a machine with nvcc "
                           "(pip install --no-build-isolation --force-reinstall .)")
    problem = cuda_build_problem(compiled["cuda_runtime_version"], compiled["cuda_driver_version"],
                                 torch.version.cuda)
    if problem is None:
        major, minor = torch.cuda.get_device_capability(device_index)
        problem = cuda_device_problem(10 * major + minor, compiled["cuda_architectures"])
    if problem is not None:
        raise RuntimeError(problem)
    _CHECKED_DEVICES.add(device_index)


class PinnedHostCopies:
    """Device-to-host copies through reusable pinned buffers (one per key, grown as needed): a DMA copy
    without torch's pageable staging or a fresh allocation per call. CPU tensors are returned as they are."""

    def __init__(self):
        self._buffers: dict = {}

    def copy(self, key, tensor: torch.Tensor) -> torch.Tensor:
        """A host copy of ``tensor``, valid until the next ``copy`` with the same key; waits only for the
        work queued so far on the current stream (the copy itself is non-blocking on it)."""
        if tensor.device.type != "cuda":
            return tensor
        buffer = self._buffers.get(key)
        if buffer is None or buffer.dtype != tensor.dtype or buffer.numel() < tensor.numel():
            buffer = torch.empty(tensor.numel(), dtype=tensor.dtype, pin_memory=True)
            self._buffers[key] = buffer
        host = buffer[:tensor.numel()].view(tensor.shape)
        host.copy_(tensor, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(tensor.device))
        done.synchronize()
        return host


def read_device_bytes(tensor: torch.Tensor, out: torch.Tensor) -> None:
    """Read every byte of the CUDA ``tensor`` (16-byte vectors) and XOR them into ``out`` int64 [1]: the plain
    read of device memory that the counting pass is measured against (benchmarks/gpu_check.py)."""
    if tensor.device.type != "cuda" or not tensor.is_contiguous() or tensor.data_ptr() % 16:
        raise ValueError("read_device_bytes needs a contiguous, 16-byte aligned CUDA tensor")
    index = tensor.device.index if tensor.device.index is not None else torch.cuda.current_device()
    require_cuda_build(index)
    stream = torch.cuda.current_stream(tensor.device).cuda_stream
    load_extension().read_bytes_cuda(tensor.data_ptr(), tensor.numel() * tensor.element_size(),
                                     out.data_ptr(), index, stream)


def check_dtype(pre: torch.Tensor) -> None:
    """Refuse pre-activations of a type the pass does not read (float32, float16, bfloat16 only)."""
    if pre.dtype not in _DTYPE_CODES:
        raise TypeError(f"pre must be float32, float16 or bfloat16, got {pre.dtype}")


def check_threshold(threshold) -> float:
    """``threshold`` as a float; a clear error for a non-number or NaN."""
    try:
        value = float(threshold)
    except (TypeError, ValueError):
        raise TypeError(f"threshold must be a number, got {threshold!r}") from None
    if value != value:
        raise ValueError("threshold must not be NaN")
    return value


def _check_tensor(name, tensor, dtype, shape, device, optional=False):
    if tensor is None and optional:
        return
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != dtype:
        raise TypeError(f"{name} must be {dtype}, got {tensor.dtype}: convert it with .to({dtype})")
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(tensor.shape)}")
    if tensor.device != device:
        raise ValueError(f"{name} is on {tensor.device} but pre is on {device}: move it with .to({str(device)!r})")
    if not tensor.is_contiguous():
        raise ValueError(f"{name} must be contiguous: call .contiguous() on it")


def _check_inputs(pre, positions, counted, active, pos_active, bits, nan_count):
    if not isinstance(pre, torch.Tensor):
        raise TypeError(f"pre must be a torch.Tensor, got {type(pre).__name__}")
    check_dtype(pre)
    if pre.dim() not in (2, 3):
        raise ValueError(f"pre must be [B, S, F] or [N, F], got shape {tuple(pre.shape)}")
    if pre.device.type not in ("cpu", "cuda"):
        raise ValueError(f"pre must be on a CPU or CUDA device, got {pre.device}")
    if pre.shape[-1] > 0 and pre.stride(-1) != 1:
        raise ValueError("pre must be contiguous in its last (neuron) dimension: call .contiguous()")
    rows, num_neurons = tuple(pre.shape[:-1]), pre.shape[-1]
    if not isinstance(pos_active, torch.Tensor) or pos_active.dim() != 2 or pos_active.shape[0] < 1:
        raise ValueError("pos_active must be an int64 tensor [T, F] with T >= 1")
    device = pre.device
    _check_tensor("positions", positions, torch.int32, rows, device)
    _check_tensor("counted", counted, torch.bool, rows, device)
    _check_tensor("active", active, torch.int64, (num_neurons,), device)
    narrow = pos_active.dtype == torch.uint16 and device.type == "cpu"  # recent counts, drained by the caller
    _check_tensor("pos_active", pos_active, torch.uint16 if narrow else torch.int64,
                  (pos_active.shape[0], num_neurons), device)
    _check_tensor("bits", bits, torch.int64, rows + (words_for(num_neurons),), device, optional=True)
    _check_tensor("nan_count", nan_count, torch.int64, (1,), device, optional=True)


def count_activations_naive(pre, positions, counted, threshold, active, pos_active, bits=None, nan_count=None):
    """Slow, obvious torch version of ``count_activations`` (same arguments and effects): the reference."""
    num_neurons = pre.shape[-1]
    values = pre.reshape(-1, num_neurons).float()
    positions = positions.reshape(-1).long()
    counted = counted.reshape(-1)
    threshold = torch.tensor(float(threshold), dtype=torch.float32)
    on = values > threshold.to(values.device)
    for row in range(values.shape[0]):
        position = int(positions[row])
        if position < 0:
            continue
        if bool(counted[row]):
            active += on[row]
        if position < pos_active.shape[0]:
            pos_active[position] = (pos_active[position].long() + on[row]).to(pos_active.dtype)  # uint16 wraps
        if nan_count is not None:
            nan_count += torch.isnan(values[row]).sum()
    if bits is not None:
        on = on & (positions >= 0)[:, None]
        bits.copy_(pack_bits(on).reshape(bits.shape))
    return bits


def pack_bits(on: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor [..., F] into int64 words [..., ceil(F/64)]; bit j of word w is neuron 64w+j."""
    num_neurons = on.shape[-1]
    words = words_for(num_neurons)
    padded = torch.zeros(on.shape[:-1] + (words * BITS_PER_WORD,), dtype=torch.bool, device=on.device)
    padded[..., :num_neurons] = on
    weights = 2 ** torch.arange(8, device=on.device, dtype=torch.int32)
    eight = (padded.reshape(-1, words * 8, 8).to(torch.int32) * weights).sum(-1).to(torch.uint8)
    return eight.reshape(on.shape[:-1] + (words * 8,)).view(torch.int64)


def unpack_bits(bits: torch.Tensor, num_neurons: int) -> torch.Tensor:
    """Unpack int64 words [..., W] into a bool tensor [..., num_neurons] (inverse of ``pack_bits``)."""
    eight = bits.contiguous().view(torch.uint8)
    shifts = torch.arange(8, device=bits.device, dtype=torch.uint8)
    on = ((eight[..., None] >> shifts) & 1).bool()
    return on.reshape(bits.shape[:-1] + (-1,))[..., :num_neurons]
