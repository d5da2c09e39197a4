"""The streaming decoder gives exactly what transformers' `generate` gives, on Falcon (MQA) and Llama (GQA) shapes.

Tiny random models: mechanics only. The CUDA-graph recording is checked against eager decoding on a GPU
(`gpu_test`); on the CPU the same loop runs eagerly.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, FalconConfig, LlamaConfig

from falcon_desktop.decoding import GenerationSettings
from falcon_desktop.fast_decode import StreamingDecoder, apply_repetition_penalty, choose_token

PROMPTS = ([5, 17, 99, 3, 250, 41, 7], [9, 8, 7, 6, 5, 4, 3, 2, 100, 200, 300, 11, 12, 13, 14, 15, 16],
           [(7 * i) % 500 for i in range(70)])  # 70 tokens: padded to 128


def _falcon() -> torch.nn.Module:
    config = FalconConfig(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                          multi_query=True, new_decoder_architecture=False, parallel_attn=True, bias=False,
                          max_position_embeddings=600)
    return AutoModelForCausalLM.from_config(config)


def _llama() -> torch.nn.Module:
    config = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=600)
    return AutoModelForCausalLM.from_config(config)


@pytest.fixture(params=[_falcon, _llama], ids=["falcon-mqa", "llama-gqa"], scope="module")
def model(request) -> torch.nn.Module:
    torch.manual_seed(0)
    built = request.param().eval()
    built.generation_config.eos_token_id = None  # both sides run the full length
    return built


def _decode(decoder: StreamingDecoder, prompt: list[int], settings: GenerationSettings, variant=None) -> list[int]:
    tokens: list[int] = []
    with torch.inference_mode():
        decoder.generate(prompt, settings.max_new_tokens, settings, lambda t: tokens.append(t) or False, variant)
    return tokens


def _reference(model: torch.nn.Module, prompt: list[int], settings: GenerationSettings) -> list[int]:
    with torch.inference_mode():
        output = model.generate(input_ids=torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=settings.max_new_tokens, do_sample=False, pad_token_id=0,
                                repetition_penalty=settings.repetition_penalty)
    return output[0, len(prompt):].tolist()


@pytest.mark.parametrize("pad_prompts", [False, True], ids=["exact-prompt", "padded-prompt"])
@pytest.mark.parametrize("penalty", [1.0, 1.3])
def test_greedy_tokens_equal_transformers_generate(model, penalty, pad_prompts):
    decoder = StreamingDecoder(model, pad_prompts=pad_prompts)
    settings = GenerationSettings(max_new_tokens=24, repetition_penalty=penalty)
    for prompt in PROMPTS + PROMPTS:  # the second round reuses the cache: a stale cache would change the tokens
        assert _decode(decoder, list(prompt), settings) == _reference(model, list(prompt), settings)


def test_cache_lengths_are_bucketed_and_recordings_bounded(model):
    decoder = StreamingDecoder(model)
    settings = GenerationSettings(max_new_tokens=4)
    _decode(decoder, list(PROMPTS[0]), settings)
    _decode(decoder, list(PROMPTS[1]), settings)
    assert list(decoder._slots) == [(None, 256)]                 # both prompts share one cache
    _decode(decoder, [i % 500 for i in range(300)], settings)
    assert list(decoder._slots)[-1] == (None, 512)
    _decode(decoder, [i % 500 for i in range(589)], GenerationSettings(max_new_tokens=11))  # capped by the model's 600 positions
    assert list(decoder._slots)[-1] == (None, 600)
    for variant in "abcde":
        _decode(decoder, list(PROMPTS[0]), settings, variant)
    assert len(decoder._slots) == 4 and (None, 256) not in decoder._slots


def test_stops_when_told():
    torch.manual_seed(0)
    decoder = StreamingDecoder(_falcon().eval())
    seen: list[int] = []
    with torch.inference_mode():
        decoder.generate(list(PROMPTS[0]), 50, GenerationSettings(), lambda t: seen.append(t) or len(seen) == 3)
    assert len(seen) == 3


def test_sampling_is_seeded_and_top_k_one_is_greedy():
    torch.manual_seed(0)
    decoder = StreamingDecoder(_falcon().eval())
    prompt = list(PROMPTS[1])
    sampled = GenerationSettings(max_new_tokens=16, sampling=True, temperature=1.5, seed=7)
    assert _decode(decoder, prompt, sampled) == _decode(decoder, prompt, sampled)
    others = {tuple(_decode(decoder, prompt, GenerationSettings(max_new_tokens=16, sampling=True, temperature=1.5, seed=s)))
              for s in range(4)}
    assert len(others) > 1
    top1 = GenerationSettings(max_new_tokens=16, sampling=True, top_k=1, seed=3)
    assert _decode(decoder, prompt, top1) == _decode(decoder, prompt, GenerationSettings(max_new_tokens=16))


def test_top_p_keeps_only_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    settings = GenerationSettings(sampling=True, temperature=1.0, top_k=0, top_p=0.7)
    generator = torch.Generator().manual_seed(0)
    picks = {int(choose_token(logits, torch.zeros((1, 1), dtype=torch.long), settings, generator)) for _ in range(300)}
    assert picks == {0, 1}


def test_repetition_penalty_matches_ctrl_rule():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    penalised = apply_repetition_penalty(logits, torch.tensor([[0, 1, 1]]), 2.0)
    assert penalised.tolist() == [[1.0, -4.0, 1.0]]


@pytest.mark.gpu
def test_cuda_graph_replay_equals_eager(model):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    gpu_model = model.to("cuda", torch.bfloat16)
    settings = GenerationSettings(max_new_tokens=32, repetition_penalty=1.1)
    recorded, eager = StreamingDecoder(gpu_model), StreamingDecoder(gpu_model, cuda_graphs=False)
    assert recorded.cuda_graphs
    for prompt in PROMPTS + PROMPTS:
        assert _decode(recorded, list(prompt), settings) == _decode(eager, list(prompt), settings)
    assert all(slot.step_recording.graph is not None and slot.prompt_recordings for slot in recorded._slots.values())
    model.to("cpu", torch.float32)


@pytest.mark.parametrize("layout", [dict(multi_query=True), dict(multi_query=False),
                                    dict(new_decoder_architecture=True, num_kv_heads=2)])
def test_graph_safe_head_split_gives_transformers_values(layout):
    from transformers.models.falcon.modeling_falcon import FalconAttention

    from falcon_desktop.attention import make_graph_safe

    config = FalconConfig(hidden_size=64, num_attention_heads=4, **layout)
    attention = FalconAttention(config)
    fused = torch.randn(2, 5, attention.query_key_value.out_features)
    expected = attention._split_heads(fused)
    holder = torch.nn.Sequential(attention)
    assert make_graph_safe(holder) == 1
    for got, want in zip(attention._split_heads(fused), expected, strict=True):
        assert torch.equal(got, want)


class _SyncsOnTheHost(torch.nn.Module):
    """Wraps a model and reads a GPU value on the host in every forward, which a CUDA graph cannot record."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.inner = model
        self.config = model.config

    def get_input_embeddings(self) -> torch.nn.Module:
        return self.inner.get_input_embeddings()

    def forward(self, **kwargs):
        if kwargs["input_ids"].sum().item() < 0:
            raise AssertionError("unreachable")
        return self.inner(**kwargs)


@pytest.mark.gpu
def test_unrecordable_model_falls_back_to_eager_with_a_warning(capsys):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    torch.manual_seed(0)
    model = _falcon().eval().to("cuda", torch.bfloat16)
    settings = GenerationSettings(max_new_tokens=16)
    decoder = StreamingDecoder(_SyncsOnTheHost(model))
    assert _decode(decoder, list(PROMPTS[1]), settings) == _decode(StreamingDecoder(model, cuda_graphs=False),
                                                                   list(PROMPTS[1]), settings)
    assert not decoder.cuda_graphs
    assert "Cannot record" in capsys.readouterr().err
    torch.rand(4, device="cuda")  # sampling can still draw: a failed recording left the generator recording
