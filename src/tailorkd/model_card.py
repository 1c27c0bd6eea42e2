"""The model card (README.md) of a ``tailorkd export`` folder: Hugging Face metadata in YAML front matter,
then labels, how to load the model without tailorkd, how it was made and the run's test-set results."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml

# Packaged model names (tailorkd.models) and the Hub ids their weights come from: the card's base_model must
# be a Hub id, and a local folder is not one.
HUB_IDS = {
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "mpnet-base": "sentence-transformers/all-mpnet-base-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "gemma3-270m": "google/gemma-3-270m",
    "qwen2.5-coder-0.5b-instruct": "Qwen/Qwen2.5-Coder-0.5B-Instruct",
}
REPORT_METRICS = (("accuracy", "accuracy"), ("macro_f1", "macro-F1"), ("sensitivity", "sensitivity"),
                  ("specificity", "specificity"))


def agreement_text(check: dict[str, Any]) -> str:
    """What an export check measured, as counted: "199 of 200 texts (99.5%)", "all 200 texts"; the share is
    rounded down, so that only a check on which every text agreed reads 100%."""
    texts, agreed = check.get("texts"), check.get("agreed")
    if texts is None or agreed is None:  # an export written before the counts were recorded
        return f"{math.floor(1000 * check['agreement']) / 10:.1f}% of the texts"
    if agreed == texts:
        return f"all {texts} texts"
    return f"{agreed} of {texts} texts ({math.floor(1000 * agreed / texts) / 10:.1f}%)"


def hub_id(model: str) -> str | None:
    """``model`` as a Hub id: a packaged name mapped, an ``owner/name`` that is not a local folder kept, else None."""
    if model in HUB_IDS:
        return HUB_IDS[model]
    if model.count("/") == 1 and not Path(model).exists() and not model.startswith((".", "/")):
        return model
    return None


def _percent(value: Any) -> str:
    return "-" if not isinstance(value, (int, float)) else f"{100 * value:.1f}"


def _results_table(report: dict[str, Any], system: str) -> list[str]:
    rows = ["| system | model | " + " | ".join(name for _, name in REPORT_METRICS) + " | calibration error (ECE) |",
            "|---|---|" + "---:|" * (len(REPORT_METRICS) + 1)]
    for name, entry in (report.get("systems") or {}).items():
        metrics = entry.get("metrics") or {}
        ece = (metrics.get("calibration") or {}).get("ece")
        shown = f"**{name} (this model)**" if name == system else name
        rows.append(f"| {shown} | {entry.get('model', '-')} | "
                    + " | ".join(_percent(metrics.get(key)) for key, _ in REPORT_METRICS) + f" | {_percent(ece)} |")
    return rows


def _model_index(card: dict[str, Any], report: dict[str, Any] | None, system: str) -> list[dict[str, Any]]:
    metrics = ((report or {}).get("systems") or {}).get(system, {}).get("metrics") or {}
    values = [{"type": "accuracy", "value": round(metrics["accuracy"], 4), "name": "accuracy"}] \
        if isinstance(metrics.get("accuracy"), (int, float)) else []
    if isinstance(metrics.get("macro_f1"), (int, float)):
        values.append({"type": "f1", "value": round(metrics["macro_f1"], 4), "name": "macro-F1"})
    if not values:
        return []
    return [{"name": card["name"], "results": [{
        "task": {"type": "text-classification", "name": "Text Classification"},
        "dataset": {"name": card["data_kind"], "type": card["data_kind"], "split": "test"},
        "metrics": values}]}]


def render(about: dict[str, Any], card: dict[str, Any]) -> str:
    """README.md for an export described by ``about`` (its tailorkd.json) and ``card`` (from the run: name,
    task, task_description, label_descriptions, base_model, teacher, data, data_kind, report (report.json or
    None), system (the report's name of the exported student))."""
    labels = about["label_names"]
    encoder = about["kind"] == "encoder"
    base = hub_id(card["base_model"])
    report = card.get("report")
    system = card.get("system", "adaptive_kd")
    header: dict[str, Any] = {
        "library_name": "sentence-transformers" if encoder else "transformers",
        "pipeline_tag": "text-classification",
        **({"base_model": base} if base else {}),
        "tags": ["tailorkd", "knowledge-distillation", "text-classification"]
                + (["sentence-transformers", "onnx"] if encoder else []),
        "labels": labels,
    }
    index = _model_index(card, report, system)
    if index:
        header["model-index"] = index
    lines = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# {card['name']}: {card['task']}", "",
             f"{card['task_description']} {'An encoder' if encoder else 'A causal-LM'} student distilled by "
             f"tailorkd from the teacher **{card['teacher']}** into **{card['base_model']}**"
             f" ({about['adapter_method']}{', merged' if about.get('merged') else ''}), without a labelled "
             "training set: the teacher labelled unlabelled texts with class distributions, the student learnt them.",
             "", "## Labels", "", "| index | label | description |", "|---:|---|---|"]
    descriptions = card.get("label_descriptions") or {}
    lines += [f"| {i} | {name} | {descriptions.get(name, '')} |" for i, name in enumerate(labels)]
    lines += ["", "## Use", ""]
    text_note = (f"Give each text as the student read it in training: {about['input']['text']} (tailorkd.json "
                 f"`input`; max_chars = {about['input']['max_chars']}, max_length = {about['max_length']}).")
    if encoder:
        onnx = about["onnx"]
        lines += [
            "With [sentence-transformers](https://sbert.net) (Transformer, mean Pooling, "
            f"{'Normalize, ' if about.get('head', {}).get('normalize') else ''}a Dense head with identity "
            "activation; its outputs are the class logits):", "", "```python",
            "from sentence_transformers import SentenceTransformer",
            "probs = SentenceTransformer(\"OUT\").encode(texts, convert_to_tensor=True).softmax(-1)",
            "```", "",
            "With [ONNX Runtime](https://onnxruntime.ai) alone (mean pooling"
            f"{', L2 normalisation' if about.get('head', {}).get('normalize') else ''} and head are inside the graph; "
            f"`{onnx['files']['int8']}` is the int8 copy, `{onnx['files']['fp32']}` the fp32 graph):", "", "```python",
            "import onnxruntime, transformers",
            "logits = onnxruntime.InferenceSession(\"OUT/" + onnx["files"]["int8"] + "\").run([\"logits\"], dict("
            "transformers.AutoTokenizer.from_pretrained(\"OUT\")(texts, padding=True, truncation=True, "
            "return_tensors=\"np\")))[0]",
            "```", "",
            f"Column j of the logits is label j above; softmax gives the probabilities. {text_note}",
        ]
        temperature = about["temperature"]
        if temperature["value"] != 1.0:
            lines += ["", f"The confidence temperature fitted after training (T = {temperature['value']:.4g}) is "
                      "folded into the head: every format gives the calibrated probabilities."]
        checks = onnx.get("check") or {}
        if checks:
            lines += ["", f"Checked on {onnx['checked_on']}: the ONNX graphs predict the PyTorch student's class on "
                      + "; ".join(f"{agreement_text(v)} ({k})" for k, v in checks.items() if k in ("fp32", "int8"))
                      + "."]
    else:
        lines += ["A causal LM that answers through its prompt (tailorkd.json `prompt_example`, with the text in "
                  "place of `<input text>`); a class's score is the log-likelihood of its answer tokens "
                  "(`answer_token_ids`) right after the prompt, divided by tailorkd.json `temperature.value`, then "
                  "softmaxed over the classes. No ONNX graph is exported for it (tailorkd.json `onnx.reason`).", "",
                  text_note]
    lines += ["", "## How it was made", "",
              f"- **Base model**: {card['base_model']}"
              + (f" ([{base}](https://huggingface.co/{base}))" if base else ""),
              f"- **Teacher**: {card['teacher']}",
              f"- **Data**: {card['data']}",
              f"- **Adapter**: {about['adapter_method']}; max length {about['max_length']} tokens"]
    if report:
        n = ((report.get("systems") or {}).get(system, {}).get("metrics") or {}).get("n")
        lines += ["", "## Results", "",
                  f"On {n if n is not None else 'the'} human-labelled test texts of the run (percent; tailorkd's "
                  "report.json, where the 95% bootstrap intervals are):", "", *_results_table(report, system)]
    else:
        lines += ["", "## Results", "", "The run had no report (run `tailorkd evaluate` before exporting)."]
    lines += ["", "## Limitations", "",
              "- It learnt the teacher's labels, not human ones: it inherits the teacher's errors and biases, and the "
              "test set above is its only measure against people.",
              "- Only these labels exist: every text gets one of them, also a text about none of them.",
              f"- Texts are cut to {about['max_length']} tokens; it was trained and tested on the data named above "
              "only, and may do worse on other kinds of text or other languages.",
              "- The int8 ONNX copy rounds the weights: its probabilities differ a little from the fp32 ones "
              "(and may change the predicted class of a near tie)." if encoder else
              "- The classes are read from the answer tokens' likelihoods: the prompt must be rendered exactly.",
              "- A small test set: the intervals in report.json show how uncertain the numbers are.", ""]
    return "\n".join(lines)
