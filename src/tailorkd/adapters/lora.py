"""LoRA adapters through PEFT, on the self-attention projections by default (as the paper does)."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tailorkd.adapters.registry import ADAPTER_DIR, AdapterMethod, register_adapter_method
from tailorkd.errors import TailorkdError
from tailorkd.recipe.student import AdapterConfig


class LoraAdapterConfig(AdapterConfig):
    """``adapter:`` settings of ``method: lora`` (and, through QLoraAdapterConfig, of qlora)."""

    method: Literal["lora"] = Field(default="lora", description="lora: LoRA adapters train; the base stays frozen.")
    r: int = Field(default=16, ge=1, description="LoRA rank.")
    alpha: int = Field(default=32, ge=1, description="LoRA scaling numerator (the update is scaled by alpha / r).")
    dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="Dropout on the adapter's input.")
    target_modules: list[str] | None = Field(
        default=None, description="Modules to adapt; default: the attention projections of the family.")

# Attention projection names by family, most specific first: LLaMA/Gemma/Mistral, OPT, BERT, GPT-2, MPNet
# (attention.attn.q/k/v: the same three projections as BERT's query/key/value, so MiniLM and MPNet students adapt
# alike; its output projection attn.o stays frozen as BERT's attention.output.dense does).
_ATTENTION_NAME_SETS = (
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("q_proj", "k_proj", "v_proj", "out_proj"),
    ("query", "key", "value"),
    ("c_attn",),
    ("q", "k", "v"),
)


def attention_modules(model: Any) -> list[str]:
    """The attention projection module names present in ``model`` (leaf names, as PEFT matches them)."""
    import torch

    leaves = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
              if isinstance(module, torch.nn.Linear) or type(module).__name__ == "Conv1D"}
    # A family's whole set first (OPT has q/k/v_proj but out_proj, not o_proj), else the largest partial one.
    for names in _ATTENTION_NAME_SETS:
        if all(n in leaves for n in names):
            return list(names)
    partial = max(([n for n in names if n in leaves] for names in _ATTENTION_NAME_SETS), key=len)
    if any(n in partial for n in ("q_proj", "query", "c_attn", "q")):
        return partial
    raise TailorkdError(
        f"adapter.target_modules: cannot tell the attention projections of {type(model).__name__}; "
        f"name them in the recipe (linear layers found: {sorted(leaves)[:20]})"
    )


def attach_lora(model: Any, config: LoraAdapterConfig, kind: str) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    targets = config.target_modules or attention_modules(model)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=targets,
        # GPT-2's Conv1D stores weights transposed; PEFT must know.
        fan_in_fan_out=targets == ["c_attn"],
        task_type=TaskType.FEATURE_EXTRACTION if kind == "encoder" else TaskType.CAUSAL_LM,
    )
    try:
        with _quiet_peft():
            return get_peft_model(model, lora)
    except ValueError as exc:
        raise TailorkdError(f"adapter.target_modules={targets}: {exc}") from exc


def save_peft_adapter(transformer: Any, tokenizer: Any, folder: Path) -> None:
    """PEFT's adapter files alone (adapter_config.json, adapter_model.safetensors) in ``folder/adapter``."""
    transformer.save_pretrained(str(folder / ADAPTER_DIR))


def load_peft_adapter(base: Any, folder: Path) -> Any:
    from peft import PeftModel

    with _quiet_peft():
        return PeftModel.from_pretrained(base, str(folder / ADAPTER_DIR))


@contextlib.contextmanager
def _quiet_peft():
    """PEFT reads a transformers property that transformers 5 deprecates: a warning no user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def merge_peft_adapter(base: Any, folder: Path) -> Any:
    """The saved adapter folded into ``base``'s weights: a plain transformers model."""
    return load_peft_adapter(base, folder).merge_and_unload()


register_adapter_method(AdapterMethod("lora", config=LoraAdapterConfig, attach=attach_lora, save=save_peft_adapter,
                                      load=load_peft_adapter, merge=merge_peft_adapter))
