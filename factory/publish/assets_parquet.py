"""``assets-parquet``: one row per asset, a Parquet dataset partitioned by run.

pyarrow's ``write_dataset`` writes the run's partition, hive style
(``assets/run_id=<run>/part-0.parquet``): the ``run_id`` column lives in the folder name, so
the dataset's root (``publish/assets/`` in the store) reads as one table over every published
run in pandas (``pd.read_parquet``), DuckDB (``read_parquet('…/*/*.parquet',
hive_partitioning = true)``) and Ray Data (``ray.data.read_parquet``).

Columns: ``sku``, ``variant``, ``channel`` (null without channels), ``row``, ``key``, ``url``,
``width``, ``height``, ``bytes``, ``sha256``, ``alt_text``, ``run_id``, then the lineage's
fidelity and QA columns where the run has them (``fidelity_delta_e``, ``qa``, ``qa_attempts``,
``qa_reason``). Null where the lineage does not know a figure (the frame size of a run without
channels).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from factory.publish.links import Linked
from factory.publish.run_assets import RunAssets

#: The dataset's folder under the publish root.
DATASET = "assets"
BASE_COLUMNS = (("sku", pa.string()), ("variant", pa.string()), ("channel", pa.string()),
                ("row", pa.int64()), ("key", pa.string()), ("url", pa.string()),
                ("width", pa.int64()), ("height", pa.int64()), ("bytes", pa.int64()),
                ("sha256", pa.string()), ("alt_text", pa.string()), ("run_id", pa.string()))


def table(linked: Sequence[Linked], assets: RunAssets) -> pa.Table:
    """The run's rows, ``run_id`` included."""
    schema = pa.schema([*BASE_COLUMNS, *assets.figures])
    columns: dict[str, list] = {name: [] for name in schema.names}
    for item in linked:
        a = item.asset
        for name, value in (("sku", a.sku), ("variant", a.variant),
                            ("channel", a.channel or None), ("row", a.row), ("key", a.key),
                            ("url", item.url), ("width", a.width), ("height", a.height),
                            ("bytes", a.bytes), ("sha256", a.sha256), ("alt_text", item.alt),
                            ("run_id", assets.run_id)):
            columns[name].append(value)
        for figure in assets.figures:
            columns[figure.name].append(a.figures.get(figure.name))
    return pa.table(columns, schema=schema)


def write(linked: Sequence[Linked], assets: RunAssets) -> list[tuple[str, bytes]]:
    """The run's partition as ``(path under the publish root, bytes)`` pairs."""
    import pyarrow.dataset as ds

    data = table(linked, assets)
    with tempfile.TemporaryDirectory(prefix="factory-publish-") as tmp:
        # one thread: the file's rows stay in catalog order, and its bytes the same each time
        ds.write_dataset(data, tmp, format="parquet", basename_template="part-{i}.parquet",
                         partitioning=ds.partitioning(pa.schema([("run_id", pa.string())]),
                                                      flavor="hive"),
                         use_threads=False, existing_data_behavior="error")
        root = Path(tmp)
        return [(f"{DATASET}/{path.relative_to(root).as_posix()}", path.read_bytes())
                for path in sorted(root.rglob("*.parquet"))]
