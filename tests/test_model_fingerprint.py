"""tailorkd.models.weights_fingerprint: a cheap, content-based identity of a model's weights."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import torch

from tailorkd import models
from tailorkd.errors import TailorkdError
from tailorkd.models import weights_fingerprint


def test_same_weights_give_the_same_fingerprint_anywhere(tiny_models, tmp_path):
    folder = tiny_models["llama"]
    fingerprint = weights_fingerprint(str(folder))
    assert len(fingerprint) == 16 and int(fingerprint, 16) >= 0
    assert weights_fingerprint(str(folder)) == fingerprint
    copy = tmp_path / "elsewhere" / "copied-model"
    shutil.copytree(folder, copy)
    for path in copy.iterdir():
        os.utime(path, (1_000_000, 1_000_000))  # times do not count
    assert weights_fingerprint(str(copy)) == fingerprint


def test_one_changed_weight_changes_the_fingerprint(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], folder)
    before, size = weights_fingerprint(str(folder)), (folder / "model.safetensors").stat().st_size
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    with torch.no_grad():
        model.model.norm.weight[0] += 1.0
    model.save_pretrained(str(folder))  # same shapes: the same file size
    assert (folder / "model.safetensors").stat().st_size == size
    assert weights_fingerprint(str(folder)) != before


def test_large_files_are_sampled_quickly(tmp_path):
    folder = tmp_path / "big"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    weights = folder / "sub" / "model.gguf"
    with open(weights, "wb") as file:
        file.truncate(1 << 30)  # 1 GiB, sparse: nothing written to disk
    started = time.perf_counter()
    before = weights_fingerprint(str(folder))
    assert time.perf_counter() - started < 1.0
    with open(weights, "r+b") as file:
        file.seek((1 << 30) - 1)
        file.write(b"\x01")  # the last sample covers the end of the file
    assert weights_fingerprint(str(folder)) != before
    (folder / "config.json").write_text('{"changed": true}')  # only weight files count
    after = weights_fingerprint(str(folder))
    weights.rename(folder / "sub" / "other.gguf")  # its relative name counts
    assert weights_fingerprint(str(folder)) != after


def test_folder_without_weights_is_a_clear_error(tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(TailorkdError, match="no weight files") as error:
        weights_fingerprint(str(folder))
    assert str(folder) in str(error.value)


def test_hub_id_and_missing_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so that the id cannot be a relative folder
    assert weights_fingerprint("some-org/some-model") == "hub:some-org/some-model"
    with pytest.raises(TailorkdError, match="does not exist"):
        weights_fingerprint(str(tmp_path / "missing" / "folder"))


def test_registry_name_fingerprints_its_prepared_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(models.cache, "missing_requirements", lambda model: [])

    def convert(out: Path, work: Path) -> dict:
        (out / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
        (out / "model.safetensors").write_bytes(b"weights")
        return {"converter": "fake"}

    monkeypatch.setitem(models.cache.CONVERTERS, "minilm-l6", convert)
    fingerprint = weights_fingerprint("minilm-l6")  # prepares it
    assert fingerprint == weights_fingerprint(str(tmp_path / "cache" / "models" / "minilm-l6"))
