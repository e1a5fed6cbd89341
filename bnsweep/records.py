"""Parquet results: one directory per table, one file per trial, each published atomically.

Layout of a results directory (local path or s3://bucket/prefix):

    RESULTS/trials/<trial_id>.parquet       one row per trial: config, outcome, provenance
    RESULTS/curves/<trial_id>.parquet       one row per step
    RESULTS/<probe table>/<trial_id>.parquet  landscape, ics, activations, bn_identity, layer_norms

A trial's `trials` file is written last, so its presence means every other table of that trial is complete;
resume skips exactly those trials. Files are written under a dot-prefixed temporary name and renamed (local
disk) or written as a single object (S3, which has no rename); pyarrow's readers ignore dot-prefixed names, so
`pandas.read_parquet(RESULTS / "trials")` never sees a partial file. Every file carries the schema version in
its metadata and `trials` also as a column. The columns are documented in README.md ("Results schema").
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bnsweep.errors import BnsweepError

SCHEMA_VERSION = 1
TRIALS = "trials"


def filesystem(results: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and path for a results location (local path or URI such as s3://...)."""
    text = str(results)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, OSError) as e:
            raise BnsweepError(f"cannot open results location {text!r}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


def absolute(results: str | os.PathLike) -> str:
    """A results location every process can use: URIs unchanged, local paths made absolute (Ray workers run
    in directories of their own, where a relative path would point elsewhere)."""
    text = str(results)
    return text if "://" in text else str(Path(text).expanduser().absolute())


def is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def check_writable(results: str | os.PathLike) -> None:
    """Fail early, before any training, if results cannot be written there."""
    fs, root = filesystem(results)
    probe = f"{root}/.bnsweep-write-test-{uuid.uuid4().hex}"
    try:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(probe) as f:
            f.write(b"ok")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        reason = getattr(e, "strerror", None) or str(e).splitlines()[0]
        raise BnsweepError(f"cannot write results to {str(results)!r} ({reason}): choose a writable --results "
                           "directory") from None


def write_table(results: str | os.PathLike, table: str, trial_id: str, data: pa.Table) -> None:
    """Publish one trial's rows of one table atomically."""
    fs, root = filesystem(results)
    folder = f"{root}/{table}"
    final = f"{folder}/{trial_id}.parquet"
    data = data.replace_schema_metadata({**(data.schema.metadata or {}),
                                         b"bnsweep.schema_version": str(SCHEMA_VERSION).encode(),
                                         b"bnsweep.table": table.encode()})
    fs.create_dir(folder, recursive=True)
    if not is_local(fs):
        pq.write_table(data, final, filesystem=fs)  # one object PUT: atomic on S3
        return
    tmp = f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(data, tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_trial(results: str | os.PathLike, trial_id: str, tables: dict[str, pa.Table]) -> None:
    """Write every table of a trial, `trials` last (its presence marks the trial finished)."""
    for name, data in tables.items():
        if name != TRIALS and data is not None and data.num_rows:
            write_table(results, name, trial_id, data)
    write_table(results, TRIALS, trial_id, tables[TRIALS])


def list_trial_files(results: str | os.PathLike, table: str = TRIALS) -> list[str]:
    """Paths of the published per-trial files of a table (temporary files excluded)."""
    fs, root = filesystem(results)
    try:
        infos = fs.get_file_info(pafs.FileSelector(f"{root}/{table}", allow_not_found=True))
    except (OSError, pa.ArrowException) as e:
        raise BnsweepError(f"cannot list results in {str(results)!r}: {e}") from None
    return sorted(i.path for i in infos
                  if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith((".", "_")))


def finished_trial_ids(results: str | os.PathLike) -> set[str]:
    """Trial ids that have a published `trials` record (file names are the ids)."""
    return {Path(p).name.removesuffix(".parquet") for p in list_trial_files(results)}


def read_table(results: str | os.PathLike, table: str, trial_ids: Iterable[str] | None = None) -> pa.Table:
    """Read a table (all trials, or the given ones); a corrupt file is a one-line error naming it."""
    fs, _ = filesystem(results)
    files = list_trial_files(results, table)
    if trial_ids is not None:
        wanted = set(trial_ids)
        files = [f for f in files if Path(f).name.removesuffix(".parquet") in wanted]
    parts = []
    for path in files:
        try:
            parts.append(pq.read_table(path, filesystem=fs))
        except (OSError, pa.ArrowException) as e:
            raise BnsweepError(f"corrupt Parquet file {path}: {str(e).splitlines()[0]}; delete it and rerun the "
                               "trial (bnsweep run resumes it)") from None
    if not parts:
        return pa.table({})
    return pa.concat_tables(parts, promote_options="permissive")
