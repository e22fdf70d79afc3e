"""One dataclass per command: the single source of its CLI flags, Python arguments and stored metadata.

Each field's ``metadata`` carries its help text (and optionally ``flag`` / ``nargs``); ``cli.py``
builds argparse from these fields, the Python API takes the same names, and ``to_metadata()`` is
what the store records. Validation lives here; no I/O.
"""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Optional

from fastneurons.numbers import require_finite

_SIZE_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
_BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_count(text) -> int:
    """'5M' -> 5_000_000, '100k' -> 100_000, '2.5M' -> 2_500_000 (decimal units)."""
    return _parse_with_units(text, _SIZE_UNITS, "a count like 5M or 100k")


def parse_bytes(text) -> int:
    """'4G' / '4GiB' -> 4 * 2**30 bytes (binary units)."""
    if isinstance(text, str):
        text = re.sub(r"(?i)i?b$", "", text.strip())
    return _parse_with_units(text, _BYTE_UNITS, "a size like 512M or 4G")


def _parse_with_units(text, units, what) -> int:
    """Decimal arithmetic, so '4.1M' is 4_100_000 exactly (in floats it is 4099999.9999999995)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text):
            raise ValueError(f"{text!r} must be a positive whole number ({what})")
        value = Decimal(text)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]?)\s*", str(text))
        if not match or match.group(2).upper() not in units:
            raise ValueError(f"cannot read {text!r}: expected {what}")
        value = Decimal(match.group(1)) * units[match.group(2).upper()]
    if value <= 0 or value != value.to_integral_value():
        raise ValueError(f"{text!r} must be a positive whole number ({what})")
    return int(value)


def parse_shard(text) -> tuple[int, int]:
    """'1/4' -> (1, 4): this process takes units 1, 5, 9, ... of 4 shards."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match:
        raise ValueError(f"--shard {text!r}: expected i/N, e.g. 0/4")
    index, total = int(match.group(1)), int(match.group(2))
    if total < 1 or not 0 <= index < total:
        raise ValueError(f"--shard {text!r}: need 0 <= i < N")
    return index, total


def _opt(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


def _list(help, **extra):
    return field(default=None, metadata={"help": help, "nargs": "+", **extra})


@dataclass
class RecordConfig:
    """`fastneurons record`: stream a model over a corpus and store SPEC §2 counts."""

    model: str = field(metadata={"help": "hub id (local cache), checkpoint directory, .gguf file, 'smollm2' or 'gemma3-270m'"})
    corpus: list = field(metadata={"help": "input files (.txt, .jsonl with 'text', .jsonl of id lists); "
                                           "each file is a domain; LABEL=PATH names it", "nargs": "+"})
    out: str = field(metadata={"help": "output HDF5 counts file"})
    tokens: Optional[str] = _opt(None, "token budget over all domains, e.g. 5M (default: whole corpus)")
    seq_len: Optional[int] = _opt(None, "tokens per sequence incl. BOS (default: model max positions, at most 2048)")
    full_length: bool = _opt(False, "every sequence exactly --seq-len tokens (needed for positional analysis)")
    batch_size: int = _opt(8, "sequences per micro-batch (part of the exactness contract: keep it fixed when resuming/merging)")
    unit_batches: int = _opt(4, "micro-batches per unit (the resumable/shardable atom)")
    commit_seconds: float = _opt(60.0, "commit at most this often (seconds; 0 = after every unit), and less often "
                                       "when commits are slow (at most a twentieth of the time); a kill loses what came after "
                                       "the last commit")
    layers: Optional[list] = _list("layers to record (default: all)", type=int)
    ngram_layers: Optional[list] = _list("layers for n-gram tables (default: first half of the model; 'none' for no tables)")
    orders: list = field(default_factory=lambda: [1, 2, 3], metadata={"help": "n-gram orders", "nargs": "+", "type": int})
    ngram_memory: str = _opt("2G", "RAM for in-memory n-gram tables before sorted runs spill to disk")
    ngrams: str = _opt("bounded", "n-gram state: bounded (per-neuron summaries that do not grow with tokens + an "
                                  "exact second pass over the candidates where needed; docs/bounded-ngrams.md) or "
                                  "exact (full tables: grow with tokens; the reference, for small runs)")
    summary_capacity: int = _opt(2048, "bounded mode: n-grams kept per (layer, order, neuron); above the last "
                                       "histogram edge and every m_k for exact results")
    unigram_capacity: Optional[int] = _opt(None, "bounded mode: tokens kept per neuron in the k = 1 summaries "
                                                 "(default: --summary-capacity); the vocabulary bounds them, and "
                                                 "a neuron firing on a large share of tokens needs more to have "
                                                 "its token coverage certified (docs/bounded-ngrams.md)")
    summary_kernels: str = _opt("auto", "bounded pass 1's per-event work: device (torch ops where the bits are, "
                                        "no events cross to the host), host (numba) or auto (device when "
                                        "recording on a GPU); the summaries are the same either way")
    compress_runs: bool = _opt(False, "gzip the intermediate n-gram runs on disk: about 13x less temporary "
                                      "disk for long recordings, slower commits (the final store is always compressed)")
    threshold: float = _opt(0.0, "a neuron is active iff its pre-activation > threshold")
    gated_product: bool = _opt(False, "gated FFNs: threshold |act(gate)*up| instead of gate_proj(x)")
    count_bos: bool = _opt(False, "count the BOS token (position 0) in tokens/active (SPEC excludes it)")
    positions: bool = _opt(True, "record pos_active [T, F] per layer (--no-positions to save memory)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N")
    dtype: str = _opt("auto", "model dtype: auto (CPU: float32; GPU: float16 for float16 checkpoints, else bfloat16 where supported), float32, float16, bfloat16")
    gpu_memory: Optional[str] = _opt(None, "GPU memory budget for weights, e.g. 4G; layers stream when the model does not fit")
    block_tokens: Optional[str] = _opt(None, "layer-major blocks of about this many tokens, e.g. 1M: each layer runs over "
                                             "the whole block before the next, so streamed weights cross once per block "
                                             "(default: as many as fit the GPU budget when layers stream, else off)")
    weights: str = _opt("auto", "eager (load the whole checkpoint), lazy (safetensors read layer by layer from an mmap: "
                                "host RAM holds a few layers) or auto (lazy when the checkpoint exceeds half the free RAM)")
    resume: bool = _opt(False, "continue an interrupted run in --out (same settings required; starts it if missing)")
    rerecord_lost_runs: bool = _opt(False, "implies --resume: when n-gram run files of --out are missing or damaged, "
                                           "record the n-grams of the units they held again (dense counts are kept)")
    shard: Optional[str] = _opt(None, "i/N: record only units i, i+N, ... (merge the shards afterwards)")
    tokenizer: Optional[str] = _opt(None, "tokenizer to use instead of the checkpoint's own")
    bos_id: Optional[int] = _opt(None, "BOS id prepended to each sequence (default: the tokenizer's)")
    threads: Optional[int] = _opt(None, "CPU threads for torch and the kernels (default: all)")
    progress: bool = _opt(True, "show a progress bar")

    def validate(self) -> "RecordConfig":
        """Check every setting that can be checked without I/O; returns self."""
        if not self.corpus:
            raise ValueError("no corpus files given")
        require_finite(self)
        if self.tokens is not None:
            parse_count(self.tokens)
        parse_bytes(self.ngram_memory)
        if self.gpu_memory is not None:
            parse_bytes(self.gpu_memory)
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError("--seq-len must be at least 2 (BOS + one token)")
        for name in ("batch_size", "unit_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.ngrams not in ("exact", "bounded"):
            raise ValueError(f"--ngrams {self.ngrams!r}: choose exact or bounded")
        if self.summary_kernels not in ("auto", "device", "host"):
            raise ValueError(f"--summary-kernels {self.summary_kernels!r}: choose auto, device or host")
        if self.summary_capacity < 1:
            raise ValueError("--summary-capacity must be at least 1")
        if self.unigram_capacity is not None and self.unigram_capacity < 1:
            raise ValueError("--unigram-capacity must be at least 1")
        if self.commit_seconds < 0:
            raise ValueError("--commit-seconds must be >= 0")
        if not set(self.orders) <= {1, 2, 3} or not self.orders:
            raise ValueError("--orders must be a subset of 1 2 3")
        self.orders = sorted(set(int(k) for k in self.orders))
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError("--layers must be non-negative layer indices")
        if self.ngram_layers is not None:
            names = [str(x).strip().lower() for x in self.ngram_layers]
            if names != ["none"] and not (names and all(x.isdigit() for x in names)):
                raise ValueError(f"--ngram-layers {' '.join(map(str, self.ngram_layers))}: give layer "
                                 "indices (e.g. 0 1 2) or the single word none")
        if self.shard is not None:
            parse_shard(self.shard)
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32, float16 or bfloat16")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")
        if self.block_tokens is not None:
            parse_count(self.block_tokens)
        if self.weights not in ("auto", "eager", "lazy"):
            raise ValueError(f"--weights {self.weights!r}: choose auto, eager or lazy")
        self.resume = self.resume or self.rerecord_lost_runs  # it continues a store
        return self

    @property
    def max_tokens(self) -> Optional[int]:
        return None if self.tokens is None else parse_count(self.tokens)

    @property
    def shard_index(self) -> tuple[int, int]:
        return (0, 1) if self.shard is None else parse_shard(self.shard)

    def summary_capacities(self) -> dict:
        """{k: summary capacity} of the bounded mode's orders."""
        return {k: self.unigram_capacity if k == 1 and self.unigram_capacity else self.summary_capacity
                for k in self.orders}

    def ngram_layer_list(self, num_layers: int) -> list:
        """The n-gram layers asked for, default the first half of the model's layers."""
        if self.ngram_layers is None:
            return list(range((num_layers + 1) // 2))
        if [str(x).lower() for x in self.ngram_layers] == ["none"]:
            return []
        return sorted(set(int(x) for x in self.ngram_layers))

    def to_metadata(self) -> dict:
        """Settings as JSON-ready values, written into the store."""
        return dataclasses.asdict(self)

    # Settings that change the counts: resume and merge require them to be equal.
    COUNT_SETTINGS = ("seq_len", "full_length", "batch_size", "unit_batches", "threshold",
                      "gated_product", "count_bos", "orders", "positions", "ngrams", "summary_capacity",
                      "unigram_capacity")


@dataclass
class SecondPassConfig:
    """`fastneurons second-pass`: count a bounded store's candidate pairs exactly (pass 2).

    Runs the recorded model again over the units the store holds (after `merge` for sharded
    recordings); `record --ngrams bounded` runs it itself when it is not sharded."""

    store: str = field(metadata={"help": "a finished bounded counts file", "positional": True})
    max_coverage: int = _opt(50, "detector candidates: the largest m_k the analyses will use")
    coverage: float = _opt(0.95, "coverage share the analyses will use")
    cover_rate: float = _opt(0.95, "cover rate the analyses will use")
    model: Optional[str] = _opt(None, "checkpoint (default: the model recorded in the store)")
    device: str = _opt("auto", "auto, cpu, cuda or cuda:N (same as the first pass for identical bits)")
    threads: Optional[int] = _opt(None, "CPU threads (same as the first pass for identical bits)")
    commit_seconds: float = _opt(60.0, "save pass 2's progress at most this often (a rerun after a kill continues from it)")
    progress: bool = _opt(True, "show a progress bar")

    def validate(self) -> "SecondPassConfig":
        if self.commit_seconds < 0:
            raise ValueError("--commit-seconds must be >= 0")
        if self.max_coverage < 1:
            raise ValueError("--max-coverage must be at least 1")
        for name in ("coverage", "cover_rate"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1]")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"--device {self.device!r}: choose auto, cpu, cuda or cuda:N")
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")
        return self


@dataclass
class PlanConfig:
    """`fastneurons plan`: what recording a model costs, from its config alone (no weights are read)."""

    model: str = field(metadata={"help": "hub id (local cache), checkpoint directory (config.json is enough), "
                                         ".gguf file, or 'smollm2'"})
    tokens: str = _opt("100M", "tokens to record")
    gpu: Optional[str] = _opt(None, "a GPU of the table (H100-SXM, H100-PCIe, H200, A100-80G, RTX-4090); "
                                    "default: this machine's CPU, measured in about a second")
    seq_len: Optional[int] = _opt(None, "tokens per sequence (default: model max positions, at most 2048)")
    batch_size: int = _opt(8, "sequences per micro-batch")
    unit_batches: int = _opt(4, "micro-batches per unit")
    dtype: str = _opt("auto", "auto (float16 on a GPU, float32 on the CPU), float32, float16, bfloat16")
    layers: Optional[list] = _list("layers to record (default: all); only layers up to the last run", type=int)
    weights: str = _opt("lazy", "lazy or eager: how the host holds the weights (decides peak host memory)")
    positions: bool = _opt(True, "count pos_active [T, F] per layer (its counters take device memory)")

    def validate(self) -> "PlanConfig":
        try:
            parse_count(self.tokens)
        except ValueError as error:
            raise ValueError(f"--tokens {error}") from None
        if self.dtype not in ("auto", "float32", "float16", "bfloat16"):
            raise ValueError(f"--dtype {self.dtype!r}: choose auto, float32, float16 or bfloat16")
        if self.weights not in ("eager", "lazy"):
            raise ValueError(f"--weights {self.weights!r}: choose eager or lazy")
        if self.seq_len is not None and self.seq_len < 2:
            raise ValueError("--seq-len must be at least 2 (BOS + one token)")
        for name in ("batch_size", "unit_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
        if self.layers is not None and (not self.layers or min(self.layers) < 0):
            raise ValueError("--layers must be non-negative layer indices")
        return self


@dataclass
class MergeConfig:
    """`fastneurons merge`: add compatible counts stores into one."""

    inputs: list = field(metadata={"help": "counts files to add", "nargs": "+", "positional": True})
    out: str = field(metadata={"help": "output counts file", "flag": "-o"})
    ngram_memory: str = _opt("2G", "RAM for merging n-gram tables")
    overwrite: bool = _opt(False, "replace an existing -o file (never one of the inputs)")

    def validate(self) -> "MergeConfig":
        if len(self.inputs) < 2:
            raise ValueError("merge needs at least two input files")
        parse_bytes(self.ngram_memory)
        return self


@dataclass
class AnalyzeConfig:
    """`fastneurons analyze`: SPEC §3 findings, figures and an HTML report from counts stores.

    The analysis parameters themselves are the fields of ``analysis.AnalysisSettings`` (flattened
    into this command's flags by the CLI, passed as ``settings=`` from Python).
    """

    counts: list = field(metadata={"help": "counts files (several give cross-size plots)", "nargs": "+",
                                   "positional": True})
    out: str = _opt("report", "output folder for results.json, CSV tables, figures and report.html")
    model: Optional[str] = _opt(None, "checkpoint for suppression (default: the model recorded in the store)")
    suppression: bool = _opt(True, "compute suppression (loads the model's fc2/lm_head weights)")
    weights: str = _opt("auto", "how suppression reads the checkpoint: eager (load it whole), lazy (read only the "
                                "down projections and the unembedding from safetensors) or auto (lazy when the "
                                "checkpoint exceeds half the free RAM; GGUF: eager)")
    per_neuron: bool = _opt(False, "include per-neuron arrays in results.json (large for big models)")
    formats: list = field(default_factory=lambda: ["png", "svg"],
                          metadata={"help": "figure formats", "nargs": "+"})
    progress: bool = _opt(True, "show progress bars (analyses per layer, figures)")
    settings: Optional[object] = field(default=None, metadata={"nested": "AnalysisSettings"})

    def validate(self) -> "AnalyzeConfig":
        if not self.counts:
            raise ValueError("give at least one counts file")
        if self.weights not in ("auto", "eager", "lazy"):
            raise ValueError(f"--weights {self.weights!r}: choose auto, eager or lazy")
        bad = sorted(set(self.formats) - {"png", "svg", "pdf"})
        if bad:
            raise ValueError(f"--formats {bad}: choose from png, svg, pdf")
        if self.settings is not None:
            self.settings.validate()
        return self


@dataclass
class InfoConfig:
    """`fastneurons info`: this installation (version, backends, threads, GPUs), or what stores hold."""

    stores: list = field(default_factory=list, metadata={
        "help": "counts files to describe (state, tokens, model, definition, layers, domains); "
                "none: describe this installation", "nargs": "*", "positional": True})

    def validate(self) -> "InfoConfig":
        return self


BENCH_SECTIONS = ("kernel", "ngrams", "end_to_end", "scaling", "smollm2", "offload")


@dataclass
class BenchConfig:
    """`python -m fastneurons.bench` (= `fastneurons bench`): fastneurons against the plain way, measured."""

    quick: bool = _opt(False, "tiny sizes for a CI smoke run (about a minute)")
    device: str = _opt("cpu", "cpu or cuda[:N] (GPU figures are unverified without one)")
    model_config: Optional[str] = _opt(None, "OPT size whose real config (random weights) is recorded end to end "
                                             "(default 125m; tiny with --quick)")
    tokens: Optional[int] = _opt(None, "tokens per end-to-end run (default 2048; 512 with --quick)")
    seq_len: Optional[int] = _opt(None, "sequence length (default 512; 64 with --quick)")
    batch_size: int = _opt(2, "sequences per micro-batch")
    repeats: Optional[int] = _opt(None, "interleaved rounds per measurement (default 3; 1 with --quick)")
    densities: Optional[list] = _list("activation densities of the OPT runs: random, sparse (default: both)")
    smollm2_tokens: int = _opt(1024, "tokens for the SmolLM2 run")
    scaling_factors: list = field(default_factory=lambda: [1, 4, 16],
                                  metadata={"help": "token multiples of the scaling runs", "nargs": "+", "type": int})
    skip: list = field(default_factory=list, metadata={"help": f"sections to leave out: {', '.join(BENCH_SECTIONS)}",
                                                       "nargs": "+"})
    threads: Optional[int] = _opt(None, "CPU threads (default: all cores)")
    bare_in_workers: bool = _opt(False, "each record and plain-way worker also times a bare forward of its own "
                                        "model after each run (per-process speed differences cancel in that ratio)")
    bare_beside: bool = _opt(False, "each record worker also runs a bare forward of every micro-batch right beside "
                                    "the counted one, timed apart (the host's drift within a run cancels)")
    gpu_memory: str = _opt("4G", "GPU weight budget of the offloaded run (cuda only)")
    offload_config: str = _opt("6.7b", "OPT size recorded offloaded vs in memory (cuda only)")
    json: str = _opt("bench-results.json", "where to write all results")
    work_dir: Optional[str] = _opt(None, "folder for models and stores (default: a temporary one)")

    def validate(self) -> "BenchConfig":
        """Fill the defaults that depend on --quick; refuse unknown sections and uneven token counts."""
        quick = self.quick
        defaults = {"model_config": "tiny" if quick else "125m", "tokens": 512 if quick else 2048,
                    "seq_len": 64 if quick else 512, "repeats": 1 if quick else 3}
        for name, value in defaults.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        unknown = sorted(set(self.skip) - set(BENCH_SECTIONS))
        if unknown:
            raise ValueError(f"--skip {unknown}: choose from {', '.join(BENCH_SECTIONS)}")
        if quick and "smollm2" not in self.skip:
            self.skip = [*self.skip, "smollm2"]  # decoding the GGUF alone takes ~15 s per worker
        if self.tokens % (2 * self.seq_len):
            raise ValueError(f"--tokens {self.tokens} must be a multiple of 2 x --seq-len ({2 * self.seq_len}): "
                             "the corpus has two domains of full-length sequences")
        return self


@dataclass
class DemoConfig:
    """`fastneurons demo`: record + analyze + report on an embedded default that downloads nothing.

    Without --model it plants known neurons in a real OPTForCausalLM (docs/planted.md) and checks
    that the analyses find exactly them; with --model it profiles that checkpoint instead.
    """

    out: str = _opt("demo", "output folder (corpus, model, counts.h5, report/)")
    model: Optional[str] = _opt(None, "profile this checkpoint instead of the planted OPT")
    tokens: str = _opt("300k", "token budget")
    seq_len: int = _opt(256, "tokens per (full-length) sequence")
    batch_size: int = _opt(8, "sequences per micro-batch")
    corpus_bytes: str = _opt("4M", "bytes of Python standard library text per domain")
    seed: int = _opt(0, "seed of the planted model")
    threads: Optional[int] = _opt(None, "CPU threads (default: all)")
    progress: bool = _opt(True, "show a progress bar")

    def validate(self) -> "DemoConfig":
        if self.threads is not None and self.threads < 1:
            raise ValueError("--threads must be at least 1")
        parse_count(self.tokens)
        parse_bytes(self.corpus_bytes)
        if self.seq_len < 64:
            raise ValueError("--seq-len must be at least 64 for the positional neurons (4 x min-run)")
        return self


@dataclass
class ShowConfig:
    """`fastneurons show`: everything the analyses say about one neuron (analysis.neuron.neuron_profile).

    The analysis parameters are those of ``analysis.AnalysisSettings``, as for `analyze`.
    """

    store: str = field(metadata={"help": "counts file", "positional": True})
    layer: int = field(metadata={"help": "layer index", "positional": True})
    neuron: int = field(metadata={"help": "neuron index within the layer", "positional": True})
    model: Optional[str] = _opt(None, "checkpoint for the top promoted/suppressed tokens (default: none; "
                                      "'recorded' loads the model recorded in the store)")
    top: int = _opt(10, "n-grams listed per order")
    json: bool = _opt(False, "print the profile as JSON instead of text")
    settings: Optional[object] = field(default=None, metadata={"nested": "AnalysisSettings"})

    def validate(self) -> "ShowConfig":
        if self.layer < 0 or self.neuron < 0:
            raise ValueError("layer and neuron must be >= 0")
        if self.top < 1:
            raise ValueError("--top must be at least 1")
        if self.settings is not None:
            self.settings.validate()
        return self


@dataclass
class ExportConfig:
    """`fastneurons export`: dense counters as files other tools read (lape, powerinfer, npz; docs/export.md)."""

    store: str = field(metadata={"help": "counts file", "positional": True})
    out: str = field(metadata={"help": "output folder (created)", "positional": True})
    format: str = _opt("npz", "lape: one activation file per domain for LAPE's identify.py; powerinfer: "
                              "activation_<layer>.pt counts; npz: every dense counter with names and metadata")

    def validate(self) -> "ExportConfig":
        if self.format not in ("lape", "powerinfer", "npz"):
            raise ValueError(f"--format {self.format!r}: choose lape, powerinfer or npz")
        return self


@dataclass
class LapeConfig:
    """`fastneurons lape`: domain-specific neurons by LAPE's rule (Tang et al. 2024) on per-domain counts."""

    store: str = field(metadata={"help": "counts file with at least two domains", "positional": True})
    top_rate: float = _opt(0.05, "share of all neurons kept by lowest entropy across domains")
    filter_rate: float = _opt(0.95, "a neuron needs some domain's activation probability above this quantile")
    activation_bar_ratio: float = _opt(0.95, "specific to the domains whose probability is above this quantile")
    out: Optional[str] = _opt(None, "also write the selection as JSON here")

    def validate(self) -> "LapeConfig":
        for name in ("top_rate", "filter_rate", "activation_bar_ratio"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"--{name.replace('_', '-')} must be in (0, 1]")
        return self
