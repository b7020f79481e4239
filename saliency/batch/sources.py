"""What a batch job reads: image files, folders, globs, lists of paths, Parquet tables of paths or bytes, URIs."""

from __future__ import annotations

import csv
import functools
import glob
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

from saliency.errors import ImageError, SaliencyError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
LIST_SUFFIXES = (".txt", ".csv", ".lst")
PARQUET_SUFFIXES = (".parquet", ".pq")
BYTES_COLUMNS = ("image", "bytes", "data", "content", "img")


class SourceError(SaliencyError):
    """A SOURCE argument that names nothing usable (the job stops before any work)."""


@dataclass(frozen=True)
class Source:
    """One image to explain: ``id`` (the path or URI as given, or ``TABLE#ROW`` for bytes in a table) and,
    for images stored in a table, their ``data``; or the ``problem`` that makes it unusable (its error row)."""

    id: str
    data: bytes | None = None
    problem: str | None = None

    def read(self, base: str | None = None) -> bytes | io.BytesIO | str:
        """What :func:`saliency.images.open_image` takes: the local path (a relative one under ``base``, the
        folder the job was started in, where given), or the bytes named by ``id``."""
        if self.problem is not None:
            raise ImageError(self.problem)
        if self.data is not None:
            return _named(self.data, self.id)
        if _is_uri(self.id):
            filesystem, path = _filesystem(self.id)
            try:
                with filesystem.open_input_stream(path) as stream:
                    return _named(stream.read(), self.id)
            except FileNotFoundError:
                raise ImageError(f"image file {self.id!r} does not exist; check the path") from None
            except OSError as exc:
                raise ImageError(f"cannot read image file {self.id!r}: {exc}") from None
        return self.id if base is None or os.path.isabs(self.id) else os.path.join(base, self.id)


def list_sources(arguments: Sequence[str], exclude: Sequence[str | os.PathLike | None] = ()) -> Iterator[Source]:
    """Every image the SOURCE arguments name, in order, each once (however its path is spelt).

    A folder gives its image files recursively (hidden files and folders and ``*.mask.*`` skipped,
    symbolic links to folders not followed); a glob its matching image files (or, for a pattern
    ending in ``.parquet`` / ``.txt`` / ``.csv`` / ``.lst``, the files it matches read as such); a
    ``.txt`` / ``.lst`` file one path per line (a line starting with ``#`` is a comment); a ``.csv``
    file the ``path`` column (else the first); a Parquet file or folder of them its ``path`` column
    or its image bytes (a binary column named image/bytes/data/content, or a struct with a
    ``bytes`` field, as Hugging Face datasets store images), each row then named ``FILE#ROW``.
    ``scheme://`` URIs go through pyarrow's filesystems (``s3://``, ``gs://``, …, where installed).
    Folders in ``exclude`` (the job's own outputs) are never scanned. A listed image file that does
    not exist, or whose name is not UTF-8, is not an error here: it becomes the job's error row.
    """
    if not arguments:
        raise SourceError("no SOURCE given; pass image files, folders, globs, list files or Parquet files")
    _real_folder.cache_clear()  # links may have changed since the last job
    skip = frozenset(source_key(os.fspath(p)).rstrip("/") for p in exclude if p)
    seen: set[str] = set()
    for argument in arguments:
        for source in _expand(argument, skip):
            if printable(source.id) != source.id:  # a name the file system gave as bytes that are not UTF-8
                source = Source(printable(source.id), problem=f"the name of {printable(source.id)!r} is not UTF-8 "
                                "text, which the results cannot hold; rename the file")
            key = source_key(source.id)
            if key not in seen:
                seen.add(key)
                yield source


def printable(name: str) -> str:
    """``name`` with any byte that was not UTF-8 (kept by Python as a lone surrogate) written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def source_key(identity: str) -> str:
    """What makes two sources the same: a local path's real, absolute form (``./a.png``, ``file:///…/a.png`` and
    a link to it are ``a.png``), any other URI as written."""
    if not _is_uri(identity):
        return _key(identity)
    scheme, _, rest = identity.partition("://")
    return _key(unquote(rest)) if scheme.lower() == "file" and rest.startswith("/") else identity


def _key(path: str) -> str:
    """``path`` resolved as the file system resolves it (``link/..`` is the link's target's parent), normalised;
    for a table's row (``TABLE#ROW``), the table's."""
    table, sep, row = path.rpartition("#")
    if sep and row.isdigit() and table.lower().endswith(PARQUET_SUFFIXES) and not os.path.lexists(path):
        return _key(table) + sep + row
    folder, name = os.path.split(path)
    resolved = os.path.join(_real_folder(os.path.join(os.getcwd(), folder)), name)
    if name and os.path.islink(resolved):
        resolved = os.path.realpath(resolved)
    return os.path.normcase(resolved)


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    """The real path of an absolute ``folder``, remembered: a folder of a million images is resolved once."""
    return os.path.realpath(folder)


def _expand(argument: str, skip: frozenset[str]) -> Iterator[Source]:
    if _is_uri(argument):
        yield from _expand_uri(argument, skip)
        return
    if glob.has_magic(argument) and not os.path.exists(argument):
        tables = argument.lower().endswith(PARQUET_SUFFIXES + LIST_SUFFIXES)
        matches = [m for m in sorted(glob.glob(argument, recursive=True))
                   if os.path.isfile(m) and not _inside(m, skip) and (tables or _looks_like_image(m))]
        if not matches:
            raise SourceError(f"no {'file' if tables else 'image file'} matches {argument!r}; check the pattern")
        for match in matches:
            yield from _expand_path(match, skip) if tables else [Source(match)]
        return
    yield from _expand_path(argument, skip)


def _expand_path(path: str, skip: frozenset[str]) -> Iterator[Source]:
    lower = path.lower()
    if os.path.isdir(path):
        if _key(path) in skip:
            raise SourceError(f"source folder '{path}' is also the job's --out or --png folder; "
                              "write those outside the sources")
        images = sorted(_files_under(path, skip, _looks_like_image))
        tables = [] if images else sorted(_files_under(path, skip, _is_parquet_name))
        if images:
            yield from (Source(p) for p in images)
        elif tables:
            yield from _from_parquet(path, tables)
        else:
            raise SourceError(f"folder '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)}) "
                              "and no Parquet files")
    elif path.endswith(("/", os.sep)):
        raise SourceError(f"folder '{path}' does not exist; check the path")
    elif lower.endswith(PARQUET_SUFFIXES):
        _must_exist(path)
        yield from _from_parquet(path)
    elif lower.endswith(LIST_SUFFIXES):
        _must_exist(path)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as exc:
            raise SourceError(f"cannot read list file '{path}': {exc.strerror or exc}") from None
        yield from (Source(p) for p in _listed(data, lower.endswith(".csv"), path))
    else:
        yield Source(path)  # a missing image file becomes that source's error row


def _files_under(folder: str, skip: frozenset[str], wanted) -> list[str]:
    """The files under ``folder`` that ``wanted(name)`` takes; hidden folders, those in ``skip`` and linked
    folders are not entered, and pipes, sockets and devices are left out (reading one could wait for ever)."""
    found, folders = [], [folder]
    while folders:
        try:
            with os.scandir(folders.pop()) as listing:
                entries = list(listing)
        except OSError:
            continue  # an unreadable folder is passed over, as a listing would
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not entry.name.startswith(".") and _key(entry.path) not in skip:
                    folders.append(entry.path)
            elif entry.is_symlink():
                if wanted(entry.name) and not _inside(entry.path, skip):  # a link into the job's outputs goes
                    found.append(entry.path)  # a broken link stays: its error row says why
            elif wanted(entry.name) and entry.is_file(follow_symlinks=False):
                found.append(entry.path)
    return found


def _inside(path: str, skip: frozenset[str]) -> bool:
    key = source_key(path)
    return any(key.startswith(folder + ("/" if _is_uri(folder) else os.sep)) for folder in skip)


def _looks_like_image(name: str) -> bool:
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_SUFFIXES) and ".mask." not in base and not base.startswith(".")


def _is_parquet_name(name: str) -> bool:
    return name.lower().endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))


def _listed(data: bytes, is_csv: bool, name: str) -> list[str]:
    """The paths a list file's bytes name (UTF-8, with or without a byte-order mark)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SourceError(f"list file '{name}' is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    if is_csv:
        paths = _csv_paths(text, name)
    else:
        paths = [line.strip() for line in text.splitlines()]
        paths = [line for line in paths if line and not line.startswith("#")]
    if not paths:
        raise SourceError(f"list file '{name}' names no image paths")
    return paths


def _csv_paths(text: str, name: str) -> list[str]:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            return []
        column = header.index("path") if "path" in header else 0
        paths = [header[0].strip()] if "path" not in header and _looks_like_image(header[0].strip()) else []
        paths += [row[column].strip() for row in reader if len(row) > column and row[column].strip()]
    except csv.Error as exc:
        raise SourceError(f"list file '{name}' cannot be read as CSV (line {reader.line_num}): {exc}") from None
    return paths


def _from_parquet(location: str, files: Sequence[str] = ()) -> Iterator[Source]:
    """The rows of the Parquet file ``location``, or of the ``files`` found under the folder ``location``
    (each file read with its own columns)."""
    if _is_uri(location):
        filesystem, root = _filesystem(location)
    else:
        filesystem, root = None, location
    rows = 0
    for file in sorted(files) or [root]:
        for source in _table_sources(_child(location, root, file), file, filesystem):
            rows += 1
            yield source
    if not rows:
        raise SourceError(f"Parquet source '{location}' has no rows, so names no image")


def _table_sources(name: str, file: str, filesystem) -> Iterator[Source]:
    """One source per row of the Parquet file ``file`` (called ``name``): its path, or its bytes as ``name#ROW``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(file if filesystem is None else filesystem.open_input_file(file))
        schema = table.schema_arrow
        data_column = next((c for c in BYTES_COLUMNS if c in schema.names and _holds_bytes(schema.field(c))), None)
        data_column = data_column or next((f.name for f in schema if _holds_bytes(f)), None)
        has_path = "path" in schema.names
        if has_path and not _holds_text(schema.field("path").type):
            raise SourceError(f"Parquet source '{name}': its 'path' column holds {schema.field('path').type}, "
                              "not text")
        if data_column is None and not has_path:
            raise SourceError(f"Parquet source '{name}' has neither a 'path' column nor a column of image bytes "
                              f"(its columns: {', '.join(schema.names)})")
        columns = [c for c in ("path", data_column) if c is not None and (c == data_column or has_path)]
        row = 0
        for batch in table.iter_batches(batch_size=256, columns=columns):
            paths = batch.column("path").to_pylist() if has_path else [None] * batch.num_rows
            datas, inner = _bytes_of(batch.column(data_column)) if data_column else ([None] * batch.num_rows,) * 2
            for path, data, inner_path in zip(paths, datas, inner):
                path = path or inner_path  # a Hugging Face image struct may hold a path instead of bytes
                if data is not None or not path:
                    yield Source(f"{name}#{row}", data, None if data is not None else
                                 f"row {row} of Parquet table '{name}' has neither a path nor image bytes")
                else:
                    yield Source(path)
                row += 1
    except (OSError, pa.ArrowInvalid) as exc:
        raise SourceError(f"cannot read Parquet source '{name}': {exc}") from None


def _child(location: str, root: str, path: str) -> str:
    """How to name ``path`` (found under ``root``, what ``location`` opened): a URI stays a URI."""
    if not _is_uri(location) or path == root:
        return location if path == root else path
    return location.rstrip("/") + quote(path[len(root.rstrip("/")):], safe="/")


def _holds_bytes(field) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
        return True
    return pa.types.is_struct(field.type) and any(
        f.name == "bytes" and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) for f in field.type)


def _holds_text(kind) -> bool:
    """Whether a column of ``kind`` holds text: plain, large, view or dictionary-encoded (a pandas category)."""
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)


def _bytes_of(column) -> tuple[list[bytes | None], list[str | None]]:
    """A bytes column's values, and for a struct of ``bytes`` and ``path`` (Hugging Face's images) the paths too."""
    import pyarrow as pa

    if not pa.types.is_struct(column.type):
        return column.to_pylist(), [None] * len(column)
    kind = column.type
    has_path = kind.get_field_index("path") >= 0 and _holds_text(kind.field("path").type)
    return column.field("bytes").to_pylist(), column.field("path").to_pylist() if has_path else [None] * len(column)


def _must_exist(path: str) -> None:
    """A list or table named as SOURCE must be a file that can be read to its end."""
    if not os.path.exists(path):
        raise SourceError(f"source '{path}' does not exist; check the path")
    if not os.path.isfile(path):
        raise SourceError(f"source '{path}' is not a regular file (a pipe, socket or device); give a file")


def _is_uri(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def _filesystem(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several kinds for unknown schemes and missing extras
        raise SourceError(f"cannot open {uri!r}: {exc} (is the filesystem for that scheme installed?)") from None


def _expand_uri(uri: str, skip: frozenset[str]) -> Iterator[Source]:
    from pyarrow import fs

    filesystem, path = _filesystem(uri)
    try:
        info = filesystem.get_file_info(path)
        if info.type == fs.FileType.Directory:
            infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
            files = sorted(i.path for i in infos if i.type == fs.FileType.File
                           and not any(part.startswith(".") for part in i.path[len(path):].split("/"))
                           and not _inside(_child(uri, path, i.path), skip))
            images = [f for f in files if _looks_like_image(f)]
            tables = [f for f in files if _is_parquet_name(f.rsplit("/", 1)[-1])]
            if images:
                yield from (Source(_child(uri, path, f)) for f in images)
            elif tables:
                yield from _from_parquet(uri, tables)
            else:
                raise SourceError(f"'{uri}' holds no image files and no Parquet files")
        elif uri.lower().endswith(PARQUET_SUFFIXES):
            yield from _from_parquet(uri)
        elif uri.lower().endswith(LIST_SUFFIXES):
            if info.type == fs.FileType.NotFound:
                raise SourceError(f"source '{uri}' does not exist; check the path")
            with filesystem.open_input_stream(path) as stream:
                data = stream.read()
            yield from (Source(p) for p in _listed(data, uri.lower().endswith(".csv"), uri))
        else:
            yield Source(uri)
    except OSError as exc:
        raise SourceError(f"cannot list {uri!r}: {exc}") from None


def _named(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # open_image names the source in its messages
    return stream
