"""The output of a batch job: a Parquet dataset of shards, each written whole or not at all.

A shard is written under a hidden name (``.tmp-…``, which Parquet readers skip) and renamed into
place, so a reader — or a rerun after a crash — sees only complete shards. Its name is a hash of
the sources it holds, so a retried task replaces its own shard instead of adding a second one.
``_job.json`` records what the job computes; a rerun with other settings is refused.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from saliency.errors import SaliencyError

JOB_FILE = "_job.json"
LOCK_FILE = ".lock"
TEMP_PREFIX = ".tmp-"
MAX_VALUES_PER_SHARD = 2**31 - 1
"""Map values one shard's column may hold (an Arrow list's offsets are int32); more go to further shards."""


class StoreError(SaliencyError):
    """DEST cannot be used: not writable, or it holds another job's results."""


def schema(methods: Sequence[str], reduce: str, job: Mapping[str, Any] | None = None):
    """The Arrow schema of a result row (see docs/batch.md for what each column holds)."""
    import pyarrow as pa

    value = pa.float16() if reduce == "max-abs" else pa.float32()
    prediction = pa.struct([("index", pa.int32()), ("label", pa.string()), ("probability", pa.float32())])
    fields = [
        ("source", pa.string()), ("error", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
        ("rank", pa.int32()), ("target", pa.int32()), ("label", pa.string()), ("probability", pa.float32()),
        ("predictions", pa.list_(prediction)), ("map_shape", pa.list_(pa.int32())),
    ] + [(f"map_{m}", pa.list_(value)) for m in methods]
    metadata = {b"saliency.job": json.dumps(dict(job), sort_keys=True).encode()} if job else None
    return pa.schema(fields, metadata=metadata)


class Store:
    """A Parquet dataset at ``dest`` (a local path or a pyarrow filesystem URI) holding one job's rows."""

    def __init__(self, dest: str, job: Mapping[str, Any]) -> None:
        from pyarrow import fs

        self.dest = dest
        self.job = dict(job)
        try:
            self.filesystem, self.root = fs.FileSystem.from_uri(dest) if "://" in dest else (fs.LocalFileSystem(),
                                                                                              _absolute(dest))
        except Exception as exc:
            raise StoreError(f"cannot open --out {dest!r}: {exc}") from None
        self.schema = schema(job["methods"], job["reduce"], job)
        self._lock = None
        self.map_columns = tuple(f"map_{m}" for m in job["methods"])

    @property
    def location(self) -> str:
        """DEST as any other process must name it: a URI as given, a local path made absolute (a worker's
        own folder is not this one's)."""
        return self.dest if "://" in self.dest else self.root

    def open(self) -> None:
        """Create DEST if needed, hold it for this job, check it holds this job (or nothing), and clear
        half-written temporary files."""
        from pyarrow import fs

        info = self.filesystem.get_file_info(self.root)
        if info.type == fs.FileType.File:
            raise StoreError(f"--out '{self.dest}' is a file; give a folder for the Parquet dataset")
        try:
            self.filesystem.create_dir(self.root, recursive=True)
        except OSError as exc:
            raise StoreError(f"cannot create --out '{self.dest}': {exc}") from None
        self._check()  # before the lock: a folder that is not a job's gets no .lock either
        self._hold()
        try:
            if self._check() is None:  # again: another job may have started it meanwhile
                self._write_atomic(JOB_FILE, json.dumps(self.job, indent=2, sort_keys=True).encode())
            self.clear_temporary()
        except BaseException:
            self.close()
            raise

    def _check(self) -> dict[str, Any] | None:
        """The job DEST records (None: DEST is empty); refused if it is another job's, or not a job's."""
        recorded = self._recorded_job()
        if recorded is None:
            held = sorted(i.base_name for i in self.filesystem.get_file_info(_selector(self.root))
                          if not i.base_name.startswith("."))
            if held:
                raise StoreError(f"--out '{self.dest}' is not empty (it holds {', '.join(held[:3])}"
                                 f"{', ...' if len(held) > 3 else ''}) and has no {JOB_FILE}, so no saliency "
                                 "batch job started it; choose an empty or new folder")
        elif recorded != self.job:
            changed = sorted(k for k in set(recorded) | set(self.job) if recorded.get(k) != self.job.get(k))
            raise StoreError(f"--out '{self.dest}' holds the results of another job (it differs in "
                             f"{', '.join(changed)}); rerun with the same settings to resume, or choose another --out")
        return recorded

    def close(self) -> None:
        """Let DEST go (see :meth:`open`); the shards stay."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def __enter__(self) -> Store:
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _hold(self) -> None:
        """On a local DEST, take ``.lock`` for as long as this process lives (the system lets it go when the job
        ends, also when it is killed), so that a second job on the same DEST stops at once."""
        import fcntl
        from pyarrow import fs

        if not isinstance(self.filesystem, fs.LocalFileSystem):
            return  # object stores have no locks: one job at a time is up to the user there
        try:
            self._lock = open(f"{self.root}/{LOCK_FILE}", "a")
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.close()
            raise StoreError(f"another job is writing to --out '{self.dest}'; wait for it to end, or choose "
                             "another --out") from None
        except OSError as exc:
            raise StoreError(f"cannot write in --out '{self.dest}': {exc.strerror or exc}") from None

    def clear_temporary(self) -> None:
        """Delete the temporary files of writers that were killed mid-write (their shards are redone or retried)."""
        for info in self.filesystem.get_file_info(_selector(self.root)):
            if info.base_name.startswith(TEMP_PREFIX):
                _delete_quietly(self.filesystem, info.path)

    def done(self) -> set[str]:
        """The sources that already have rows in DEST."""
        return set(self.recorded())

    def recorded(self) -> dict[str, bool]:
        """Each source with rows in DEST, and whether it failed (its row has ``error`` set)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        found: dict[str, bool] = {}
        for path in self._shards():
            try:
                table = pq.read_table(path, columns=["source", "error"], filesystem=self.filesystem)
            except (OSError, pa.ArrowInvalid, KeyError) as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise StoreError(f"cannot read '{path}' in --out '{self.dest}' ({reason}); it is damaged or not one "
                                 "of this job's shards: move it away (a rerun redoes its sources)") from None
            if _job_of(table.schema) != self.job:
                raise StoreError(f"'{path}' in --out '{self.dest}' is not one of this job's shards (its schema does "
                                 "not record this job); move it away, or choose another --out")
            for source, error in zip(table.column("source").to_pylist(), table.column("error").to_pylist()):
                found[source] = found.get(source, False) or error is not None
        return found

    def write(self, rows: Sequence[Mapping[str, Any]]) -> list[str]:
        """Write ``rows`` as one shard (atomically), or as several where their maps exceed
        :data:`MAX_VALUES_PER_SHARD`; each is named by a hash of its sources. Returns the names."""
        return [self._write_shard(part) for part in _parts(rows, self.map_columns)]

    def _write_shard(self, rows: Sequence[Mapping[str, Any]]) -> str:
        import pyarrow.parquet as pq

        table = self.table(rows)
        digest = hashlib.sha1(json.dumps(sorted({r["source"] for r in rows})).encode()).hexdigest()[:20]
        name = f"part-{digest}.parquet"
        temp = self._temporary(name)
        try:
            pq.write_table(table, temp, filesystem=self.filesystem, **self.encoding())
            self.filesystem.move(temp, f"{self.root}/{name}")
        except OSError as exc:
            _delete_quietly(self.filesystem, temp)
            raise StoreError(f"cannot write a shard in --out '{self.dest}': {exc}") from None
        except BaseException:
            _delete_quietly(self.filesystem, temp)
            raise
        return name

    def encoding(self) -> dict[str, Any]:
        """How shards are encoded: zstd, no dictionaries, float32 maps byte-stream split.

        A raw map's floats are nearly all distinct, so a dictionary only costs: with one, pyarrow
        wrote raw float32 rows 1.2 × (128-row shards of ResNet50 maps) to 4 × (32-row shards of
        the demo's) slower, and the files came out larger. Splitting float32 values by byte makes
        them compress about 9 % smaller for the same time; pyarrow, pandas and DuckDB read it
        (parquet-mr since 1.12). float16 maps stay plain, which older readers also take; a
        dictionary would make them 4 % smaller but their writing 1.5 × slower.
        """
        split = [f"{name}.list.element" for name in self.map_columns
                 if self.schema.field(name).type.value_type.bit_width == 32]
        return {"compression": "zstd", "use_dictionary": False, "use_compliant_nested_type": True,
                "use_byte_stream_split": split}

    def table(self, rows: Sequence[Mapping[str, Any]]):
        """Rows (dicts with the schema's columns; maps as numpy arrays) as an Arrow table."""
        import pyarrow as pa

        columns = {}
        for field in self.schema:
            values = [r.get(field.name) for r in rows]
            if field.name in self.map_columns:
                columns[field.name] = _list_array(values, field.type.value_type)
            else:
                columns[field.name] = pa.array(values, type=field.type)
        return pa.table(columns, schema=self.schema)

    def _temporary(self, name: str) -> str:
        """A hidden, unique path in DEST to write ``name`` under before it is renamed into place."""
        return f"{self.root}/{TEMP_PREFIX}{uuid.uuid4().hex}-{name}"

    def _shards(self) -> list[str]:
        return sorted(i.path for i in self.filesystem.get_file_info(_selector(self.root))
                      if i.base_name.endswith(".parquet") and not i.base_name.startswith((".", "_")))

    def _recorded_job(self) -> dict[str, Any] | None:
        try:
            with self.filesystem.open_input_stream(f"{self.root}/{JOB_FILE}") as stream:
                recorded = json.loads(stream.read())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read '{self.dest}/{JOB_FILE}': {exc}; choose another --out") from None
        if not isinstance(recorded, dict):
            raise StoreError(f"'{self.dest}/{JOB_FILE}' holds a JSON {type(recorded).__name__}, not the record of "
                             "a saliency batch job; choose another --out")
        return recorded

    def _write_atomic(self, name: str, data: bytes) -> None:
        temp = self._temporary(name)
        try:
            with self.filesystem.open_output_stream(temp) as stream:
                stream.write(data)
            self.filesystem.move(temp, f"{self.root}/{name}")
        except OSError as exc:
            _delete_quietly(self.filesystem, temp)
            raise StoreError(f"cannot write in --out '{self.dest}': {exc}") from None


def _job_of(schema) -> Any:
    """The job a shard's schema records (see :func:`schema`), or None."""
    try:
        return json.loads((schema.metadata or {})[b"saliency.job"])
    except (KeyError, ValueError):
        return None


def _parts(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Iterable[list[Mapping[str, Any]]]:
    """``rows`` in order, cut between sources where a map column would pass :data:`MAX_VALUES_PER_SHARD` values
    (a source's rows stay in one shard: a rerun skips a source that has any)."""
    part: list[Mapping[str, Any]] = []
    held = dict.fromkeys(columns, 0)
    for _, group in itertools.groupby(rows, key=lambda row: row["source"]):
        together = list(group)
        sizes = {c: sum(0 if r.get(c) is None else int(np.size(r[c])) for r in together) for c in columns}
        if part and any(held[c] + sizes[c] > MAX_VALUES_PER_SHARD for c in columns):
            yield part
            part, held = [], dict.fromkeys(columns, 0)
        part += together
        held = {c: held[c] + sizes[c] for c in columns}
    if part:
        yield part


def _list_array(values: Iterable[np.ndarray | None], value_type):
    """A list column from numpy arrays (None: a null list) without a Python float per element."""
    import pyarrow as pa

    arrays = list(values)
    lengths = np.array([0 if a is None else a.size for a in arrays], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    dtype = np.float16 if pa.types.is_float16(value_type) else np.float32
    flat = (np.concatenate([a.reshape(-1).astype(dtype, copy=False) for a in arrays if a is not None])
            if any(a is not None for a in arrays) else np.zeros(0, dtype))
    mask = pa.array([a is None for a in arrays])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat, type=value_type), mask=mask)


def _selector(root: str):
    from pyarrow import fs

    return fs.FileSelector(root, allow_not_found=True, recursive=False)


def _absolute(path: str) -> str:
    import os

    return os.path.abspath(path)


def _delete_quietly(filesystem, path: str) -> None:
    try:
        filesystem.delete_file(path)
    except OSError:
        pass
