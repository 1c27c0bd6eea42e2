"""`tailorkd label --engine ray`: one tiny LLaMA teacher per Ray actor on a local Ray of 2 CPUs, the driver
writing the one label store: each pool and test text labelled once, the same probabilities as one process,
nothing labelled again on a rerun, and a run killed between chunks resumes with what the store lacks."""

from __future__ import annotations

import json
import logging
import time

import pytest

from helpers import make_recipe
from tailorkd import pipeline, ray_label
from tailorkd.cli import main
from tailorkd.errors import TailorkdError
from tailorkd.labels import LabelStore, text_hash
from tailorkd.ray_label import RayEngine, actor_recipe
from tailorkd.recipe import load_recipe
from tailorkd.recipe.teacher import ServerConfig
from tailorkd.run_dir import RunDir

ray = pytest.importorskip("ray")

CHUNK = 8  # 50 texts (30 pool + 20 test) in 7 chunks, so both actors get several


@pytest.fixture(scope="module")
def local_ray():
    # Generous start-up: the machine may be busy; the driver joins this Ray instead of starting its own.
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


def _recipe(folder, tiny_models):
    folder.mkdir(parents=True)
    teacher = {"model": str(tiny_models["llama"]), "batch_size": 4, "check": None}
    return make_recipe(folder, tiny_models["llama"], tiny_models["bert"], teacher_section=teacher)


def _stored(recipe_path: str) -> dict[str, tuple[list[float], str]]:
    recipe = load_recipe(recipe_path)
    with LabelStore(RunDir(recipe).label_store) as store:
        rows = store.conn.execute("SELECT teacher, prompt, text_hash, probs, predicted FROM labels").fetchall()
    return {(t, p, h): (json.loads(probs), predicted) for t, p, h, probs, predicted in rows}


@pytest.fixture(scope="module")
def one_process(tiny_models, tmp_path_factory):
    """The store a single-process label run writes (the reference)."""
    path = _recipe(tmp_path_factory.mktemp("ray_ref") / "single", tiny_models)
    pipeline.label(load_recipe(path))
    return _stored(path)


@pytest.fixture()
def spy(monkeypatch):
    """The stats of every label_on_ray call (the stage imports it when it runs)."""
    calls = []
    real = ray_label.label_on_ray

    def recording(*args, **kwargs):
        calls.append(real(*args, **kwargs))
        return calls[-1]

    monkeypatch.setattr(ray_label, "label_on_ray", recording)
    return calls


def _texts(recipe_path: str) -> set[str]:
    data = pipeline.load_data(load_recipe(recipe_path))
    return {text_hash(r["text"]) for split in ("pool", "test") for r in data.rows(split)}


def _same_as_one_process(stored, reference):
    assert stored.keys() == reference.keys()
    for key, (probs, predicted) in stored.items():
        assert probs == pytest.approx(reference[key][0], abs=1e-6)
        assert predicted == reference[key][1]


def test_each_text_labelled_once_by_two_actors_as_one_process_would(local_ray, tiny_models, tmp_path, one_process,
                                                                     spy):
    path = _recipe(tmp_path / "ray", tiny_models)
    summary = pipeline.label(load_recipe(path), engine=RayEngine(workers=2, chunk=CHUNK))
    texts = _texts(path)
    stats = spy[0]
    assert stats["actors"] == 2 and stats["chunks"] == 7 and stats["texts"] == len(texts) == 50
    assert len(stats["texts_per_actor"]) == 2 and all(n > 0 for n in stats["texts_per_actor"].values())
    assert sum(stats["texts_per_actor"].values()) == len(texts)  # every text scored once, by one actor
    assert summary["pool_labelled"] == 30 and summary["test_labelled"] == 20
    stored = _stored(path)
    assert {h for _, _, h in stored} == texts
    _same_as_one_process(stored, one_process)

    # Again, through the command line: the stage is current, so no engine starts; forced, the engine finds
    # everything in the store: no actor is started, nothing changes.
    assert main(["label", path, "--engine", "ray", "--workers", "2"]) == 0
    assert len(spy) == 1
    assert main(["label", path, "--engine", "ray", "--workers", "2", "--force"]) == 0
    assert spy[1]["texts"] == 0 and spy[1]["actors"] == 0
    assert _stored(path) == stored


def test_a_run_killed_between_chunks_resumes_with_the_rest(local_ray, tiny_models, tmp_path, one_process, spy,
                                                          monkeypatch):
    path = _recipe(tmp_path / "killed", tiny_models)
    real_put = LabelStore.put_batch
    written = []

    def put_then_die(self, teacher, prompt, names, records):
        if len(written) == 2:
            raise KeyboardInterrupt  # the driver is stopped after two chunks are stored
        real_put(self, teacher, prompt, names, records)
        written.append(len(records))  # chunks arrive in any order, and the last of a split is smaller

    monkeypatch.setattr(LabelStore, "put_batch", put_then_die)
    with pytest.raises(KeyboardInterrupt):
        pipeline.label(load_recipe(path), engine=RayEngine(workers=2, chunk=CHUNK))
    assert len(written) == 2 and len(_stored(path)) == sum(written) > CHUNK
    # The actors were stopped with the run: the cluster's CPUs are free again (soon; a busy machine is slow).
    deadline = time.monotonic() + 300
    while ray.available_resources().get("CPU", 0) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert ray.available_resources().get("CPU", 0) == 2

    monkeypatch.setattr(LabelStore, "put_batch", real_put)
    pipeline.label(load_recipe(path), engine=RayEngine(workers=3, chunk=CHUNK))
    assert spy[-1]["texts"] == 50 - sum(written)  # only what the store lacked
    assert spy[-1]["actors"] == 2  # 3 asked, 2 CPUs: a third actor would wait forever
    _same_as_one_process(_stored(path), one_process)


def test_workers_need_the_ray_engine(tiny_models, tmp_path, capsys):
    path = _recipe(tmp_path / "flags", tiny_models)
    assert main(["label", path, "--workers", "2"]) == 2
    assert "--workers, --ray-address and --endpoint go with --engine ray" in capsys.readouterr().err


def test_each_actor_asks_its_endpoint(tiny_models, tmp_path):
    """--endpoint: actor i's teacher asks server i mod n; a local teacher cannot take endpoints."""
    recipe = load_recipe(_recipe(tmp_path / "served", tiny_models))
    with pytest.raises(TailorkdError, match="not served"):
        actor_recipe(recipe, ["http://a/v1"], 0)
    assert actor_recipe(recipe, [], 3) is recipe
    served = recipe.model_copy(update={"teacher": recipe.teacher.model_copy(update={
        "server": ServerConfig(base_url="http://main/v1")})})
    urls = [actor_recipe(served, ["http://a/v1", "http://b/v1"], i).teacher.server.base_url for i in range(3)]
    assert urls == ["http://a/v1", "http://b/v1", "http://a/v1"]
    assert served.teacher.server.base_url == "http://main/v1"
