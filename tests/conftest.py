"""One Ray instance for the whole test session (starting Ray costs seconds on 2 cores)."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def file_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path, with its bytes: equal dicts mean identical trees."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_same_seed_same_bytes(generate, made, tmp_path, folders, **kwargs) -> None:
    """``generate(out, seed=..., **kwargs)`` again with ``made``'s seed writes the very same files;
    with the next seed the same names, every file under ``folders`` different."""
    seed = kwargs.pop("seed")
    generate(tmp_path / "again", seed=seed, **kwargs)
    generate(tmp_path / "other", seed=seed + 1, **kwargs)
    again, other = file_bytes(tmp_path / "again"), file_bytes(tmp_path / "other")
    assert again == file_bytes(made)
    assert again.keys() == other.keys()
    for folder in folders:
        names = [name for name in again if name.startswith(folder)]
        assert names and all(again[name] != other[name] for name in names), folder


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 API (moto in server mode) on loopback; its URL and fake credentials are in os.environ.

    Started before the session's Ray (``ray_session`` asks for it): Ray's workers and actors inherit
    the environment of the process that called ``ray.init``, so they reach the same endpoint.
    """
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as env:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):  # a developer's own AWS setup stays out of it
            env.delenv(name, raising=False)
        env.setenv("AWS_ENDPOINT_URL", url)  # honoured by botocore (hence s3fs) and by pyarrow
        env.setenv("AWS_ACCESS_KEY_ID", "testing")
        env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        env.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield url
    server.stop()


def pytest_collection_modifyitems(items) -> None:
    """A test that asks for ``ray_session`` (itself or through a fixture) must be marked ``ray``:
    `make test-fast` leaves out the tests marked ray and slow (pyproject.toml's markers)."""
    unmarked = [item.nodeid for item in items
                if "ray_session" in getattr(item, "fixturenames", ()) and item.get_closest_marker("ray") is None]
    if unmarked:
        raise pytest.UsageError(f"uses ray_session without @pytest.mark.ray: {', '.join(unmarked)}")


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=6, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def write_tiny_config(tmp_path, data_root, **overrides):
    """Write ``<tmp_path>/tiny.yaml``: 64 px, small FCN, 3 epochs, 2 Train workers, 2 actors; returns its path.

    Overrides as section__key=value (or key=value at the top); MLflow goes to <tmp_path>/mlflow.db, experiment "tiny", run "r".
    """
    import yaml

    cfg = {
        "seed": 1,
        "data": {"root": str(data_root), "crop_size": 64},
        "proposals": {"method": "ss", "max_candidates": 200},
        "model": {"backbone": "small", "weights": "none"},
        "train": {"epochs": 3, "batch_size": 4, "lr": 0.01, "lr_step": 2, "num_threads": 1},
        "ray": {"num_workers": 2, "max_failures": 0},
        "assign": {"num_actors": 2},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tiny", "run_name": "r"},
        "output": {"dir": str(tmp_path / "runs")},
    }
    for key, value in overrides.items():
        if "__" in key:
            section, name = key.split("__")
            cfg[section][name] = value
        else:
            cfg[key] = value
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture
def tiny_config(tmp_path):
    """``write_tiny_config`` into this test's tmp_path: call it with the data root and overrides."""
    return lambda data_root, **overrides: write_tiny_config(tmp_path, data_root, **overrides)


def voc_data_section(root, split: str = "train") -> dict:
    """A config's ``data`` section for one VOC-layout root (what an assignment actor rebuilds its dataset from)."""
    from boxsup.config import DEFAULTS

    return {**DEFAULTS["data"], "root": str(root), "train_split": split}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """`mlflow server` with its own SQLite backend and artifact store (served over HTTP); its URI."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
         str(tmp_path / "server-artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: the job runner and workers it starts end with it
    uri = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if server.poll() is not None or time.time() > deadline:
            stop_group(server, signal.SIGKILL)
            pytest.fail("mlflow server did not come up")
        time.sleep(0.5)
    yield uri
    stop_group(server, signal.SIGTERM)


def stop_group(process: subprocess.Popen, sig: int) -> None:
    """Signal a process started with ``start_new_session`` and every process of its group; wait for it."""
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    process.wait(timeout=30)
