"""`fastneurons plan`: the cost model of docs/design.md ("Big models"), from a config alone.

OPT-66b over 100M tokens on an H100 SXM gives the design doc's arithmetic (2·P·T, 130.5 GB a pass,
blocks and passes); the runner picks its block with the same rule; bad input is one line, exit 2.
"""
import json
import math
from types import SimpleNamespace

import pytest

from fastneurons import plan
from fastneurons.cli import main
from fastneurons.config import PlanConfig, RecordConfig
from fastneurons.models.loading import load_config

OPT_66B = {"architectures": ["OPTForCausalLM"], "model_type": "opt", "hidden_size": 9216, "num_hidden_layers": 64,
           "ffn_dim": 36864, "num_attention_heads": 72, "vocab_size": 50272, "max_position_embeddings": 2048,
           "word_embed_proj_dim": 9216, "do_layer_norm_before": True, "activation_function": "relu",
           "bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}   # facebook/opt-66b's config.json


@pytest.fixture(scope="module")
def opt66b(tmp_path_factory):
    path = tmp_path_factory.mktemp("opt-66b")
    (path / "config.json").write_text(json.dumps(OPT_66B))   # a config alone: no weights
    return path, plan.model_shape(load_config(path))


def test_opt66b_shape_is_the_papers(opt66b):
    _, shape = opt66b
    d, f = 9216, 36864
    per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d   # q k v out (+ biases), fc1 fc2 (+ biases), 2 LNs
    assert shape.num_layers == 64 and shape.layer_params == (per_layer,) * 64
    assert abs(sum(shape.layer_params) - 6.52e10) / 6.52e10 < 0.002   # P = 6.52e10 (scaleout.md)


def test_opt66b_100m_tokens_on_h100_sxm(opt66b):
    _, shape = opt66b
    tokens = 100_000_000
    e = plan.estimate(shape, tokens, seq_len=2048, batch_size=8, unit_batches=4, dtype_bytes=2,
                      gpu=plan.GPUS["H100-SXM"], positions=False)
    params = sum(shape.layer_params)
    attention = 2 * 9216 * 2048 * 64 * tokens
    assert e.flops == 2 * params * tokens + attention
    assert abs(2 * params * tokens - 1.30e19) / 1.30e19 < 0.005 and 0.017 < attention / (2 * params * tokens) < 0.02
    assert e.weight_bytes_per_pass == 2 * params and abs(e.weight_bytes_per_pass - 130.5e9) / 130.5e9 < 0.002
    assert e.mode == "stream"
    unit = 8 * 2048 * 4
    assert e.block_tokens == (plan.MAX_BLOCK_TOKENS // unit) * unit == 1_048_576   # 1M tokens: 16 units
    assert e.passes == math.ceil(tokens / e.block_tokens) == 96
    assert e.compute_s == pytest.approx(e.flops / (989e12 * plan.MFU))
    assert e.compute_s / 3600 == pytest.approx(6.79, abs=0.01)          # 6.66 h of 2·P·T + attention
    assert e.transfer_s == pytest.approx((shape.outside_params * 2 + 96 * 2 * params) / 50e9)
    assert 240 < e.transfer_s < 260 and e.total_s == e.compute_s       # transfer hides behind compute
    with_positions = plan.estimate(shape, tokens, seq_len=2048, batch_size=8, unit_batches=4, dtype_bytes=2,
                                   gpu=plan.GPUS["H100-SXM"])
    # int64 pos_active of 64 layers (38.7 GB) on the device leaves room for smaller blocks
    assert plan.counter_bytes(shape, 64, 2048) == 8 * 64 * 36864 * 2049
    assert with_positions.block_tokens < e.block_tokens and with_positions.passes > e.passes
    assert with_positions.gpu_peak_bytes <= plan.COMFORT * 80e9 + 1


def test_small_models_are_resident(tmp_path):
    config = dict(OPT_66B, hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12)
    (tmp_path / "config.json").write_text(json.dumps(config))
    shape = plan.model_shape(load_config(tmp_path))
    e = plan.estimate(shape, 10**8, seq_len=2048, batch_size=8, unit_batches=4, dtype_bytes=2,
                      gpu=plan.GPUS["A100-80G"])
    assert e.mode == "resident" and e.passes == 1


def test_the_runner_chooses_its_block_with_the_same_rule():
    config = RecordConfig(model="m", corpus=["c"], out="o.h5", batch_size=2, unit_batches=3)
    resident = SimpleNamespace(mode="resident")
    assert plan.choose_block_units(config, None, resident, 16, log=lambda *a: None) is None
    config.block_tokens = "200"
    assert plan.choose_block_units(config, None, resident, 16, log=lambda *a: None) == 2   # 96 tokens a unit
    config.block_tokens = "10"
    assert plan.choose_block_units(config, None, resident, 16, log=lambda *a: None) == 1   # at least one unit
    free = 10**10
    tokens = plan.block_tokens_for(free, hidden=9216, seq_len=2048, micro_tokens=16384, neurons=36864, dtype_bytes=2)
    assert tokens == (free - 2 * 16384 * (36864 + 4 * 9216) * 2) // (9216 * 2 + 2048)


def test_plan_command_prints_the_estimate(opt66b, capsys):
    path, _ = opt66b
    assert main(["plan", "--model", str(path), "--tokens", "100M", "--gpu", "H100-SXM", "--no-positions"]) == 0
    out = capsys.readouterr().out
    assert "FLOPs             1.33e+19" in out and "130.5 GB" in out and "96 passes" in out
    assert "predicted time    6.79 h" in out


def test_plan_bad_input_is_one_line(opt66b, capsys, tmp_path):
    path, _ = opt66b
    assert main(["plan", "--model", str(path), "--gpu", "TPU-v9"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "H100-SXM" in err
    assert main(["plan", "--model", str(tmp_path / "nothing")]) == 2
    with pytest.raises(ValueError, match="tokens"):
        PlanConfig(model="m", tokens="0").validate()


def test_cpu_estimate_uses_a_measured_rate(tmp_path):
    config = dict(OPT_66B, hidden_size=64, num_hidden_layers=2, ffn_dim=256, num_attention_heads=4)
    (tmp_path / "config.json").write_text(json.dumps(config))
    model_config = load_config(tmp_path)
    rate = plan.measure_cpu_flops_per_s(model_config, seq_len=32, batch_size=2, seconds=0.1)
    e = plan.estimate(plan.model_shape(model_config), 10_000, seq_len=32, batch_size=2, unit_batches=1,
                      dtype_bytes=4, flops_per_s=rate)
    assert rate > 0 and e.mode == "cpu" and e.compute_s == pytest.approx(e.flops / rate) and e.transfer_s == 0
