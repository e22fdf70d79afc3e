"""Which torch device and dtype a run uses: device names made comparable, the GPU of a torchrun rank, and
the compute dtype `auto` means. Pure functions of their arguments (tests inject the CUDA facts)."""

from __future__ import annotations

import os
from typing import Mapping, Optional

import torch


def canonical_device(device, current_index: Optional[int] = None) -> torch.device:
    """``device`` with a CUDA index always filled in, so that equal devices compare equal.

    ``torch.device("cuda") != torch.device("cuda:0")`` in torch although tensors made on the former live
    on the latter; an index-less CUDA device becomes ``cuda:current_index`` (default: torch's current
    device, 0 when torch sees no GPU).
    """
    device = torch.device(device)
    if device.type != "cuda" or device.index is not None:
        return device
    if current_index is None:
        current_index = torch.cuda.current_device() if torch.cuda.is_available() else 0
    return torch.device("cuda", int(current_index))


def same_device(a, b) -> bool:
    """Whether two devices (names or torch.device) are the same device, ``cuda`` meaning the current one."""
    return canonical_device(a) == canonical_device(b)


def visible_device_count(environ: Mapping[str, str] = os.environ) -> Optional[int]:
    """How many GPUs CUDA_VISIBLE_DEVICES leaves visible, or None when it is unset (all are)."""
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    count = 0
    # CUDA stops at the first invalid entry: "-1" hides every later one
    for entry in (entry.strip() for entry in visible.split(",")):
        if not entry or entry.startswith("-"):
            break
        count += 1
    return count


def rank_device(local_rank: int, device_count: int, environ: Mapping[str, str] = os.environ) -> torch.device:
    """The GPU a torchrun rank should use: ``cuda:LOCAL_RANK``, or ``cuda:0`` when the launcher made a
    single GPU visible to each rank (CUDA_VISIBLE_DEVICES with one entry, as SLURM and Kubernetes do)."""
    if visible_device_count(environ) == 1:
        index = 0
    else:
        index = int(local_rank)
    if not 0 <= index < device_count:
        raise ValueError(f"LOCAL_RANK {local_rank} needs GPU {index} but {device_count} GPU(s) are visible "
                         f"(CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES', 'unset')}): start at most "
                         "one rank per GPU")
    return torch.device("cuda", index)


def resolve_dtype(name: str, device: torch.device, checkpoint_dtype: Optional[torch.dtype] = None,
                  bf16_supported: Optional[bool] = None) -> torch.dtype:
    """The compute dtype for ``--dtype name`` on ``device``; ``auto`` is float32 on the CPU and, on a GPU,
    float16 only for checkpoints stored in float16 (they were trained to fit its range), else bfloat16
    where the GPU supports it (bf16-trained families overflow in float16), else float32."""
    if name != "auto":
        return getattr(torch, name)
    if torch.device(device).type != "cuda":
        return torch.float32
    if checkpoint_dtype == torch.float16:
        return torch.float16
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_supported else torch.float32


def dtype_from_config(config: Mapping) -> Optional[torch.dtype]:
    """The dtype a checkpoint's config.json says its weights are stored in (``torch_dtype`` or ``dtype``)."""
    name = config.get("torch_dtype") or config.get("dtype")
    if isinstance(name, str):
        dtype = getattr(torch, name.replace("torch.", ""), None)
        if isinstance(dtype, torch.dtype):
            return dtype
    return None
