"""cluster.yaml (the AWS Ray cluster launcher config) passes Ray's own config validation and keeps
its promises: a CPU-only head, autoscaled GPU and CPU worker types, the package installed on every
node, shared storage mounted, and no security-group rule open to the whole internet.

Validation is what `ray up` does before it touches the cloud (``_bootstrap_config`` in
``ray/autoscaler/_private/commands.py``): ``prepare_config`` (merge with the AWS defaults.yaml,
merge setup commands, fill per-type min/max workers) then ``validate_config`` (the JSON schema
``ray/autoscaler/ray-schema.json`` plus Ray's cross-field checks). Neither imports boto3 nor calls
AWS; the provider bootstrap that does (``AWSNodeProvider.bootstrap_config``) is never reached.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"


def load() -> dict[str, Any]:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)  # the loader `ray up` uses


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """Ray's own pre-launch validation; returns the prepared (defaults-filled) config."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return load()


@pytest.fixture(scope="module")
def prepared(raw: dict[str, Any]) -> dict[str, Any]:
    return ray_validate(raw)


def worker_types(cfg: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in cfg["available_node_types"].items() if name != cfg["head_node_type"]}


# --- Ray's validation ---------------------------------------------------------------------------


def test_shipped_config_passes_ray_validation(prepared: dict[str, Any]) -> None:
    assert prepared["cluster_name"] == "boxsup"
    assert prepared["provider"]["type"] == "aws"


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda c: c.__setitem__("max_worker", c.pop("max_workers")), id="top-level max_worker"),
        pytest.param(lambda c: c.__setitem__("setup_command", c.pop("setup_commands")), id="top-level setup_command"),
        pytest.param(lambda c: c["available_node_types"]["ray.worker.gpu"].__setitem__(
            "min_worker", c["available_node_types"]["ray.worker.gpu"].pop("min_workers")), id="node-type min_worker"),
        pytest.param(lambda c: c["auth"].__setitem__("ssh_usr", c["auth"].pop("ssh_user")), id="auth ssh_usr"),
        pytest.param(lambda c: c["provider"].__setitem__("cache_stopped_nodes", "no"), id="provider flag not a boolean"),
        pytest.param(lambda c: c["available_node_types"]["ray.worker.gpu"]["resources"].__setitem__("GPU", 0.5),
                     id="fractional GPU resource"),
    ],
)
def test_misspelled_or_wrong_keys_fail_ray_validation(raw: dict[str, Any], mutate) -> None:
    broken = copy.deepcopy(raw)
    mutate(broken)
    with pytest.raises(jsonschema.ValidationError):
        ray_validate(broken)


def test_min_workers_above_global_max_fails_ray_validation(raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["ray.worker.cpu"]["min_workers"] = broken["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        ray_validate(broken)


def test_unknown_head_type_fails_ray_validation(raw: dict[str, Any]) -> None:
    broken = copy.deepcopy(raw)
    broken["head_node_type"] = "ray.head.nope"
    with pytest.raises(ValueError, match="head_node_type"):
        ray_validate(broken)


# --- structural promises ------------------------------------------------------------------------


def test_head_is_cpu_only_and_takes_no_work(prepared: dict[str, Any]) -> None:
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU", 0) == 0
    assert head["resources"].get("GPU", 0) == 0
    assert head["max_workers"] == 0
    assert not head["node_config"]["InstanceType"].startswith(("g", "p"))


def test_gpu_worker_type_for_ray_train(prepared: dict[str, Any]) -> None:
    gpu = {n: t for n, t in worker_types(prepared).items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu, "no worker type advertises a GPU"
    for t in gpu.values():
        assert t["min_workers"] == 0  # scales to zero: no idle GPU bill
        assert 1 <= t["max_workers"] <= prepared["max_workers"]
        assert t["node_config"]["InstanceType"].startswith(("g", "p"))


def test_cpu_worker_type_for_label_assignment(prepared: dict[str, Any]) -> None:
    cpu = {n: t for n, t in worker_types(prepared).items()
           if t["resources"].get("GPU", 0) == 0 and t["resources"].get("CPU", 0) > 0}
    assert cpu, "no CPU-only worker type"
    for t in cpu.values():
        assert t["min_workers"] == 0
        assert 1 <= t["max_workers"] <= prepared["max_workers"]


def test_autoscaling_bounds(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    assert raw["idle_timeout_minutes"] > 0
    for t in worker_types(raw).values():  # set explicitly, not left to Ray's defaults
        assert "min_workers" in t and "max_workers" in t
    assert sum(t["max_workers"] for t in worker_types(prepared).values()) <= prepared["max_workers"]


def _strings(value: Any):
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def test_ray_creates_no_security_group(prepared: dict[str, Any]) -> None:
    """Every node type names its group, so Ray's AWS bootstrap leaves groups alone.

    A group Ray creates gets Ray's own "SSH from 0.0.0.0/0" rule; with SecurityGroupIds on every
    node type ``_configure_security_group`` returns before it calls AWS (no credentials here: any
    call would fail this test).
    """
    from ray.autoscaler._private.aws.config import _configure_security_group

    assert "security_group" not in prepared["provider"]
    assert _configure_security_group(copy.deepcopy(prepared)) == prepared
    groups = {tuple(t["node_config"]["SecurityGroupIds"]) for t in prepared["available_node_types"].values()}
    assert len(groups) == 1  # one group: its members reach each other (Ray, NCCL, MLflow), nobody else


def test_nothing_open_to_the_internet(raw: dict[str, Any]) -> None:
    for s in _strings(raw):  # node configs included
        assert "0.0.0.0/0" not in s and "::/0" not in s, s
    text = CLUSTER_YAML.read_text()
    assert "0.0.0.0/0" not in text.replace('"SSH from 0.0.0.0/0"', "")  # only the warning names it


def test_the_documented_group_admits_ssh_from_the_admin_cidr_only() -> None:
    commands = " ".join(line.lstrip("# ").strip() for line in CLUSTER_YAML.read_text().splitlines()
                        if line.lstrip().startswith("#")).replace("\\ ", "")
    rules = re.findall(r"authorize-security-group-ingress [^#]*?--protocol (\S+)(?: --port (\d+))? --(cidr|source-group) (\S+)", commands)
    assert sorted(rules) == [("all", "", "source-group", "$SG"), ("tcp", "22", "cidr", "203.0.113.0/24")]


def test_setup_installs_the_package_on_every_node(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    assert raw["file_mounts"] == {"~/boxsup": "."}
    assert (ROOT / raw["file_mounts"]["~/boxsup"] / "pyproject.toml").is_file()  # `ray up` from the repo root
    assert ".venv" in raw["rsync_exclude"]  # the local venv is not uploaded
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in by Ray
        cmds = prepared[key]
        assert any("pip install -e ~/boxsup" in c for c in cmds), key
        assert any("ray[" in c and "pip install" in c for c in cmds), key
    assert any("boto3" in c for c in prepared["head_setup_commands"])  # the autoscaler needs it


def test_shared_storage_is_mounted_everywhere(raw: dict[str, Any]) -> None:
    mount = [c for c in raw["setup_commands"] if "mount -t nfs4" in c]
    assert len(mount) == 1 and "/mnt/shared" in mount[0]


def test_ray_start_commands(raw: dict[str, Any]) -> None:
    head = " ".join(raw["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "mlflow server" in head
    worker = " ".join(raw["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
    assert not raw.get("docker")
