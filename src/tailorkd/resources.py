"""Parameter counts and training-memory estimates for a student, from its config alone (no weights).

The model is built on PyTorch's meta device (``with torch.device("meta"): from_config(config)``):
every module and parameter shape is real, no memory is allocated, so counts are exact for any
architecture transformers knows, and a 13B model is inspected in a fraction of a second.

Parameter counts (`count_parameters_from_config`)
-------------------------------------------------
* ``P`` total parameters = sum of ``numel`` over the model's unique parameters (tied input/output
  embeddings, as in OPT and GPT-2, are counted once, as ``model.parameters()`` does).
* ``A`` LoRA adapter parameters = sum over the adapted modules of ``r * (in + out)``: LoRA adds
  ``A: r x in`` and ``B: out x r`` to each adapted ``nn.Linear`` / GPT-2 ``Conv1D`` (and
  ``r * (num_embeddings + dim)`` to an adapted ``nn.Embedding``); no biases (PEFT's ``bias="none"``).
  The adapted modules are matched as PEFT matches a list of names (a module whose dotted name equals
  a target or ends with ``"." + target``); by default the self-attention projections of the family,
  from `tailorkd.adapters.lora.attention_modules` (q/k/v/o for LLaMA, q/k/v/out for OPT, the fused
  ``c_attn`` for GPT-2), as the paper and ``tailorkd``'s own LoRA do. ``"all-linear"`` adapts every
  Linear/Conv1D except the output head, as PEFT does.
* ``Q`` quantisable parameters = the weights (not biases) of the modules bitsandbytes turns into
  ``Linear4bit`` when transformers loads a model in 4 bit: every exact ``nn.Linear`` and ``Conv1D``
  except the output embedding (``lm_head``), modules tied to an embedding and the model's
  ``_keep_in_fp32_modules``. Embeddings, norms, biases and the head stay in 16 bit.

Training memory (`estimate_training_memory`), the paper's Table 3 breakdown
--------------------------------------------------------------------------
With ``T`` trainable parameters (``T = P`` for full fine-tuning, ``T = A`` for LoRA / QLoRA) and
1 GB = 1e9 bytes (the paper's unit: 7B x 2 bytes = 14 GB)::

    weights            full : 2 P                                   (16-bit, bf16/fp16)
                       lora : 2 P + 2 A                             (frozen base + adapter, 16-bit)
                       qlora: 0.5 Q + C(Q) + 2 (P - Q) + 2 A        (NF4 base, see below)
    gradients          2 T                                          (16-bit, trainable only)
    optimizer states   4 T                                          (the paper's convention, below)
    fp32 gradient copy 4 T                                          (fp32 master copy for mixed precision)
    total              sum of the four rows; activations are NOT counted

    C(Q) = sum over quantised tensors of  ceil(n / 64)                 # 8-bit absmax, one per 64-weight block
                                        + 4 * ceil(ceil(n / 64) / 256) # fp32 second-level absmax, per 256 blocks
                                        + 4                            # fp32 offset (mean of the absmaxes)

``C`` is bitsandbytes' double quantisation (``bnb_4bit_use_double_quant=True``): the fp32 absmax of
every 64-weight block is itself quantised to 8 bit in blocks of 256, i.e. 8/64 + 32/(64*256) =
0.127 bits per weight instead of 32/64 = 0.5 (QLoRA paper, section 3). The shared 16-entry NF4 and
256-entry 8-bit code tables (about 1 KB per device) are ignored. Without double quantisation
(``double_quant=False``) ``C = 4 * ceil(n / 64)`` per tensor.

Why that qlora weights rule (``weights_rule="bnb"``, the default): it is what a QLoRA student
really holds on the GPU. The paper's Table 3 uses the simpler ``0.5 P`` (every parameter at 4 bit,
no quantisation constants, adapter not counted: 7B x 0.5 = 3.5 GB); ``weights_rule="paper"``
reproduces that (``weights = weight_bytes * P`` for every method, adapter left out). For LLaMA-2 7B
the two differ by about 10% of the weights (embeddings and head, 2 x 131M parameters, stay in bf16).

Optimizer states: AdamW keeps two moments per trainable parameter. The paper's Table 3 counts
28 GB for a 7B model, i.e. 2 states x 2 bytes = 4 bytes per parameter, and that is the default
(``optimizer_bytes=4``); 32-bit AdamW (also the paged one, which only moves pages to CPU under
pressure) really keeps 2 x 4 = 8 bytes, pass ``optimizer_bytes=8`` for that.

`render_memory_table` prints full KD next to the chosen method as Markdown, and
`measure_peak_memory` measures what a block of code really used (CUDA allocator peak, or the
process' peak RSS on CPU), to check an estimate against a run.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import math
import os
import resource
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

import torch

from tailorkd.errors import TailorkdError

METHODS = ("full", "lora", "qlora")
WEIGHTS_RULES = ("bnb", "paper")
GB = 1e9  # the paper's unit

BYTES_16BIT = 2.0
BYTES_4BIT = 0.5
GRADIENT_BYTES = 2.0  # 16-bit gradients
OPTIMIZER_BYTES = 4.0  # the paper's Table 3: 2 Adam states x 2 bytes
FP32_COPY_BYTES = 4.0
NF4_BLOCKSIZE = 64
DQ_BLOCKSIZE = 256

ACTIVATIONS_NOTE = ("Activations, the KV cache, the CUDA context and allocator fragmentation are not counted; "
                    "they grow with batch size and sequence length.")

_ROWS = (
    ("weights", "weights"),
    ("gradients", "gradients"),
    ("optimizer_states", "optimizer states"),
    ("fp32_gradient_copy", "fp32 gradient copy"),
    ("total", "total"),
)
_METHOD_LABELS = {"full": "full KD (16-bit)", "lora": "LoRA (16-bit)", "qlora": "QLoRA (4-bit NF4)"}


# --------------------------------------------------------------------------------------------
# Configs
# --------------------------------------------------------------------------------------------


def configs_dir():
    return importlib_resources.files("tailorkd").joinpath("model_configs")


def shipped_configs() -> list[str]:
    """Names of the model configs that ship with tailorkd (``llama-2-7b``, ``gpt2``, ...)."""
    return sorted(entry.name[: -len(".json")] for entry in configs_dir().iterdir() if entry.name.endswith(".json"))


def _config_from_dict(data: dict[str, Any], source: str):
    from transformers import AutoConfig

    data = dict(data)
    if "model_type" not in data:
        raise TailorkdError(f"{source}: a model config needs a 'model_type' (e.g. \"llama\")")
    try:
        return AutoConfig.for_model(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise TailorkdError(f"{source}: not a config transformers can read: {exc}") from exc


def _read_json(path: Path | Any, source: str) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TailorkdError(f"{source}: cannot read the config: {exc}") from exc


def load_config(model: Any):
    """A transformers config from a shipped name, a config.json path, a model folder, a tailorkd registry
    name or a Hub id (or a config object / dict, returned as a config)."""
    from transformers import AutoConfig, PretrainedConfig

    if isinstance(model, PretrainedConfig):
        return model
    if isinstance(model, dict):
        return _config_from_dict(model, "config")
    name = str(model)
    shipped = shipped_configs()
    if name in shipped:
        return _config_from_dict(_read_json(configs_dir().joinpath(f"{name}.json"), name), name)
    path = Path(name).expanduser()
    if path.is_file():
        return _config_from_dict(_read_json(path, name), name)
    if path.is_dir() and not (path / "config.json").is_file():
        raise TailorkdError(f"{name} has no config.json. Shipped configs: {', '.join(shipped)}")

    from tailorkd.models import from_pretrained

    try:
        return from_pretrained(AutoConfig.from_pretrained, name, "config")
    except TailorkdError as exc:
        raise TailorkdError(f"{exc}\nUnknown model {name!r}; the shipped configs (no download needed) are: "
                            f"{', '.join(shipped)}") from exc


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------


@dataclass
class _Counts:
    total: int
    adapter: int
    adapted: list[str]
    targets: list[str]
    quantized_numels: list[int] = field(default_factory=list)
    embedding: int = 0


def _meta_model(config):
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError as exc:  # not a causal LM (e.g. an encoder config)
            from transformers import AutoModel

            try:
                return AutoModel.from_config(config)
            except ValueError:
                raise TailorkdError(f"cannot build a model from the {type(config).__name__}: {exc}") from exc


def _is_linear(module) -> bool:
    return type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D"


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _output_module_names(model) -> set[str]:
    """The output head and anything whose weight is tied to an embedding (kept out of 4 bit / all-linear)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    names = set()
    for name, module in model.named_modules():
        if module is out or (hasattr(module, "weight") and id(getattr(module, "weight")) in embedding_weights
                             and not isinstance(module, torch.nn.Embedding)):
            names.add(name)
    return names


def _count(config, r: int, target_modules: list[str] | str | None) -> _Counts:
    from tailorkd.adapters.lora import attention_modules

    if r < 1:
        raise TailorkdError(f"LoRA rank r must be >= 1, got {r}")
    model = _meta_model(config)
    total = sum(p.numel() for p in model.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    heads = _output_module_names(model)

    if target_modules is not None and not isinstance(target_modules, str) and list(target_modules) == ["all-linear"]:
        target_modules = "all-linear"
    if target_modules is None:
        targets = attention_modules(model)
    elif isinstance(target_modules, str) and target_modules != "all-linear":
        targets = [target_modules]
    else:
        targets = target_modules if isinstance(target_modules, str) else list(target_modules)

    adapter, adapted = 0, []
    for name, module in model.named_modules():
        if not name:
            continue
        if targets == "all-linear":
            hit = _is_linear(module) and name not in heads
        else:
            hit = _matches(name, targets)
        if not hit:
            continue
        if _is_linear(module) or isinstance(module, torch.nn.Linear):
            adapter += r * sum(module.weight.shape)  # Linear (out, in), Conv1D (in, out): r * (in + out)
        elif isinstance(module, torch.nn.Embedding):
            adapter += r * (module.num_embeddings + module.embedding_dim)
        elif any(True for _ in module.children()):
            continue  # a container whose name matches (PEFT would fail too); its leaves are what count
        else:
            raise TailorkdError(f"target module {name} is a {type(module).__name__}; LoRA adapts Linear, "
                                f"Conv1D and Embedding layers")
        adapted.append(name)
    if not adapted:
        raise TailorkdError(f"target modules {targets} match no layer of the {type(model).__name__}")

    keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
    quantized = [module.weight.numel() for name, module in model.named_modules()
                 if _is_linear(module) and name not in heads and not _matches(name, list(keep))]
    return _Counts(total=total, adapter=adapter, adapted=adapted,
                   targets=[targets] if isinstance(targets, str) else list(targets),
                   quantized_numels=quantized, embedding=embedding)


@lru_cache(maxsize=64)
def _count_cached(config_json: str, r: int, targets: tuple[str, ...] | str | None) -> _Counts:
    return _count(_config_from_dict(json.loads(config_json), "config"), r,
                  list(targets) if isinstance(targets, tuple) else targets)


def _counts(config, r: int, target_modules) -> _Counts:
    targets = tuple(target_modules) if isinstance(target_modules, (list, tuple)) else target_modules
    try:
        key = config.to_json_string(use_diff=False)
    except (TypeError, ValueError):  # an unserialisable attribute: count without the cache
        return _count(config, r, target_modules)
    return _count_cached(key, r, targets)


def count_parameters_from_config(config, r: int = 64, target_modules: list[str] | str | None = None) -> dict:
    """Exact parameter counts of the model ``config`` describes, and of a rank-``r`` LoRA adapter on it.

    ``config``: a transformers config, a dict, or anything `load_config` takes (a shipped name such as
    ``"llama-2-7b"``, a path, a Hub id). ``target_modules``: module names as PEFT takes them, or
    ``"all-linear"``; default the family's attention projections.
    Returns total_params, embedding_params, adapter_params, adapter_share_pct (of the total),
    target_modules, adapted_modules (how many layers), quantizable_params (the 4-bit weights of QLoRA).
    """
    config = load_config(config)
    c = _counts(config, r, target_modules)
    return {
        "model_type": getattr(config, "model_type", None),
        "total_params": c.total,
        "embedding_params": c.embedding,
        "r": r,
        "target_modules": c.targets,
        "adapted_modules": len(c.adapted),
        "adapter_params": c.adapter,
        "adapter_share_pct": 100.0 * c.adapter / c.total,
        "quantizable_params": sum(c.quantized_numels),
        "quantizable_tensors": len(c.quantized_numels),
    }


# --------------------------------------------------------------------------------------------
# Memory estimate
# --------------------------------------------------------------------------------------------


def quantization_constants_bytes(numels: list[int], blocksize: int = NF4_BLOCKSIZE,
                                 double_quant: bool = True, dq_blocksize: int = DQ_BLOCKSIZE) -> int:
    """Bytes of bitsandbytes' per-block constants for 4-bit tensors of ``numels`` elements (see module doc)."""
    total = 0
    for n in numels:
        blocks = math.ceil(n / blocksize)
        if double_quant:
            total += blocks + 4 * math.ceil(blocks / dq_blocksize) + 4
        else:
            total += 4 * blocks
    return total


def estimate_training_memory(config, method: str = "qlora", r: int = 64, target_modules: list[str] | str | None = None,
                             weight_bytes: float | None = None, *, weights_rule: str = "bnb",
                             optimizer_bytes: float = OPTIMIZER_BYTES, double_quant: bool = True) -> dict:
    """Table 3's memory breakdown (weights, gradients, optimizer states, fp32 gradient copy, total) of
    training the student ``config`` with ``method`` ("full", "lora" or "qlora"); formulas in the module doc.

    ``weight_bytes``: bytes per base weight, default 2 (full, lora) or 0.5 (the 4-bit weights of qlora).
    ``weights_rule``: "bnb" (what bitsandbytes really holds) or "paper" (the paper's ``weight_bytes * P``).
    Returns the rows in ``bytes`` and ``gb`` (1e9 bytes), the parameter counts, trainable share and
    reduction vs full fine-tuning in %, and ``notes`` (activations are not counted).
    """
    if method not in METHODS:
        raise TailorkdError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if weights_rule not in WEIGHTS_RULES:
        raise TailorkdError(f"weights_rule must be one of {', '.join(WEIGHTS_RULES)}, got {weights_rule!r}")
    config = load_config(config)
    c = _counts(config, r, target_modules)
    P, A = c.total, c.adapter
    wb = weight_bytes if weight_bytes is not None else (BYTES_4BIT if method == "qlora" else BYTES_16BIT)
    trainable = P if method == "full" else A

    detail: dict[str, Any] = {"weight_bytes": wb}
    if weights_rule == "paper" or method == "full":
        weights = wb * P
        detail.update(base_params=P, adapter_weight_bytes=0)
    elif method == "lora":
        weights = wb * P + BYTES_16BIT * A
        detail.update(base_params=P, adapter_weight_bytes=BYTES_16BIT * A)
    else:
        Q = sum(c.quantized_numels)
        constants = quantization_constants_bytes(c.quantized_numels, double_quant=double_quant)
        weights = wb * Q + constants + BYTES_16BIT * (P - Q) + BYTES_16BIT * A
        detail.update(quantized_params=Q, quantized_tensors=len(c.quantized_numels),
                      quantization_constants_bytes=constants, unquantized_params=P - Q,
                      adapter_weight_bytes=BYTES_16BIT * A, double_quant=double_quant,
                      blocksize=NF4_BLOCKSIZE, dq_blocksize=DQ_BLOCKSIZE)

    rows = {
        "weights": float(weights),
        "gradients": GRADIENT_BYTES * trainable,
        "optimizer_states": float(optimizer_bytes) * trainable,
        "fp32_gradient_copy": FP32_COPY_BYTES * trainable,
    }
    rows["total"] = sum(rows.values())
    full_weight_bytes = weight_bytes if (weight_bytes is not None and method == "full") else BYTES_16BIT
    full_total = P * (full_weight_bytes + GRADIENT_BYTES + optimizer_bytes + FP32_COPY_BYTES)
    return {
        "method": method,
        "r": None if method == "full" else r,
        "target_modules": None if method == "full" else c.targets,
        "weights_rule": weights_rule,
        "optimizer_bytes": optimizer_bytes,
        "total_params": P,
        "adapter_params": A,
        "trainable_params": trainable,
        "trainable_share_pct": 100.0 * trainable / P,
        "trainable_reduction_pct": 100.0 * (1 - trainable / P),
        "bytes": rows,
        "gb": {k: v / GB for k, v in rows.items()},
        "reduction_vs_full_pct": 100.0 * (1 - rows["total"] / full_total),
        "weights_detail": detail,
        "activations_counted": False,
        "notes": ACTIVATIONS_NOTE,
    }


def compare_training_memory(model: Any, method: str = "qlora", r: int = 64,
                            target_modules: list[str] | str | None = None, **kwargs) -> tuple[dict, dict]:
    """(full, method) estimates for one model, as `render_memory_table` takes them."""
    config = load_config(model)
    full = estimate_training_memory(config, "full", r=r, target_modules=target_modules,
                                    **{k: v for k, v in kwargs.items() if k != "weight_bytes"})
    return full, estimate_training_memory(config, method, r=r, target_modules=target_modules, **kwargs)


def _gb(x: float) -> str:
    v = x / GB
    if v >= 100:
        return f"{v:,.1f} GB"
    if v >= 1:
        return f"{v:.2f} GB"
    return f"{v:.3g} GB"


def _change(a: float, b: float) -> str:
    return "0%" if a == b else f"{100.0 * (b - a) / a:+.2f}%"


def method_label(estimate: dict) -> str:
    label = _METHOD_LABELS[estimate["method"]]
    return label if estimate["method"] == "full" else f"{label}, r={estimate['r']}"


def render_memory_table(full: dict, other: dict, title: str | None = None) -> str:
    """A Markdown table of the full-KD estimate next to another one (both from `estimate_training_memory`)."""
    a, b = method_label(full), method_label(other)
    lines = []
    if title:
        lines += [f"### {title}", ""]
    lines += [f"| | {a} | {b} | change |", "|---|---:|---:|---:|"]
    for key, label in _ROWS:
        x, y = full["bytes"][key], other["bytes"][key]
        bold = "**" if key == "total" else ""
        cells = (label, _gb(x), _gb(y), _change(x, y))
        lines.append("| " + " | ".join(f"{bold}{cell}{bold}" for cell in cells) + " |")
    tx, ty = full["trainable_params"], other["trainable_params"]
    lines.append(f"| trainable parameters | {tx:,} ({full['trainable_share_pct']:.3g}%) | "
                 f"{ty:,} ({other['trainable_share_pct']:.3g}%) | {_change(tx, ty)} |")
    lines.append("")
    targets = other.get("target_modules")
    wb = other["weights_detail"]["weight_bytes"]
    if other["method"] == "full":
        rule = f"weights: {wb:g} bytes/parameter"
    elif other["weights_rule"] == "paper":
        rule = f"weights: {wb:g} bytes/parameter of the base model, adapter not counted (the paper's estimate)"
    elif other["method"] == "lora":
        rule = f"weights: base model at {wb:g} bytes/parameter + the adapter in 16-bit"
    else:
        rule = (f"weights: Linear weights in 4-bit NF4 ({wb:g} bytes/parameter) + "
                + ("double-quantised" if other["weights_detail"].get("double_quant") else "fp32")
                + " block constants; embeddings, norms, biases, head and adapter in 16-bit")
    lines.append(f"Total parameters {full['total_params']:,}. Gradients 2 bytes, optimizer states "
                 f"{other['optimizer_bytes']:g} bytes and fp32 copy 4 bytes per trainable parameter; {rule}"
                 + (f"; LoRA targets: {', '.join(targets)}" if targets else "") + ". 1 GB = 1e9 bytes.")
    lines.append(f"{ACTIVATIONS_NOTE}")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


@dataclass
class PeakMemory:
    """What `measure_peak_memory` measured; ``peak_bytes`` is set when the block exits."""

    device: str
    source: str = ""  # "cuda", "vmhwm" (Linux peak RSS, reset at entry), "ru_maxrss"
    baseline_bytes: int = 0
    peak_bytes: int = 0  # peak during the block minus the baseline at entry

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB


def _read_vmhwm() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:  # noqa: BLE001 - psutil missing or refused: no current RSS
        return None


def _reset_vmhwm() -> bool:
    """Reset Linux' peak-RSS counter of this process to its current RSS (``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


@contextlib.contextmanager
def measure_peak_memory(device: str | torch.device | None = None) -> Iterator[PeakMemory]:
    """Measure the peak memory a block adds: ``with measure_peak_memory() as m: ...; m.peak_bytes``.

    On CUDA (``device`` a CUDA device, or None with CUDA available): ``torch.cuda.max_memory_allocated``
    after resetting the peak stats, minus what was allocated at entry (tensors only, not the CUDA
    context or the allocator's cache). On CPU: the process' peak resident set size during the block
    minus the RSS at entry; on Linux the kernel's peak counter is reset at entry, elsewhere
    ``ru_maxrss`` is a lifetime peak, so only growth beyond the earlier peak is seen.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    result = PeakMemory(device=str(dev))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        result.source = "cuda"
        result.baseline_bytes = torch.cuda.memory_allocated(dev)
        try:
            yield result
        finally:
            torch.cuda.synchronize(dev)
            result.peak_bytes = max(0, torch.cuda.max_memory_allocated(dev) - result.baseline_bytes)
        return

    rss = _rss()
    if sys.platform.startswith("linux") and rss is not None and _reset_vmhwm() and _read_vmhwm() is not None:
        result.source, result.baseline_bytes = "vmhwm", rss
        try:
            yield result
        finally:
            result.peak_bytes = max(0, (_read_vmhwm() or 0) - result.baseline_bytes)
        return
    result.source = "ru_maxrss"
    result.baseline_bytes = _ru_maxrss()
    try:
        yield result
    finally:
        result.peak_bytes = max(0, _ru_maxrss() - result.baseline_bytes)


def describe_machine(device: str = "cpu", packages: tuple[str, ...] = ()) -> dict[str, Any]:
    """What a benchmark result was measured on: CPU model, logical and usable cores, RAM, the 1-minute load
    average now, OS, Python, torch (and its threads), transformers, the versions of ``packages`` that import,
    and on CUDA the GPU."""
    import platform

    import transformers

    cpu, ram_gib = None, None
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.lower().startswith("model name")), None)
    with contextlib.suppress(OSError):
        ram_gib = next((round(int(line.split()[1]) / 2**20, 1) for line in Path("/proc/meminfo").read_text()
                        .splitlines() if line.startswith("MemTotal:")), None)
    info: dict[str, Any] = {
        "cpu": cpu or platform.processor() or platform.machine(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": ram_gib,
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    for package in packages:  # the installed distribution's version (not every module has __version__)
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[package] = importlib.metadata.version(package)
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    return info
