"""Consecutive CPU stages in one actor (``stages.chain``): grouping, order, batches, failures."""

from __future__ import annotations

import numpy as np

from factory.core import images
from stages.base import Resources, Stage, StageCard, StagePlan, StageParams
from stages.chain import StageChain, concat, pool_resources, pools


class _Params(StageParams):
    add: int = 0
    bad: tuple[str, ...] = ()
    grow: bool = False


class _Add(Stage):
    """Adds params.add to every pixel; fails SKUs in params.bad; records batch sizes seen."""

    seen: list[tuple[str, int]] = []

    def _predict(self, rows):
        type(self).seen.append((self.plan.name, len(rows["sku"])))
        out = []
        for sku, image in zip(rows["sku"], rows["image"]):
            if sku in self.params.bad:
                raise ValueError(f"cannot handle {sku}")
            image = image + np.uint8(self.params.add)
            if self.params.grow and sku.endswith("0"):  # one row of another shape
                image = np.zeros((3, 3, 3), dtype=np.uint8)
            out.append(image)
        return {"image": out}


CARD = StageCard(name="identity/add", kind="identity", runtime=_Add, params=_Params,
                 inputs=("image",), outputs=("image",))


def plan(name: str, *, gpus: float = 0.0, batch: int = 8, concurrency: int = 1,
         cpus: float = 1.0, **params) -> StagePlan:
    return StagePlan(name=name, card=CARD, params=_Params(**params), source="", revision="x",
                     resources=Resources(num_gpus=gpus, num_cpus=cpus, batch_size=batch,
                                         concurrency=concurrency))


def batch(n: int) -> dict[str, np.ndarray]:
    out = {"sku": np.array([f"S{i}" for i in range(n)], dtype=object),
           "status": np.array(["ok"] * n, dtype=object)}
    out.update(images.store("image", [np.full((2, 2, 3), i, dtype=np.uint8) for i in range(n)]))
    return out


def names(groups) -> list[list[str]]:
    return [[p.name for p in group] for group in groups]


def test_consecutive_cpu_stages_share_a_pool_and_gpu_stages_keep_their_own():
    plans = [plan("gen", gpus=1), plan("seg"), plan("up"), plan("lora", gpus=0.5), plan("rec")]
    assert names(pools(plans)) == [["gen"], ["seg", "up"], ["lora"], ["rec"]]
    assert names(pools(plans, fuse=False)) == [["gen"], ["seg"], ["up"], ["lora"], ["rec"]]
    cpu = [plan("a"), plan("b"), plan("c")]
    assert names(pools(cpu)) == [["a", "b", "c"]]
    # a stage whose intermediates are kept ends its pool: they are written between pools
    assert names(pools(cpu, keep=("b",))) == [["a", "b"], ["c"]]


def test_a_chain_asks_for_the_most_any_stage_asks():
    chain = [plan("a", cpus=0.5, batch=16), plan("b", cpus=1, batch=4, concurrency=2)]
    assert pool_resources(chain) == Resources(num_gpus=0, num_cpus=1, batch_size=16,
                                              concurrency=2)
    assert pool_resources([chain[0]]) == chain[0].resources


def test_stages_run_in_order_each_in_its_own_batch_size():
    _Add.seen.clear()
    chain = StageChain(plans=[plan("a", add=1, batch=8), plan("b", add=10, batch=3)])
    out = chain(batch(8))
    assert [int(p[0, 0, 0]) for p in images.load("image", out)] == [i + 11 for i in range(8)]
    assert _Add.seen == [("a", 8), ("b", 3), ("b", 3), ("b", 2)]
    # each stage times itself: the lineage keeps its per-stage milliseconds
    assert {"ms_a", "ms_b", "a_placement", "b_placement"} <= set(out)


def test_a_row_failed_early_is_skipped_later_and_keeps_its_stage():
    chain = StageChain(plans=[plan("a", add=1, bad=("S2",), batch=2), plan("b", add=1,
                                                                           batch=3)])
    out = chain(batch(5))
    assert list(out["status"]) == ["ok", "ok", "failed", "ok", "ok"]
    assert out["failed_stage"][2] == "a" and "cannot handle S2" in out["error"][2]
    assert list(out["sku"]) == [f"S{i}" for i in range(5)]  # no SKU dropped or reordered


def test_batches_of_other_shapes_are_joined_row_by_row():
    chain = StageChain(plans=[plan("a", add=0, grow=True, batch=2)])
    out = chain(batch(4))  # S0's image is 3x3, the rest 2x2: one part is ragged
    pixels = images.load("image", out)
    assert [p.shape for p in pixels] == [(3, 3, 3), (2, 2, 3), (2, 2, 3), (2, 2, 3)]
    assert int(pixels[3][0, 0, 0]) == 3


def test_concat_keeps_plain_columns():
    parts = [{"x": np.array([1.0, 2.0]), "s": np.array(["a"], dtype=object)},
             {"x": np.array([3.0]), "s": np.array(["b", "c"], dtype=object)}]
    out = concat(parts)
    assert out["x"].tolist() == [1.0, 2.0, 3.0] and out["s"].tolist() == ["a", "b", "c"]


def test_validate_prints_the_pools_a_job_will_start():
    from pathlib import Path

    from click.testing import CliRunner

    from factory.cli.main import main

    jobs = Path(__file__).resolve().parents[2] / "jobs"
    out = CliRunner().invoke(main, ["validate", str(jobs / "demo.yaml")])
    assert out.exit_code == 0, out.output
    assert "pool generate+segment+lora+recolor+upscale: 2 actor(s), 1 CPU each" in out.output
    out = CliRunner().invoke(main, ["validate", str(jobs / "catalog-gpu.yaml")])
    assert out.exit_code == 0, out.output
    assert out.output.count("  pool ") == 5 and "pool recolor: 2 actor(s), 1 CPU" in out.output
