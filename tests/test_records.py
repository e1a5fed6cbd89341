import os

import pandas as pd
import pyarrow as pa
import pytest

from bnsweep import records
from bnsweep.errors import BnsweepError


def _table(n: int, trial_id: str) -> pa.Table:
    return pa.table({"trial_id": [trial_id] * n, "step": list(range(n))})


def test_one_file_per_trial_read_back_by_pandas(tmp_path):
    records.write_trial(tmp_path, "a", {"curves": _table(3, "a"), "trials": _table(1, "a")})
    records.write_trial(tmp_path, "b", {"curves": _table(2, "b"), "trials": _table(1, "b")})
    assert len(pd.read_parquet(tmp_path / "curves")) == 5
    assert records.finished_trial_ids(tmp_path) == {"a", "b"}
    assert not [p for p in os.listdir(tmp_path / "curves") if p.startswith(".")]  # no temporary left behind
    meta = pa.parquet.read_schema(tmp_path / "trials" / "a.parquet").metadata
    assert meta[b"bnsweep.schema_version"] == str(records.SCHEMA_VERSION).encode()


def test_rewriting_a_trial_replaces_it_never_duplicates(tmp_path):
    records.write_trial(tmp_path, "a", {"curves": _table(3, "a"), "trials": _table(1, "a")})
    records.write_trial(tmp_path, "a", {"curves": _table(4, "a"), "trials": _table(1, "a")})
    assert len(pd.read_parquet(tmp_path / "curves")) == 4


def test_readers_ignore_files_being_written(tmp_path):
    records.write_trial(tmp_path, "a", {"trials": _table(1, "a")})
    (tmp_path / "trials" / ".b.1234.tmp").write_bytes(b"partial")
    assert records.finished_trial_ids(tmp_path) == {"a"}
    assert len(pd.read_parquet(tmp_path / "trials")) == 1


def test_corrupt_file_is_a_one_line_error_naming_it(tmp_path):
    records.write_trial(tmp_path, "a", {"trials": _table(1, "a")})
    (tmp_path / "trials" / "b.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(BnsweepError, match="b.parquet") as e:
        records.read_table(tmp_path, "trials")
    assert "\n" not in str(e.value)


def test_unwritable_results_fail_before_anything_runs(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("keep me")
    with pytest.raises(BnsweepError, match="cannot write results"):
        records.check_writable(blocker / "results")
    assert blocker.read_text() == "keep me"
