"""Students learn the teacher's distributions: every family, each adapter method, save and reload."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer, set_seed

from helpers import CAUSAL_FAMILIES, PROMPT, TASK, TOPICS, teacher_targets, topic_rows, training_adapter
from tailorkd.adapters import (
    BottleneckAdapterConfig,
    FullAdapterConfig,
    LoraAdapterConfig,
    NoAdapterConfig,
    QLoraAdapterConfig,
)
from tailorkd.distill import distill_student, soft_cross_entropy
from tailorkd.recipe import DistillConfig, StudentConfig
from tailorkd.students import CausalLMStudent, EncoderStudent, MeanPoolClassifier, load_student, predict_probs


def test_soft_cross_entropy_is_minimal_at_the_teacher_and_scales_with_t():
    teacher = torch.tensor([[0.7, 0.2, 0.1]])
    at_teacher = soft_cross_entropy(torch.log(teacher), teacher)
    elsewhere = soft_cross_entropy(torch.tensor([[0.0, 3.0, 0.0]]), teacher)
    assert at_teacher < elsewhere
    # Entropy of the teacher is the minimum of the cross-entropy.
    assert at_teacher.item() == pytest.approx(-(teacher * teacher.log()).sum().item(), rel=1e-5)
    # At T=2 the minimum is still at the teacher's logits.
    logits = torch.log(teacher).requires_grad_()
    soft_cross_entropy(logits, teacher, temperature=2.0).backward()
    assert torch.allclose(logits.grad, torch.zeros_like(logits.grad), atol=1e-6)
    with pytest.raises(ValueError):
        soft_cross_entropy(torch.zeros(1, 2), teacher)


def _causal_student(folder):
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    return CausalLMStudent(model, tok, TASK, PROMPT, [], max_length=64)


def _cross_entropy(student, rows, probs):
    pred = predict_probs(student, rows, batch_size=16)
    return float(-(probs * np.log(pred + 1e-12)).sum(1).mean())


def _base_weights(model):
    """The base model's weights, keyed as in the unadapted model (a bottleneck wrapper's base_layer left out)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items()
            if ".adapter." not in k}


def _check_bottleneck_trained(model, base_before):
    """Adapters changed (their up projections start at zero), the base did not."""
    from tailorkd.adapters.bottleneck import adapter_state_dict

    adapters = adapter_state_dict(model)
    ups = [v for k, v in adapters.items() if k.endswith("up.weight")]
    assert ups and all(v.abs().max() > 0 for v in ups), "bottleneck up projections did not move from zero"
    base_after = _base_weights(model)
    assert base_after.keys() == base_before.keys()
    for key, value in base_before.items():
        assert torch.equal(base_after[key], value), f"base weight {key} changed"


@pytest.mark.parametrize("method", ["lora", "bottleneck", "full"])
@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_students_learn_save_and_reload(tiny_models, tmp_path, family, method):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    set_seed(0)
    rows = topic_rows(6)
    probs = teacher_targets(rows)
    student = _causal_student(tiny_models[family])
    base_before = _base_weights(student.model)
    before = _cross_entropy(student, rows, probs)
    adapter = training_adapter(method)
    lr = 2e-3 if method == "full" else 3e-2
    epochs = 2 if method == "bottleneck" else 10  # bottleneck: a few steps; the loss is not checked (below)
    config = DistillConfig(validation_fraction=0.0, epochs=epochs, learning_rate=lr, batch_size=10, warmup_ratio=0.0,
                           max_grad_norm=1.0)
    summary = distill_student(student, rows, probs, adapter, config, tmp_path / "student", seed=0,
                              info={"base_model": str(tiny_models[family])})
    after = _cross_entropy(student, rows, probs)
    if method != "bottleneck":
        # Series adapters act on each position alone; in these random models the topic reaches the answer
        # position only through near-uniform attention, about 1e-3 of the residual, so they cannot fit it in
        # a few steps (test_bottleneck_adapters_alone_fit_a_position_local_signal shows that they learn).
        assert after < before - 0.1, f"{family}/{method}: cross-entropy to the teacher {before:.3f} -> {after:.3f}"
    params = summary["parameters"]
    if method == "lora":
        assert 0 < params["trainable"] < 0.5 * params["total"]
        assert (tmp_path / "student" / "adapter" / "adapter_config.json").is_file()
    elif method == "bottleneck":
        assert 0 < params["trainable"] < 0.05 * params["total"]
        assert (tmp_path / "student" / "adapter" / "bottleneck.safetensors").is_file()
        _check_bottleneck_trained(student.model, base_before)
    else:
        assert params["trainable"] == params["total"]
    reloaded = load_student(tmp_path / "student", TASK, PROMPT, [],
                            StudentConfig(model=str(tiny_models[family]), kind="causal_lm", max_length=64))
    np.testing.assert_allclose(predict_probs(reloaded, rows, 16), predict_probs(student, rows, 16), atol=1e-5)


@pytest.mark.parametrize("method", ["lora", "bottleneck"])
def test_encoder_student_learns_and_reloads(tiny_models, tmp_path, method):
    set_seed(0)
    folder = tiny_models["bert"]
    model = MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS))
    student = EncoderStudent(model, AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)
    base_before = _base_weights(student.model.encoder)
    rows = topic_rows(6)
    probs = teacher_targets(rows)
    before = _cross_entropy(student, rows, probs)
    summary = distill_student(student, rows, probs,
                              training_adapter(method),
                              DistillConfig(validation_fraction=0.0, epochs=20, learning_rate=5e-2, batch_size=10,
                                            warmup_ratio=0.0, max_grad_norm=1.0),
                              tmp_path / "enc", seed=0, info={"base_model": str(folder)})
    after = _cross_entropy(student, rows, probs)
    assert after < before - 0.1
    assert summary["steps"] > 0 and summary["loss_curve"]
    assert summary["peak_memory"]["process_peak_gb"] > 0
    if method == "bottleneck":
        assert 0 < summary["parameters"]["trainable"] < 0.05 * summary["parameters"]["total"]
        _check_bottleneck_trained(student.model.encoder, base_before)
    set_seed(0)
    reloaded = load_student(tmp_path / "enc", TASK, PROMPT, [],
                            StudentConfig(model=str(folder), kind="encoder", max_length=64))
    # The head is saved beside the adapter, so predictions match.
    np.testing.assert_allclose(predict_probs(reloaded, rows, 16), predict_probs(student, rows, 16), atol=1e-5)


def test_method_none_trains_nothing(tiny_models, tmp_path):
    student = _causal_student(tiny_models["llama"])
    rows = topic_rows(2)
    before = predict_probs(student, rows, 8)
    summary = distill_student(student, rows, teacher_targets(rows), NoAdapterConfig(), DistillConfig(),
                              tmp_path / "s", seed=0, info={})
    assert summary["parameters"]["trainable"] == 0 and summary["steps"] == 0
    np.testing.assert_allclose(predict_probs(student, rows, 8), before)


def test_adapter_methods_are_registered_and_attach_through_the_student_protocol(tiny_models):
    from tailorkd.adapters import adapter_methods, attach_adapter, get_adapter_method, register_adapter_method
    from tailorkd.errors import TailorkdError
    from tailorkd.students import Student

    assert adapter_methods() == ["bottleneck", "full", "lora", "none", "qlora"]
    with pytest.raises(TailorkdError, match="adapter.method: unknown method 'dora'"):
        get_adapter_method("dora")
    with pytest.raises(ValueError, match="already registered"):
        register_adapter_method(get_adapter_method("lora"))
    assert get_adapter_method("lora").quantization() is None and not get_adapter_method("none").trains

    def encoder_student():
        folder = tiny_models["bert"]
        model = MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS))
        return EncoderStudent(model, AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)

    def trainable(student):
        return [n for n, p in student.model.named_parameters() if p.requires_grad]

    causal, encoder = _causal_student(tiny_models["llama"]), encoder_student()
    assert isinstance(causal, Student) and isinstance(encoder, Student)
    assert causal.transformer is causal.model and encoder.transformer is encoder.model.encoder
    # The adapter wraps what `transformer` names; the encoder's head, outside it, trains with it.
    attach_adapter(encoder, LoraAdapterConfig(r=4))
    assert type(encoder.model.encoder).__name__.startswith("PeftModel") and encoder.transformer is encoder.model.encoder
    assert {n.split(".")[0] for n in trainable(encoder)} == {"encoder", "head"}
    assert all("lora_" in n for n in trainable(encoder) if not n.startswith("head."))
    attach_adapter(causal, LoraAdapterConfig(r=4))
    assert causal.model is causal.transformer and all("lora_" in n for n in trainable(causal))
    none, full = encoder_student(), encoder_student()
    attach_adapter(none, NoAdapterConfig())
    attach_adapter(full, FullAdapterConfig())
    assert trainable(none) == [] and len(trainable(full)) == len(list(full.model.parameters()))


def test_student_json_is_written_last_and_never_in_part(tiny_models, tmp_path, monkeypatch):
    """student.json marks a student folder finished: a failure (or a kill) while a student is saved leaves no
    student.json or the old one whole, never a partial one, nor the old one beside a half-written student."""
    import pathlib

    from tailorkd import students
    from tailorkd.adapters import attach_adapter
    from tailorkd.errors import TailorkdError
    from tailorkd.students import save_student

    folder = tiny_models["bert"]
    student = EncoderStudent(MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS)),
                             AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)
    attach_adapter(student, LoraAdapterConfig(r=4))
    out = tmp_path / "student"
    marker = out / "student.json"
    save_student(student, "lora", out, {"run": 1})
    old = marker.read_text()

    write_text = pathlib.Path.write_text

    def half_then_fail(path, text, *args, **kwargs):
        if "student.json" in path.name:
            write_text(path, text[: len(text) // 2], *args, **kwargs)
            raise OSError("no space left on device")
        return write_text(path, text, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pathlib.Path, "write_text", half_then_fail)
        with pytest.raises(OSError):
            save_student(student, "lora", out, {"run": 2})
    assert not marker.exists() or marker.read_text() == old
    assert [p.name for p in out.iterdir() if "student.json" in p.name] in ([], ["student.json"])  # no temp left

    save_student(student, "lora", out, {"run": 3})

    def failing_save_file(*args, **kwargs):
        raise OSError("killed")

    with monkeypatch.context() as patch:
        patch.setattr(students, "save_file", failing_save_file)  # the encoder's head, written after the adapter
        with pytest.raises(OSError):
            save_student(student, "lora", out, {"run": 4})
    assert not marker.exists()  # the old marker does not vouch for the new adapter beside the old head

    save_student(student, "lora", out, {"run": 5})
    reloaded = load_student(out, TASK, PROMPT, [], StudentConfig(model=str(folder), kind="encoder", max_length=64))
    rows = topic_rows(1)
    np.testing.assert_allclose(predict_probs(reloaded, rows, 8), predict_probs(student, rows, 8), atol=1e-5)
    # One cut short by hand (as a kill while an older tailorkd wrote it) is not a trained student.
    text = marker.read_text()
    marker.write_text(text[: len(text) // 2])
    with pytest.raises(TailorkdError, match=r"student.json: this student file is not valid JSON"):
        load_student(out, TASK, PROMPT, [], StudentConfig(model=str(folder), max_length=64))
    with pytest.raises(TailorkdError, match="student.json"):
        students.read_student_info(out)


@pytest.mark.parametrize("family,expected", [("llama", ["q_proj", "k_proj", "v_proj", "o_proj"]),
                                             ("opt", ["q_proj", "k_proj", "v_proj", "out_proj"]),
                                             ("gpt2", ["c_attn"]), ("bert", ["query", "key", "value"])])
def test_lora_targets_the_attention_projections_of_each_family(tiny_models, family, expected):
    from transformers import AutoModel

    from tailorkd.adapters import attention_modules

    model = AutoModel.from_pretrained(tiny_models[family])
    assert attention_modules(model) == expected


# Per family: the feed-forward outputs (placement ffn) and, added for placement both, the attention outputs.
_BOTTLENECK_TARGETS = {
    "llama": (["model.layers.0.mlp"], ["model.layers.0.self_attn.o_proj"]),
    "gemma3": (["model.layers.0.mlp"], ["model.layers.0.self_attn.o_proj"]),
    "opt": (["model.decoder.layers.0.fc2"], ["model.decoder.layers.0.self_attn.out_proj"]),
    "gpt2": (["transformer.h.0.mlp"], ["transformer.h.0.attn.c_proj"]),
    "bert": (["encoder.layer.0.output.dense"], ["encoder.layer.0.attention.output.dense"]),
}


@pytest.mark.parametrize("placement", ["ffn", "both"])
@pytest.mark.parametrize("family", list(_BOTTLENECK_TARGETS))
def test_bottleneck_targets_and_starts_equal_to_the_base(tiny_models, family, placement):
    if family not in tiny_models:
        pytest.skip(f"{family} not available in this transformers")
    from tailorkd.adapters import attach_bottleneck
    from tailorkd.adapters.bottleneck import BottleneckConfig, BottleneckWrapper

    load = AutoModel if family == "bert" else AutoModelForCausalLM
    model = load.from_pretrained(tiny_models[family]).eval()
    ids = torch.tensor([[5, 9, 17, 33, 2, 8]])
    before = model(input_ids=ids).last_hidden_state if family == "bert" else model(input_ids=ids).logits
    total = sum(p.numel() for p in model.parameters())
    attach_bottleneck(model.eval(), BottleneckConfig(placement=placement, bottleneck_size=4))
    ffn, attention = _BOTTLENECK_TARGETS[family]
    expected = ffn + attention if placement == "both" else ffn
    # Layer 0's targets, and as many in layer 1 (the tiny models have two layers).
    first_layer = [n for n in model.bottleneck_config.target_modules if ".0." in n]
    assert sorted(first_layer) == sorted(expected)
    assert len(model.bottleneck_config.target_modules) == 2 * len(expected)
    for name in model.bottleneck_config.target_modules:
        assert isinstance(model.get_submodule(name), BottleneckWrapper)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.numel() <= 4 * 32 + 32 for p in trainable)  # adapters only; the base is frozen
    assert sum(p.numel() for p in model.parameters()) > total
    after = model(input_ids=ids).last_hidden_state if family == "bert" else model(input_ids=ids).logits
    torch.testing.assert_close(after, before)  # up starts at zero: the adapted model is the base


def test_bottleneck_adapters_alone_fit_a_position_local_signal(tiny_models):
    """With the base and a random head frozen, only the adapters train, and the mean-pooled classifier
    moves toward the teacher: the topic word's own positions carry the signal the adapters transform."""
    from tailorkd.adapters import attach_bottleneck
    from tailorkd.adapters.bottleneck import BottleneckConfig

    torch.manual_seed(0)
    folder = tiny_models["bert"]
    model = MeanPoolClassifier(AutoModel.from_pretrained(folder), len(TOPICS))
    student = EncoderStudent(model, AutoTokenizer.from_pretrained(folder), TASK, PROMPT, max_length=64)
    attach_bottleneck(model.encoder, BottleneckConfig(placement="both", reduction_factor=2))
    for param in model.head.parameters():
        param.requires_grad = False
    assert all(".adapter." in n for n, p in model.named_parameters() if p.requires_grad)
    rows = topic_rows(4)
    probs = teacher_targets(rows)
    before = _cross_entropy(student, rows, probs)
    batch = student.collate(rows)
    targets = torch.tensor(probs, dtype=torch.float32)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(40):
        optimizer.zero_grad()
        soft_cross_entropy(student.class_logits(model, batch), targets).backward()
        optimizer.step()
    after = _cross_entropy(student, rows, probs)
    assert after < before - 0.1, f"adapters alone: cross-entropy to the teacher {before:.3f} -> {after:.3f}"


def test_bottleneck_names_the_model_when_it_finds_no_targets(tiny_models):
    from tailorkd.adapters import attach_bottleneck
    from tailorkd.adapters.bottleneck import BottleneckConfig
    from tailorkd.errors import TailorkdError

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    with pytest.raises(TailorkdError, match=r"no target modules found in .*llama.*adapter.target_modules"):
        attach_bottleneck(model, BottleneckConfig(), target_names=["no_such_module"])
    tiny = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(TailorkdError, match="no target modules found in Sequential"):
        attach_bottleneck(tiny, BottleneckConfig())


def test_bottleneck_recipe_fields_round_trip_and_are_checked():
    from tailorkd.adapters import validate_adapter_section

    bottleneck = BottleneckAdapterConfig(bottleneck_size=8, bottleneck_placement="both")
    dump = bottleneck.model_dump()
    assert dump["method"] == "bottleneck" and dump["bottleneck_size"] == 8 and dump["bottleneck_placement"] == "both"
    assert validate_adapter_section(dump) == bottleneck
    assert "r" not in dump  # LoRA's settings are not the bottleneck method's
    with pytest.raises(ValueError):
        BottleneckAdapterConfig(bottleneck_placement="middle")


@pytest.mark.parametrize("family", ["llama", "opt", "bert"])
def test_qlora_trains_on_a_4bit_base_and_reloads(qlora_models, tmp_path, family):
    pytest.importorskip("bitsandbytes")
    from tailorkd.students import build_student

    set_seed(0)
    tiny_models = qlora_models
    config = StudentConfig(model=str(tiny_models[family]), max_length=64)
    rows = topic_rows(6)
    probs = teacher_targets(rows)
    # Measured on a copy: on the CPU, bitsandbytes repacks 4-bit weights for inference, a layout that cannot train.
    before = _cross_entropy(build_student(config, TASK, PROMPT, [], adapter_method="qlora"), rows, probs)
    set_seed(0)
    student = build_student(config, TASK, PROMPT, [], adapter_method="qlora")
    transformer = student.model.encoder if family == "bert" else student.model
    assert any(type(m).__name__ == "Linear4bit" for m in transformer.modules())  # the base really is 4-bit
    lr = 5e-2 if family == "bert" else 3e-2
    summary = distill_student(student, rows, probs, training_adapter("qlora"),
                              DistillConfig(validation_fraction=0.0, epochs=20 if family == "bert" else 10,
                                            learning_rate=lr, batch_size=10, warmup_ratio=0.0, max_grad_norm=1.0),
                              tmp_path / "q", seed=0, info={"base_model": str(tiny_models[family])})
    after = _cross_entropy(student, rows, probs)
    assert after < before - 0.1, f"{family}/qlora: {before:.3f} -> {after:.3f}"
    assert 0 < summary["parameters"]["trainable"] < summary["parameters"]["total"]
    set_seed(0)
    reloaded = load_student(tmp_path / "q", TASK, PROMPT, [], config)
    np.testing.assert_allclose(predict_probs(reloaded, rows, 16), predict_probs(student, rows, 16), atol=1e-4)


def test_qlora_refuses_a_student_already_repacked_for_cpu_inference(qlora_models, tmp_path):
    pytest.importorskip("bitsandbytes")
    from tailorkd.errors import TailorkdError
    from tailorkd.students import build_student

    student = build_student(StudentConfig(model=str(qlora_models["llama"]), max_length=64), TASK, PROMPT, [],
                            adapter_method="qlora")
    rows = topic_rows(1)
    predict_probs(student, rows, 8)
    packed = any(getattr(getattr(getattr(m, "weight", None), "quant_state", None), "packing_format_for_cpu", False)
                 for m in student.model.modules())
    if not packed:
        pytest.skip("this bitsandbytes does not repack 4-bit weights for CPU inference")
    with pytest.raises(TailorkdError, match="cannot train"):
        distill_student(student, rows, teacher_targets(rows), QLoraAdapterConfig(r=8),
                        DistillConfig(validation_fraction=0.0, epochs=1), tmp_path / "q", seed=0, info={})


def test_hard_label_term_mixes_with_the_soft_targets(tiny_models):
    from tailorkd.distill.trainer import DistillationTrainer

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]])
    targets = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5]])
    trainer = DistillationTrainer.__new__(DistillationTrainer)  # only the loss is exercised
    trainer.temperature, trainer.groups = 1.0, None
    soft = soft_cross_entropy(logits, targets)
    hard = torch.nn.functional.cross_entropy(logits, targets.argmax(-1))
    for h, want in ((0.0, soft), (1.0, hard), (0.25, 0.75 * soft + 0.25 * hard)):
        trainer.hard_label_weight = h
        torch.testing.assert_close(trainer.class_loss(logits, targets), want)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_gradient_checkpointing_trains_to_the_same_weights(tiny_models, tmp_path, family):
    rows = topic_rows(4)
    probs = teacher_targets(rows)
    adapter = LoraAdapterConfig(r=4, alpha=8, dropout=0.0)
    weights = {}
    for checkpointing in (False, True):
        set_seed(0)
        if family == "bert":
            encoder = AutoModel.from_pretrained(tiny_models["bert"])
            student = EncoderStudent(MeanPoolClassifier(encoder, len(TOPICS), dropout=0.0),
                                     AutoTokenizer.from_pretrained(tiny_models["bert"]), TASK, PROMPT, 64)
        else:
            student = _causal_student(tiny_models[family])
        config = DistillConfig(epochs=1, batch_size=8, learning_rate=1e-2, validation_fraction=0.0,
                               gradient_checkpointing=checkpointing)
        distill_student(student, rows, probs, adapter, config, tmp_path / f"s{int(checkpointing)}", seed=0, info={})
        base = student.transformer
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        on = (base.is_activation_checkpointing if hasattr(type(base), "is_activation_checkpointing")
              else base.is_gradient_checkpointing)
        assert on == checkpointing
        weights[checkpointing] = {k: v.detach().clone() for k, v in student.model.named_parameters() if v.requires_grad}
    assert weights[True].keys() == weights[False].keys() and len(weights[True]) > 0
    for name in weights[True]:
        torch.testing.assert_close(weights[True][name], weights[False][name], atol=1e-5, rtol=1e-4)
