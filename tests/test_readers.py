"""The readers trust nothing they find (issue 22, item 6): a file of a newer schema, a trial recorded twice, a file
named after another trial, a first curves file that drops columns, a malformed `boundaries` bracket and a small
file that would decode to gigabytes each end in one line naming the file, from bnsweep's readers
(records.read_table: resume, `status`) and from analysis.load (`figures`, `check`), never a traceback or a
silent drop.

The results sets are synthetic, in the real layout and schemas (bnsweep.bench.figures, as tests/test_analysis.py).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis import AnalysisError, load
from bnsweep import records, schema
from bnsweep.bench.figures import FakeTrial, write_fake_trial
from bnsweep.cli import main
from bnsweep.errors import BnsweepError
from bnsweep.schema import BOUNDARIES_SCHEMA


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> Path:
    """Two finished trials with curves, and one search cell's `boundaries` row."""
    root = tmp_path_factory.mktemp("clean") / "r"
    for fake in (FakeTrial("none", 0.1, tau=60, final=0.85), FakeTrial("batch", 0.1, tau=20)):
        write_fake_trial(root, fake)
    write_bounds(root, "cell-a", lower=0.1, upper=0.4)
    return root


@pytest.fixture
def results(clean, tmp_path) -> Path:
    out = tmp_path / "r"
    shutil.copytree(clean, out)
    return out


def write_bounds(root: Path, cell_id: str, **values) -> Path:
    row = dict.fromkeys(BOUNDARIES_SCHEMA.names)
    row.update(sweep="s", scale="cpu", cell_id=cell_id, all_seeds=False, arch="mlp", norm="batch", width=1.0,
               dataset="fashion-mnist", seed=0, seeds=1, steps=10, batch_size=128, curvature=1.0,
               cell=json.dumps({"arch": "mlp", "norm": "batch", "seed": 0}), trials_used=4, rounds=1, monotone=True,
               failed_below=0, converged=True, budget_exhausted=False, target_ratio=2.0, budget=6,
               fixed_grid_trials=4, **values)
    records.write_table(str(root), "boundaries", cell_id, pa.Table.from_pylist([row], schema=BOUNDARIES_SCHEMA))
    return root / "boundaries" / f"{cell_id}.parquet"


def files(results: Path, table: str) -> list[Path]:
    return sorted((results / table).glob("*.parquet"))


def rewrite(path: Path, table: pa.Table, version: int | None = None) -> None:
    """Write `table` over `path` as a file of its own, with its schema version (or another)."""
    meta = dict(table.schema.metadata or {})
    if version is not None:
        meta[b"bnsweep.schema_version"] = str(version).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(args))
    return code, err.getvalue()


def refused(results: Path, *words: str, commands=("status", "check")) -> None:
    """Every reader refuses the results in one line holding `words`: both Python readers, then the commands."""
    with pytest.raises(AnalysisError) as e:
        load(results)
    for word in words:
        assert word in str(e.value), (word, str(e.value))
    for command in commands:
        code, err = cli(command, str(results))
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        for word in words:
            assert word in lines[0], (command, word, lines[0])


def test_the_analysis_limits_are_bnsweeps():
    """analysis/ cannot import bnsweep's schema: its copies of the version and limits must agree."""
    from analysis.load import MAX_FILE_BYTES, MAX_ROWS, MAX_ROWS_OTHER, SCHEMA_VERSION

    assert SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert MAX_ROWS == schema.MAX_ROWS
    assert MAX_ROWS_OTHER == schema.MAX_ROWS_OTHER
    assert MAX_FILE_BYTES == schema.MAX_FILE_BYTES
    assert schema.MAX_ROWS[schema.CURVES] > 10_000_000  # one row per step, steps <= 10^7


# -- a newer schema ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("table", ["trials", "curves", "boundaries"])
def test_a_file_of_a_newer_schema_is_refused_naming_it(results, table):
    path = files(results, table)[0]
    rewrite(path, pq.read_table(path), version=schema.SCHEMA_VERSION + 1)
    with pytest.raises(AnalysisError, match="newer bnsweep") as e:
        load(results)
    assert path.name in str(e.value) and "upgrade" in str(e.value)
    with pytest.raises(BnsweepError, match="newer bnsweep") as e:
        records.read_table(results, table)
    assert path.name in str(e.value)


def test_the_status_command_refuses_newer_trials_in_one_line(results):
    path = files(results, "trials")[0]
    rewrite(path, pq.read_table(path), version=99)
    refused(results, path.name, "newer bnsweep", "upgrade")


# -- trial ids -----------------------------------------------------------------------------------------------

def test_a_trial_recorded_twice_in_one_file_is_refused(results):
    path = files(results, "trials")[0]
    one = pq.read_table(path)
    rewrite(path, pa.concat_tables([one, one]))
    refused(results, path.name, "recorded twice")
    with pytest.raises(BnsweepError, match="recorded twice"):
        records.outcomes(results)  # what a resume reads


def test_a_trials_file_named_after_another_trial_is_refused(results):
    first, second = files(results, "trials")
    shutil.copy(first, second)  # the second trial's name, the first trial's row: two records of the first
    refused(results, second.name, "as its name says")
    with pytest.raises(BnsweepError, match="as its name says"):
        records.read_table(results, "trials", [second.stem])  # what `status` reads for one trial


def test_a_curves_file_named_after_another_trial_is_refused(results):
    first, second = files(results, "curves")
    shutil.copy(first, second)  # otherwise the first trial's curve is counted twice, the second's lost
    with pytest.raises(AnalysisError, match="as its name says") as e:
        load(results)
    assert second.name in str(e.value)
    with pytest.raises(BnsweepError, match="as its name says"):
        records.read_table(results, "curves")


# -- schemas that differ -------------------------------------------------------------------------------------

def test_a_first_curves_file_without_a_column_does_not_drop_it_for_the_others(results):
    first, second = files(results, "curves")
    rewrite(first, pq.read_table(first).drop(["test_acc"]))
    curves = load(results)["curves"]
    assert "test_acc" in curves
    later = curves[curves["trial_id"].astype(str) == second.stem]
    assert later["test_acc"].notna().any()  # the later file's column read, not dropped
    assert curves[curves["trial_id"].astype(str) == first.stem]["test_acc"].isna().all()


def test_a_curves_file_without_a_required_column_is_refused(results):
    first = files(results, "curves")[0]
    rewrite(first, pq.read_table(first).drop(["loss"]))
    refused(results, first.name, "no column 'loss'", commands=("check",))


# -- boundaries ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bounds, word", [
    ({"lower": float("nan"), "upper": 0.4}, "lower = nan"),
    ({"lower": 0.1, "upper": float("inf")}, "upper = inf"),
    ({"lower": -0.1, "upper": 0.4}, "lower = -0.1"),
    ({"lower": 0.4, "upper": 0.1}, "not below upper"),
    ({"lower": None, "upper": None}, "neither bound"),
])
def test_a_malformed_bracket_is_refused(results, bounds, word):
    path = write_bounds(results, "cell-b", **bounds)
    refused(results, path.name, word, commands=("check",))


def test_an_open_bracket_is_legitimate(results):
    write_bounds(results, "cell-b", lower=0.1, upper=None)
    write_bounds(results, "cell-c", lower=None, upper=0.05)
    assert len(load(results)["boundaries"]) == 3


# -- size ------------------------------------------------------------------------------------------------------

def test_more_rows_than_a_trials_file_may_hold_is_refused_before_decoding(results):
    path = files(results, "trials")[0]
    one = pq.read_table(path)
    rewrite(path, pa.concat_tables([one] * (schema.MAX_ROWS["trials"] + 1)))
    refused(results, path.name, "1,001 rows")


def test_a_small_file_that_would_decode_to_gigabytes_is_refused_by_its_footer(tmp_path):
    """10^8 null strings: a 200 kB file whose offsets alone decode to 400 MB, and to 800 MB more in pandas."""
    from analysis.load import footer_problem

    path = tmp_path / "landscape" / "x.parquet"
    path.parent.mkdir()
    pq.write_table(pa.table({"trial_id": pa.nulls(schema.MAX_ROWS_OTHER + 1, pa.string())}), path)
    assert path.stat().st_size < 1_000_000
    metadata = pq.read_metadata(path)
    assert "100,000,001 rows" in records.footer_problem(metadata, "landscape")
    assert "100,000,001 rows" in footer_problem(metadata, "landscape")
    with pytest.raises(BnsweepError, match="100,000,001 rows"):
        records.read_table(tmp_path, "landscape")
