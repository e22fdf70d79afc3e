"""Shared fixture body: the demo's planted OPT recorded on stdlib text (a small store whose answers are known)."""
from fastneurons.config import RecordConfig
from fastneurons.demo.command import build_demo_model, frequent_tokens
from fastneurons.demo.stdlib_text import stdlib_text
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.recording.runner import record

SEQ_LEN = 64


def record_planted_store(folder, tokens: str = "12k"):
    """(counts path, model folder, PlantSpec): the planted OPT of `fastneurons demo`, two stdlib domains."""
    corpus = stdlib_text(folder / "corpus", max_bytes=200_000)
    triggers = frequent_tokens(corpus, gpt2_tokenizer(), count=12)
    spec = build_demo_model(folder / "model", triggers, SEQ_LEN, 0)
    counts = folder / "counts.h5"
    record(RecordConfig(model=str(folder / "model"), corpus=[str(p) for p in corpus], out=str(counts), tokens=tokens,
                        seq_len=SEQ_LEN, full_length=True, threads=1, progress=False), log=lambda *a: None)
    return counts, folder / "model", spec
