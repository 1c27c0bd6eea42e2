"""Attach series adapters to a model by family, freeze its base, and save / load the adapters alone."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tailorkd.adapters.bottleneck.config import WEIGHTS_FILE, BottleneckConfig
from tailorkd.adapters.bottleneck.layer import BottleneckAdapter, BottleneckWrapper, output_features
from tailorkd.errors import TailorkdError

# Each block's feed-forward output, by family, tried in order (the first name found in a model wins):
# the MLP block (LLaMA, Gemma-3, Mistral, GPT-2), OPT's fc2, BERT's and MPNet's output.dense (not
# attention.output.dense).
FFN_SUFFIXES = ("mlp", "fc2", "output.dense")
# Each block's attention output projection: LLaMA/Gemma o_proj, OPT out_proj, GPT-2 attn.c_proj, BERT, MPNet.
ATTENTION_SUFFIXES = ("self_attn.o_proj", "self_attn.out_proj", "attn.c_proj", "attention.output.dense",
                      "attention.attn.o")


def _matches(name: str, suffix: str) -> bool:
    """``name`` ends with the dot-bounded ``suffix``; BERT's ``output.dense`` (the FFN output) does not
    match its ``attention.output.dense`` unless the suffix says attention."""
    if not (name == suffix or name.endswith("." + suffix)):
        return False
    return suffix.endswith("attention.output.dense") or not name.endswith("attention.output.dense")


def _model_name(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or type(model).__name__)


def find_targets(model: nn.Module, placement: str, names: list[str] | None = None) -> list[str]:
    """Full names of the modules an adapter goes after: ``names`` (dot-bounded suffixes) when given, else
    the family's feed-forward outputs (and, for placement ``both``, its attention outputs)."""
    modules = [n for n, _ in model.named_modules() if n]
    if names:
        found = {n for n in modules if any(_matches(n, s) for s in names)}
    else:
        groups = [FFN_SUFFIXES] + ([ATTENTION_SUFFIXES] if placement == "both" else [])
        found = set()
        for suffixes in groups:
            for suffix in suffixes:
                hits = {n for n in modules if _matches(n, suffix)}
                if hits:
                    found |= hits
                    break
    # Outer names only (a module is not wrapped inside another wrapped one), in model order.
    found = [n for n in modules if n in found and not any(n.startswith(o + ".") for o in found)]
    if not found:
        wanted = names or (FFN_SUFFIXES + (ATTENTION_SUFFIXES if placement == "both" else ()))
        raise TailorkdError(
            f"adapter.method=bottleneck: no target modules found in {_model_name(model)} "
            f"({type(model).__name__}); looked for modules named *{' / *'.join(wanted)}; "
            f"name the output modules in adapter.target_modules"
        )
    return found


def _hidden_size(model: nn.Module, module: nn.Module, name: str) -> int:
    width = output_features(module)
    if width is None:
        width = getattr(getattr(model, "config", None), "hidden_size", None)
    if width is None:
        raise TailorkdError(f"adapter.method=bottleneck: cannot tell the output width of {name} in "
                            f"{_model_name(model)}")
    return int(width)


def inject(model: nn.Module, config: BottleneckConfig) -> nn.Module:
    """Wrap each of ``config.target_modules`` in place with a fresh adapter; return the model."""
    if any(isinstance(m, BottleneckWrapper) for m in model.modules()):
        raise TailorkdError(f"{_model_name(model)} already has bottleneck adapters")
    modules = dict(model.named_modules())
    missing = [n for n in config.target_modules if n not in modules]
    if missing:
        raise TailorkdError(f"bottleneck adapter: {_model_name(model)} has no modules {missing[:5]} "
                            f"(saved for base model {config.base_model!r})")
    for name in config.target_modules:
        module = modules[name]
        param = next(module.parameters())
        dtype = torch.float32 if param.dtype in (torch.float16, torch.bfloat16) else param.dtype
        width = _hidden_size(model, module, name)
        adapter = BottleneckAdapter(width, config.width(width), config.non_linearity, config.dropout,
                                    config.init_std).to(device=param.device, dtype=dtype)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, BottleneckWrapper(module, adapter))
    model.bottleneck_config = config
    return model


def attach_bottleneck(model: nn.Module, config: BottleneckConfig, target_names: list[str] | None = None) -> nn.Module:
    """Freeze ``model`` and add trainable series adapters after its family's output modules."""
    for param in model.parameters():
        param.requires_grad = False
    config.target_modules = find_targets(model, config.placement, target_names)
    config.base_model = _model_name(model)
    return inject(model, config)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' weights alone, keyed ``<target module>.<down|up>.<weight|bias>``."""
    return {f"{name}.{key}": value.detach().contiguous()
            for name, module in model.named_modules() if isinstance(module, BottleneckWrapper)
            for key, value in module.adapter.state_dict().items()}


def save_bottleneck(model: nn.Module, folder: str | Path) -> None:
    config: BottleneckConfig | None = getattr(model, "bottleneck_config", None)
    if config is None:
        raise TailorkdError(f"{_model_name(model)} has no bottleneck adapters to save")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(folder / WEIGHTS_FILE))
    config.save(folder)


def load_bottleneck(model: nn.Module, folder: str | Path) -> nn.Module:
    """Add the adapters saved in ``folder`` to ``model`` (its base, as trained) and load their weights."""
    folder = Path(folder)
    config = BottleneckConfig.load(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise TailorkdError(f"{folder}: no {WEIGHTS_FILE}")
    inject(model, config)
    device = next(model.parameters()).device
    state = load_file(str(weights_path), device=str(device))
    own = adapter_state_dict(model)
    if set(state) != set(own):
        missing, unexpected = sorted(set(own) - set(state))[:3], sorted(set(state) - set(own))[:3]
        raise TailorkdError(f"{weights_path}: weights do not match the adapters of {config.base_model!r} "
                            f"(missing {missing}, unexpected {unexpected})")
    for name, module in model.named_modules():
        if isinstance(module, BottleneckWrapper):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            try:
                module.adapter.load_state_dict(part)
            except RuntimeError as exc:
                raise TailorkdError(f"{weights_path}: {name}: {exc}") from exc
    for param in model.parameters():
        param.requires_grad = False
    return model
