"""Parquet results: one directory per table, one file per trial, each published atomically.

Layout of a results directory (local path or s3://bucket/prefix):

    RESULTS/trials/<trial_id>.parquet       one row per trial: config, outcome, provenance
    RESULTS/curves/<trial_id>.parquet       one row per step
    RESULTS/<probe table>/<trial_id>.parquet  landscape, ics, activations, bn_identity, layer_norms, hessian,
                                              sharpness, scale_invariance, spectrum

A trial's `trials` file is written last, so its presence means every other table of that trial is complete;
resume skips exactly those trials. Files are written under a dot-prefixed temporary name and renamed (local
disk) or written as a single object (S3, which has no rename); pyarrow's readers ignore dot-prefixed names, so
`pandas.read_parquet(RESULTS / "trials")` never sees a partial file. Every file carries the schema version in
its metadata and `trials` also as a column. The columns are defined in bnsweep/schema.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

import bnsweep
from bnsweep.config import TrialConfig
from bnsweep.errors import BnsweepError
from bnsweep.schema import (
    BOUNDARIES,
    CURVE_COLUMNS,
    CURVES_SCHEMA,
    EVAL_COLUMNS,
    MAX_FILE_BYTES,
    MAX_ROWS,
    MAX_ROWS_OTHER,
    OUTCOME,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    TRIALS,
    trials_schema,
)

SCHEMES = ("file", "s3")  # pyarrow opens others too (mock:// keeps a "successful" run in memory, then loses it)
SECRET_WORDS = ("key", "secret", "token", "password", "credential", "signature")


def location_problem(results: str | os.PathLike, label: str) -> str | None:
    """What is wrong with a results location, or None: an empty one would be the current directory, a scheme
    other than file:// and s3:// is refused, and so are credentials inside a URI (user:secret@ or a query key
    such as access_key): they would be printed and stored (errors, Tune's state, claims.json). The message never
    repeats the location's text when it may hold a secret."""
    text = str(results)
    if not text.strip():
        return f"{label}={text!r}: an empty path; give a results directory or an s3://bucket/prefix URI"
    if "://" not in text:
        return None
    scheme = text.partition("://")[0].lower()
    if scheme not in SCHEMES:
        return (f"{label}: the scheme {scheme[:20]!r} is not a results location; use a local path, file:///path or "
                "s3://bucket/prefix")
    parts = urlsplit(text)
    keys = [k.lower() for k in parse_qs(parts.query, keep_blank_values=True)]
    if "@" in parts.netloc or any(word in k for k in keys for word in SECRET_WORDS):
        return (f"{label}: the {scheme}:// URI holds credentials (not shown here); remove them from the URI and "
                "give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role")
    return None


def filesystem(results: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and path for a results location (local path or URI such as s3://...)."""
    text = str(results)
    problem = location_problem(text, "results location")
    if problem:
        raise BnsweepError(problem)
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


def check_location(results: str | os.PathLike, label: str, exists: bool = False) -> None:
    """A results location as given on the command line: not empty (which would mean the current directory), a
    local path, file:// or s3:// without credentials (`location_problem`), and, with `exists`, present (a typo
    must not read as "no trials recorded yet")."""
    text = str(results)
    problem = location_problem(text, label)
    if problem:
        raise BnsweepError(problem)
    if not exists:
        return
    fs, root = filesystem(results)
    try:
        kind = fs.get_file_info(root).type
    except (OSError, pa.ArrowException) as e:
        raise BnsweepError(f"cannot read results location {text!r} ({_reason(e)}): check the path and your "
                           "credentials") from None
    if kind == pafs.FileType.NotFound:
        raise BnsweepError(f"results directory {text!r} does not exist: pass the --results directory of a "
                           "bnsweep run or trial")
    if kind != pafs.FileType.Directory:
        raise BnsweepError(f"{text!r} is a file, not a results directory: pass the --results directory of a "
                           "bnsweep run or trial")


def _reason(e: BaseException) -> str:
    """The one-line reason of an I/O error ("No space left on device"), also from pyarrow's wordier messages
    ("Error writing bytes to file. Detail: [errno 28] No space left on device")."""
    text = getattr(e, "strerror", None) or (str(e).splitlines() or [type(e).__name__])[0]
    detail = re.search(r"\[errno \d+\] (.+)", text)
    text = detail.group(1) if detail else text
    return text if len(text) <= 200 else text[:199] + "…"


def check_writable(results: str | os.PathLike) -> None:
    """Fail early, before any training, if results cannot be written there."""
    fs, root = filesystem(results)
    probe = f"{root}/.bnsweep-write-test-{uuid.uuid4().hex}"
    try:
        fs.create_dir(root, recursive=True)
        try:
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
        finally:
            with contextlib.suppress(OSError, pa.ArrowException):
                fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        raise BnsweepError(f"cannot write results to {str(results)!r} ({_reason(e)}): choose a writable "
                           "--results directory") from None


def write_table(results: str | os.PathLike, table: str, trial_id: str, data: pa.Table) -> None:
    """Publish one trial's rows of one table atomically."""
    fs, root = filesystem(results)
    folder = f"{root}/{table}"
    final = f"{folder}/{trial_id}.parquet"
    data = data.replace_schema_metadata({**(data.schema.metadata or {}),
                                         b"bnsweep.schema_version": str(SCHEMA_VERSION).encode(),
                                         b"bnsweep.table": table.encode()})
    try:
        fs.create_dir(folder, recursive=True)
        if is_local(fs):
            _publish_local(data, folder, trial_id, final)
        else:
            pq.write_table(data, final, filesystem=fs)  # one object PUT: atomic on S3
    except (OSError, pa.ArrowException) as e:
        # A full disk, a directory gone read-only, an S3 error: nothing half-written is left under a published
        # name, and the files written before are untouched.
        raise BnsweepError(f"cannot write {final} ({_reason(e)}): free space or choose a writable --results; "
                           "the files written before are intact") from None


def _publish_local(data: pa.Table, folder: str, trial_id: str, final: str) -> None:
    """Write under a dot-prefixed temporary name, then rename: readers see the whole file or none."""
    tmp = f"{folder}/.{trial_id}.{uuid.uuid4().hex}.tmp"
    try:
        pq.write_table(data, tmp)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(OSError):
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


def read_table(results: str | os.PathLike, table: str, trial_ids: Iterable[str] | None = None,
               required: Mapping[str, str] | pa.Schema | None = None) -> pa.Table:
    """Read a table (all trials, or the given ones). Each of these is a one-line error naming the file: a corrupt
    file; one written by a newer bnsweep; one larger than a table's file may be (checked in its footer, before
    it is decoded); one without the `required` columns (default: REQUIRED_COLUMNS of the table); one whose rows
    belong to another trial than its name says; a trial recorded twice."""
    fs, root = filesystem(results)
    files = list_trial_files(results, table)
    if trial_ids is not None:
        wanted = set(trial_ids)
        files = [f for f in files if Path(f).name.removesuffix(".parquet") in wanted]
    if required is None:
        required = REQUIRED_COLUMNS.get(table, {})
    elif isinstance(required, pa.Schema):
        required = {f.name: kind(f.type) for f in required}
    parts = []
    for path in files:  # every file read before any is judged foreign: a corrupt file is the first to fix
        try:
            with fs.open_input_file(path) as f:  # opened once: its footer is judged before its rows are read
                parquet = pq.ParquetFile(f)
                problem = footer_problem(parquet.metadata, table)
                if problem:
                    raise BnsweepError(f"{path} {problem}")
                parts.append(parquet.read())
        except (OSError, pa.ArrowException) as e:
            raise BnsweepError(f"corrupt Parquet file {path}: {_reason(e)}; delete it and rerun the "
                               "trial (bnsweep run resumes it)") from None
    for path, part in zip(files, parts, strict=True):
        problem = schema_problem(part.schema, required) or id_problem(path, table, part)
        if problem:
            raise BnsweepError(f"{path} is not a bnsweep {table} file ({problem}): move it out of "
                               f"{root}/{table}")
    if table == TRIALS:
        _refuse_duplicates(files, parts)
    if not parts:
        return pa.table({})
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as e:
        raise BnsweepError(f"the files of {root}/{table} have incompatible schemas ({_reason(e)}): results of "
                           "different bnsweep versions, or other files, cannot share a directory") from None


def footer_problem(metadata: pq.FileMetaData, table: str) -> str | None:
    """What makes a file unreadable here, from its footer alone: a newer schema version, or more rows or bytes
    than a file of `table` may hold (MAX_ROWS, MAX_FILE_BYTES); or None."""
    version = (metadata.metadata or {}).get(b"bnsweep.schema_version")
    if version is not None:
        if not version.isdigit():
            return f"has schema version {version[:20]!r}, not a number: move it out of the results directory"
        if int(version) > SCHEMA_VERSION:
            return (f"was written by a newer bnsweep (schema version {int(version)}; this one reads up to "
                    f"{SCHEMA_VERSION}): upgrade bnsweep to read these results")
    limit = MAX_ROWS.get(table, MAX_ROWS_OTHER)
    if metadata.num_rows > limit:
        return (f"holds {metadata.num_rows:,} rows, more than a {table} file may ({limit:,}): move it out of the "
                "results directory")
    size = max(sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
               sum(metadata.row_group(i).column(j).total_uncompressed_size
                   for i in range(metadata.num_row_groups) for j in range(metadata.num_columns)))
    if size > MAX_FILE_BYTES:
        return (f"would decode to {size / 2**30:.1f} GiB, more than a file may ({MAX_FILE_BYTES / 2**30:.0f} GiB): "
                "move it out of the results directory")
    return None


def id_problem(path: str, table: str, data: pa.Table) -> str | None:
    """Rows of another trial (or search cell) than the file's name says, or None: the name is what resume and
    `status` go by, so a file must hold only its own trial's rows."""
    column = "cell_id" if table == BOUNDARIES else "trial_id"
    if column not in data.column_names:
        return None
    name = Path(path).name.removesuffix(".parquet")
    other = next((v for v in data.column(column).unique().to_pylist() if v != name), name)
    return None if other == name else f"it holds rows of {column} {str(other)[:80]!r}, not of {name!r} as its name says"


def _refuse_duplicates(files: list[str], parts: list[pa.Table]) -> None:
    """A trial recorded twice (two rows of one trial_id, in one file or two) is an error naming both places."""
    seen: dict[str, str] = {}
    for path, part in zip(files, parts, strict=True):
        if "trial_id" not in part.column_names:
            continue
        for trial_id in part.column("trial_id").to_pylist():
            if trial_id in seen:
                where = path if seen[trial_id] == path else f"{seen[trial_id]} and {path}"
                raise BnsweepError(f"trial {str(trial_id)[:80]!r} is recorded twice (in {where}): keep one record "
                                   "of it and move the other out of the results directory")
            seen[trial_id] = path


def kind(data_type: pa.DataType) -> str:
    """A column type's kind, as REQUIRED_COLUMNS names it: string, bool, int, float, list or other."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    checks = (("string", pa.types.is_string), ("string", pa.types.is_large_string), ("bool", pa.types.is_boolean),
              ("int", pa.types.is_integer), ("float", pa.types.is_floating), ("list", pa.types.is_list),
              ("null", pa.types.is_null))
    return next((name for name, test in checks if test(data_type)), "other")


def schema_problem(schema: pa.Schema, required: Mapping[str, str]) -> str | None:
    """What a file's schema lacks of `required` ({column: kind}), or None. An all-null column (type null) and an
    int where a float belongs are fine."""
    for name, wanted in required.items():
        if name not in schema.names:
            return f"no column {name!r}"
        got = kind(schema.field(name).type)
        if got != wanted and got != "null" and not (wanted == "float" and got == "int"):
            return f"column {name!r} holds {got}, not {wanted}"
    return None


def outcomes(results: str | os.PathLike) -> dict[str, dict]:
    """trial_id -> {trial_id, status, trained} of every trial recorded in RESULTS/trials."""
    table = read_table(results, TRIALS)
    if table.num_rows == 0:
        return {}
    return {r["trial_id"]: r for r in table.select(["trial_id", "status", "trained"]).to_pylist()}


def trials_table(config: TrialConfig, outcome: dict[str, Any]) -> pa.Table:
    """One row: every resolved config value (lists as JSON text), then outcome and provenance."""
    unknown = set(outcome) - set(OUTCOME)
    if unknown:
        raise ValueError(f"outcome keys without a schema: {sorted(unknown)}")
    row: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        row[f.name] = json.dumps(list(value) if isinstance(value, tuple) else value) \
            if f.metadata.get("sequence") else value
    row |= {key: outcome.get(key) for key in OUTCOME}
    return pa.Table.from_pylist([row], schema=trials_schema())


def failed_trials_table(config: TrialConfig, error: str, attempt: int | None = None) -> pa.Table:
    """The record of a trial that kept crashing: its config, status `failed`, the error, no measurements."""
    return trials_table(config, {"trial_id": config.trial_id, "status": "failed", "trained": False,
                                 "steps_done": 0, "error": error, "attempt": attempt,
                                 "bnsweep_version": bnsweep.__version__, "torch_version": torch_version(),
                                 "hostname": socket.gethostname(), "schema_version": SCHEMA_VERSION,
                                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})




def torch_version() -> str:
    """torch's version as a trial records it: torch.__version__, which names the build (2.14.1+cu130; the package
    metadata says 2.14.1). Imported here only to record a failed trial, after the sweep has run trials."""
    import torch

    return torch.__version__


def curves_table(trial_id: str, history: Any, evals: dict[int, dict[str, float]]) -> pa.Table:
    """A trial's `curves`: one row per step it ran, its per-step columns (`history`, steps x CURVE_COLUMNS) and the
    evaluations at the steps that had one (NaN elsewhere)."""
    columns: dict[str, Any] = {"trial_id": [trial_id] * len(history), "step": list(range(len(history)))}
    for j, name in enumerate(CURVE_COLUMNS):
        columns[name] = history[:, j]
    for name in EVAL_COLUMNS:
        columns[name] = [evals.get(t, {}).get(name, math.nan) for t in range(len(history))]
    return pa.table(columns, schema=CURVES_SCHEMA)
