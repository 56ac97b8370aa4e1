"""User text reaches the terminal with its control characters escaped: a SKU or a reason
cannot retitle the window, move the cursor, reorder a line or split it into a forged one."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from factory.cli.runs import runs
from factory.core.text import escaped, shown
from factory.store.run_tables import LINEAGE, REJECTS, SUMMARY_KEY

TITLE = "\x1b]0;pwned\x07"  # OSC: sets the terminal's title


@pytest.mark.parametrize("raw, shown_as", [
    (TITLE, "\\x1b]0;pwned\\x07"),
    ("a\x9bb", "a\\x9bb"),          # C1 CSI
    ("a\x7fb", "a\\x7fb"),          # DEL
    ("a\u202eb\u2066c", "a\\u202eb\\u2066c"),  # bidi override and isolate
    ("a\ud800b", "a\\ud800b"),      # a lone surrogate
    ("line\nforged", "line\\nforged"),
    ("Kaffeetasse Ü 1", "Kaffeetasse Ü 1"),
])
def test_escaped_writes_each_control_as_its_escape(raw, shown_as):
    assert escaped(raw) == shown_as
    escaped(raw).encode("utf-8")


def test_newlines_may_be_kept_for_messages_of_several_lines():
    assert escaped("a\nb\x1b", newlines=True) == "a\nb\\x1b"


def test_shown_quotes_and_cuts_with_an_ellipsis():
    assert shown("abc") == "'abc'"
    assert shown("x" * 100, limit=10) == "'" + "x" * 10 + "…'"


def _committed_run(root, run_id: str, sku: str, reason: str) -> None:
    folder = root / "runs" / run_id
    folder.mkdir(parents=True)
    summary = {"job": f"job{TITLE}", "manifest_rows": 2, "assets": 0, "failed": 1,
               "rejected": 1, "skipped": {f"draft{TITLE}": 1}}
    lineage = pa.table({"row": [1], "sku": [sku], "status": ["failed"],
                        "failed_stage": ["generate"], "error": [reason]})
    lineage = lineage.replace_schema_metadata({SUMMARY_KEY: json.dumps(summary).encode()})
    pq.write_table(lineage, folder / LINEAGE)
    pq.write_table(pa.table({"row": [2], "sku": [sku], "field": [f"seed{TITLE}"],
                             "reason": [reason]}), folder / REJECTS)


def test_runs_show_and_list_escape_skus_reasons_and_names(tmp_path):
    sku, reason = f"SKU{TITLE}\u202e1", f"bad\nrejected row 9 forged {TITLE}"
    _committed_run(tmp_path, "r1", sku, reason)
    runner = CliRunner()
    for args in (["show", "r1", "--output", str(tmp_path)], ["list", "--output", str(tmp_path)]):
        result = runner.invoke(runs, args)
        assert result.exit_code == 0, result.output
        for ch in "\x1b\x07\u202e":
            assert ch not in result.output
    shown_lines = runner.invoke(runs, ["show", "r1", "--output", str(tmp_path)]).output
    assert "SKU\\x1b]0;pwned\\x07\\u202e1" in shown_lines
    assert "bad\\nrejected row 9 forged" in shown_lines  # one line per row, none forged
    assert [line for line in shown_lines.splitlines() if line.startswith("rejected row")] == [
        line for line in shown_lines.splitlines() if "seed\\x1b" in line]
