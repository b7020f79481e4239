"""What a batch job reads and how a rerun recognises it: stable names, each image once, clear stops."""

import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saliency.batch import StoreError, explain_dataset
from saliency.batch import decoding
from saliency.batch.sources import Source, SourceError, list_sources
from saliency.cli import main
from saliency.models import load_model
from batchdata import rows, sources_in, write_images


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 4)


def ids(arguments, **kwargs):
    return [s.id for s in list_sources([str(a) for a in arguments], **kwargs)]


def test_rows_of_a_parquet_folder_are_named_by_their_own_file_so_adding_a_file_renames_nothing(tmp_path, images):
    table = tmp_path / "table"
    table.mkdir()
    pq.write_table(pa.table({"image": [images[0].read_bytes(), images[1].read_bytes()]}), table / "b.parquet")
    before = ids([table])
    pq.write_table(pa.table({"image": [images[2].read_bytes()]}), table / "a.parquet")
    after = ids([table])
    assert before == [f"{table / 'b.parquet'}#0", f"{table / 'b.parquet'}#1"]
    assert after == [f"{table / 'a.parquet'}#0"] + before


def test_image_bytes_that_share_a_path_value_are_each_kept(tmp_path, images):
    hf = pa.table({"image": pa.array([{"bytes": images[i].read_bytes(), "path": "image.png"} for i in range(3)])})
    pq.write_table(hf, tmp_path / "train.parquet")
    summary = explain_dataset([str(tmp_path / "train.parquet")], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 3 and summary.ok
    assert sources_in(tmp_path / "out") == [f"{tmp_path / 'train.parquet'}#{i}" for i in range(3)]


def test_a_table_row_with_neither_path_nor_bytes_is_an_error_row(tmp_path, images):
    pq.write_table(pa.table({"path": [str(images[0]), None]}), tmp_path / "paths.parquet")
    summary = explain_dataset([str(tmp_path / "paths.parquet")], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 1 and summary.failed == [f"{tmp_path / 'paths.parquet'}#1"]


def test_uri_folders_with_spaces_hashes_and_accents_give_uris_that_open(tmp_path, images):
    shutil.copytree(tmp_path / "images", tmp_path / "top" / "a b#c é")
    uri = f"file://{tmp_path / 'top'}"
    found = ids([uri])
    assert found[0] == uri + "/a%20b%23c%20%C3%A9/img000.png" and len(found) == 4
    summary = explain_dataset([uri], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 4 and summary.ok


def test_one_file_under_several_spellings_is_explained_once_and_a_rerun_knows_it(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spellings = ["images/img000.png", "./images/img000.png", str(images[0]), "images/../images/img000.png"]
    assert ids(spellings) == ["images/img000.png"]
    first = explain_dataset(spellings[:1], "out", methods=["guided"])
    again = explain_dataset(spellings[1:] + ["images/img001.png"], "out", methods=["guided"])
    assert (first.explained, again.explained, again.skipped) == (1, 1, 1)
    assert sorted(sources_in(tmp_path / "out")) == ["images/img000.png", "images/img001.png"]


def test_a_rerun_over_earlier_failures_says_so_and_exits_1(tmp_path, images, capsys):
    (tmp_path / "images" / "broken.png").write_bytes(b"not a picture")
    argv = ["batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--method", "guided"]
    assert main(argv) == 1
    capsys.readouterr()
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert "0 images explained, 0 failed, 5 already in" in out and "(1 of them failed)" in out
    assert "1 sources failed in an earlier run" in err and len(err.strip().splitlines()) == 1
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"])
    assert summary.failed_before == [str(tmp_path / "images" / "broken.png")] and not summary.ok


def test_the_jobs_own_outputs_inside_a_source_folder_are_not_read_back(tmp_path, images):
    folder = tmp_path / "images"
    first = explain_dataset([str(folder)], str(folder / "maps"), methods=["guided"], png=folder / "pictures")
    assert first.explained == 4 and len(os.listdir(folder / "pictures")) == 4
    again = explain_dataset([str(folder)], str(folder / "maps"), methods=["guided"], png=folder / "pictures")
    assert (again.explained, again.skipped) == (0, 4)
    with pytest.raises(SourceError, match="no image file matches"):  # a glob leaves them out too
        ids([folder / "*" / "*.png"], exclude=[folder / "pictures"])


def test_hidden_folders_are_skipped(tmp_path, images):
    write_images(tmp_path / "images" / ".thumbnails", 2)
    assert ids([tmp_path / "images"]) == [str(p) for p in images]


def test_a_glob_gives_image_files_only_unless_it_names_tables_or_lists(tmp_path, images):
    (tmp_path / "images" / "notes.txt").write_text(f"{images[0]}\n")
    pq.write_table(pa.table({"path": [str(images[1])]}), tmp_path / "images" / "t.parquet")
    assert ids([tmp_path / "images" / "*"]) == [str(p) for p in images]
    assert ids([tmp_path / "images" / "*.parquet"]) == [str(images[1])]
    assert ids([tmp_path / "images" / "*.txt"]) == [str(images[0])]
    with pytest.raises(SourceError, match="no image file matches"):
        ids([tmp_path / "images" / "*.t?t", tmp_path / "images" / "*.json"])


@pytest.mark.parametrize("name, content, message", [
    ("latin1.txt", "caf\xe9.png\n".encode("latin-1"), "is not UTF-8 text"),
    ("empty.txt", b"", "names no image paths"),
    ("comments.txt", b"# nothing yet\n\n", "names no image paths"),
    ("header.csv", b"label,path\n", "names no image paths"),
])
def test_list_files_that_cannot_be_read_or_name_nothing_stop_in_one_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SourceError, match=message):
        explain_dataset([str(tmp_path / name)], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # sources are listed before DEST is touched


def test_a_list_file_with_a_byte_order_mark_reads_its_first_path(tmp_path, images):
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbf" + f"{images[0]}\n{images[1]}\n".encode())
    (tmp_path / "list.csv").write_bytes(b"\xef\xbb\xbf" + f"path,label\n{images[2]},x\n".encode())
    assert ids([tmp_path / "list.txt", tmp_path / "list.csv"]) == [str(p) for p in images[:3]]


def test_a_parquet_path_column_that_is_not_text_stops_in_one_line(tmp_path):
    pq.write_table(pa.table({"path": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(SourceError, match="its 'path' column holds int64, not text"):
        explain_dataset([str(tmp_path / "ints.parquet")], str(tmp_path / "out"))


def test_a_damaged_file_in_dest_is_named_in_one_line(tmp_path, images, capsys):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    (tmp_path / "out" / "part-damaged.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(StoreError, match="part-damaged.parquet"):
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided"])
    assert main(["batch", str(images[1]), "--out", str(tmp_path / "out"), "--method", "guided"]) == 1
    err = capsys.readouterr().err
    assert "part-damaged.parquet" in err and len(err.strip().splitlines()) == 1


def test_a_decoders_own_failure_is_that_sources_error_row(tmp_path, images, monkeypatch):
    def failing(*args, **kwargs):
        raise ValueError("tile cannot extend outside image")

    monkeypatch.setattr(decoding, "open_image", failing)
    decoded = decoding.decode(Source(str(images[0])), load_model("demo").preprocessing)
    assert decoded.tensor is None and "ValueError: tile cannot extend outside image" in decoded.error


def test_a_png_folder_that_cannot_be_written_is_named_as_png(tmp_path, images, capsys):
    (tmp_path / "taken").write_text("a file")
    assert main(["batch", str(images[0]), "--out", str(tmp_path / "out"), "--png", str(tmp_path / "taken")]) == 1
    err = capsys.readouterr().err
    assert "choose another --png" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_rows_of_a_table_are_readable_after_the_run(tmp_path, images):
    pq.write_table(pa.table({"image": [images[0].read_bytes()]}), tmp_path / "t.parquet")
    explain_dataset([str(tmp_path / "t.parquet")], str(tmp_path / "out"), methods=["guided"])
    assert rows(tmp_path / "out").column("error").to_pylist() == [None]


def test_a_class_named_twice_is_explained_once_per_image(tmp_path, images):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"], targets=["star", 3, "ring"])
    assert [(r["rank"], r["label"]) for r in rows(tmp_path / "out").to_pylist()] == [(0, "star"), (1, "ring")]
