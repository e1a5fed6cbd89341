"""Read a results directory into tidy, typed pandas DataFrames.

A results directory holds one folder per table and one Parquet file per trial in each (RESULTS/<table>/
<trial_id>.parquet). Files whose names start with "." or "_" are temporary or private (a file being written,
Ray's state) and are skipped, so loading a directory that a sweep is still writing is safe: a trial's `trials`
row is published last, and rows of the other tables whose trial has no `trials` row yet are left out until it
has one.

Nothing found there is trusted: each file's footer is checked before it is decoded (schema version, rows, size),
and a file holding another trial's rows than its name, a trial recorded twice or a malformed bracket is an
AnalysisError naming the file.

This module reads only Parquet (pyarrow, local paths or any pyarrow file system URI such as s3://...) and
never imports the training code, so the analysis runs wherever the results are.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from bnsweep import variants

# The variants in the order the figures and tables list them (bnsweep/variants.py). Unknown values (a newer
# sweep) are appended after these.
NORM_ORDER = variants.NAMES
ARCH_ORDER = ("vgg11", "vgg13", "vgg16", "mlp", "dln", "linear", "resnet20", "resnet56")
STATUS_ORDER = ("completed", "diverged", "failed", "running")
TRIALS = "trials"
# Config columns copied onto every per-trial table so that each is tidy on its own (one row = one
# observation with everything needed to group it).
SEQUENCES = ("probes", "etas", "ics_layers", "activation_layers")  # stored as JSON text in `trials`
KEYS = ("setting", "network", "arch", "width", "dataset", "task", "norm", "lr", "seed")
# Columns every file of a table must have for the figures and claims to read it, by kind: a file written by
# something else (another schema, no `status`) is named in a one-line AnalysisError instead of a KeyError.
REQUIRED: dict[str, dict[str, str]] = {
    TRIALS: {"trial_id": "string", "arch": "string", "norm": "string", "lr": "float", "seed": "int",
             "status": "string", "trained": "bool", "final_loss": "float", "final_train_acc": "float"},
    "boundaries": {"arch": "string", "norm": "string", "width": "float", "dataset": "string", "lower": "float",
                   "upper": "float", "ratio": "float", "all_seeds": "bool"},
    # A first curves file without a column would otherwise set the schema every later file is read with.
    "curves": {"trial_id": "string", "step": "int", "loss": "float"},
}
# The newest results schema this code reads, and how much one file may hold: bnsweep/schema.py's SCHEMA_VERSION,
# MAX_ROWS, MAX_ROWS_OTHER and MAX_FILE_BYTES (written out here: analysis/ imports only bnsweep/variants.py of
# bnsweep; a test checks that the two agree). A file is judged by its footer before it is decoded.
SCHEMA_VERSION = 1
MAX_ROWS = {TRIALS: 1_000, "boundaries": 1_000, "curves": 10_000_001}
MAX_ROWS_OTHER = 100_000_000
MAX_FILE_BYTES = 4 * 2**30


class AnalysisError(ValueError):
    """Bad input to the analysis (missing, corrupt or foreign results); the message names the value and the fix."""


@dataclass
class Results(Mapping[str, pd.DataFrame]):
    """The tables of one results directory, by name (`results["curves"]`); `root` is where they came from."""

    root: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tables)

    def __len__(self) -> int:
        return len(self.tables)

    def has(self, name: str) -> bool:
        """True when the table is present and has at least one row."""
        return name in self.tables and len(self.tables[name]) > 0

    @property
    def trials(self) -> pd.DataFrame:
        return self.tables[TRIALS]


SCHEMES = ("file", "s3")  # as bnsweep's records: pyarrow opens others too (mock:// holds nothing)
SECRET_WORDS = ("key", "secret", "token", "password", "credential", "signature")


def location_problem(text: str) -> str | None:
    """What is wrong with a results location, or None: the rule of bnsweep's records (this module does not import
    bnsweep.records): a local path, file:// or s3:// only, and no credentials inside a URI, which would be printed and
    written into claims.json and index.html. The message never repeats a URI that may hold a secret."""
    if not text.strip():
        return f"results={text!r}: an empty path; give a results directory or an s3://bucket/prefix URI"
    if "://" not in text:
        return None
    scheme = text.partition("://")[0].lower()
    if scheme not in SCHEMES:
        return (f"results: the scheme {scheme[:20]!r} is not a results location; use a local path, file:///path or "
                "s3://bucket/prefix")
    parts = urlsplit(text)
    keys = [k.lower() for k in parse_qs(parts.query, keep_blank_values=True)]
    if "@" in parts.netloc or any(word in k for k in keys for word in SECRET_WORDS):
        return (f"results: the {scheme}:// URI holds credentials (not shown here); remove them from the URI and "
                "give them as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an AWS profile or an instance role")
    return None


def filesystem(results: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system and root path of a results location (local path or URI)."""
    text = str(results)
    problem = location_problem(text)
    if problem:
        raise AnalysisError(problem)
    if "://" in text:
        try:
            return pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, OSError) as e:
            raise AnalysisError(f"cannot open results location {text!r} ({str(e).splitlines()[0]}): pass a "
                                "local results directory or a valid s3://bucket/prefix URI") from None
    return pafs.LocalFileSystem(), str(Path(text).expanduser().absolute())


def child(results: str | os.PathLike, name: str) -> str:
    """RESULTS/name for a path or a URI, keeping a URI's query (s3://b/p?endpoint_override=... -> s3://b/p/name?...)."""
    text = str(results)
    base, sep, query = text.partition("?") if "://" in text else (text, "", "")
    return f"{base.rstrip('/')}/{name}{sep}{query}"


def _parquet_files(fs: pafs.FileSystem, folder: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(".parquet")
                  and not i.base_name.startswith((".", "_")))


def table_names(fs: pafs.FileSystem, root: str) -> list[str]:
    """Folders of the results directory that hold published Parquet files (private "_" / "." ones skipped)."""
    infos = fs.get_file_info(pafs.FileSelector(root, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.Directory
                  and not i.base_name.startswith((".", "_")) and _parquet_files(fs, i.path))


def _kind(data_type: pa.DataType) -> str:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    checks = (("string", pa.types.is_string), ("string", pa.types.is_large_string), ("bool", pa.types.is_boolean),
              ("int", pa.types.is_integer), ("float", pa.types.is_floating), ("null", pa.types.is_null))
    return next((name for name, test in checks if test(data_type)), "other")


def schema_problem(schema: pa.Schema, required: Mapping[str, str]) -> str | None:
    """What a file's schema lacks of `required` ({column: kind}), or None (an all-null column fits any kind,
    an int column a float one)."""
    for name, wanted in required.items():
        if name not in schema.names:
            return f"no column {name!r}"
        got = _kind(schema.field(name).type)
        if got not in (wanted, "null") and not (wanted == "float" and got == "int"):
            return f"column {name!r} holds {got}, not {wanted}"
    return None


def footer_problem(metadata: pq.FileMetaData, table: str) -> str | None:
    """What makes a file unreadable here, from its footer alone: a newer schema version, or more rows or bytes
    than a file of `table` may hold; or None."""
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
    groups = [metadata.row_group(i) for i in range(metadata.num_row_groups)]
    size = max(sum(g.total_byte_size for g in groups),
               sum(g.column(j).total_uncompressed_size for g in groups for j in range(g.num_columns)))
    if size > MAX_FILE_BYTES:
        return (f"would decode to {size / 2**30:.1f} GiB, more than a file may ({MAX_FILE_BYTES / 2**30:.0f} GiB): "
                "move it out of the results directory")
    return None


def _footer(fs: pafs.FileSystem, path: str, table: str) -> pq.FileMetaData:
    try:
        metadata = pq.read_metadata(path, filesystem=fs)
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"corrupt Parquet file {path} ({str(e).splitlines()[0]}): delete it and rerun that trial "
                            "(bnsweep run resumes it)") from None
    problem = footer_problem(metadata, table)
    if problem:
        raise AnalysisError(f"{path} {problem}")
    return metadata


def _id_column(table: str) -> str:
    return "cell_id" if table == "boundaries" else "trial_id"


def footer_ids(metadata: pq.FileMetaData, column: str) -> set[str] | None:
    """The values of a text column by its statistics when each row group holds one value and no null, else None
    (then the column itself is read): enough to check a million-row curves file without decoding it."""
    names = [metadata.schema.column(j).path for j in range(metadata.num_columns)]
    if column not in names:
        return set()
    index, ids = names.index(column), set()
    for i in range(metadata.num_row_groups):
        stats = metadata.row_group(i).column(index).statistics
        if stats is None or not stats.has_min_max or stats.null_count != 0 or stats.min != stats.max:
            return None
        ids.add(stats.min)
    return ids


def id_problem(fs: pafs.FileSystem, path: str, table: str, metadata: pq.FileMetaData) -> str | None:
    """Rows of another trial (or search cell) than the file's name says, or None."""
    column = _id_column(table)
    ids = footer_ids(metadata, column)
    if ids is None:
        ids = set(pq.read_table(path, columns=[column], filesystem=fs).column(column).unique().to_pylist())
    name = Path(path).name.removesuffix(".parquet")
    other = next((v for v in sorted(ids, key=str) if v != name), name)
    return None if other == name else f"it holds rows of {column} {str(other)[:80]!r}, not of {name!r} as its name says"


def duplicate_problem(files: list[str], parts: list[pa.Table]) -> str | None:
    """A trial recorded twice (two `trials` rows of one trial_id, in one file or two), or None."""
    seen: dict[object, str] = {}
    for path, part in zip(files, parts, strict=True):
        for trial_id in part.column("trial_id").to_pylist():
            if trial_id in seen:
                where = path if seen[trial_id] == path else f"{seen[trial_id]} and {path}"
                return (f"trial {str(trial_id)[:80]!r} is recorded twice (in {where}): keep one record of it and "
                        "move the other out of the results directory")
            seen[trial_id] = path
    return None


def bounds_problem(part: pa.Table) -> str | None:
    """A `boundaries` row whose bracket is malformed, or None. A missing bound (null) is an open bracket and
    legitimate; a NaN, an infinite or non-positive rate, lower not below upper, or a cell's row with neither
    bound after it ran trials is not."""
    columns = [c for c in ("lower", "upper", "lower_min", "upper_max", "all_seeds", "trials_used")
               if c in part.column_names]
    for i, row in enumerate(part.select(columns).to_pylist()):
        for name in ("lower", "upper", "lower_min", "upper_max"):
            value = row.get(name)
            if value is not None and not (math.isfinite(value) and value > 0):
                return f"row {i}: {name} = {value}, not a positive finite learning rate"
        lower, upper = row.get("lower"), row.get("upper")
        if lower is not None and upper is not None and lower >= upper:
            return f"row {i}: lower = {lower:g} is not below upper = {upper:g}"
        if lower is None and upper is None and not row.get("all_seeds") and (row.get("trials_used") or 0) > 0:
            return f"row {i}: neither bound after {row['trials_used']} trials"
    return None


def read_table(fs: pafs.FileSystem, folder: str, uniform: bool = True,
               required: Mapping[str, str] | None = None) -> pa.Table:
    """Every published file of one table, concatenated; a bad file is an AnalysisError naming it.

    Each file's footer is read first: a file of a newer schema version, more rows or bytes than its table's file
    may hold (MAX_ROWS, MAX_FILE_BYTES), without the `required` columns or holding another trial's rows than its
    name says is refused before anything is decoded. `uniform` tables (curves and the probe tables) whose files
    all have one schema are read as one pyarrow dataset, multithreaded in C++; `trials`, whose columns grew
    between versions, and any table whose files differ are read file by file and concatenated with their schemas
    unified, which also names a corrupt file. Then a trial recorded twice, or a malformed `boundaries` bracket,
    is refused.
    """
    files = _parquet_files(fs, folder)
    if not files:
        return pa.table({})
    table = folder.rstrip("/").rsplit("/", 1)[-1]
    # Threads, not processes: pyarrow releases the GIL while it decodes, and S3 reads are mostly waiting.
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        footers = list(pool.map(lambda path: _footer(fs, path, table), files))
    schemas = [m.schema.to_arrow_schema() for m in footers]
    for path, schema, metadata in zip(files, schemas, footers, strict=True):
        problem = schema_problem(schema, required or {}) or id_problem(fs, path, table, metadata)
        if problem:
            raise AnalysisError(f"{path} is not a bnsweep {table} file ({problem}): move it out of {folder}")
    # trial_id as a dictionary column: a million repeated strings become one small dictionary.
    options = ds.ParquetReadOptions(dictionary_columns={"trial_id"})
    combined = None
    if uniform and table not in (TRIALS, "boundaries") and all(s.equals(schemas[0]) for s in schemas):
        try:
            combined = ds.dataset(files, format=ds.ParquetFileFormat(read_options=options), filesystem=fs).to_table()
        except (OSError, pa.ArrowException):
            pass  # read file by file below, which names the file that is corrupt

    def read(path: str) -> pa.Table:
        try:
            return pq.read_table(path, filesystem=fs, read_dictionary=["trial_id"])
        except (OSError, pa.ArrowException) as e:
            raise AnalysisError(f"corrupt Parquet file {path} ({str(e).splitlines()[0]}): delete it and rerun "
                                "that trial (bnsweep run resumes it)") from None

    if combined is not None:
        return combined
    with ThreadPoolExecutor(max_workers=min(8, len(files))) as pool:
        parts = list(pool.map(read, files))
    problem = duplicate_problem(files, parts) if table == TRIALS else None
    if problem:
        raise AnalysisError(problem)
    for path, part in zip(files, parts, strict=True):
        problem = bounds_problem(part) if table == "boundaries" else None
        if problem:
            raise AnalysisError(f"{path} has a malformed bracket ({problem}): move it out of {folder} and rerun "
                                "the search (bnsweep run resumes it)")
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except pa.ArrowException as e:
        raise AnalysisError(f"the files of {folder} have incompatible schemas ({str(e).splitlines()[0]}): "
                            "results from different bnsweep versions cannot share a directory") from None


def to_pandas(table: pa.Table, categorical_text: bool = True) -> pd.DataFrame:
    """To pandas, cheaply. Text columns of the per-step tables repeat a few values (direction, source), so they
    become categoricals; list columns (the activation histograms) stay Arrow-backed, since converting
    100,000s of small lists to Python objects would cost more than loading everything else."""
    if categorical_text:
        for i, f in enumerate(table.schema):
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                table = table.set_column(i, f.name, pc.dictionary_encode(table.column(i)))
    return table.to_pandas(types_mapper=lambda t: pd.ArrowDtype(t) if pa.types.is_list(t) else None)


def ordered(values: pd.Series, order: tuple[str, ...]) -> pd.Series:
    """An ordered categorical with the known values first, in `order`, then any others sorted."""
    present = [str(v) for v in values.dropna().unique()]
    categories = [v for v in order if v in present] + sorted(set(present) - set(order))
    return pd.Series(pd.Categorical(values.astype(object), categories=categories, ordered=True), index=values.index)


def _parse_sequences(df: pd.DataFrame) -> None:
    """Sequence-valued config columns are stored as JSON text ("[0.5, 1.0]", "\"all\""): parse them to tuples."""
    for name in df.columns:
        if isinstance(df[name].dtype, pd.CategoricalDtype) or not (
                pd.api.types.is_string_dtype(df[name]) or df[name].dtype == object):
            continue
        values = df[name].dropna()
        if values.empty or not values.map(lambda v: isinstance(v, str) and v[:1] in '["').all():
            continue
        if name not in SEQUENCES and not values.map(lambda v: v[:1] == "[").any():
            continue  # a plain text column that happens to hold quoted strings
        try:
            parsed = values.map(json.loads)
        except ValueError:
            continue
        df[name] = df[name].astype(object)
        df.loc[values.index, name] = parsed.map(lambda v: tuple(v) if isinstance(v, list) else v)


# Axes a sweep varies within one network: each becomes part of the panel label where it takes several values, so
# the paper's figures and claims never pool them as if they were seeds. `network` is the label without them: the
# claims beyond the paper that compare across an axis (C8 across batch sizes, C9 across ghost batches, C12 across
# depths) group by it. The ghost batch is read as the batch the normalization statistics see (statistics_batch).
AXES = (("batch_size", lambda v: "full batch" if v == 0 else f"batch {v:g}"),
        ("ghost_batch", lambda v: "statistics over the full batch" if v == 0 else f"statistics over {v:g}"),
        ("depth", "depth {:g}".format), ("loss", "{}".format))


def statistics_batch(trials: pd.DataFrame) -> pd.Series:
    """Per trial: how many examples each normalization statistic is computed over in training: the ghost batch
    where one is set and smaller than the batch, else the whole batch (0: full batch; NaN where the results record
    no batch size). A trial without ghost batches is a value of its own, never pooled with a ghost-batch one."""
    index = trials.index
    batch = pd.to_numeric(trials["batch_size"], errors="coerce") if "batch_size" in trials else pd.Series(
        np.nan, index=index)
    ghost = pd.to_numeric(trials["ghost_batch"], errors="coerce") if "ghost_batch" in trials else pd.Series(
        np.nan, index=index)
    smaller = ghost.notna() & ((batch <= 0) | batch.isna() | (ghost < batch))
    return ghost.where(smaller, batch).astype("float64")


def _axis(trials: pd.DataFrame, column: str) -> pd.Series | None:
    """An axis's value per trial (the ghost batch as statistics_batch), or None when the results lack it."""
    if column == "ghost_batch":
        return statistics_batch(trials) if "ghost_batch" in trials else None
    return trials[column] if column in trials else None


def _varies(trials: pd.DataFrame, by: pd.Series, column: str) -> pd.Series:
    """Per trial: whether `column` takes several values among the trials of its group `by`."""
    values = _axis(trials, column)
    if values is None:
        return pd.Series(False, index=trials.index)
    # A statistics batch unknown (the default batch size, not recorded) is still a value apart from a ghost batch.
    return values.groupby(by).transform("nunique", dropna=column != "ghost_batch") > 1


def _ordered_labels(trials: pd.DataFrame, labels: pd.Series, width: pd.Series) -> pd.Series:
    """Panels by architecture, then width, then each axis's value, as the user would read them."""
    key = pd.DataFrame({"a": trials["arch"].cat.codes, "w": width.fillna(0), "label": labels})
    sort = ["a", "w"]
    for column, _ in AXES:
        values = _axis(trials, column)
        if values is not None and pd.api.types.is_numeric_dtype(values):
            key[column] = values.fillna(math.inf if column == "ghost_batch" else -1)
            sort.append(column)
    order = tuple(key.sort_values([*sort, "label"])["label"].drop_duplicates())
    return ordered(labels, order)


def _setting_labels(trials: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """A panel label per trial (`setting`): the architecture, plus width and data set where one architecture has
    several, plus each of AXES where one network has several values; and the label without AXES (`network`)."""
    labels = trials["arch"].astype(str)
    width = trials["width"] if "width" in trials else pd.Series(np.nan, index=trials.index)
    dataset = trials["dataset"].astype(str) if "dataset" in trials else pd.Series("", index=trials.index)
    frame = pd.DataFrame({"arch": labels, "width": width, "dataset": dataset})
    many_widths = _varies(frame, frame["arch"], "width")
    many_data = _varies(frame, frame["arch"], "dataset")
    labels = labels.where(~many_widths, labels + " ×" + width.map("{:g}".format))
    network = labels.where(~many_data, labels + " " + dataset)
    setting = network
    batch = trials["batch_size"].astype(str) if "batch_size" in trials else pd.Series("", index=trials.index)
    for column, text in AXES:
        # The statistics batch is an axis of its own only where it varies at one SGD batch (the batch size
        # already names a panel whose statistics see the whole batch).
        many = _varies(trials, network + " " + batch if column == "ghost_batch" else network, column)
        if many.any():
            values = _axis(trials, column)
            shown = values.map(text, na_action="ignore").fillna(
                "statistics over the whole batch" if column == "ghost_batch" else "")
            setting = setting.where(~many, setting + " " + shown)
    return _ordered_labels(trials, setting, width), _ordered_labels(trials, network, width)

def type_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """Typed config columns: floats, ordered categories for variants and architectures, parsed sequences."""
    df = trials.copy()
    for name in ("lr", "width", "momentum", "weight_decay", "final_loss", "initial_loss"):
        if name in df:
            df[name] = pd.to_numeric(df[name], errors="coerce").astype("float64")
    if "seed" in df:
        df["seed"] = pd.to_numeric(df["seed"], errors="coerce").fillna(0).astype("int64")
    if "trained" in df:
        df["trained"] = df["trained"].fillna(False).astype(bool)
    if "task" not in df:
        df["task"] = np.where(df.get("arch", pd.Series("", index=df.index)) == "dln", "regression", "classification")
    df["task"] = df["task"].fillna("classification")
    _parse_sequences(df)
    df["norm"] = ordered(df["norm"], NORM_ORDER)
    df["arch"] = ordered(df["arch"], ARCH_ORDER)
    df["task"] = ordered(df["task"], ("classification", "regression"))
    if "status" in df:
        df["status"] = ordered(df["status"], STATUS_ORDER)
    df["setting"], df["network"] = _setting_labels(df)
    return df.drop_duplicates("trial_id", keep="last").reset_index(drop=True)


def attach_keys(table: pd.DataFrame, trials: pd.DataFrame) -> pd.DataFrame:
    """Copy the key config columns of each row's trial onto a per-trial table; rows of unknown trials drop.

    Done with category codes, not a merge: a million-row table takes milliseconds.
    """
    ids = pd.Index(trials["trial_id"].astype(object))  # unique: type_trials keeps one row per trial
    tid = table["trial_id"]
    if isinstance(tid.dtype, pd.CategoricalDtype):  # map the few categories, then index by their codes
        per_category = ids.get_indexer(tid.cat.categories.astype(object))
        codes = np.where(tid.cat.codes.to_numpy() >= 0, per_category[tid.cat.codes.to_numpy()], -1)
    else:
        codes = ids.get_indexer(tid.astype(object))
    keep = codes >= 0
    out = table.loc[keep].reset_index(drop=True)
    codes = codes[keep]
    for key in KEYS:
        if key not in trials:
            continue
        column = trials[key]
        if isinstance(column.dtype, pd.CategoricalDtype):
            out[key] = pd.Categorical.from_codes(column.cat.codes.to_numpy()[codes], dtype=column.dtype)
        else:
            out[key] = column.to_numpy()[codes]
    out["trial_id"] = pd.Categorical.from_codes(codes, categories=trials["trial_id"].astype(object).to_numpy())
    return out


def load(results: str | os.PathLike) -> Results:
    """Every table present in a results directory (local path or s3://...), as tidy typed DataFrames.

    `trials` has one row per finished trial with its config typed (lr float, norm an ordered categorical
    none < batch < noisy_batch < l1_batch < l2_batch < linf_batch < layer < group < ws_group < fixup <
    skipinit < nf, sequences as tuples), a `setting` column naming its panel (the architecture, with its width,
    data set, batch size, statistics batch (ghost batches), depth or loss where the results hold several) and
    `network` (the panel without them). Every other per-trial table gains the key columns (setting, network, arch,
    width, dataset, task, norm, lr, seed). Raises AnalysisError when the location is missing or is not results.
    """
    fs, root = filesystem(results)
    try:
        info = fs.get_file_info(root)
        names = table_names(fs, root) if info.type == pafs.FileType.Directory else []
    except (OSError, pa.ArrowException) as e:
        raise AnalysisError(f"cannot read results location {str(results)!r} ({str(e).splitlines()[0]}): check "
                            "the path and your credentials") from None
    if info.type == pafs.FileType.NotFound:
        raise AnalysisError(f"results directory {str(results)!r} does not exist: pass the --results directory "
                            "of a bnsweep run or trial")
    if info.type != pafs.FileType.Directory:
        raise AnalysisError(f"{str(results)!r} is a file, not a results directory: pass the --results directory "
                            "of a bnsweep run or trial")
    if TRIALS not in names:
        raise AnalysisError(f"{str(results)!r} is not a results directory with finished trials (no "
                            f"{TRIALS}/*.parquet): pass the --results directory of a bnsweep run or trial, or "
                            "wait until its first trial finishes")
    raw = read_table(fs, f"{root}/{TRIALS}", uniform=False, required=REQUIRED[TRIALS])
    if raw.num_rows == 0:
        raise AnalysisError(f"{root}/{TRIALS} holds no rows (its files are empty): pass the --results directory "
                            "of a bnsweep run or trial with finished trials")
    trials = type_trials(to_pandas(raw, categorical_text=False))
    tables = {TRIALS: trials}
    for name in names:
        if name == TRIALS:
            continue
        df = to_pandas(read_table(fs, f"{root}/{name}", required=REQUIRED.get(name)))
        tables[name] = attach_keys(df, trials) if "trial_id" in df else df
    return Results(root=str(results), tables=tables)
