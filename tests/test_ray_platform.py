"""The distributed platform: the actor pool's determinism and recovery, Train worker recovery, resume."""

from dataclasses import replace

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from boxsup.assign.assigner import AssignmentSpec
from boxsup.assign.rule import LabelUpdateRule
from boxsup.cli import main
from boxsup.config import load_config
from boxsup.data.annotations import Supervision
from boxsup.data.label_store import LabelStore
from boxsup.data.synth import DEMO_CLASSES, generate_dataset
from boxsup.data.voc import VOCDataset
from boxsup.platform.assign_pool import AssignmentPool, LocalAssignmentPool
from boxsup.platform.ray_train import needs_actor_pool
from boxsup.proposals.generate import build_store
from boxsup.proposals.pool import split_atoms_by_boxes
from boxsup.proposals.store import ProposalStore
from boxsup.utils.faults import Fault
from conftest import voc_data_section


@pytest.fixture(scope="module")
def labelled_setup(tmp_path_factory):
    """A tiny dataset, its SS store, and fixed network costs reduced per atom for every image."""
    root = tmp_path_factory.mktemp("pooldata")
    generate_dataset(root / "data", n_images=24, size=64, seed=5)
    dataset = VOCDataset(root / "data", "train", DEMO_CLASSES)
    store = ProposalStore(root / "store")
    build_store(dataset, store, "ss", max_candidates=300, progress=False)
    rng = np.random.default_rng(0)
    sums = {}
    for image_id in dataset.ids:
        ann = dataset.annotation(image_id)
        atoms = split_atoms_by_boxes(store.load_atoms(image_id), ann.boxes_array())[0]
        k = 1 + len(np.unique(ann.labels_array()))
        sums[image_id] = rng.random((int(atoms.max()) + 1, k)).astype(np.float16)  # per-atom mean costs
    return root, dataset, store, sums


def spec_for(root, store, labels_dir):
    return AssignmentSpec(voc_data_section(root / "data"), DEMO_CLASSES, str(store.root), str(labels_dir),
                          LabelUpdateRule.paper(lam=3.0, k=5), 11)


def run_pool(pool, dataset, sums, on_result=None):
    for image_id in dataset.ids:
        pool.submit(1, image_id, sums[image_id])
    return pool.collect(on_result)


@pytest.mark.ray
def test_label_maps_do_not_depend_on_the_number_of_actors(ray_session, labelled_setup, tmp_path):
    root, dataset, store, sums = labelled_setup
    maps, cache_mb = {}, {}
    for name, make in {
        "local": lambda s: LocalAssignmentPool(s),
        "1 actor": lambda s: AssignmentPool(s, 1, "t-one"),
        "3 actors": lambda s: AssignmentPool(s, 3, "t-three"),
    }.items():
        spec = spec_for(root, store, tmp_path / name)
        pool = make(spec)
        results = run_pool(pool, dataset, sums)
        cache_mb[name] = pool.cache_mb()  # every pool cached once, whichever actor holds it
        pool.kill()
        assert sorted(r.image_id for r in results) == sorted(dataset.ids)
        store_ = LabelStore(spec.label_store)
        maps[name] = {i: store_.read(1, i) for i in dataset.ids}
    for image_id in dataset.ids:
        np.testing.assert_array_equal(maps["1 actor"][image_id], maps["3 actors"][image_id])
        np.testing.assert_array_equal(maps["local"][image_id], maps["3 actors"][image_id])
    assert any(m.any() for m in maps["local"].values())
    assert cache_mb["local"] > 0 and cache_mb["1 actor"] == pytest.approx(cache_mb["local"]) == cache_mb["3 actors"]


@pytest.mark.ray
def test_a_killed_actor_is_replaced_and_its_images_redone(ray_session, labelled_setup, tmp_path):
    root, dataset, store, sums = labelled_setup
    spec = spec_for(root, store, tmp_path / "labels")
    pool = AssignmentPool(spec, 2, "t-kill")
    killed = []

    def kill_once(result):
        if not killed:
            killed.append(result.image_id)
            for actor in pool.actors:
                ray_session.kill(actor)

    results = run_pool(pool, dataset, sums, on_result=kill_once)
    pool.kill()
    assert sorted(r.image_id for r in results) == sorted(dataset.ids)  # every image once
    assert pool.replaced >= 1
    labels = LabelStore(spec.label_store)
    assert all(labels.has(1, i) for i in dataset.ids)


def single_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    (run,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    history = {k: [m.step for m in client.get_metric_history(run.info.run_id, k)] for k in ("train_loss", "pseudo_miou")}
    return run, history


@pytest.mark.ray
@pytest.mark.slow
def test_interrupted_run_resumes_in_the_same_mlflow_run(ray_session, labelled_setup, tmp_path, tiny_config, monkeypatch, capsys):
    root = labelled_setup[0]
    config = tiny_config(root / "data")
    monkeypatch.setenv("BOXSUP_FAULT", "raise:0")
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err, err
    run, history = single_run(tmp_path)
    assert run.info.status == "FAILED" and history["train_loss"] == [0]

    monkeypatch.delenv("BOXSUP_FAULT")
    assert main(["train", "--resume", str(tmp_path / "runs" / "r")]) == 0
    run, history = single_run(tmp_path)  # still exactly one run
    assert run.info.status == "FINISHED"
    assert history == {"train_loss": [0, 1, 2], "pseudo_miou": [0, 1, 2]}  # nothing logged twice
    rounds = sorted(p.name for p in (tmp_path / "runs" / "r" / "labels").iterdir())
    assert rounds == ["round_000", "round_001", "round_002"]


@pytest.mark.ray
@pytest.mark.slow
def test_a_failed_train_worker_recovers_from_its_checkpoint(ray_session, labelled_setup, tmp_path, tiny_config, monkeypatch):
    root = labelled_setup[0]
    config = tiny_config(root / "data", ray__max_failures=1)
    monkeypatch.setenv("BOXSUP_FAULT", "raise:1")
    assert main(["train", "--config", str(config)]) == 0
    run, history = single_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert history == {"train_loss": [0, 1, 2], "pseudo_miou": [0, 1, 2]}
    assert (tmp_path / "runs" / "r" / ".fault-raise-1").exists()  # the failure did happen


def test_in_process_mode_resumes_too(labelled_setup, tmp_path, tiny_config, monkeypatch):
    """ray.num_workers 0: the same loop in this process, checkpoints under the run directory."""
    from boxsup.config import load_config
    from boxsup.platform.launch import run_boxsup

    root = labelled_setup[0]
    cfg = load_config(tiny_config(root / "data", ray__num_workers=0))
    monkeypatch.setenv("BOXSUP_FAULT", "raise:1")
    with pytest.raises(RuntimeError, match="injected failure"):
        run_boxsup(cfg, progress=False)
    monkeypatch.delenv("BOXSUP_FAULT")
    result = run_boxsup({}, progress=False, resume=tmp_path / "runs" / "r")
    run, history = single_run(tmp_path)
    assert run.info.status == "FINISHED" and history == {"train_loss": [0, 1, 2], "pseudo_miou": [0, 1, 2]}
    assert len(result.pseudo_miou) == 3


@pytest.mark.ray
def test_a_users_mistake_found_on_a_worker_is_one_line(ray_session, tmp_path, tiny_config, capsys):
    generate_dataset(tmp_path / "data", n_images=8, size=64, seed=9)
    val_id = (tmp_path / "data" / "ImageSets" / "Segmentation" / "val.txt").read_text().split()[0]
    (tmp_path / "data" / "JPEGImages" / f"{val_id}.jpg").write_bytes(b"\xff\xd8 truncated")
    config = tiny_config(tmp_path / "data", train__epochs=1)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("boxsup: error:") and f"{val_id}.jpg: cannot decode image" in err


def test_only_runs_that_update_their_labels_start_actors(labelled_setup, tmp_path):
    root, dataset, store, _ = labelled_setup
    annotations = dataset.load_annotations(skip_bad=False)
    spec = spec_for(root, store, tmp_path / "labels")
    updating, fixed = (load_config(None, [f"data.root={root}", f"assign.update={u}"]) for u in ("true", "false"))
    assert needs_actor_pool(updating, spec, annotations) and not needs_actor_pool(fixed, spec, annotations)
    killing = replace(spec, fault=Fault(frozenset({("kill-actor", 0)}), str(tmp_path)))
    assert needs_actor_pool(fixed, killing, annotations)  # the recovery test's actor to kill
    masked = [replace(a, supervision=Supervision.MASK) for a in annotations]
    assert not needs_actor_pool(updating, spec, masked)  # nothing to label
