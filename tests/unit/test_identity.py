"""Run identity: the derived run id follows every input that decides the work, and a
committed run's recorded inputs are compared field by field."""

from __future__ import annotations

from dataclasses import replace

import pytest

from factory.run.identity import RunInputs, RunInputsMismatch

BASE = RunInputs(spec_hash="a" * 64, manifest_sha256="b" * 64, manifest_rows=200, limit=None,
                 season=None)


def test_same_inputs_same_run_id():
    again = RunInputs(**BASE.as_dict())
    assert again.derived_run_id("spring catalog") == BASE.derived_run_id("spring catalog")
    assert BASE.derived_run_id("spring catalog").startswith("spring-catalog-")


@pytest.mark.parametrize("change", [
    {"spec_hash": "c" * 64}, {"manifest_sha256": "d" * 64}, {"manifest_rows": 3},
    {"limit": 3}, {"season": "winter"}])
def test_any_changed_input_makes_a_new_run_id(change):
    assert replace(BASE, **change).derived_run_id("job") != BASE.derived_run_id("job")


def test_the_season_is_named_in_the_run_id():
    assert replace(BASE, season="winter").derived_run_id("job").startswith("job-winter-")


def test_differences_name_each_changed_input():
    trial = replace(BASE, limit=3, manifest_rows=3)
    diff = BASE.differences(trial.as_dict())
    assert diff == ["manifest rows 3 then, 200 now", "--limit 3 then, none now"]
    assert BASE.differences(BASE.as_dict()) == []
    assert "records no inputs" in BASE.differences(None)[0]
    edited = BASE.differences(replace(BASE, manifest_sha256="e" * 64).as_dict())
    assert edited == [f"manifest content {'e' * 12}… then, {'b' * 12}… now"]


def test_the_mismatch_error_says_what_differs_and_what_to_do():
    exc = RunInputsMismatch("r1", ["--limit 3 then, none now"])
    assert "run 'r1'" in str(exc) and "--limit 3 then, none now" in str(exc)
    assert "Drop --run-id" in str(exc)
