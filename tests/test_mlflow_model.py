"""A training run's MLflow model: logged once by the driver, loaded by mlflow.pyfunc, used by boxsup predict and runs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from PIL import Image

from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.images import read_rgb
from boxsup.data.synth import generate_dataset
from boxsup.evaluation.inference import predict_label_map
from boxsup.platform.launch import run_boxsup
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
    result = run_boxsup(load_config(root / "run.yaml"), progress=False)
    images = sorted((root / "data" / "JPEGImages").glob("*.jpg"))[:3]
    return {"uri": raw["tracking"]["uri"], "run_id": result.run_id, "run_dir": Path(result.run_dir), "images": images}


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
    artifact = f"runs:/{trained['run_id']}/checkpoint/checkpoint.pt"  # the run's checkpoint artifact works too
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
    assert scores(f"runs:/{trained['run_id']}/checkpoint/checkpoint.pt") == by_file
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
