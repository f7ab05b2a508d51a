"""Proposals as Ray tasks: the very files of the in-process build, resumable, failures counted."""

import copy
import shutil

import pytest

from boxsup.config import DEFAULTS
from boxsup.data.sources import build_training_set
from boxsup.data.synth import DEMO_CLASSES, generate_dataset
from boxsup.errors import BoxSupError
from boxsup.platform.proposal_tasks import build_store_on_ray, chunks_of
from boxsup.proposals.generate import build_store
from boxsup.proposals.store import ProposalStore
from conftest import file_bytes, voc_data_section

N_TRAIN = 9  # of 12 images


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A tiny demo set, its config ``data`` section, and its SS store built in this process."""
    root = tmp_path_factory.mktemp("tasks")
    generate_dataset(root / "data", n_images=12, size=48, seed=3)
    data = voc_data_section(root / "data")
    dataset = build_training_set({"data": data}, DEMO_CLASSES)
    build_store(dataset, ProposalStore(root / "single"), "ss", max_candidates=150, seed=4, progress=False)
    return root, data, dataset


def on_ray(demo, out, **kwargs):
    _, data, dataset = demo
    return build_store_on_ray(dataset, data, ProposalStore(out), "ss", 150, 4, progress=False, **kwargs)


def test_chunks_cover_every_id_once_in_order():
    ids = [str(i) for i in range(50)]
    for tasks, size in ((1, None), (3, None), (2, 7), (100, None)):
        chunks = chunks_of(ids, tasks, size)
        assert sum(chunks, []) == ids
    assert len(chunks_of(ids, 3)) >= 3 * 3  # several chunks per task
    assert chunks_of([], 4) == []


@pytest.mark.ray
@pytest.mark.parametrize("tasks, chunk_size", [(1, None), (3, 1), (4, 2)])
def test_distributed_build_equals_the_single_process_build(ray_session, demo, tmp_path, tasks, chunk_size):
    root, _, dataset = demo
    assert len(dataset.ids) == N_TRAIN
    report = on_ray(demo, tmp_path / "store", tasks=tasks, chunk_size=chunk_size)
    assert (report.made, report.reused, dict(report.skipped)) == (N_TRAIN, 0, {})
    assert report.tasks == tasks and report.chunks >= tasks and report.core_seconds > 0
    assert file_bytes(tmp_path / "store") == file_bytes(root / "single")  # meta.json and every pool, byte for byte
    assert "images/s per core" in report.throughput_line()


@pytest.mark.ray
def test_resume_keeps_stored_pools_and_counts_them_reused(ray_session, demo, tmp_path):
    root, _, dataset = demo
    store = tmp_path / "store"
    store.mkdir()
    kept = dataset.ids[:4]
    for image_id in kept:  # an earlier, interrupted build
        shutil.copyfile(root / "single" / f"{image_id}.npz", store / f"{image_id}.npz")
    (store / "meta.json").write_bytes((root / "single" / "meta.json").read_bytes())
    inodes = {i: (store / f"{i}.npz").stat().st_ino for i in kept}  # an atomic rewrite would make new files
    report = on_ray(demo, store, tasks=2)
    assert (report.made, report.reused) == (N_TRAIN - 4, 4)
    assert {i: (store / f"{i}.npz").stat().st_ino for i in kept} == inodes
    assert file_bytes(store) == file_bytes(root / "single")
    assert on_ray(demo, store).reused == N_TRAIN  # all there: nothing scheduled


@pytest.mark.ray
def test_a_corrupt_image_is_counted_with_its_reason_and_the_rest_built(ray_session, tmp_path):
    generate_dataset(tmp_path / "data", n_images=8, size=48, seed=1)
    data = voc_data_section(tmp_path / "data")
    dataset = build_training_set({"data": data}, DEMO_CLASSES)
    bad = dataset.ids[2]
    (tmp_path / "data" / "JPEGImages" / f"{bad}.jpg").write_bytes(b"not a jpeg")
    report = build_store_on_ray(dataset, data, ProposalStore(tmp_path / "store"), "rectangles", 50,
                                progress=False, tasks=2, chunk_size=2)
    assert (report.made, dict(report.skipped)) == (len(dataset.ids) - 1, {"unreadable image or annotation": 1})
    assert report.retried == 1 and bad in report.examples["unreadable image or annotation"]
    assert ProposalStore(tmp_path / "store").stored_ids() == set(dataset.ids) - {bad}


@pytest.mark.ray
def test_a_store_of_another_method_is_refused_before_any_task(ray_session, demo):
    root, _, _ = demo
    with pytest.raises(BoxSupError, match="store holds 'ss' proposals"):
        build_store_on_ray(demo[2], demo[1], ProposalStore(root / "single"), "grabcut", 150, 4, progress=False)


@pytest.mark.ray
def test_cli_builds_on_ray_by_default_and_in_process_with_local(ray_session, demo, tmp_path, capsys):
    from boxsup.cli import main

    root = demo[0] / "data"
    common = ["proposals", "--data", str(root), "--method", "rectangles", "--max-candidates", "50"]
    assert main([*common, "--out", str(tmp_path / "ray"), "--tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "images/s per core" in out and f"{N_TRAIN} made, 0 already there, skipped: none" in out
    assert main([*common, "--out", str(tmp_path / "local"), "--local"]) == 0
    assert file_bytes(tmp_path / "ray") == file_bytes(tmp_path / "local")
    assert main([*common, "--out", str(tmp_path / "x"), "--local", "--tasks", "2"]) == 2
    assert main([*common, "--out", str(tmp_path / "x"), "--tasks", "0"]) == 2
    assert "--tasks: needs at least 1 task" in capsys.readouterr().err


@pytest.mark.ray
def test_a_run_on_ray_completes_its_store_with_tasks(ray_session, demo, tmp_path):
    from boxsup.platform.launch import complete_store

    root, data, dataset = demo
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(data=data, seed=4)
    cfg["proposals"].update(method="ss", max_candidates=150)
    cfg["ray"]["num_workers"] = 1
    complete_store(ProposalStore(tmp_path / "store"), cfg, dataset, progress=False, ids=dataset.ids[:5])
    single = {k: v for k, v in file_bytes(root / "single").items() if k[:-4] in dataset.ids[:5] or k == "meta.json"}
    assert file_bytes(tmp_path / "store") == single


def test_a_lost_chunk_is_split_then_its_image_counted_out():
    from collections import deque

    from boxsup.platform.proposal_tasks import _lost

    queue, crash = deque(), RuntimeError("worker died\nmore")
    assert _lost(queue, ["a", "b"], crash) is None and list(queue) == [["a"], ["b"]]
    part = _lost(queue, ["a"], crash)
    assert dict(part.skipped) == {"task failed (RuntimeError)": 1} and part.examples["task failed (RuntimeError)"] == "a: worker died"
