"""The cost model against a real `record` on this CPU: a small random OPT, predicted vs measured seconds.

    PYTHONPATH=src python benchmarks/bench_plan.py [--tokens 40k] [--threads 1]

Prints `fastneurons plan`'s predicted compute time and the measured wall time of `record` itself
(model already saved; store writing, counting and n-gram tables included). docs/design.md quotes it.
"""
import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from transformers import OPTConfig, OPTForCausalLM

from fastneurons.config import PlanConfig, RecordConfig, parse_count
from fastneurons.models.loading import gpt2_tokenizer
from fastneurons.plan import plan_for
from fastneurons.recording.runner import record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="40k")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=4)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        config = OPTConfig(vocab_size=50272, hidden_size=args.hidden, num_hidden_layers=args.layers,
                           ffn_dim=4 * args.hidden, num_attention_heads=8, max_position_embeddings=2048,
                           word_embed_proj_dim=args.hidden, bos_token_id=2, eos_token_id=2, pad_token_id=1)
        OPTForCausalLM(config).eval().save_pretrained(root / "opt")
        gpt2_tokenizer().save_pretrained(root / "opt")
        words = " ".join(f"word{i % 977} and {i % 13}" for i in range(parse_count(args.tokens)))
        (root / "text.txt").write_text(words)
        seq_len, batch = 256, 8
        _, estimate, _ = plan_for(PlanConfig(model=str(root / "opt"), tokens=args.tokens, seq_len=seq_len,
                                             batch_size=batch).validate())
        run = RecordConfig(model=str(root / "opt"), corpus=[str(root / "text.txt")], out=str(root / "c.h5"),
                           tokens=args.tokens, seq_len=seq_len, full_length=True, batch_size=batch,
                           threads=args.threads, progress=False)
        start = time.perf_counter()
        record(run, log=lambda *a: None)
        measured = time.perf_counter() - start
    print(json.dumps({"model": f"OPT d={args.hidden} L={args.layers}", "tokens": estimate.tokens,
                      "threads": args.threads, "predicted_s": round(estimate.total_s, 2),
                      "measured_record_s": round(measured, 2), "ratio": round(measured / estimate.total_s, 2)}))


if __name__ == "__main__":
    main()
