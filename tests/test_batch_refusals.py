"""What a batch job refuses, in one line before any work, and what odd sources and DESTs it survives."""

import os
import shutil
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from saliency.batch import StoreError, explain_dataset
from saliency.batch import store as store_module
from saliency.batch.decoding import decode
from saliency.batch.sources import Source, SourceError, list_sources
from saliency.batch.store import Store
from saliency.batch.work import picture_name
from saliency.cli import main
from saliency.errors import OptionError
from saliency.models import load_model
from batchdata import rows, sources_in, write_images


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 3)


def ids(arguments, **kwargs):
    return [s.id for s in list_sources([str(a) for a in arguments], **kwargs)]


def one_line_error(capsys, *argv):
    code = main(["batch", *map(str, argv)])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and err.startswith("saliency: error: ")
    return err


def test_a_table_folder_holding_dest_does_not_read_the_jobs_shards_back(tmp_path, images):
    table = tmp_path / "table"
    table.mkdir()
    pq.write_table(pa.table({"path": [str(p) for p in images]}), table / "paths.parquet")
    first = explain_dataset([str(table)], str(table / "maps"), methods=["guided"])
    again = explain_dataset([str(table)], str(table / "maps"), methods=["guided"])
    assert (first.explained, again.explained, again.skipped) == (3, 0, 3) and again.ok
    assert ids([table], exclude=[table / "maps"]) == [str(p) for p in images]


def test_a_table_with_no_rows_is_refused_before_dest_is_made(tmp_path, capsys):
    pq.write_table(pa.table({"path": pa.array([], pa.string())}), tmp_path / "empty.parquet")
    err = one_line_error(capsys, tmp_path / "empty.parquet", "--out", tmp_path / "out")
    assert "has no rows" in err and not (tmp_path / "out").exists()


def test_a_table_row_without_path_or_bytes_says_so(tmp_path, images):
    pq.write_table(pa.table({"path": [str(images[0]), None, ""]}), tmp_path / "paths.parquet")
    explain_dataset([str(tmp_path / "paths.parquet")], str(tmp_path / "out"), methods=["guided"])
    errors = {r["source"]: r["error"] for r in rows(tmp_path / "out").to_pylist()}
    table = tmp_path / "paths.parquet"
    assert errors[str(images[0])] is None
    assert errors[f"{table}#1"] == f"row 1 of Parquet table '{table}' has neither a path nor image bytes"
    assert errors[f"{table}#2"].startswith("row 2 of Parquet table")


def test_pipes_in_a_folder_are_passed_over_and_one_named_is_an_error_row_not_a_hang(tmp_path, images):
    os.mkfifo(tmp_path / "images" / "waiting.jpg")
    assert ids([tmp_path / "images"]) == [str(p) for p in images]
    decoded = []
    reader = threading.Thread(target=lambda: decoded.append(
        decode(Source(str(tmp_path / "images" / "waiting.jpg")), load_model("demo").preprocessing)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "reading a pipe must not wait for a writer"
    assert "is not a regular file" in decoded[0].error


def test_a_link_to_itself_is_an_error_row_that_says_so(tmp_path, images):
    os.symlink(tmp_path / "images" / "loop.png", tmp_path / "images" / "loop.png")
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 3 and summary.failed == [str(tmp_path / "images" / "loop.png")]
    error = next(r["error"] for r in rows(tmp_path / "out").to_pylist() if r["source"].endswith("loop.png"))
    assert "symbolic link to nothing" in error


def test_a_file_uri_and_its_plain_path_are_one_source(tmp_path, images):
    first = explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    again = explain_dataset([f"file://{images[0]}", str(images[1])], str(tmp_path / "out"), methods=["guided"])
    assert (first.explained, again.explained, again.skipped) == (1, 1, 1)
    assert ids([images[0], f"file://{images[0]}"]) == [str(images[0])]


def test_a_missing_folder_is_refused_not_made_an_error_row(tmp_path, capsys):
    err = one_line_error(capsys, f"{tmp_path / 'nowhere'}/", "--out", tmp_path / "out")
    assert "folder" in err and "does not exist" in err and not (tmp_path / "out").exists()


def test_a_very_long_file_name_still_gets_its_pictures(tmp_path, images):
    long = tmp_path / "images" / ("x" * 240 + ".png")
    long.write_bytes(images[0].read_bytes())
    summary = explain_dataset([str(long)], str(tmp_path / "out"), methods=["guided"], png=tmp_path / "png")
    assert summary.explained == 1 and summary.ok
    (picture,) = os.listdir(tmp_path / "png")
    assert len(picture.encode()) < 255 and picture.startswith("x" * 80 + "-")


def test_long_labels_that_share_a_start_give_two_picture_names():
    first, second = picture_name("a.png", "guided", "y" * 200 + "1"), picture_name("a.png", "guided", "y" * 200 + "2")
    assert first != second and len(first) < 255 and len(second) < 255


@pytest.mark.parametrize("changed, differs", [
    ({"mean": (0.4, 0.4, 0.4)}, "preprocessing"),
    ({"std": (0.3, 0.3, 0.3)}, "preprocessing"),
    ({"resize": 96}, "preprocessing"),
    ({"labels": "LABELS"}, "labels"),
])
def test_a_rerun_with_other_preprocessing_or_labels_is_refused(tmp_path, images, changed, differs):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    if changed.get("labels"):
        labels = load_model("demo").labels
        (tmp_path / "labels.txt").write_text("\n".join(f"renamed {label}" for label in labels) + "\n")
        changed = {"labels": str(tmp_path / "labels.txt")}
    with pytest.raises(StoreError, match=f"differs in {differs}"):
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided"], **changed)
    assert sources_in(tmp_path / "out") == [str(images[0])]


def test_a_job_record_that_is_not_an_object_is_refused_in_one_line(tmp_path, images, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "_job.json").write_text("[1, 2]")
    err = one_line_error(capsys, images[0], "--out", tmp_path / "out")
    assert "holds a JSON list, not the record of a saliency batch job" in err


@pytest.mark.parametrize("inside", ["notes.txt", "images"])
def test_a_folder_that_is_not_empty_and_not_a_job_is_refused(tmp_path, images, capsys, inside):
    dest = tmp_path / "images" if inside == "images" else tmp_path / "out"
    dest.mkdir(exist_ok=True)
    (dest / "notes.txt").write_text("keep me")
    err = one_line_error(capsys, images[0], "--out", dest)
    assert "is not empty" in err and ("notes.txt" in err or inside == "images") and not (dest / "_job.json").exists()


def test_an_empty_out_is_refused_and_nothing_is_written_here(tmp_path, images, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, images[0], "--out", "")
    assert "--out is empty" in err and sorted(os.listdir(tmp_path)) == ["images"]


def test_pictures_inside_dest_are_refused(tmp_path, images):
    with pytest.raises(OptionError, match="--png .* is inside --out"):
        explain_dataset([str(images[0])], str(tmp_path / "out"), png=tmp_path / "out" / "pictures")
    assert not (tmp_path / "out").exists()


def test_a_dest_that_vanishes_mid_job_stops_in_one_line(tmp_path, images):
    loaded = load_model("demo")
    from saliency.batch.work import JobSpec

    store = Store(str(tmp_path / "out"), JobSpec(methods=("guided",)).describe(loaded))
    store.open()
    for name in os.listdir(tmp_path / "out"):
        os.remove(tmp_path / "out" / name)
    os.rmdir(tmp_path / "out")
    with pytest.raises(StoreError, match="cannot write a shard in --out"):
        store.write([{"source": "a.png", "error": "no picture"}])


def test_maps_past_an_arrow_lists_limit_go_to_further_shards_keeping_each_sources_rows_together(
        tmp_path, images, monkeypatch):
    monkeypatch.setattr(store_module, "MAX_VALUES_PER_SHARD", 3 * 64 * 64 * 3)  # three demo maps per shard
    write_images(tmp_path / "images", 5)
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"], topk=2)
    shards = sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".parquet"))
    assert summary.explained == 5 and len(shards) == 5  # two images' rows (four maps) never fit in one
    for shard in shards:
        assert len(set(pq.read_table(tmp_path / "out" / shard).column("source").to_pylist())) == 1
    expected = [str(p) for p in sorted((tmp_path / "images").iterdir()) for _ in range(2)]
    assert sources_in(tmp_path / "out") == expected


# --- odd names, links and tables ------------------------------------------------------------------

def test_sources_whose_names_join_alike_get_shards_of_their_own(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs(f"images/{images[0].name}\nimages")  # so that 'images/A\nimages/B' is a file too
    joined = f"images/{images[0].name}\nimages/{images[1].name}"
    shutil.copy(images[2], joined)
    sources = [f"images/{images[0].name}", f"images/{images[1].name}", joined]
    summary = explain_dataset(sources, "out", methods=["guided"], shard_size=2)
    assert summary.explained == 3 and sorted(sources_in(tmp_path / "out")) == sorted(sources)


def test_a_name_that_is_not_utf8_is_an_error_row_and_the_rest_is_explained(tmp_path, images, capsys):
    bad = os.path.join(os.fsencode(tmp_path / "images"), b"caf\xe9.png")
    with open(bad, "wb") as handle:
        handle.write(images[0].read_bytes())
    first = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"])
    shown = str(tmp_path / "images" / "caf\\xe9.png")
    assert first.explained == 3 and first.failed == [shown]
    errors = {r["source"]: r["error"] for r in rows(tmp_path / "out").to_pylist()}
    assert "is not UTF-8 text" in errors[shown]
    again = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"])
    assert (again.explained, again.skipped, again.failed_before) == (0, 4, [shown])
    err = one_line_error(capsys, images[0], "--out", os.fsdecode(os.path.join(os.fsencode(tmp_path), b"\xff")))
    assert "--out" in err and "is not UTF-8 text" in err


def test_a_png_folder_that_is_a_source_folder_is_refused(tmp_path, images):
    with pytest.raises(SourceError, match="is also the job's --out or --png folder"):
        explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), png=tmp_path / "images")
    assert not (tmp_path / "out").exists()


def test_outputs_reached_through_a_linked_folder_are_not_read_back(tmp_path, images):
    os.symlink(tmp_path / "images", tmp_path / "link")
    for _ in range(2):
        explain_dataset([str(tmp_path / "link")], str(tmp_path / "out"), methods=["guided"],
                        png=tmp_path / "images" / "pictures")
    assert sorted(sources_in(tmp_path / "out")) == [str(tmp_path / "link" / p.name) for p in images]
    pq.write_table(pa.table({"path": [str(p) for p in images]}), tmp_path / "table.parquet")
    (tmp_path / "tables").mkdir()
    os.replace(tmp_path / "table.parquet", tmp_path / "tables" / "table.parquet")
    os.symlink(tmp_path / "tables", tmp_path / "tables-link")
    for _ in range(2):
        summary = explain_dataset([str(tmp_path / "tables-link")], str(tmp_path / "tables" / "maps"),
                                  methods=["guided"])
        assert summary.ok


def test_links_and_their_targets_are_one_source_and_link_dot_dot_is_the_targets_parent(tmp_path, images,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.symlink("images", "link")
    os.symlink(images[0].name, "images/soft.png")
    os.makedirs("deep/dir")
    (tmp_path / "deep" / "x.png").write_bytes(images[1].read_bytes())
    (tmp_path / "x.png").write_bytes(images[2].read_bytes())
    os.symlink("deep/dir", "L")
    assert ids(["images", "link", "images/soft.png"]) == [f"images/{p.name}" for p in images]
    assert ids(["x.png", "L/../x.png"]) == ["x.png", "L/../x.png"]  # L/.. is deep/, not here
    explain_dataset(["images"], "out", methods=["guided"])
    again = explain_dataset(["link"], "out", methods=["guided"])
    assert (again.explained, again.skipped) == (0, 3)


def test_each_file_of_a_table_folder_is_read_with_its_own_columns(tmp_path, images):
    (tmp_path / "t").mkdir()
    pq.write_table(pa.table({"image": [images[0].read_bytes()]}), tmp_path / "t" / "a.parquet")
    pq.write_table(pa.table({"path": [str(images[1]), str(images[2])]}), tmp_path / "t" / "b.parquet")
    summary = explain_dataset([str(tmp_path / "t")], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 3 and summary.ok


def test_categorical_paths_and_image_structs_that_hold_a_path_are_read(tmp_path, images):
    pq.write_table(pa.table({"path": pa.array([str(images[0])]).dictionary_encode()}), tmp_path / "cat.parquet")
    structs = pa.array([{"bytes": None, "path": str(images[1])}],
                       pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"image": structs}), tmp_path / "hf.parquet")
    assert ids([tmp_path / "cat.parquet", tmp_path / "hf.parquet"]) == [str(images[0]), str(images[1])]


def test_a_csv_field_past_the_readers_limit_stops_in_one_line(tmp_path, images, capsys):
    (tmp_path / "big.csv").write_text(f'path\n{images[0]}\n"{"x" * 200_000}"\n')
    err = one_line_error(capsys, tmp_path / "big.csv", "--out", tmp_path / "out")
    assert "cannot be read as CSV" in err and not (tmp_path / "out").exists()


def test_another_jobs_shard_or_a_foreign_table_in_dest_is_named(tmp_path, images):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided", "vanilla"])
    explain_dataset([str(images[1])], str(tmp_path / "theirs"), methods=["guided"])
    (shard,) = [p for p in (tmp_path / "theirs").iterdir() if p.suffix == ".parquet"]
    os.replace(shard, tmp_path / "out" / "part-theirs.parquet")
    with pytest.raises(StoreError, match="part-theirs.parquet.* is not one of this job's shards"):
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided", "vanilla"])
    os.remove(tmp_path / "out" / "part-theirs.parquet")
    pq.write_table(pa.table({"source": ["x.png"], "error": pa.array([None], pa.string())}),
                   tmp_path / "out" / "other.parquet")
    with pytest.raises(StoreError, match="other.parquet.* is not one of this job's shards"):
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided", "vanilla"])


def test_adding_or_moving_png_on_a_rerun_is_refused(tmp_path, images):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    with pytest.raises(StoreError, match="differs in png"):
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided"], png=tmp_path / "png")


def test_labels_that_read_alike_get_pictures_of_their_own(tmp_path, images):
    labels = ["a b", "a_b", "a-b", "c", "d", "e", "f", "g"]
    assert len(load_model("demo").labels) == len(labels)
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n")
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"], topk=8,
                    labels=str(tmp_path / "labels.txt"), png=tmp_path / "png")
    assert len(os.listdir(tmp_path / "png")) == 8


def test_a_png_folder_that_cannot_be_made_stops_before_dest(tmp_path, images):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OptionError, match="cannot make --png folder"):
        explain_dataset([str(images[0])], str(tmp_path / "out"), png=tmp_path / "file" / "png")
    assert not (tmp_path / "out").exists()


def test_failed_sources_are_listed_one_per_line_whatever_their_names(tmp_path, images, capsys):
    broken = tmp_path / "images" / "two\nlines.png"
    broken.write_bytes(b"no picture")
    assert main(["batch", str(tmp_path / "images"), "--out", str(tmp_path / "out"), "--method", "guided"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].endswith("two\\nlines.png")


def test_a_second_job_on_the_same_dest_stops_at_once_and_the_first_lets_it_go_when_done(tmp_path, images):
    from saliency.batch.work import JobSpec

    job = JobSpec(methods=("guided",)).describe(load_model("demo"))
    with Store(str(tmp_path / "out"), job):  # a job that is running
        with pytest.raises(StoreError, match="another job is writing to --out"):
            explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    summary = explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    assert summary.explained == 1 and sources_in(tmp_path / "out") == [str(images[0])]
    with pytest.raises(StoreError, match="differs in methods"):  # a refused job leaves DEST free too
        explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["vanilla"])
    assert explain_dataset([str(images[1])], str(tmp_path / "out"), methods=["guided"]).explained == 1


def test_a_bytes_table_through_a_link_is_the_same_rows(tmp_path, images):
    pq.write_table(pa.table({"image": [p.read_bytes() for p in images]}), tmp_path / "t.parquet")
    os.symlink(tmp_path / "t.parquet", tmp_path / "link.parquet")
    assert ids([tmp_path / "t.parquet", tmp_path / "link.parquet"]) == [f"{tmp_path / 't.parquet'}#{i}"
                                                                           for i in range(3)]


def test_a_link_into_the_png_folder_is_not_a_source(tmp_path, images):
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"], png=tmp_path / "png")
    (picture,) = [p for p in (tmp_path / "png").iterdir() if p.name.startswith("img000")]
    os.symlink(picture, tmp_path / "images" / "linked.png")
    again = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["guided"],
                            png=tmp_path / "png")
    assert (again.explained, again.skipped) == (0, 3)


@pytest.mark.parametrize("name", ["list.txt", "table.parquet"])
def test_a_list_or_table_that_is_a_pipe_is_refused_not_waited_on(tmp_path, capsys, name):
    os.mkfifo(tmp_path / name)
    err = one_line_error(capsys, tmp_path / name, "--out", tmp_path / "out")
    assert "is not a regular file" in err


def test_the_library_takes_one_source_paths_and_a_single_target(tmp_path, images):
    summary = explain_dataset(tmp_path / "images", tmp_path / "out", methods="guided", targets="star")
    assert summary.explained == 3 and {r["label"] for r in rows(tmp_path / "out").to_pylist()} == {"star"}
    again = explain_dataset(str(tmp_path / "images"), str(tmp_path / "out"), methods=["guided"], targets=["star"])
    assert again.skipped == 3


@pytest.mark.parametrize("bad", [{"shard_size": 0}, {"shard_size": -3}, {"batch_size": 1.5}, {"topk": 2.5},
                                 {"topk": True}, {"max_pixels": 0}, {"png": ""}, {"png": "s3://bucket/pictures"}])
def test_bad_library_arguments_are_refused_before_dest(tmp_path, images, bad):
    with pytest.raises(OptionError):
        explain_dataset([str(images[0])], str(tmp_path / "out"), **bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("device", ["meta", "xpu", "hpu"])
def test_devices_torch_cannot_use_are_one_line(tmp_path, images, capsys, device):
    err = one_line_error(capsys, images[0], "--out", tmp_path / "out", "--device", device)
    assert f"--device {device}" in err and not (tmp_path / "out").exists()


def test_a_folder_in_dest_named_like_a_shard_is_named_in_one_line(tmp_path, images, capsys):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["guided"])
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    (tmp_path / "out" / "sub.parquet").mkdir()
    os.replace(tmp_path / "x.parquet", tmp_path / "out" / "sub.parquet" / "x.parquet")
    err = one_line_error(capsys, images[1], "--out", tmp_path / "out", "--method", "guided")
    assert "sub.parquet" in err


@pytest.mark.parametrize("scheme", ["", "ray://"])
def test_a_cluster_address_where_nothing_listens_is_refused_at_once(tmp_path, images, capsys, scheme):
    """Ray itself would retry for minutes; the job says so in one line, and makes no DEST."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    err = one_line_error(capsys, tmp_path / "images", "--out", tmp_path / "out", "--engine", "ray",
                         "--address", f"{scheme}127.0.0.1:{port}")
    assert f"nothing answers at 127.0.0.1:{port}" in err and "ray start --head" in err
    assert not (tmp_path / "out").exists()


def test_an_address_that_is_not_host_and_port_is_refused(tmp_path, images, capsys):
    err = one_line_error(capsys, tmp_path / "images", "--out", tmp_path / "out", "--engine", "ray",
                         "--address", "headnode")
    assert "expected auto, HOST:PORT or ray://HOST:PORT" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.timeout(120)
def test_a_cluster_that_wants_a_token_this_driver_lacks_is_refused_at_once(tmp_path, images, capsys, monkeypatch):
    """Ray's driver would retry for 20 seconds and print a line a second; the job says what to set, in one line."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import uuid

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environment = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="token",
                       RAY_AUTH_TOKEN=uuid.uuid4().hex)
    head = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--block",
                             f"--port={port}", "--num-cpus=1", "--num-gpus=0", "--include-dashboard=false",
                             "--node-ip-address=127.0.0.1", "--disable-usage-stats"],
                            env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert head.poll() is None, "the Ray head did not start"
                time.sleep(0.5)
        monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
        started = time.monotonic()
        err = one_line_error(capsys, tmp_path / "images", "--out", tmp_path / "out", "--engine", "ray",
                             "--address", f"127.0.0.1:{port}")
        assert "InvalidAuthToken" in err and "RAY_AUTH_MODE=token" in err and time.monotonic() - started < 10
        assert not (tmp_path / "out").exists()
    finally:
        if head.poll() is None:
            os.killpg(head.pid, signal.SIGTERM)  # --block: the head stops what it started
            try:
                head.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
