"""A run's commit on a local store: nothing a losing run wrote replaces what the winner's
lineage refers to; a lineage records the bytes the store holds; a damaged or stray entry
under ``runs/`` is never taken for a committed run; user text never breaks the recorder."""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from factory.run.recorder import RunRecorder
from factory.store.run_tables import (DamagedRunError, is_committed, list_runs, read_lineage,
                                      read_rejects, read_summary)
from factory.store.storage import Store


def _rows(reason: str, *, sku: str = "SKU-1") -> pa.Table:
    """One asset row and one rejected row."""
    return pa.Table.from_pylist([
        {"row": 1, "sku": sku, "variant": "v", "status": "ok", "error": "", "reject_field": "",
         "failed_stage": "", "output_key": f"assets/{sku}/v.png", "sha256": "ab", "bytes": 3,
         "written": True},
        {"row": 2, "sku": "SKU-2", "variant": "v", "status": "rejected", "error": reason,
         "reject_field": "seed", "failed_stage": "", "output_key": "", "sha256": "", "bytes": 0,
         "written": False},
    ])


def _commit(store: Store, run_id: str, reason: str, summary: dict[str, Any] | None = None) -> bool:
    recorder = RunRecorder(store, run_id, ())
    recorder.add(_rows(reason))
    return recorder.commit(summary or {"who": reason})


@dataclass(frozen=True)
class _PausedStore(Store):
    """A local store that holds this attempt's lineage write until ``go`` is set, and says
    when its rejects write is over (``rejects_done``)."""

    go: Any = None
    rejects_done: Any = None

    def publish_file(self, local: Path, key: str, *, create_only: bool = False) -> bool:
        if key.endswith("lineage.parquet"):
            assert self.go.wait(10)
            return super().publish_file(local, key, create_only=create_only)
        try:
            return super().publish_file(local, key, create_only=create_only)
        finally:
            if key.endswith("rejects.parquet"):
                self.rejects_done.set()


def test_a_run_that_loses_the_commit_never_replaces_the_winners_rejects(tmp_path: Path) -> None:
    """Two attempts of one explicit run id with other inputs: the winner's lineage and the
    rejects beside it are the winner's, whatever order the two writes interleave in."""
    winner_go, loser_go = threading.Event(), threading.Event()
    winner_rejects, loser_rejects = threading.Event(), threading.Event()
    winner = _PausedStore(str(tmp_path), go=winner_go, rejects_done=winner_rejects)
    loser = _PausedStore(str(tmp_path), go=loser_go, rejects_done=loser_rejects)
    outcome: dict[str, Any] = {}

    def lose() -> None:
        try:
            outcome["loser"] = _commit(loser, "r", "loser's reason")
        except Exception as exc:  # noqa: BLE001 - a refusal is a fine way to lose
            outcome["loser"] = exc

    # the winner publishes its rejects, the loser its own, then the winner its lineage
    thread = threading.Thread(target=lose)
    winner_go_after = threading.Thread(target=lambda: (loser_rejects.wait(10), winner_go.set()))
    winner_go_after.start()
    loser_waits_for_winner_rejects = threading.Thread(
        target=lambda: (winner_rejects.wait(10), thread.start()))
    loser_waits_for_winner_rejects.start()
    assert _commit(winner, "r", "winner's reason") is True
    loser_go.set()
    loser_waits_for_winner_rejects.join(10)
    thread.join(10)
    assert outcome["loser"] is not True
    store = Store(str(tmp_path))
    assert read_summary(store, "r")["who"] == "winner's reason"
    assert read_rejects(store, "r")["reason"].to_pylist() == ["winner's reason"]


def test_a_second_commit_of_the_same_rejects_loses_quietly(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    assert _commit(store, "r", "same", {"who": "first"}) is True
    assert _commit(store, "r", "same", {"who": "second"}) is False
    assert read_summary(store, "r")["who"] == "first"


def test_a_resumed_commit_finds_its_own_rejects_from_an_attempt_that_stopped(
        tmp_path: Path) -> None:
    """An attempt that published its rejects and stopped before its lineage: the rerun of the
    same inputs commits over them."""
    store = Store(str(tmp_path))

    class Stopped(Exception):
        pass

    @dataclass(frozen=True)
    class StopsAtLineage(Store):
        def publish_file(self, local: Path, key: str, *, create_only: bool = False) -> bool:
            if key.endswith("lineage.parquet"):
                raise Stopped
            return super().publish_file(local, key, create_only=create_only)

    with pytest.raises(Stopped):
        _commit(StopsAtLineage(str(tmp_path)), "r", "same")
    assert not is_committed(store, "r")
    assert _commit(store, "r", "same") is True
    assert read_rejects(store, "r")["reason"].to_pylist() == ["same"]


# --- the lineage describes the stored object -------------------------------------------------

def _sink_batch(key: str) -> dict[str, np.ndarray]:
    return {"sku": np.array(["A"], object), "variant": np.array(["v"], object),
            "status": np.array(["ok"], object), "error": np.array([""], object),
            "failed_stage": np.array([""], object), "output_key": np.array([key], object),
            "image": np.full((1, 4, 4, 3), 200, np.uint8)}


def test_an_asset_found_under_its_key_is_recorded_with_the_stored_bytes(tmp_path: Path) -> None:
    """A retried task whose create-only put lost to an earlier write of the same key: the
    lineage's sha256 and bytes are the stored object's, not this attempt's encoding."""
    from factory.sink.assets import SinkConfig, write_assets

    store = Store(str(tmp_path))
    earlier = b"bytes an earlier attempt stored"
    assert store.put_if_absent("assets/A/v.png", earlier)
    config = SinkConfig(store=store, image_format="png", quality=90, png_compression=1,
                        chain_fingerprint="f")
    out = write_assets(_sink_batch("assets/A/v.png"), config=config)
    assert out["status"][0] == "ok" and not out["written"][0]
    assert out["sha256"][0] == hashlib.sha256(earlier).hexdigest()
    assert out["bytes"][0] == len(earlier)
    fresh = write_assets(_sink_batch("assets/A/w.png"), config=config)
    assert fresh["written"][0]
    assert fresh["sha256"][0] == hashlib.sha256(store.read_bytes("assets/A/w.png")).hexdigest()


def test_a_channel_asset_found_under_its_key_is_recorded_with_the_stored_bytes(
        tmp_path: Path) -> None:
    from factory.sink.assets import SinkConfig
    from factory.core.provenance import ModelUse, Provenance
    from factory.sink.channel_assets import ChannelSinkConfig, write_channel_assets
    from factory.spec.channels import resolve
    from factory.spec.keys import channel_key

    store = Store(str(tmp_path))
    channels = resolve([{"name": "thumb", "width": 64, "height": 64, "format": "png",
                         "max_bytes": 100_000}])
    key = channel_key("fp", "thumb", "png", {"sku": "A", "variant": "v", "seed": 0})
    earlier = b"an earlier attempt's encoding"
    assert store.put_if_absent(key, earlier)
    image = np.zeros((1, 48, 48, 4), np.uint8)
    image[:, 8:40, 8:40] = (200, 30, 30, 255)
    batch = {"sku": np.array(["A"], object), "variant": np.array(["v"], object),
             "seed": np.array([0]), "row": np.array([1]), "status": np.array(["ok"], object),
             "error": np.array([""], object), "failed_stage": np.array([""], object),
             "output_key": np.array([key], object), "bytes": np.array([0]), "image": image}
    config = ChannelSinkConfig(
        sink=SinkConfig(store=store, image_format="png", quality=90, png_compression=1,
                        chain_fingerprint="f"), channels=channels, prints=("fp",),
        provenance=Provenance(run_id="r", job="unit", models=(
            ModelUse("generate", "sd-tiny", "tiny:sd-tiny", "main"),)))
    out = write_channel_assets(batch, config=config)
    assert list(out["status"]) == ["ok"] and not out["written"][0], out["error"]
    assert out["sha256"][0] == hashlib.sha256(earlier).hexdigest()
    assert out["bytes"][0] == len(earlier)


def test_the_stored_sha256_comes_from_the_objects_metadata_when_it_has_it() -> None:
    from factory.sink.assets import SHA_META, stored_digest
    from factory.store.storage import Head

    @dataclass(frozen=True)
    class Heads(Store):
        def head(self, key: str) -> Head | None:
            return Head(size=9, metadata={SHA_META: "c" * 64})

        def read_bytes(self, key: str) -> bytes:
            raise AssertionError("the sha256 in the object's metadata is enough")

    assert stored_digest(Heads("unused"), "assets/x.png") == ("c" * 64, 9)


# --- what is not a run --------------------------------------------------------------------

def test_stray_files_under_runs_are_not_runs(tmp_path: Path) -> None:
    from factory.cost.calibration import calibrate
    from factory.run.refresh import latest_committed
    from factory.spec.job import parse_job

    store = Store(str(tmp_path))
    assert _commit(store, "r1", "x", {"job": "j", "committed_at": "2024-01-01T00:00:00"})
    (tmp_path / "runs" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (tmp_path / "runs" / "README").write_text("runs live here\n")
    (tmp_path / "runs" / "half-done").mkdir()  # a run that never committed
    assert store.children("runs") == ["half-done", "r1"]
    assert [run_id for run_id, _ in list_runs(store)] == ["r1"]
    assert latest_committed(store, "j") == "r1"
    job = parse_job({"name": "j", "manifest": {"uri": "catalog.csv"},
                     "output": {"uri": str(tmp_path)},
                     "stages": [{"kind": "generate", "model": "synthetic"}]})
    assert calibrate(store, job).rates == {}


def test_runs_list_shows_the_runs_beside_a_stray_file(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from factory.cli.main import main

    store = Store(str(tmp_path))
    assert _commit(store, "r1", "x", {"job": "j", "manifest_rows": 2})
    (tmp_path / "runs" / ".DS_Store").write_bytes(b"junk")
    result = CliRunner().invoke(main, ["runs", "list", "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "r1" in result.output and ".DS_Store" not in result.output


# --- a damaged lineage is not a commit ----------------------------------------------------

@pytest.mark.parametrize("content", [b"", b"PAR1 cut short"])
def test_a_damaged_lineage_is_reported_with_its_path_never_taken_as_committed(
        tmp_path: Path, content: bytes) -> None:
    store = Store(str(tmp_path))
    lineage = tmp_path / "runs" / "r" / "lineage.parquet"
    lineage.parent.mkdir(parents=True)
    lineage.write_bytes(content)
    with pytest.raises(DamagedRunError, match=str(lineage)):
        is_committed(store, "r")
    with pytest.raises(DamagedRunError, match=str(lineage)):
        read_lineage(store, "r")
    with pytest.raises(DamagedRunError, match=str(lineage)):
        read_summary(store, "r")
    assert list_runs(store) == []  # skipped (with a warning), not listed as committed


def test_a_local_commit_is_flushed_to_disk_before_it_counts(tmp_path: Path, monkeypatch) -> None:
    """The table's bytes and the directory entry that names it reach the disk (fsync) before
    the commit returns: a power loss cannot leave an empty lineage that reads as committed."""
    import os

    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    assert _commit(Store(str(tmp_path)), "r", "x")
    run_dir = str((tmp_path / "runs" / "r").resolve())
    assert any(p.startswith(run_dir + "/") and "lineage" in p for p in synced), synced
    assert run_dir in synced, synced


# --- user text ----------------------------------------------------------------------------

class _Objects:
    """Sink rows as Ray hands over a column of Python objects it could not make Arrow strings
    (its pickled-object extension type): ``to_pydict`` gives the objects back."""

    def __init__(self, rows: dict[str, list[Any]]) -> None:
        self._rows, self.num_rows = rows, len(rows["row"])

    def to_pydict(self) -> dict[str, list[Any]]:
        return self._rows


def test_the_recorder_never_raises_on_a_lone_surrogate_or_bad_bytes(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    recorder = RunRecorder(store, "r", ())
    recorder.add(_Objects({
        "row": [1, 2, 3], "sku": ["SKU-\udc80", "SKU-2", b"SKU-\xff"],
        "variant": ["v", "v", "v"], "status": ["ok", "rejected", "failed"],
        "error": ["", "bad \ud800 reason", b"boom \xfe"], "reject_field": ["", "ti\udcfftle", ""],
        "failed_stage": ["", "", "generate"], "output_key": ["assets/k.png", "", ""],
        "sha256": ["", "", ""], "bytes": [0, 0, 0], "written": [True, False, False],
        "prompt": ["a \udce9 chair", None, None]}))
    assert recorder.commit({"who": "me"})
    lineage, _ = read_lineage(store, "r")
    rejects = read_rejects(store, "r")
    assert lineage["sku"].to_pylist() == ["SKU-\\udc80", "SKU-\\xff"]
    assert lineage["error"].to_pylist()[1] == "boom \\xfe"
    assert lineage["prompt"].to_pylist()[0] == "a \\udce9 chair"
    assert rejects["reason"].to_pylist() == ["bad \\ud800 reason"]
    assert rejects["field"].to_pylist() == ["ti\\udcfftle"]
