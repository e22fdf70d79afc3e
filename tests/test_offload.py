"""LayerStreamer: planning, and the streaming bookkeeping exercised on the CPU (mode forced to "stream").

The CUDA-only parts (second stream, events, pinned memory, cross-device .data swaps) cannot run here;
the CPU run goes through the same slots, copies, hooks and restore code with synchronous copies.
"""
import types

import pytest
import torch
import transformers as T

from fastneurons.models import architectures as A
from fastneurons.models.offload import COMFORT, LayerStreamer, _LayerPack, buffer_sizes, moves_to_host, plan_offload

L = 5


def tiny_llama(tied=False):
    torch.manual_seed(0)
    config = T.LlamaConfig(vocab_size=61, hidden_size=32, num_hidden_layers=L, num_attention_heads=4,
                           num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64,
                           tie_word_embeddings=tied)
    return T.LlamaForCausalLM(config).eval()


def tiny_opt():
    torch.manual_seed(0)
    config = T.OPTConfig(vocab_size=61, hidden_size=32, word_embed_proj_dim=16, num_hidden_layers=L, ffn_dim=48,
                         num_attention_heads=4, max_position_embeddings=64, do_layer_norm_before=False)
    return T.OPTForCausalLM(config).eval()


def nbytes(module):
    tensors = list(module.parameters()) + list(module.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def record(model, arch, last, on_fc1=None, device="cpu"):
    """Pre-activations of layers 0..last from run_until on a fixed right-padded batch on `device`."""
    ids = (torch.arange(2, 16).reshape(2, 7) % 61).to(device)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    seen, handles = {}, []
    for index in range(last + 1):
        def hook(module, args, out, index=index):
            seen[index] = out.clone()
            if on_fc1 is not None:
                on_fc1(index, module)
        handles.append(A.neuron_module(model, arch, index).register_forward_hook(hook))
    with torch.inference_mode():
        A.run_until(model, arch, ids, mask, last)
    for handle in handles:
        handle.remove()
    return seen


def test_plan_cpu_is_a_no_op():
    model = tiny_llama()
    plan = plan_offload(model, A.LLAMA, "cpu", 2)
    assert plan.mode == "none" and plan.device_weight_bytes == 0


def test_plan_counts_the_needed_layers_and_skips_an_untied_head():
    model = tiny_llama(tied=False)
    layers = model.model.layers
    plan = plan_offload(model, A.LLAMA, "cuda", [0, 2], gpu_memory_bytes=10**9)
    assert plan.mode == "resident"
    assert plan.layers_bytes == sum(nbytes(layers[i]) for i in range(3))       # layers 0..2 run
    assert plan.largest_layer_bytes == nbytes(layers[0])
    assert plan.outside_bytes == nbytes(model) - nbytes(layers) - nbytes(model.lm_head)
    tied = plan_offload(tiny_llama(tied=True), A.LLAMA, "cuda", 2, gpu_memory_bytes=10**9)
    assert tied.outside_bytes == plan.outside_bytes     # the tied head is the embedding, counted once


def test_plan_streams_when_the_layers_do_not_fit_and_refuses_when_two_do_not():
    model = tiny_llama()
    full = plan_offload(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=10**9)
    budget = full.outside_bytes + 3 * full.largest_layer_bytes
    plan = plan_offload(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=budget)
    assert plan.mode == "stream" and plan.device_weight_bytes == full.outside_bytes + 2 * full.largest_layer_bytes
    assert "stream" in plan.reason
    with pytest.raises(ValueError, match="not even two layers fit"):
        plan_offload(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=full.outside_bytes + full.largest_layer_bytes)


def test_plan_without_budget_uses_a_share_of_free_memory():
    model = tiny_llama()
    need = plan_offload(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=10**9)
    total = need.outside_bytes + need.layers_bytes
    assert plan_offload(model, A.LLAMA, "cuda", L - 1, free_bytes=int(total / COMFORT) + 8).mode == "resident"
    assert plan_offload(model, A.LLAMA, "cuda", L - 1, free_bytes=total).mode == "stream"


def test_plan_rejects_bad_layers_and_modes():
    model = tiny_llama()
    with pytest.raises(ValueError, match="layers_needed"):
        plan_offload(model, A.LLAMA, "cuda", L)
    with pytest.raises(ValueError, match="mode"):
        plan_offload(model, A.LLAMA, "cpu", 1, mode="fast")


@pytest.mark.parametrize("make, arch", [(tiny_llama, A.LLAMA), (tiny_opt, A.OPT)])
def test_streaming_gives_identical_activations_and_runs_from_the_slots(make, arch):
    model = make()
    last = 3
    reference = record(model, arch, last)
    params = {name: p for name, p in model.named_parameters()}
    values = {name: p.detach().clone() for name, p in params.items()}
    later = [p.data_ptr() for p in A.decoder_layers(model, arch)[last + 1].parameters()]
    with LayerStreamer(model, arch, "cpu", last, mode="stream") as streamer:
        slots = [{dtype: buf for dtype, buf in slot.items()} for slot in streamer._slots]

        def inside_slot(index, fc1):
            buf = slots[index % 2][fc1.weight.dtype]
            start, size = buf.data_ptr(), buf.numel() * buf.element_size()
            assert start <= fc1.weight.data_ptr() < start + size, f"layer {index} does not run from its slot"
            if index < streamer.last_layer:   # the next layer is already being fetched into the other slot
                assert streamer._occupant[(index + 1) % 2] == index + 1

        first = record(model, arch, last, on_fc1=inside_slot)
        second = record(model, arch, last, on_fc1=inside_slot)
        shorter = record(model, arch, 1, on_fc1=inside_slot)
        assert streamer.copies >= last + 1
        assert [p.data_ptr() for p in A.decoder_layers(model, arch)[last + 1].parameters()] == later
    for got in (first, second):
        assert sorted(got) == sorted(reference)
        assert all(torch.equal(got[i], reference[i]) for i in reference)
    assert all(torch.equal(shorter[i], reference[i]) for i in shorter)
    # restored: same Parameter objects, same values, no hooks left behind
    assert {name: p for name, p in model.named_parameters()} == params
    assert all(torch.equal(p, values[name]) for name, p in model.named_parameters())
    storages = [p.untyped_storage().data_ptr() for p in model.parameters()]
    assert len(set(storages)) == len(storages)       # no parameter is left as a view of a flat buffer
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in A.decoder_layers(model, arch))
    assert record(model, arch, last).keys() == reference.keys()


def test_streaming_reuses_a_slot_that_still_holds_the_right_layer():
    model = tiny_llama()
    with LayerStreamer(model, A.LLAMA, "cpu", 1, mode="stream") as streamer:
        record(model, A.LLAMA, 1)
        assert streamer.copies == 2
        record(model, A.LLAMA, 1)        # both layers are still in their slots
        assert streamer.copies == 2


def test_tied_weights_stay_tied_and_restore_after_an_error():
    model = tiny_llama(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with LayerStreamer(model, A.LLAMA, "cpu", 2, mode="stream"):
            record(model, A.LLAMA, 2)
            raise RuntimeError("inside")
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_cpu_device_leaves_the_model_alone():
    model = tiny_llama()
    pointers = [p.data_ptr() for p in model.parameters()]
    with LayerStreamer(model, A.LLAMA, "cpu", L - 1) as streamer:
        assert streamer.plan.mode == "none"
        assert not any(layer._forward_pre_hooks for layer in model.model.layers)
    assert [p.data_ptr() for p in model.parameters()] == pointers


def test_weights_shared_between_layers_cannot_stream():
    model = tiny_llama()
    layers = model.model.layers
    layers[1].mlp.up_proj.weight = layers[0].mlp.up_proj.weight
    with pytest.raises(ValueError, match="share a weight"):
        with LayerStreamer(model, A.LLAMA, "cpu", 2, mode="stream"):
            pass


def test_entered_under_inference_mode_leaves_ordinary_tensors():
    model = tiny_llama()
    with torch.inference_mode():
        with LayerStreamer(model, A.LLAMA, "cpu", 1, mode="stream"):
            record(model, A.LLAMA, 1)
    assert not any(p.is_inference() for p in model.parameters())
    loss = model(input_ids=torch.tensor([[1, 2, 3]])).logits.sum()   # usable outside inference mode
    assert torch.isfinite(loss)


def test_staging_is_two_layers_whatever_the_layer_count():
    """Pinned host memory is two staging buffers of the largest layer, not a pinned copy of every layer."""
    model = tiny_llama()
    layer_bytes = nbytes(model.model.layers[0])
    for last in (1, L - 1):
        with LayerStreamer(model, A.LLAMA, "cpu", last, mode="stream") as streamer:
            assert layer_bytes * 2 <= streamer.pinned_bytes <= 2 * (layer_bytes + 256 * 16)
            record(model, A.LLAMA, last)
        assert streamer.pinned_bytes == 0


def test_buffer_sizes_take_the_largest_layer_per_dtype():
    layers = [torch.nn.Linear(4, 3), torch.nn.Linear(8, 2).half(), torch.nn.Linear(2, 2)]
    packs = [_LayerPack(list(layer.parameters())) for layer in layers]
    sizes = buffer_sizes(packs)
    assert sizes[torch.float16] == packs[1].sizes[torch.float16]
    assert sizes[torch.float32] == max(packs[0].sizes[torch.float32], packs[2].sizes[torch.float32])
    assert packs[0].sizes[torch.float32] >= 12 + 3   # weight, then the bias at an aligned offset


def test_layers_that_started_on_another_device_are_sent_back_there():
    """Streamed layers live on the host while streaming; each tensor not there is recorded with the device it
    started on, which restore moves it back to (a layer that started on the GPU used to come back on the CPU)."""
    on_gpu = types.SimpleNamespace(device=torch.device("cuda:1"))
    on_cpu = types.SimpleNamespace(device=torch.device("cpu"))
    assert moves_to_host([on_cpu, on_gpu]) == [(on_gpu, torch.device("cuda:1"))]


def test_restore_gives_back_the_original_storage():
    model = tiny_llama()
    pointers = [p.data_ptr() for p in model.parameters()]
    with LayerStreamer(model, A.LLAMA, "cpu", L - 1, mode="stream"):
        record(model, A.LLAMA, L - 1)
    assert [p.data_ptr() for p in model.parameters()] == pointers   # no copies of the weights left behind


@pytest.mark.cuda
def test_streaming_on_cuda_matches_and_layers_return_to_where_they_started():
    model = tiny_llama()
    reference = record(model, A.LLAMA, L - 1)
    model.model.layers[1].to("cuda")        # one layer starts on the GPU
    budget = plan_offload(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=10**9)
    budget = budget.outside_bytes + 3 * budget.largest_layer_bytes
    with LayerStreamer(model, A.LLAMA, "cuda", L - 1, gpu_memory_bytes=budget) as streamer:
        assert streamer.plan.mode == "stream"
        got = record(model, A.LLAMA, L - 1, device="cuda")
        assert streamer.pinned_bytes > 0 and all(t.is_pinned() for t in streamer._staging[0].values())
    assert all(torch.allclose(got[i].cpu(), reference[i], atol=1e-5) for i in reference)
    assert all(p.device.type == "cuda" for p in model.model.layers[1].parameters())
    assert all(p.device.type == "cpu" for p in model.model.layers[2].parameters())

