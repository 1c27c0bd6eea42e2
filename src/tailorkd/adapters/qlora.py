"""QLoRA: the frozen base loaded in 4-bit NF4 (bitsandbytes), LoRA adapters trained on top (Dettmers et al., 2023).

As in the paper: NF4 with double quantisation and bf16 compute; paged AdamW 32-bit where CUDA is present
(see ``optimizer_name``). bitsandbytes' 4-bit layers also run on the CPU, so this trains there too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from tailorkd.adapters.lora import LoraAdapterConfig, attach_lora, load_peft_adapter, save_peft_adapter
from tailorkd.adapters.registry import AdapterMethod, register_adapter_method
from tailorkd.errors import TailorkdError

if TYPE_CHECKING:
    import torch


class QLoraAdapterConfig(LoraAdapterConfig):
    """``adapter:`` settings of ``method: qlora``: LoRA's, the base loaded in 4-bit NF4."""

    method: Literal["qlora"] = Field(default="qlora", description="qlora: LoRA adapters on a 4-bit NF4 base.")


def quantization_config() -> Any:
    """The BitsAndBytesConfig the base is loaded with."""
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise TailorkdError("adapter.method=qlora needs bitsandbytes: pip install 'bitsandbytes>=0.45'") from exc
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def attach_qlora(model: Any, config: QLoraAdapterConfig, kind: str) -> Any:
    """LoRA on a model that was loaded with ``quantization_config()``; casts norms to fp32 for stability."""
    from peft import prepare_model_for_kbit_training

    # On the CPU, bitsandbytes repacks 4-bit weights for fast inference the first time the model runs in
    # eval mode; that layout has no backward pass, so a model must not be evaluated before it is adapted.
    for module in model.modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None and getattr(state, "packing_format_for_cpu", False):
            raise TailorkdError("adapter.method=qlora: the 4-bit student was already run for inference on the CPU, "
                                "which repacks its weights in a layout that cannot train; load it afresh to train")

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return attach_lora(model, config, kind)


def optimizer_name(device: torch.device) -> str:
    """Paged AdamW 32-bit on CUDA (the paper's choice); plain AdamW elsewhere, where paging does not apply."""
    return "paged_adamw_32bit" if device.type == "cuda" else "adamw_torch"


def merge_into_dequantized(base: Any, folder: Path) -> Any:
    """The saved adapter merged into the 4-bit base dequantised: the weights the student computed with, without
    bitsandbytes (merging into the 4-bit layers would requantise them)."""
    try:
        base = base.dequantize()
    except (ValueError, NotImplementedError, AttributeError, RuntimeError) as exc:
        raise TailorkdError(f"{folder}: cannot dequantise the 4-bit base of this qlora student ({exc}); export from "
                            "a lora run, or keep the adapter folder and load it with tailorkd") from exc
    return load_peft_adapter(base, folder).merge_and_unload()


register_adapter_method(AdapterMethod("qlora", config=QLoraAdapterConfig, attach=attach_qlora, save=save_peft_adapter,
                                      load=load_peft_adapter, merge=merge_into_dequantized,
                                      quantization=quantization_config))
