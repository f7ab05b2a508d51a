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
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
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


def test_every_node_runs_the_pinned_image_and_installs_nothing(raw: dict[str, Any], prepared: dict[str, Any]) -> None:
    image = raw["docker"]["image"]
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest")  # a tag, not whatever is newest
    assert raw["file_mounts"] == {}  # the code is the image's, not a local checkout's
    for key in ("initialization_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for command in prepared[key]:
            assert "pip install" not in command and "conda" not in command, (key, command)
            assert "|| true" not in command and "||true" not in command, (key, command)  # no silent fallback


def test_the_image_has_ci_s_python_and_installs_the_pins_make_installs() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM nvidia/cuda:\S+$", dockerfile, re.M)
    python = re.search(r"^ARG PYTHON_VERSION=(\d+)\.(\d+)\.(\d+)$", dockerfile, re.M)
    assert python and tuple(map(int, python.groups()[:2])) == sys.version_info[:2]  # what this (CI's) Python is
    assert "pip install -c constraints.txt" in dockerfile
    assert "-c constraints.txt -e '.[test]'" in (ROOT / "Makefile").read_text()


def test_constraints_pin_every_dependency_of_the_project() -> None:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    for requirement in map(Requirement, wanted):
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name], requirement.specifier)


def test_shared_storage_is_mounted_on_each_host_and_passed_into_its_container(raw: dict[str, Any]) -> None:
    mount = [c for c in raw["initialization_commands"] if "mount -t nfs4" in c]  # on the host, before docker
    assert len(mount) == 1 and "/mnt/shared" in mount[0]
    assert "--volume /mnt/shared:/mnt/shared" in raw["docker"]["run_options"]


def documented_cluster_commands() -> list[tuple[str, str]]:
    """(where, command) of every `boxsup train` / `boxsup sweep` that cluster.yaml and the README give
    for a cluster, continuation lines joined and comment markers dropped."""
    found = []
    for path in (CLUSTER_YAML, ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))):
        text = re.sub(r"\\\n[#\s]*", " ", path.read_text())  # join "\" continuations (and "#   " in YAML comments)
        for command in re.findall(r"boxsup (?:train|sweep) [^\n\"]*ray\.address=auto[^\n\"]*", text):
            found.append((path.name, command.strip()))
    return found


def test_cluster_yaml_and_the_readme_give_cluster_commands() -> None:
    assert {where for where, _ in documented_cluster_commands()} >= {"cluster.yaml", "README.md"}


@pytest.mark.parametrize("where,command", documented_cluster_commands())
def test_every_documented_cluster_command_is_valid(where: str, command: str) -> None:
    """Its flags parse, its config loads with its --set values, its search space loads: what would
    stop it on the cluster before any data is read."""
    from boxsup.cli import build_parser
    from boxsup.config import load_config
    from boxsup.platform.search_space import load_search_space

    args = build_parser().parse_args(shlex.split(command)[1:])

    def in_repo(path: str) -> Path:  # the image's checkout is this one
        return ROOT / path.removeprefix("/opt/boxsup/")

    cfg = load_config(in_repo(args.config), args.set)
    assert cfg["ray"]["address"] == "auto"
    if args.command == "sweep":
        load_search_space(in_repo(args.space))


def test_ray_start_commands(raw: dict[str, Any]) -> None:
    head = " ".join(raw["head_start_ray_commands"])
    assert "ray start --head" in head and "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "mlflow server" in head
    worker = " ".join(raw["worker_start_ray_commands"])
    assert "ray start --address=$RAY_HEAD_IP:6379" in worker
