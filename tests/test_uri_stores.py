"""Stores at a URI: the storage module on a local directory and on S3 (moto on loopback), and a tiny
Ray run whose proposal store, label store, checkpoints and run files all live on S3."""

import json
import uuid

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from boxsup.cli import main
from boxsup.data.label_store import LabelStore
from boxsup.data.synth import generate_dataset
from boxsup.errors import BoxSupError
from boxsup.proposals.pool import CandidatePool
from boxsup.proposals.store import ProposalStore
from boxsup.utils.storage import LocalLocation, RemoteLocation, canonical, join, open_location


@pytest.fixture
def bucket(s3_endpoint):
    """A new, empty bucket on the session's S3 endpoint; returns its name."""
    import boto3

    name = f"boxsup-{uuid.uuid4().hex[:10]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3(s3_endpoint):
    """An s3fs filesystem for reading back what the code under test wrote (no listing cache)."""
    import fsspec

    return fsspec.filesystem("s3", use_listings_cache=False)


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A store root of each kind: a local directory, and a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path / "store")
    return f"s3://{request.getfixturevalue('bucket')}/some/prefix"


def test_locations_read_write_list(root):
    location = open_location(root)
    assert isinstance(location, RemoteLocation if root.startswith("s3://") else LocalLocation)
    assert not location.exists("a.bin") and location.list() == [] and location.list("sub") == []
    with pytest.raises(FileNotFoundError):
        location.read_bytes("a.bin")
    location.write_bytes("a.bin", b"one")
    location.write_bytes("a.bin", b"two")  # replaced whole
    location.write_bytes("sub/b.bin", b"")
    assert location.read_bytes("a.bin") == b"two" and location.read_bytes("sub/b.bin") == b""
    assert location.exists("a.bin") and location.exists("sub/b.bin") and not location.exists("sub")
    assert location.list() == ["a.bin", "sub"] and location.list("sub") == ["b.bin"]  # no temp files left
    assert str(location.path("sub/b.bin")) == join(root, "sub", "b.bin")


def test_stores_round_trip_at_either_kind_of_root(root, tmp_path):
    pool = CandidatePool.from_masks(np.random.default_rng(0).random((4, 10, 7)) > 0.5)
    proposals = ProposalStore(join(root, "proposals"))
    proposals.save("img", pool)
    proposals.write_meta({"method": "test"})
    assert proposals.has("img") and not proposals.has("other") and proposals.stored_ids() == {"img"}
    assert proposals.read_meta() == {"method": "test"}
    np.testing.assert_array_equal(proposals.load("img").membership.toarray(), pool.membership.toarray())
    with pytest.raises(BoxSupError, match=r"other\.npz: proposal file missing"):
        proposals.load("other")

    labels = LabelStore(join(root, "labels"))
    label = np.arange(70, dtype=np.uint8).reshape(7, 10) % 21
    labels.write(0, "img", label)
    labels.write(3, "img", label)
    np.testing.assert_array_equal(labels.read(3, "img"), label)
    assert labels.rounds(up_to=2) == [0] and labels.rounds(up_to=9) == [0, 3]
    with pytest.raises(BoxSupError, match=r"round_001/img\.png: label map missing"):
        labels.read(1, "img")


def _read_into(location, key, queue):
    try:
        queue.put(location.read_bytes(key))
    except Exception as exc:  # noqa: BLE001 (the parent asserts on it)
        queue.put(repr(exc))


def test_a_forked_child_reads_a_location_opened_before_the_fork(root):
    """DataLoader workers (train.loader_workers > 0) are forks of a Train worker that has the label store open."""
    import multiprocessing

    location = open_location(root)
    location.write_bytes("a.bin", b"data")
    assert location.read_bytes("a.bin") == b"data"
    fork = multiprocessing.get_context("fork")
    queue = fork.Queue()
    child = fork.Process(target=_read_into, args=(location, "a.bin", queue))
    child.start()
    assert queue.get(timeout=60) == b"data"
    child.join()


def test_uri_paths_are_kept_as_uris(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert canonical("s3://bucket/runs/") == "s3://bucket/runs" and canonical("runs") == str(tmp_path / "runs")
    assert canonical(f"file://{tmp_path}/x") == str(tmp_path / "x")
    assert join("s3://bucket/runs", "r", "labels") == "s3://bucket/runs/r/labels"
    assert isinstance(open_location(f"file://{tmp_path}"), LocalLocation)


def test_missing_bucket_is_a_one_line_error(s3_endpoint):
    location = open_location("s3://boxsup-no-such-bucket/runs")
    assert not location.exists("run.json")
    with pytest.raises(BoxSupError) as caught:
        location.write_bytes("run.json", b"{}")
    message = str(caught.value)
    assert message.startswith("s3://boxsup-no-such-bucket/runs/run.json: cannot write")
    assert "bucket does not exist" in message and "\n" not in message


def test_no_credentials_and_no_endpoint_are_one_line_errors(s3_endpoint, monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore: give up at once (s3fs still retries a few times)
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs keeps one instance per argument set, made before
    try:
        with pytest.raises(BoxSupError, match=r"^s3://any-bucket/x/a: Could not connect to the endpoint URL"):
            open_location("s3://any-bucket/x").exists("a")
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(BoxSupError, match=r"^s3://any-bucket/x/a: Unable to locate credentials$"):
            open_location("s3://any-bucket/x").write_bytes("a", b"")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # later tests get the session's endpoint and credentials


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, n_images=16, size=64, seed=3)
    return root


@pytest.mark.ray
@pytest.mark.slow
def test_tiny_ray_run_with_every_store_on_s3(ray_session, bucket, s3, tiny_data, tiny_config, tmp_path, monkeypatch, capsys):
    """2 Train workers and 2 actors; interrupted after epoch 1, resumed from S3 alone, then evaluated from S3."""
    monkeypatch.chdir(tmp_path)  # anything written to a local path by mistake would land here
    config = tiny_config(tiny_data, output__dir=f"s3://{bucket}/runs", proposals__store=f"s3://{bucket}/proposals/ss")
    run_uri = f"s3://{bucket}/runs/r"
    monkeypatch.setenv("BOXSUP_FAULT", "raise:1")
    assert main(["train", "--config", str(config)]) == 2
    assert f"--resume {run_uri}" in capsys.readouterr().err
    monkeypatch.delenv("BOXSUP_FAULT")
    assert main(["train", "--resume", run_uri]) == 0
    assert f"({run_uri})" in capsys.readouterr().out

    # Resumed from the Ray Train checkpoint on S3: every epoch logged once, in the same MLflow run.
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert run.info.status == "FINISHED"
    for metric in ("train_loss", "pseudo_miou"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [0, 1, 2], metric

    train_ids = sorted((tiny_data / "ImageSets" / "Segmentation" / "train.txt").read_text().split())
    proposals = s3.ls(f"{bucket}/proposals/ss", detail=False)
    assert sorted(p.rsplit("/", 1)[1] for p in proposals) == sorted(["meta.json", *(f"{i}.npz" for i in train_ids)])
    run_files = {p.rsplit("/", 1)[1] for p in s3.ls(f"{bucket}/runs/r", detail=False)}
    assert {"config.yaml", "run.json", "result.json", "checkpoint.pt", "confusion_matrix.png",
            "label_evolution.png", "labels", "ray", ".fault-raise-1"} <= run_files
    assert s3.ls(f"{bucket}/runs/r/labels", detail=False) == [f"{bucket}/runs/r/labels/round_{r:03d}" for r in range(3)]
    for r in range(3):  # every training image has a label map in every round
        maps = s3.ls(f"{bucket}/runs/r/labels/round_{r:03d}", detail=False)
        assert sorted(p.rsplit("/", 1)[1] for p in maps) == [f"{i}.png" for i in train_ids]
    ray_checkpoints = [p for p in s3.find(f"{bucket}/runs/r/ray") if p.endswith("/state.pt")]
    assert ray_checkpoints and all("/checkpoint_" in p for p in ray_checkpoints)
    assert json.loads(s3.cat_file(f"{bucket}/runs/r/result.json"))["val_miou"] >= 0
    assert json.loads(s3.cat_file(f"{bucket}/runs/r/run.json"))["config"]["output"]["dir"] == f"s3://{bucket}/runs"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlartifacts", "mlflow.db", "tiny.yaml"]  # artifacts beside the db

    assert main(["eval", "--checkpoint", f"{run_uri}/checkpoint.pt", "--data", str(tiny_data), "--split", "val"]) == 0
    assert "mIoU" in capsys.readouterr().out
