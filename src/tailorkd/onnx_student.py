"""An encoder student as ONNX, run by ONNX Runtime on the CPU: the fast way to classify many texts.

The graph takes the tokenizer's outputs (``input_ids``, ``attention_mask`` and, where the tokenizer gives
them, ``token_type_ids``; int64, [batch, sequence]) and returns ``logits`` [batch, M]: the encoder, the mean
over the tokens where attention_mask is 1 (L2-normalised when the head reads normalised means: head.json) and
the linear head, all inside the graph, so softmax(logits) are the student's class probabilities in label order
(with any fitted temperature already folded into the head).

``export_onnx`` writes the fp32 graph (``torch.onnx.export``) and a copy with int8 weights
(``onnxruntime.quantization.quantize_dynamic``, weights per output channel: per-tensor scales flipped 3% of
the demo student's BBC test predictions, per-channel 0.5-2% depending on the batches; the feed-forward
down-projections stay fp32, see ``_feed_forward_down_projections``). ``OnnxClassifier`` runs either;
``check_export`` is how the export checks itself against the PyTorch student. onnxruntime is imported only
here and only when used, so training and ``tailorkd classify`` (the PyTorch path) work without it.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from tailorkd.errors import TailorkdError

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"
ONNX_FP32 = f"{ONNX_DIR}/classifier.onnx"
ONNX_INT8 = f"{ONNX_DIR}/classifier_int8.onnx"
# The least share of texts whose predicted class must equal the PyTorch student's, per precision.
MIN_AGREEMENT = {"fp32": 0.99, "int8": 0.98}
INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")  # the graph's inputs, in this order
OUTPUT_NAME = "logits"
OPSET = 17


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as err:
        raise TailorkdError("onnxruntime is not installed: `pip install onnxruntime` (the ONNX export and "
                            "inference need it; the PyTorch student does not)") from err
    return onnxruntime


class _LogitsFromInputs(torch.nn.Module):
    """Positional inputs named ``names`` -> the classifier's logits (torch.onnx.export passes inputs by position)."""

    def __init__(self, classifier: torch.nn.Module, names: Sequence[str]):
        super().__init__()
        self.classifier = classifier
        self.names = list(names)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.classifier(**dict(zip(self.names, inputs)))


def input_names(tokenizer: Any) -> list[str]:
    """The graph inputs for ``tokenizer``: input_ids, attention_mask and token_type_ids if it makes them."""
    return [name for name in INPUT_NAMES if name != "token_type_ids" or name in tokenizer.model_input_names]


@torch.no_grad()
def export_onnx(classifier: torch.nn.Module, tokenizer: Any, out: Path) -> dict[str, str]:
    """Write ``classifier`` (input_ids, attention_mask[, token_type_ids] -> logits; moved to the CPU in float32
    and set to eval, so dropout is off) to ``out``/ONNX_FP32 and its int8 copy to ``out``/ONNX_INT8.
    Returns {precision: path relative to ``out``}."""
    _onnxruntime()  # fail before the slow part when the runtime that checks the export is missing
    from onnxruntime.quantization import QuantType, quantize_dynamic

    classifier = classifier.to(device="cpu", dtype=torch.float32).eval()
    names = input_names(tokenizer)
    # Two texts of different lengths, so the traced graph has seen padding; both axes stay dynamic.
    sample = tokenizer(["a short text", "a longer text than the first one, so that the batch is padded"],
                       padding=True, return_tensors="pt")
    fp32, int8 = Path(out) / ONNX_FP32, Path(out) / ONNX_INT8
    fp32.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    # The TorchScript exporter: the dynamo one needs onnxscript and gave the same graph, 10x slower to export.
    # Its warnings about shapes read as Python values are silenced: the graph is checked on real texts after.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_LogitsFromInputs(classifier, names), tuple(sample[n] for n in names), str(fp32),
                          input_names=names, output_names=[OUTPUT_NAME],
                          dynamic_axes={**axes, OUTPUT_NAME: {0: "batch"}}, opset_version=OPSET, dynamo=False)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs a pre-processing hint (meant for static quantisation)
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                         nodes_to_exclude=_feed_forward_down_projections(fp32, classifier))
    finally:
        root.setLevel(level)
    return {"fp32": ONNX_FP32, "int8": ONNX_INT8}


def _feed_forward_down_projections(path: Path, classifier: torch.nn.Module) -> list[str]:
    """The MatMul nodes whose weight reads the feed-forward block's inner width (intermediate_size rows): they
    stay fp32. Their inputs come after the GELU, with outliers that one int8 scale per batch resolves badly; on
    the demo student (BBC test texts, batch 16) leaving them fp32 raised agreement with fp32 from 98.5% to 100%
    and cut the largest probability change from 0.024 to 0.017."""
    import onnx

    width = getattr(getattr(classifier, "encoder", None), "config", None)
    width = getattr(width, "intermediate_size", None)
    if not width:
        return []
    graph = onnx.load(str(path)).graph
    rows = {init.name: list(init.dims)[0] for init in graph.initializer if len(init.dims) == 2}
    return [node.name for node in graph.node
            if node.op_type == "MatMul" and len(node.input) == 2 and rows.get(node.input[1]) == width]


class OnnxClassifier:
    """An exported ONNX student run by ONNX Runtime on the CPU: texts -> class logits or probabilities.

    Texts are tokenized once, sorted by length and cut into batches of similar length (less padding to
    compute), and the results are put back in the input order.
    """

    def __init__(self, path: str | Path, tokenizer: Any, max_length: int, threads: int | None = None):
        ort = _onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise TailorkdError(f"{path}: no such ONNX file; export the student with `tailorkd export`")
        options = ort.SessionOptions()
        # ONNX Runtime's default is one thread per physical core; follow torch's setting unless told.
        options.intra_op_num_threads = threads or torch.get_num_threads()
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own exception types for damaged files
            raise TailorkdError(f"{path}: ONNX Runtime cannot load it ({type(err).__name__}); export again") from err
        self.names = [i.name for i in self.session.get_inputs()]
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_export(cls, folder: str | Path, precision: str = "int8", threads: int | None = None) -> OnnxClassifier:
        """The ONNX graph of ``precision`` (fp32 or int8) in a ``tailorkd export`` folder, with its tokenizer."""
        from transformers import AutoTokenizer

        from tailorkd.files import read_json

        folder = Path(folder)
        about = read_json(folder / "tailorkd.json", "export description")
        files = (about.get("onnx") or {}).get("files") or {}
        if precision not in files:
            raise TailorkdError(f"{folder / 'tailorkd.json'}: onnx.files has no {precision!r} graph "
                                f"(has: {', '.join(files) or 'none'})")
        return cls(folder / files[precision], AutoTokenizer.from_pretrained(str(folder)), about["max_length"], threads)

    def batches(self, texts: Sequence[str], batch_size: int) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """(positions in ``texts``, padded model inputs) per batch, texts of similar length together."""
        encoded = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        order = np.argsort([len(ids) for ids in encoded["input_ids"]], kind="stable")
        out = []
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            part = {name: [encoded[name][i] for i in idx] for name in self.names}
            padded = self.tokenizer.pad(part, return_tensors="np")
            out.append((idx, {name: padded[name].astype(np.int64) for name in self.names}))
        return out

    def run(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """[B, M] logits of one padded batch."""
        return self.session.run([OUTPUT_NAME], inputs)[0]

    def logits(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, M] class logits of ``texts`` (as the student reads them: see tailorkd.json's ``input``)."""
        result: np.ndarray | None = None
        for idx, inputs in self.batches(texts, batch_size):
            logits = self.run(inputs)
            if result is None:
                result = np.empty((len(texts), logits.shape[1]), dtype=logits.dtype)
            result[idx] = logits
        if result is None:
            raise TailorkdError("no texts to classify")
        return result

    def probs(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, M] class probabilities: softmax of ``logits`` in float64."""
        logits = self.logits(texts, batch_size).astype(np.float64)
        logits -= logits.max(1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(1, keepdims=True)


def agreement(expected_probs: np.ndarray, got: np.ndarray) -> float:
    """The share of texts whose predicted class (argmax) is the same in both."""
    return float((np.asarray(expected_probs).argmax(1) == np.asarray(got).argmax(1)).mean())


def check_export(folder: Path, files: dict[str, str], tokenizer: Any, max_length: int, texts: Sequence[str],
                 expected_probs: np.ndarray, batch_size: int, shown_as: Path | None = None) -> dict[str, Any]:
    """Run each ONNX graph of the export in ``folder`` on ``texts`` and compare with the PyTorch student's
    probabilities; a TailorkdError naming the file when a graph agrees less than MIN_AGREEMENT. Returns per
    precision what was measured: the texts that agree (``agreed``) of those checked (``texts``), their share
    (``agreement``) and the largest probability difference."""
    checks: dict[str, Any] = {}
    for precision, rel in files.items():
        probs = OnnxClassifier(folder / rel, tokenizer, max_length).probs(texts, batch_size)
        share = agreement(expected_probs, probs)
        checks[precision] = {"agreement": share, "agreed": int(round(share * len(texts))), "texts": len(texts),
                             "max_abs_probability_difference": float(np.abs(probs - expected_probs).max())}
        log.info("ONNX %s agrees with the PyTorch student on %d of %d texts", precision, checks[precision]["agreed"],
                 len(texts))
        if share < MIN_AGREEMENT[precision]:
            raise TailorkdError(f"{(shown_as or folder) / rel}: predicts the PyTorch student's class for only "
                                f"{share:.1%} of {len(texts)} texts (at least {MIN_AGREEMENT[precision]:.0%} needed); "
                                "the export was not written")
    return checks
