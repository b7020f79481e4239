"""What a batch job reads: image files, folders, globs, lists of paths, Parquet tables of paths or bytes, URIs."""

from __future__ import annotations

import csv
import glob
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

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
    for images stored in a table, their ``data``."""

    id: str
    data: bytes | None = None

    def read(self) -> bytes | io.BytesIO | str:
        """What :func:`saliency.images.open_image` takes: the local path, or the bytes named by ``id``."""
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
        return self.id


def list_sources(arguments: Sequence[str]) -> Iterator[Source]:
    """Every image the SOURCE arguments name, in order, each once.

    A folder gives its image files recursively (``*.mask.*`` skipped); a glob its matches; a
    ``.txt`` / ``.lst`` file one path per line (``#`` starts a comment); a ``.csv`` file the
    ``path`` column (else the first); a Parquet file or folder of them its ``path`` column or its
    image bytes (a binary column named image/bytes/data/content, or a struct with a ``bytes``
    field, as Hugging Face datasets store images). ``scheme://`` URIs go through pyarrow's
    filesystems (``s3://``, ``gs://``, …, where installed). A file that does not exist is not an
    error here: it becomes the job's error row for that source.
    """
    if not arguments:
        raise SourceError("no SOURCE given; pass image files, folders, globs, list files or Parquet files")
    seen: set[str] = set()
    for argument in arguments:
        for source in _expand(argument):
            if source.id not in seen:
                seen.add(source.id)
                yield source


def _expand(argument: str) -> Iterator[Source]:
    if _is_uri(argument):
        yield from _expand_uri(argument)
        return
    if glob.has_magic(argument) and not os.path.exists(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise SourceError(f"no file matches {argument!r}; check the pattern")
        for match in matches:
            yield from _expand_path(match, from_glob=True)
        return
    yield from _expand_path(argument, from_glob=False)


def _expand_path(path: str, from_glob: bool) -> Iterator[Source]:
    lower = path.lower()
    if os.path.isdir(path):
        images = sorted(_images_under(path))
        if images:
            yield from (Source(p) for p in images)
        elif _parquet_files_under(path):
            yield from _from_parquet(path)
        elif not from_glob:
            raise SourceError(f"folder '{path}' holds no image files ({', '.join(IMAGE_SUFFIXES)}) "
                              "and no Parquet files")
    elif lower.endswith(PARQUET_SUFFIXES):
        _must_exist(path)
        yield from _from_parquet(path)
    elif lower.endswith(LIST_SUFFIXES):
        _must_exist(path)
        with open(path, newline="", encoding="utf-8") as handle:
            yield from (Source(p) for p in _listed(handle, lower.endswith(".csv"), path))
    elif not from_glob or _looks_like_image(path):
        yield Source(path)  # a missing image file becomes that source's error row


def _images_under(folder: str) -> Iterator[str]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if _looks_like_image(name):
                yield os.path.join(root, name)


def _parquet_files_under(folder: str) -> list[str]:
    return [os.path.join(root, name) for root, _, files in os.walk(folder) for name in files
            if name.lower().endswith(PARQUET_SUFFIXES) and not name.startswith((".", "_"))]


def _looks_like_image(name: str) -> bool:
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_SUFFIXES) and ".mask." not in base and not base.startswith(".")


def _listed(handle: io.TextIOBase, is_csv: bool, name: str) -> Iterator[str]:
    if not is_csv:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#"):
                yield line
        return
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        return
    column = header.index("path") if "path" in header else 0
    if "path" not in header and _looks_like_image(header[0]):  # no header row: the first line is a path
        yield header[0]
    for row in reader:
        if len(row) > column and row[column].strip():
            yield row[column].strip()


def _from_parquet(location: str) -> Iterator[Source]:
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        if _is_uri(location):
            filesystem, path = _filesystem(location)
            dataset = ds.dataset(path, filesystem=filesystem, format="parquet")
        else:
            dataset = ds.dataset(location, format="parquet")
    except (OSError, pa.ArrowInvalid) as exc:
        raise SourceError(f"cannot read Parquet source '{location}': {exc}") from None
    schema = dataset.schema
    data_column = next((name for name in BYTES_COLUMNS if name in schema.names and _holds_bytes(schema.field(name))),
                       None)
    if data_column is None:
        data_column = next((f.name for f in schema if _holds_bytes(f)), None)
    has_path = "path" in schema.names
    if data_column is None and not has_path:
        raise SourceError(f"Parquet source '{location}' has neither a 'path' column nor a column of image bytes "
                          f"(its columns: {', '.join(schema.names)})")
    columns = [c for c in ("path", data_column) if c is not None and (c == data_column or has_path)]
    row = 0
    for batch in dataset.to_batches(columns=columns, batch_size=256):
        paths = batch.column("path").to_pylist() if has_path else [None] * batch.num_rows
        datas = _bytes_of(batch.column(data_column)) if data_column else [None] * batch.num_rows
        for path, data in zip(paths, datas):
            identity = path if path else f"{location}#{row}"
            row += 1
            if data is None and not path:
                continue
            yield Source(identity, data)


def _holds_bytes(field) -> bool:
    import pyarrow as pa

    if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type):
        return True
    return pa.types.is_struct(field.type) and any(
        f.name == "bytes" and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)) for f in field.type)


def _bytes_of(column) -> list[bytes | None]:
    import pyarrow as pa

    if pa.types.is_struct(column.type):
        column = column.field("bytes")
    return column.to_pylist()


def _must_exist(path: str) -> None:
    if not os.path.exists(path):
        raise SourceError(f"source '{path}' does not exist; check the path")


def _is_uri(text: str) -> bool:
    scheme, sep, _ = text.partition("://")
    return bool(sep) and scheme.isidentifier() and len(scheme) > 1


def _filesystem(uri: str):
    from pyarrow import fs

    try:
        return fs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several kinds for unknown schemes and missing extras
        raise SourceError(f"cannot open {uri!r}: {exc} (is the filesystem for that scheme installed?)") from None


def _expand_uri(uri: str) -> Iterator[Source]:
    from pyarrow import fs

    filesystem, path = _filesystem(uri)
    info = filesystem.get_file_info(path)
    scheme = uri.partition("://")[0]
    if info.type == fs.FileType.Directory:
        infos = filesystem.get_file_info(fs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in infos if i.type == fs.FileType.File)
        images = [f for f in files if _looks_like_image(f)]
        if images:
            yield from (Source(f"{scheme}://{f}") for f in images)
        elif any(f.lower().endswith(PARQUET_SUFFIXES) for f in files):
            yield from _from_parquet(uri)
        else:
            raise SourceError(f"'{uri}' holds no image files and no Parquet files")
    elif uri.lower().endswith(PARQUET_SUFFIXES):
        yield from _from_parquet(uri)
    elif uri.lower().endswith(LIST_SUFFIXES):
        with filesystem.open_input_stream(path) as stream:
            text = io.StringIO(stream.read().decode("utf-8"))
        yield from (Source(p) for p in _listed(text, uri.lower().endswith(".csv"), uri))
    else:
        yield Source(uri)


def _named(data: bytes, name: str) -> io.BytesIO:
    stream = io.BytesIO(data)
    stream.name = name  # open_image names the source in its messages
    return stream
