"""A training run's MLflow model: logged once by the driver, loaded by mlflow.pyfunc, used by boxsup predict and runs."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow.models import Model
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

import boxsup
from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.images import read_rgb
from boxsup.data.synth import generate_dataset
from boxsup.evaluation.inference import predict_label_map
from boxsup.platform.launch import run_boxsup
from boxsup.serving import mlflow_model
from boxsup.serving.trained_model import load_trained_model, mlflow_store


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One in-process run (mask supervision, 1 epoch: no proposals, no Ray), evaluated at scales 0.75 and 1."""
    root = tmp_path_factory.mktemp("mlflow_model")
    generate_dataset(root / "data", n_images=8, size=48, seed=5)
    raw = {"seed": 0, "data": {"root": str(root / "data"), "crop_size": 48, "supervision": "mask"},
           "model": {"backbone": "small", "weights": "none"},
           "train": {"epochs": 1, "batch_size": 4, "lr": 0.01, "num_threads": 1},
           "ray": {"num_workers": 0}, "eval": {"scales": [0.75, 1.0]},
           "tracking": {"uri": f"sqlite:///{root}/mlflow.db", "experiment": "served", "run_name": "r"},
           "output": {"dir": str(root / "runs")}}
    (root / "run.yaml").write_text(yaml.safe_dump(raw))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = run_boxsup(load_config(root / "run.yaml"), progress=False)
    images = sorted((root / "data" / "JPEGImages").glob("*.jpg"))[:3]
    return {"uri": raw["tracking"]["uri"], "run_id": result.run_id, "run_dir": Path(result.run_dir), "images": images,
            "warnings": [str(w.message) for w in caught]}


def test_the_run_model_loads_with_pyfunc_and_predicts_at_the_runs_scales(trained, monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", trained["uri"])
    model_uri = f"runs:/{trained['run_id']}/model"
    local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=str(tmp_path)))
    assert (local / "MLmodel").is_file() and not list(local.rglob("*.pkl"))  # nothing pickled to load
    pyfunc = mlflow.pyfunc.load_model(model_uri)
    assert pyfunc.metadata.metadata["classes"][0] == "background"
    params = {p.name: p.default for p in pyfunc.metadata.signature.params.params}
    assert params == {"scales": [0.75, 1.0], "crf": False}

    network = load_trained_model(trained["run_dir"] / "checkpoint.pt").network
    images = np.stack([read_rgb(p) for p in trained["images"]])  # the synthetic images share one size
    maps = pyfunc.predict(images)
    assert maps.dtype == np.uint8 and maps.shape == images.shape[:3]
    for image, label_map in zip(images, maps):
        np.testing.assert_array_equal(label_map, predict_label_map(network, image, scales=(0.75, 1.0)))
    at_one = pyfunc.predict(images, params={"scales": [1.0]})
    for image, label_map in zip(images, at_one):
        np.testing.assert_array_equal(label_map, predict_label_map(network, image, scales=(1.0,)))


def test_predict_takes_the_run_uri_and_runs_names_it(trained, tmp_path, capsys):
    model_uri = f"runs:/{trained['run_id']}/model"
    image_args = ["--images", *map(str, trained["images"])]
    assert main(["predict", "--checkpoint", model_uri, "--tracking-uri", trained["uri"], *image_args,
                 "--out", str(tmp_path / "via_mlflow")]) == 0
    assert main(["predict", "--checkpoint", str(trained["run_dir"] / "checkpoint.pt"), *image_args,
                 "--out", str(tmp_path / "via_file")]) == 0
    artifact = f"runs:/{trained['run_id']}/model/data/checkpoint.pt"  # the model's checkpoint file works too
    assert main(["predict", "--checkpoint", artifact, "--tracking-uri", trained["uri"], *image_args,
                 "--out", str(tmp_path / "via_artifact")]) == 0
    maps = {folder: {p.name: np.asarray(Image.open(p)) for p in (tmp_path / folder).iterdir()}
            for folder in ("via_mlflow", "via_file", "via_artifact")}
    assert all(found.keys() == {f"{p.stem}.png" for p in trained["images"]} for found in maps.values())
    for name in maps["via_file"]:
        assert np.array_equal(maps["via_mlflow"][name], maps["via_file"][name])
        assert np.array_equal(maps["via_artifact"][name], maps["via_file"][name])
    capsys.readouterr()

    assert main(["runs", "--experiment", "served", "--tracking-uri", trained["uri"]]) == 0
    assert f"best run r: model {model_uri}" in capsys.readouterr().out

    missing = "runs:/0123456789abcdef0123456789abcdef/model"
    assert main(["predict", "--checkpoint", missing, "--tracking-uri", trained["uri"], *image_args,
                 "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"boxsup: error: {missing}: cannot fetch the model") and "\n" not in err


def test_eval_takes_the_run_uri_and_a_registered_model_as_predict_does(trained, capsys):
    """`boxsup eval` opens a checkpoint as predict does (one opener): runs:/ and models:/ URIs score as the file."""
    data = str(trained["images"][0].parents[1])
    store = ["--tracking-uri", trained["uri"]]

    def scores(*checkpoints: str) -> str:
        assert main(["eval", "--checkpoint", *checkpoints, "--data", data, *store]) == 0
        return capsys.readouterr().out

    by_file = scores(str(trained["run_dir"] / "checkpoint.pt"))
    assert by_file.startswith("mIoU ") and "background" in by_file
    assert scores(f"runs:/{trained['run_id']}/model") == by_file
    assert scores(f"runs:/{trained['run_id']}/model/data/checkpoint.pt") == by_file
    with mlflow_store(trained["uri"]):
        version = mlflow.register_model(f"runs:/{trained['run_id']}/model", "served-eval").version
    assert scores(f"models:/served-eval/{version}") == by_file
    both = scores(str(trained["run_dir"] / "checkpoint.pt"), f"runs:/{trained['run_id']}/model")
    assert both.count(by_file.splitlines()[0]) == 2 and f"runs:/{trained['run_id']}/model:" in both  # each named
    missing = "runs:/0123456789abcdef0123456789abcdef/model"
    assert main(["eval", "--checkpoint", missing, "--data", data, *store]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"boxsup: error: {missing}: cannot fetch the model") and "\n" not in err


def test_a_model_that_cannot_be_logged_leaves_the_trained_run_finished(tmp_path, monkeypatch, caplog):
    import boxsup.platform.launch as launch

    def refuse(*args, **kwargs):
        raise OSError("artifact store refused the upload")

    monkeypatch.setattr(launch, "log_run_model", refuse)
    generate_dataset(tmp_path / "data", n_images=6, size=48, seed=6)
    cfg = load_config(None, [f"data.root={tmp_path / 'data'}", "data.crop_size=48", "data.supervision=mask",
                             "model.backbone=small", "model.weights=none", "train.epochs=1", "train.batch_size=4",
                             "ray.num_workers=0", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db",
                             f"output.dir={tmp_path / 'runs'}", "tracking.run_name=r"])
    result = run_boxsup(cfg, progress=False)
    run = mlflow.MlflowClient(f"sqlite:///{tmp_path}/mlflow.db").get_run(result.run_id)
    assert run.info.status == "FINISHED" and (Path(result.run_dir) / "checkpoint.pt").is_file()
    assert run.data.tags["boxsup.model_error"] == "artifact store refused the upload"
    assert "its MLflow model could not be logged (artifact store refused the upload)" in caplog.text


def test_the_checkpoint_is_stored_once_as_the_models_data(trained, tmp_path):
    client = mlflow.MlflowClient(trained["uri"])
    artifacts = {a.path for a in client.list_artifacts(trained["run_id"])}
    assert "config.yaml" in artifacts and "checkpoint" not in artifacts  # no second copy beside the model
    with mlflow_store(trained["uri"]):
        data = mlflow.artifacts.download_artifacts(f"runs:/{trained['run_id']}/model/data/checkpoint.pt",
                                                   dst_path=str(tmp_path))
    assert Path(data).read_bytes() == (trained["run_dir"] / "checkpoint.pt").read_bytes()


def test_the_model_carries_its_code_pinned_requirements_and_an_input_example(trained, tmp_path):
    """What MLflow's default env manager (a fresh virtualenv) and build-docker need: boxsup as code, every
    package the loader imports pinned, the Python version; and no "input example was not provided" warning."""
    with mlflow_store(trained["uri"]):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained['run_id']}/model", dst_path=str(tmp_path)))
    flavor = Model.load(str(local)).flavors["python_function"]
    assert flavor["loader_module"] == "boxsup.serving.mlflow_model" and flavor["code"] == "code"
    assert (local / "code" / "boxsup" / "serving" / "mlflow_model.py").is_file()
    assert not list((local / "code").rglob("__pycache__"))
    assert flavor["python_version"] == platform.python_version()
    assert yaml.safe_load((local / "python_env.yaml").read_text())["python"] == platform.python_version()

    requirements = [Requirement(line) for line in (local / "requirements.txt").read_text().split()]
    pinned = {canonicalize_name(r.name): str(r.specifier) for r in requirements}
    assert all(spec.startswith("==") for spec in pinned.values()), pinned
    for name in ("mlflow", "torch", "torchvision", "numpy", "pillow", "pydensecrf2"):
        public = importlib.metadata.version(name).split("+")[0]  # torch 2.x+cu121 is torch==2.x on PyPI
        assert pinned[name] == f"=={public}", name

    assert Model.load(str(local)).saved_input_example_info["type"] == "ndarray"
    example = Model.load(str(local)).load_input_example(str(local))
    assert example.dtype == np.uint8 and example.shape == (1, mlflow_model.EXAMPLE_SIDE, mlflow_model.EXAMPLE_SIDE, 3)
    assert (local / "serving_input_example.json").is_file()
    assert not [w for w in trained["warnings"] if "input example" in w.lower()]


# Run in a fresh interpreter, with boxsup made unimportable (the editable install's finder removed, no
# PYTHONPATH, cwd elsewhere): the model must bring boxsup itself. Prints what it predicted and which
# distributions loading the model and predicting imported (a module's file -> the distribution owning it).
FRESH_LOAD = textwrap.dedent("""
    import importlib.metadata, importlib.util, json, sys
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path[:] = [p for p in sys.path if p not in ("", ".", sys.argv[2])]
    assert importlib.util.find_spec("boxsup") is None, "boxsup is importable without the model"
    import mlflow.pyfunc  # mlflow is pinned; what importing it pulls in (optional packages too) is its business
    from mlflow.models import Model
    before = set(sys.modules)
    model = mlflow.pyfunc.load_model(sys.argv[1])
    example = Model.load(sys.argv[1]).load_input_example(sys.argv[1])
    maps = model.predict(example)
    import boxsup, os
    new = set(sys.modules) - before
    by_top_level = importlib.metadata.packages_distributions()
    candidates = {d for name in new for d in by_top_level.get(name.split(".")[0], [])}
    owner = {}  # installed file -> its distribution (a namespace such as google.* spans several)
    for name in candidates:
        dist = importlib.metadata.distribution(name)
        owner.update({os.path.normpath(dist.locate_file(f)): dist.metadata["Name"] for f in dist.files or ()})
    files = [getattr(sys.modules[name], "__file__", None) for name in new]
    imported = {owner.get(os.path.normpath(f)) for f in files if f}
    print(json.dumps({"boxsup": boxsup.__file__, "maps": maps.tolist(), "dtype": str(maps.dtype),
                      "imported": sorted(d for d in imported if d)}))
""")


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions ``requirements`` install: themselves and their dependencies (no extras), as installed here."""
    seen: set[str] = set()
    todo = [r.name for r in requirements]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return seen


@pytest.mark.slow
def test_the_model_loads_in_a_fresh_process_without_boxsup_installed(trained, tmp_path):
    with mlflow_store(trained["uri"]):
        local = Path(mlflow.artifacts.download_artifacts(f"runs:/{trained['run_id']}/model", dst_path=str(tmp_path)))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    repo = str(Path(boxsup.__file__).parents[1])
    done = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(local), repo], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["boxsup"]).is_relative_to(local / "code")  # boxsup came from the model
    example = Model.load(str(local)).load_input_example(str(local))
    expected = mlflow.pyfunc.load_model(str(local)).predict(example)
    assert found["dtype"] == "uint8" and np.array_equal(np.array(found["maps"]), expected)

    requirements = [Requirement(line) for line in (local / "requirements.txt").read_text().split()]
    missing = {canonicalize_name(d) for d in found["imported"]} - _closure(requirements)
    assert not missing, f"the loader imports {sorted(missing)}, which requirements.txt does not bring"
