"""`python -m fastneurons.bench`: the --quick smoke run, its JSON, its identical-counts check; the plain way's
fast paths against its generic ones; the report's target verdicts. No timing is asserted."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import OPTConfig, OPTForCausalLM

from fastneurons.bench import plain_way
from fastneurons.bench.report import check_target, derive_end_to_end
from fastneurons.bench.workloads import OPT_SIZES, opt_config

import fastneurons

# The package under test (installed, or a source tree with its built _C): subprocesses import the same.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(fastneurons.__file__)))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-m", "fastneurons.bench", "--quick", "--densities", "sparse",
                           "--scaling-factors", "1", "4", "--bare-in-workers", "--bare-beside", "--json",
                           str(out)],
                          capture_output=True, text=True, env=env, cwd=out.parent, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_quick_run_writes_every_section(quick_results):
    results, stdout = quick_results
    for key in ("machine", "kernel", "ngrams", "ngram_scaling", "end_to_end", "end_to_end_scaling", "tables", "wall_s"):
        assert key in results, key
    assert results["machine"]["torch_threads"] >= 1 and results["machine"]["cpu_model"]
    assert all(r["results_agree"] for r in results["kernel"])
    (e2e,) = results["end_to_end"]
    assert set(e2e["methods"]) == {"bare", "plain", "fastneurons", "fastneurons_dense", "fastneurons_bounded"}
    assert "fastneurons_bounded_overhead" in e2e["derived"] and "counting_cost_ratio_bounded" in e2e["derived"]
    derived = e2e["derived"]
    for key in ("bare_s", "plain_counting_s", "fastneurons_counting_s", "fastneurons_overhead",
                "fastneurons_dense_overhead", "counting_cost_ratio", "fastneurons_peak_rss_mb", "plain_extra_rss_mb"):
        assert key in derived, key
    assert {"forward", "forward.hooks", "store.commit", "store.finalize"} <= set(e2e["methods"]["fastneurons"]["phases"])
    assert all(len(e2e["methods"][name]["bare_here_s"]) == len(e2e["methods"][name]["seconds"])
               and f"{name}_overhead_same_process" in derived
               for name in ("plain", "fastneurons", "fastneurons_dense", "fastneurons_bounded"))
    assert "counting_cost_ratio_bounded_same_process" in derived
    for name in ("fastneurons", "fastneurons_dense", "fastneurons_bounded"):  # --bare-beside
        runs = e2e["methods"][name]["phases_runs"]
        assert all(run["bare_beside"] > 0 for run in runs) and f"{name}_overhead_beside" in derived
        assert derived[name]["total_s"] < e2e["methods"][name]["median_s"]  # the beside forwards are not record's
    assert any("beside each of its batches" in t["name"] for t in e2e["targets"])
    assert "counting_cost_ratio_bounded_beside" in derived
    assert any("in the record's own process" in t["name"] for t in e2e["targets"])
    assert {t["name"].split(" ")[0] for t in e2e["targets"]} == {"counting_cost_ratio", "overhead_all_counters",
                                                                 "overhead_dense_only", "overhead_bounded",
                                                                 "counting_cost_ratio_bounded"}
    assert e2e["model"]["first_half_density"] == pytest.approx(0.05, abs=0.02)
    assert [r["factor"] for r in results["end_to_end_scaling"]] == [1, 4]
    assert "### End to end" in stdout and "| setting |" in stdout


def test_quick_run_counts_identically_to_the_plain_way(quick_results):
    (e2e,) = quick_results[0]["end_to_end"]
    assert e2e["identical"]["identical"] is True, e2e["identical"]
    assert e2e["identical"]["arrays_checked"] > 10 and e2e["identical"]["ngram_rows"] > 0


def test_cuda_without_a_gpu_fails_clearly(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    done = subprocess.run([sys.executable, "-m", "fastneurons.bench", "--device", "cuda", "--quick"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode != 0
    assert "no CUDA GPU is visible" in done.stderr


def test_opt_configs_have_the_released_sizes():
    config = opt_config("1.3b")
    assert (config.hidden_size, config.num_hidden_layers, config.ffn_dim, config.num_attention_heads) == (2048, 24, 8192, 32)
    assert config.vocab_size == 50272 and config.max_position_embeddings == 2048
    assert not opt_config("350m").do_layer_norm_before and opt_config("350m").word_embed_proj_dim == 512
    assert all(ffn == 4 * hidden for hidden, _, ffn, *_ in OPT_SIZES.values())
    with pytest.raises(ValueError, match="unknown OPT size"):
        opt_config("7b")


def test_plain_way_fast_paths_equal_the_generic_ones():
    """Right-padded sums and fused 64-bit keys give what index_add and 2-column np.unique give."""
    torch.manual_seed(0)
    model = OPTForCausalLM(OPTConfig(vocab_size=50272, hidden_size=32, num_hidden_layers=2, ffn_dim=200,
                                     num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32)).eval()
    modules = {i: layer.fc1 for i, layer in enumerate(model.model.decoder.layers)}
    ids = torch.randint(3, 50000, (3, 20))
    right = torch.ones(3, 20, dtype=torch.long)
    right[1, 15:] = 0
    left = right.clone()
    left[2, :4] = 0  # not right-padded: the generic index_add path
    runs = {}
    for name, mask, pack_bits in (("right", right, 16), ("right21", right, 21)):
        runs[name] = plain_way.plain_record(model, modules, [(ids, mask)], max_positions=32, ngram_layers=[0, 1],
                                            pack_bits=pack_bits)
    # pack_bits 21 with 3-grams does not fit a fused key: the generic 2-column path; same tables
    for layer in (0, 1):
        for k in (1, 2, 3):
            for ours, theirs in zip(runs["right"].ngram_active[(layer, k)], runs["right21"].ngram_active[(layer, k)]):
                if ours.dtype == np.uint64:  # keys pack differently; compare decoded token ids
                    continue
                np.testing.assert_array_equal(ours, theirs)
    for mask in (right, left):  # the batch-sum fast path, then the generic index_add path
        counts = plain_way.plain_record(model, modules, [(ids, mask)], max_positions=32)
        acts = {}
        handles = [m.register_forward_hook(lambda mod, a, out, i=i: acts.__setitem__(i, (out > 0).reshape(3, 20, -1)))
                   for i, m in modules.items()]
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
        for handle in handles:
            handle.remove()
        positions = torch.cumsum(mask, 1) - 1
        for layer in (0, 1):
            expected = np.zeros((32, 200), np.int64)
            for b in range(3):
                for s in range(20):
                    if mask[b, s]:
                        expected[positions[b, s]] += acts[layer][b, s].numpy()
            np.testing.assert_array_equal(counts.pos_active[layer], expected)


def test_unique_pairs_fused_equals_two_column():
    rng = np.random.default_rng(1)
    keys = rng.integers(0, 1 << 40, 500).astype(np.uint64)
    keys[::3] = keys[0]
    neurons = rng.integers(0, 300, 500)
    fused = plain_way._unique_pairs(keys, neurons, 300, fused=True)
    pairs = plain_way._unique_pairs(keys, neurons, 300, fused=False)
    np.testing.assert_array_equal(fused[0], pairs[0])
    np.testing.assert_array_equal(fused[1], pairs[1])
    assert plain_way._fits_fused(3, 16, 3072) and not plain_way._fits_fused(3, 21, 3072)


def test_target_verdicts_say_by_how_much():
    assert check_target("overhead_all_counters", 0.10, 0.25, "max")["met"]
    missed = check_target("overhead_all_counters", 0.40, 0.25, "max")
    assert not missed["met"] and "missed by 15.0 percentage points" in missed["verdict"]
    ratio = check_target("counting_cost_ratio", 5.0, 10.0, "min")
    assert not ratio["met"] and "factor 2.0" in ratio["verdict"]


def test_derived_ratios_from_a_hand_made_result():
    phases = {"load_model": 1.0, "plan_corpus": 0.5, "header": 0.5, "forward": 10.5, "forward.hooks": 0.5,
              "store.commit": 1.0, "set_batch": 0.0, "ngram_tables": 0.5}
    result = {"methods": {"bare": {"median_s": 10.0, "peak_rss_mb": 100.0},
                          "plain": {"median_s": 30.0, "peak_rss_mb": 150.0},
                          "fastneurons": {"median_s": 14.0, "peak_rss_mb": 120.0, "phases": phases}}}
    derived = derive_end_to_end(result)
    assert derived["fastneurons"]["recording_s"] == pytest.approx(12.0)
    assert derived["fastneurons_counting_s"] == pytest.approx(2.0)
    assert derived["counting_cost_ratio"] == pytest.approx(10.0)
    assert derived["fastneurons_overhead_inside"] == pytest.approx(0.1)
    assert derived["counting_cost_ratio_inside"] == pytest.approx(20.0 / 2.0)
    assert derived["plain_extra_rss_mb"] == pytest.approx(50.0)
    assert "fastneurons_overhead_same_process" not in derived
    result["methods"]["fastneurons"].update(seconds=[14.0, 15.0], phases_runs=[phases, phases], bare_here_s=[10.0, 12.0])
    # per round: (14 - 2) / 10 = 1.2 and (15 - 2) / 12 = 1.083...; the median of two is their mean
    assert derive_end_to_end(result)["fastneurons_overhead_same_process"] == pytest.approx((1.2 + 13 / 12) / 2 - 1)
    beside = dict(phases, bare_beside=9.0)  # --bare-beside: 9 s of bare forwards ran inside the measured 23 s
    result["methods"]["fastneurons"].update(seconds=[23.0], phases_runs=[beside], bare_here_s=[10.0], median_s=23.0,
                                            phases=beside)
    derived = derive_end_to_end(result)
    assert derived["fastneurons"]["recording_s"] == pytest.approx(12.0)  # 23 - 9 beside - 2 setup
    assert derived["fastneurons"]["other_s"] == pytest.approx(0.0)
    assert derived["fastneurons_overhead_beside"] == pytest.approx(12.0 / 9.0 - 1)
    assert derived["fastneurons_overhead_same_process"] == pytest.approx(0.2)
    assert derived["counting_cost_ratio_beside"] == pytest.approx(2.0 / (12.0 / 9.0 - 1))  # plain: (30 - 10) / 10
