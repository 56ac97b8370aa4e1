"""Weights pinned by what they hold (``stages.weights``): actors staging the same ``s3://``
weights on one node copy them once into a folder of that version and never disturb one
another (``stage_copy``), and a stage's weights have an identity from their content or hub
commit (``weights_identity``), not the revision's name. Hermetic: local folders stand in for
the bucket and the hub cache."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from stages.weights import (
    COMPLETE, hub_commit, local_digest, s3_version, stage_copy, weights_identity,
)

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def model_dir(path: Path, weights: bytes = b"\x00" * 64) -> Path:
    (path / "unet").mkdir(parents=True)
    (path / "model_index.json").write_text('{"_class_name": "Tiny"}')
    (path / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return path


# --- identity -------------------------------------------------------------------------------

def test_weights_differing_in_one_byte_have_different_identities(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a")
    b = model_dir(tmp_path / "b", b"\x00" * 63 + b"\x01")
    assert weights_identity(str(a), "local") != weights_identity(str(b), "local")


def test_the_same_weights_have_the_same_identity_wherever_they_are(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a")
    first = weights_identity(str(a), "local")
    assert first.startswith("sha256:") and weights_identity(str(a), "local") == first
    shutil.copytree(a, tmp_path / "copy")  # new times and inodes, the same bytes
    assert weights_identity(str(tmp_path / "copy"), "main") == first


def test_weights_replaced_in_place_under_the_same_revision_change_identity(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a")
    before = weights_identity(str(a), "local")
    target = a / "unet" / "diffusion_pytorch_model.safetensors"
    stat = target.stat()
    target.write_bytes(b"\x00" * 63 + b"\x02")  # a fine-tune: same size...
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert weights_identity(str(a), "local") != before


def test_a_renamed_file_changes_the_identity(tmp_path: Path) -> None:
    a = model_dir(tmp_path / "a")
    before = local_digest(a)
    (a / "model_index.json").rename(a / "model_index2.json")
    assert local_digest(a) != before


def test_a_hub_revision_resolves_to_its_commit_in_the_local_cache(tmp_path: Path) -> None:
    refs = tmp_path / "models--org--tiny-sd" / "refs"
    refs.mkdir(parents=True)
    (refs / "main").write_text(COMMIT + "\n")
    assert hub_commit("org/tiny-sd", "main", hub_cache=str(tmp_path)) == COMMIT
    assert weights_identity("org/tiny-sd", "main", hub_cache=str(tmp_path)) == COMMIT
    # not in the cache: the revision as given; a commit already: itself
    assert weights_identity("org/other", "main", hub_cache=str(tmp_path)) == "main"
    assert weights_identity("org/other", COMMIT.upper(), hub_cache=str(tmp_path)) == COMMIT
    (refs / "main").write_text("not a commit")
    assert hub_commit("org/tiny-sd", "main", hub_cache=str(tmp_path)) is None


def test_sources_without_weights_files_keep_their_revision() -> None:
    assert weights_identity("rembg:u2net", "main") == "main"


def test_an_s3_source_is_versioned_by_its_listing(tmp_path: Path) -> None:
    """A local filesystem stands in for the bucket: the listing's keys, sizes and times."""
    a = model_dir(tmp_path / "bucket" / "models" / "tiny")
    fs, source = pafs.LocalFileSystem(), "s3://" + str(a)
    info, first = s3_version(source, fs)
    assert info.type == pafs.FileType.Directory and s3_version(source, fs)[1] == first
    target = a / "unet" / "diffusion_pytorch_model.safetensors"
    stat = target.stat()
    target.write_bytes(b"\x01" * 64)  # replaced (a PUT gives the object a new time)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert s3_version(source, fs)[1] != first


# --- staging --------------------------------------------------------------------------------

class SlowCopy:
    """Copies a local model folder slowly, counting copies (a download standing in)."""

    def __init__(self, source: Path) -> None:
        self.source, self.copies = source, 0

    def __call__(self, destination: Path) -> None:
        self.copies += 1
        destination.parent.mkdir(parents=True, exist_ok=True)
        for file in sorted(self.source.rglob("*")):
            if file.is_file():
                out = destination / file.relative_to(self.source)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(file.read_bytes())
                time.sleep(0.05)  # a window for another actor to step in


def test_actors_staging_the_same_weights_at_once_copy_them_once(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "source")
    copy, root, found, errors = SlowCopy(source), tmp_path / "cache" / "src", [], []

    def actor() -> None:
        try:
            found.append(stage_copy(root, "v1", "model", copy, note="s3://b/m"))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=actor) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and copy.copies == 1
    assert found == [root / "v1"] * 4
    assert local_digest(root / "v1" / "model") == local_digest(source)
    assert (root / "v1" / COMPLETE).read_text() == "s3://b/m"
    assert sorted(p.name for p in root.iterdir()) == ["v1", "v1.lock"]  # no partial left


def _stage_in_process(root: str, source: str, out: str) -> None:
    folder = stage_copy(Path(root), "v1", "model", SlowCopy(Path(source)))
    Path(out).write_text(str(folder))


def test_processes_staging_the_same_weights_at_once_get_one_complete_copy(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "source")
    root = tmp_path / "cache" / "src"
    spawn = multiprocessing.get_context("spawn")
    procs = [spawn.Process(target=_stage_in_process,
                           args=(str(root), str(source), str(tmp_path / f"out{i}")))
             for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert {(tmp_path / f"out{i}").read_text() for i in range(2)} == {str(root / "v1")}
    assert local_digest(root / "v1" / "model") == local_digest(source)
    assert not [p for p in root.iterdir() if ".partial-" in p.name]


def test_a_new_version_is_a_folder_of_its_own_and_the_old_one_is_left_alone(tmp_path: Path) -> None:
    old, new = model_dir(tmp_path / "old"), model_dir(tmp_path / "new", b"\x07" * 64)
    root = tmp_path / "cache" / "src"
    first = stage_copy(root, "v1", "model", SlowCopy(old))
    held = (first / "model" / "unet" / "diffusion_pytorch_model.safetensors").open("rb")
    second = stage_copy(root, "v2", "model", SlowCopy(new))
    assert first != second and (first / COMPLETE).exists()
    assert held.read() == b"\x00" * 64  # an actor loading the old version reads it whole
    held.close()
    again = SlowCopy(old)
    assert stage_copy(root, "v1", "model", again) == first and again.copies == 0


def test_a_copy_that_fails_leaves_nothing_and_the_next_one_stages(tmp_path: Path) -> None:
    source = model_dir(tmp_path / "source")
    root = tmp_path / "cache" / "src"

    def broken(destination: Path) -> None:
        destination.mkdir(parents=True)
        (destination / "half").write_bytes(b"x")
        raise OSError("connection reset")

    with pytest.raises(OSError, match="connection reset"):
        stage_copy(root, "v1", "model", broken)
    assert sorted(p.name for p in root.iterdir()) == ["v1.lock"]
    folder = stage_copy(root, "v1", "model", SlowCopy(source))
    assert local_digest(folder / "model") == local_digest(source)
