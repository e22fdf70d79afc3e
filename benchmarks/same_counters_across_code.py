"""Record small test models with two versions of the code and compare the stores' counters exactly.

A refactor of the recording path must not move a single count. Usage (each tree's ``src`` on the path
in turn; the checkpoints are written once and shared, so both trees see the same weights):

    PYTHONPATH=/path/to/old/src python benchmarks/same_counters_across_code.py record /tmp/cmp old
    PYTHONPATH=src python benchmarks/same_counters_across_code.py record /tmp/cmp new
    PYTHONPATH=src python benchmarks/same_counters_across_code.py compare /tmp/cmp old new

``compare`` checks every counter (dense, per-domain, n-gram) of every case with
``fastneurons.bench.compare.store_differences`` and prints one line per case.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

# (case, model family, RecordConfig overrides): padding and full length, BOS counted, gated product,
# no positions, a non-zero threshold, commits after every unit and a single final one.
CASES = [
    ("opt-pre-ln", "opt", dict(ngram_layers=["0", "1"])),
    ("opt-post-ln-full-bos", "opt_post", dict(full_length=True, seq_len=32, batch_size=1, unit_batches=3,
                                              count_bos=True, ngram_layers=["1"], orders=[1, 3])),
    ("llama-gated-product", "llama", dict(gated_product=True, threshold=0.004, ngram_layers=["0", "2"])),
    ("gpt2-no-positions", "gpt2", dict(positions=False, threshold=0.1, commit_seconds=60, orders=[2])),
]

TEXT = ("def add(a, b):\n    return a + b\n\nclass Point:\n    '''A point in the plane.'''\n"
        "    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n") * 6
PROSE = ("The quick brown fox jumps over the lazy dog. Neurons fire after n-grams; "
         "some neurons never fire at all, and some fire only at certain positions. ") * 8


def _model(family):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    if family.startswith("opt"):
        pre_ln = family == "opt"
        model = OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=32, num_hidden_layers=3, ffn_dim=200,
                                         num_attention_heads=4, max_position_embeddings=128,
                                         do_layer_norm_before=pre_ln, word_embed_proj_dim=32 if pre_ln else 16,
                                         bos_token_id=50256, eos_token_id=50256, pad_token_id=1))
        with torch.no_grad():  # some neurons rare or dead, like trained OPTs
            for layer in model.model.decoder.layers:
                layer.fc1.bias.add_(torch.linspace(-0.6, 0.3, 200))
        return model
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=50257, hidden_size=32, num_hidden_layers=3,
                                            num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
                                            max_position_embeddings=128, bos_token_id=50256, eos_token_id=50256))
    return GPT2LMHeadModel(GPT2Config(vocab_size=50257, n_embd=32, n_layer=3, n_head=4, n_positions=128))


def _inputs(root: Path):
    """Checkpoints and corpus, written once under ``root`` (both code versions read the same files)."""
    from fastneurons.models.loading import gpt2_tokenizer

    (root / "corpus").mkdir(parents=True, exist_ok=True)
    (root / "corpus" / "code.txt").write_text(TEXT)
    with open(root / "corpus" / "prose.jsonl", "w") as f:
        for i in range(6):
            f.write(json.dumps({"text": PROSE[: 60 + 40 * i]}) + "\n")
    for family in sorted({family for _, family, _ in CASES}):
        path = root / "models" / family
        if not path.exists():
            _model(family).eval().save_pretrained(path)
            gpt2_tokenizer().save_pretrained(path)
    return [str(root / "corpus" / "code.txt"), "prose=" + str(root / "corpus" / "prose.jsonl")]


def record_all(root: Path, name: str) -> None:
    from fastneurons.config import RecordConfig
    from fastneurons.recording.runner import record

    corpus = _inputs(root)
    for case, family, overrides in CASES:
        values = dict(model=str(root / "models" / family), corpus=corpus, out=str(root / name / f"{case}.h5"),
                      seq_len=48, batch_size=3, unit_batches=2, progress=False, commit_seconds=0, threads=1)
        values.update(overrides)
        Path(values["out"]).parent.mkdir(parents=True, exist_ok=True)
        record(RecordConfig(**values), log=lambda *args: None)
        print(f"{name}: recorded {case}")


def compare_all(root: Path, a: str, b: str) -> int:
    from fastneurons.bench.compare import store_differences

    failures = 0
    for case, _, _ in CASES:
        differences = store_differences(root / a / f"{case}.h5", root / b / f"{case}.h5")
        failures += bool(differences)
        print(f"{case}: {'identical counters' if not differences else 'DIFFERENT: ' + ', '.join(differences[:5])}")
    return 1 if failures else 0


if __name__ == "__main__":
    command, root, *names = sys.argv[1:]
    if command == "record":
        record_all(Path(root), names[0])
    else:
        sys.exit(compare_all(Path(root), *names))
