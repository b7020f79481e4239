"""saliency.batch on the local engine: rows equal explain(), bad inputs are rows, reruns resume, kills lose nothing."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import saliency
from saliency.batch import StoreError, explain_dataset
from saliency.batch.sources import SourceError, list_sources
from saliency.errors import ImageError, OptionError
from saliency.images import open_image
from saliency.models import load_model
from batchdata import rows, sources_in, write_images

METHODS = ["guided", "vanilla"]


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


@pytest.fixture
def images(tmp_path):
    return write_images(tmp_path / "images", 10)


def _expected(demo, path, methods, target=None):
    prepared = demo.prepare(open_image(path))
    return saliency.explain(demo.module, prepared.tensor, methods, target=target)


def test_rows_hold_what_explain_gives_for_each_image(tmp_path, images, demo):
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=METHODS, topk=2,
                              batch_size=4, shard_size=6)
    assert summary.explained == 10 and summary.failed == [] and summary.ok
    table = rows(tmp_path / "out")
    assert table.num_rows == 20
    for row in table.to_pylist():
        path = row["source"]
        assert row["error"] is None
        top = _expected(demo, path, METHODS)
        ranked = top.logits.topk(2, dim=1).indices[0].tolist()
        assert row["target"] == ranked[row["rank"]]
        assert row["label"] == demo.labels[row["target"]]
        expected = _expected(demo, path, METHODS, target=row["target"])
        assert row["map_shape"] == [3, 64, 64]
        for method in METHODS:
            got = np.asarray(row[f"map_{method}"], dtype=np.float32).reshape(row["map_shape"])
            assert np.allclose(got, expected[method][0].numpy(), rtol=1e-3, atol=1e-5 * float(expected[method].abs().max()))
        assert row["probability"] == pytest.approx(float(expected.probabilities[0, row["target"]]), rel=1e-5)
        assert [p["index"] for p in row["predictions"]] == top.probabilities[0].topk(5).indices.tolist()
        with open_image(path) as picture:
            assert (row["width"], row["height"]) == picture.size


def test_schema_types_and_job_record(tmp_path, images):
    explain_dataset([str(images[0])], str(tmp_path / "out"), methods=["deconvnet"])
    (shard,) = [p for p in (tmp_path / "out").iterdir() if p.suffix == ".parquet"]
    schema = pq.read_schema(shard)
    assert schema.field("map_deconvnet").type == pa.list_(pa.float32())
    assert schema.field("predictions").type.value_type.names == ["index", "label", "probability"]
    job = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert job["model"] == "demo" and job["methods"] == ["deconvnet"] and job["reduce"] == "none"


@pytest.mark.parametrize("reduce", ["none", "max-abs"])
def test_pandas_and_duckdb_read_the_maps_pyarrow_reads(tmp_path, images, reduce):
    import duckdb
    import pandas as pd

    (tmp_path / "images" / "broken.png").write_bytes(b"not a picture")
    explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=METHODS, reduce=reduce, shard_size=4)
    expected = {r["source"]: r for r in rows(tmp_path / "out").to_pylist()}
    frame = pd.read_parquet(tmp_path / "out")  # the README's recipes, as written there
    assert sorted(frame.source) == sorted(expected)
    row = frame[frame.error.isna()].iloc[0]
    guided = np.asarray(row.map_guided, dtype=np.float32).reshape(row.map_shape)
    assert np.array_equal(guided.ravel(), np.asarray(expected[row.source]["map_guided"], np.float32))
    pattern = str(tmp_path / "out" / "*.parquet")
    counts = duckdb.sql(f"SELECT label, count(*) FROM '{pattern}' WHERE error IS NULL GROUP BY label").fetchall()
    assert sum(n for _, n in counts) == 10
    assert duckdb.sql(f"SELECT source FROM '{pattern}' WHERE error IS NOT NULL").fetchall() == [
        (str(tmp_path / "images" / "broken.png"),)]
    for source, vanilla in duckdb.sql(f"SELECT source, map_vanilla FROM '{pattern}' WHERE error IS NULL").fetchall():
        assert np.array_equal(np.asarray(vanilla, np.float32), np.asarray(expected[source]["map_vanilla"], np.float32))


def test_corrupt_missing_and_oversized_images_are_error_rows_beside_good_ones(tmp_path, images):
    bad = tmp_path / "images" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    huge = tmp_path / "images" / "huge.png"
    from PIL import Image
    Image.new("RGB", (3000, 1000)).save(huge)
    missing = tmp_path / "nowhere.png"
    summary = explain_dataset([str(tmp_path / "images"), str(missing)], str(tmp_path / "out"), methods=["guided"],
                              max_pixels=2_000_000)
    table = rows(tmp_path / "out").to_pylist()
    errors = {r["source"]: r["error"] for r in table if r["error"] is not None}
    assert set(errors) == {str(bad), str(missing), str(huge)}
    assert "pixels" in errors[str(huge)]
    for source, message in errors.items():
        with pytest.raises(ImageError) as raised:
            open_image(source, max_pixels=2_000_000)
        assert message == str(raised.value)
        assert "\n" not in message
    assert summary.explained == len(table) - len(errors)
    assert sorted(summary.failed) == sorted(errors)
    assert not summary.ok
    error_row = next(r for r in table if r["source"] == str(missing))
    assert error_row["map_guided"] is None and error_row["target"] is None


def test_rerun_skips_everything_already_written(tmp_path, images):
    out = str(tmp_path / "out")
    first = explain_dataset([str(tmp_path / "images")], out, shard_size=4)
    files = sorted(os.listdir(out))
    again = explain_dataset([str(tmp_path / "images")], out, shard_size=4)
    assert (first.explained, again.explained, again.skipped) == (10, 0, 10)
    assert sorted(os.listdir(out)) == files
    more = write_images(tmp_path / "images", 12)[10:]
    third = explain_dataset([str(tmp_path / "images")], out, shard_size=4)
    assert (third.explained, third.skipped) == (2, 10)
    assert Counter(sources_in(tmp_path / "out")) == Counter({str(p): 1 for p in images + more})


def test_a_rerun_with_other_settings_is_refused(tmp_path, images):
    out = str(tmp_path / "out")
    explain_dataset([str(images[0])], out, methods=["guided"])
    with pytest.raises(StoreError, match="another job.*methods"):
        explain_dataset([str(images[0])], out, methods=["vanilla"])


def test_a_folder_of_other_parquet_files_is_refused(tmp_path, images):
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "out" / "theirs.parquet")
    with pytest.raises(StoreError, match="is not empty .* no saliency batch job started it"):
        explain_dataset([str(images[0])], str(tmp_path / "out"))


def test_max_abs_reduction_stores_half_precision_two_d_maps(tmp_path, images, demo):
    explain_dataset([str(images[0])], str(tmp_path / "full"), methods=["guided"])
    explain_dataset([str(images[0])], str(tmp_path / "small"), methods=["guided"], reduce="max-abs")
    full, small = rows(tmp_path / "full").to_pylist()[0], rows(tmp_path / "small").to_pylist()[0]
    assert small["map_shape"] == [64, 64]
    assert pq.read_schema(next((tmp_path / "small").glob("*.parquet"))).field("map_guided").type == pa.list_(pa.float16())
    expected = np.abs(np.asarray(full["map_guided"], np.float32).reshape(3, 64, 64)).max(axis=0)
    assert np.allclose(np.asarray(small["map_guided"], np.float32).reshape(64, 64), expected, rtol=1e-3, atol=1e-7)


def test_png_folder_gets_one_heatmap_per_row_and_method(tmp_path, images):
    explain_dataset([str(p) for p in images[:3]], str(tmp_path / "out"), methods=METHODS, topk=2,
                    png=tmp_path / "png")
    pictures = sorted(p.name for p in (tmp_path / "png").iterdir())
    assert len(pictures) == 3 * 2 * 2
    assert all(name.startswith("img00") and name.endswith(".png") for name in pictures)
    with open_image(tmp_path / "png" / pictures[0]) as picture:
        assert picture.size[1] == 72  # the crop the model saw, at the image's own scale


def test_sources_from_lists_csv_globs_parquet_paths_and_bytes(tmp_path, images):
    (tmp_path / "list.txt").write_text(f"# two images\n{images[0]}\n\n{images[1]}\n")
    (tmp_path / "list.csv").write_text(f"label,path\nx,{images[2]}\ny,{images[3]}\n")
    pq.write_table(pa.table({"path": [str(images[4])]}), tmp_path / "paths.parquet")
    pq.write_table(pa.table({"image": [images[5].read_bytes()]}), tmp_path / "bytes.parquet")
    hf = pa.table({"image": pa.array([{"bytes": images[6].read_bytes(), "path": "x.png"}])})
    (tmp_path / "hf").mkdir()
    pq.write_table(hf, tmp_path / "hf" / "train-0.parquet")
    found = [s.id for s in list_sources([str(tmp_path / "list.txt"), str(tmp_path / "list.csv"),
                                         str(tmp_path / "paths.parquet"), str(tmp_path / "bytes.parquet"),
                                         str(tmp_path / "hf"), str(tmp_path / "images" / "img00[7-8].png"),
                                         f"file://{images[9]}", str(images[0])])]
    assert found == [str(p) for p in images[:5]] + [f"{tmp_path / 'bytes.parquet'}#0", f"{tmp_path / 'hf' / 'train-0.parquet'}#0"] + \
        [str(images[7]), str(images[8]), f"file://{images[9]}"]
    summary = explain_dataset([str(tmp_path / "bytes.parquet"), str(tmp_path / "hf"), f"file://{images[9]}"],
                              str(tmp_path / "out"))
    assert summary.explained == 3 and summary.ok


@pytest.mark.parametrize("arguments, message", [
    (["/no/such/folder/*.png"], "no image file matches"),
    (["{tmp}/empty"], "holds no image files"),
    (["{tmp}/missing.txt"], "does not exist"),
    (["{tmp}/plain.parquet"], "neither a 'path' column"),
])
def test_sources_that_name_nothing_stop_the_job_before_work(tmp_path, arguments, message):
    (tmp_path / "empty").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(SourceError, match=message):
        explain_dataset([a.format(tmp=tmp_path) for a in arguments], str(tmp_path / "out"))


def test_bad_settings_are_refused_before_any_work(tmp_path, images):
    with pytest.raises(OptionError, match="unknown engine"):
        explain_dataset([str(images[0])], str(tmp_path / "out"), engine="spark")
    with pytest.raises(OptionError, match="unknown reduction"):
        explain_dataset([str(images[0])], str(tmp_path / "out"), reduce="mean")
    assert not (tmp_path / "out").exists()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                if entry.isdigit() and int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry))
        except (OSError, ValueError):
            pass
    return found


# decoding in threads (the default), and in processes (which must end with the job, SIGKILL included)
@pytest.mark.parametrize("decoding", [{}, {"SALIENCY_DECODE_IN": "processes", "OMP_NUM_THREADS": "1"}],
                         ids=["threads", "processes"])
def test_a_job_killed_mid_way_and_rerun_has_every_source_exactly_once(tmp_path, decoding):
    images = write_images(tmp_path / "images", 120)
    out = tmp_path / "out"
    job = subprocess.Popen([sys.executable, "-m", "saliency.cli", "batch", str(tmp_path / "images"), "--out", str(out),
                            "--method", "smoothgrad", "--option", "samples=8", "--batch-size", "2",
                            "--shard-size", "3"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **decoding})
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and len(list(out.glob("part-*.parquet"))) < 3:
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be killed; give it more images"
        children = _children(job.pid)
        assert bool(children) == bool(decoding)  # the decoding processes (and multiprocessing's resource tracker)
        job.send_signal(signal.SIGKILL)
        job.wait(30)
    finally:
        if job.poll() is None:
            job.kill()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{c}") for c in children):
        time.sleep(0.1)
    assert not [c for c in children if os.path.exists(f"/proc/{c}")], "decoding processes outlived the job"
    written = sources_in(out)
    assert 0 < len(written) < 120
    assert len(written) == len(set(written))
    summary = explain_dataset([str(tmp_path / "images")], str(out), methods=["smoothgrad"], options={"samples": 8},
                              batch_size=2, shard_size=3)
    assert summary.skipped == len(written) and summary.explained == 120 - len(written)
    assert Counter(sources_in(out)) == Counter({str(p): 1 for p in images})
    assert not [p for p in out.iterdir() if p.name.startswith(".tmp-")]


def test_decoding_waits_between_model_batches_only_where_the_model_takes_every_core(demo):
    from saliency.batch.local import ThreadPlan, plan_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(4)
        between = plan_threads(demo, cores=4)
        assert not between.beside_model and between.decode_threads == 4  # all cores decode while the model waits
        # spare cores beside the model: half decode, half write a shard each
        assert plan_threads(demo, cores=16) == ThreadPlan(beside_model=True, decode_threads=6, write_threads=6)
        assert plan_threads(demo, cores=6) == ThreadPlan(beside_model=True, decode_threads=2, write_threads=1)
        torch.set_num_threads(1)
        assert plan_threads(demo, cores=2).beside_model
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="decoding beside a one-thread model needs a second core")
def test_decoding_beside_the_model_and_between_its_batches_write_the_same_rows(tmp_path, images):
    from saliency.batch.local import available_cores, plan_threads

    before = torch.get_num_threads()
    tables, plans = [], []
    try:
        for threads in (1, available_cores()):
            torch.set_num_threads(threads)
            plans.append(plan_threads(load_model("demo")).beside_model)
            explain_dataset([str(tmp_path / "images")], str(tmp_path / f"out{threads}"), methods=METHODS,
                            batch_size=3, shard_size=4)
            tables.append(rows(tmp_path / f"out{threads}").to_pylist())
    finally:
        torch.set_num_threads(before)
    assert plans == [True, False]
    assert len(tables[0]) == len(tables[1]) == 10
    for beside, between in zip(*tables):  # the same work; torch's thread count only changes float rounding
        assert (beside["source"], beside["target"], beside["width"]) == (between["source"], between["target"],
                                                                         between["width"])
        assert beside["probability"] == pytest.approx(between["probability"], rel=1e-5)
        for method in METHODS:
            assert np.allclose(beside[f"map_{method}"], between[f"map_{method}"], rtol=1e-4, atol=1e-7)


def test_several_writers_write_every_shard_once_with_the_same_rows(tmp_path, images, demo, monkeypatch,
                                                                  one_torch_thread):
    """Beside a model that leaves cores free (a GPU's case), several shards are written at once."""
    import saliency.batch.local as local

    one = explain_dataset([str(tmp_path / "images")], str(tmp_path / "one"), methods=METHODS, topk=2,
                          batch_size=2, shard_size=2)
    monkeypatch.setattr(local, "available_cores", lambda: 9)
    assert local.plan_threads(demo).write_threads == 4
    progress = []
    many = explain_dataset([str(tmp_path / "images")], str(tmp_path / "many"), methods=METHODS, topk=2,
                           batch_size=2, shard_size=2, progress=lambda done, failed, total: progress.append(done))
    assert one.explained == many.explained == 10 and many.ok
    assert progress == [0, 2, 4, 6, 8, 10]
    assert len([p for p in (tmp_path / "many").iterdir() if p.suffix == ".parquet"]) == 5
    assert rows(tmp_path / "many").to_pylist() == rows(tmp_path / "one").to_pylist()


@pytest.fixture
def full_float32_convolutions():
    """Convolutions in float32 on the GPU too: torch runs them in TensorFloat-32 by default on recent GPUs
    (about 1e-3 relative), which can move a max-pool's switch where two inputs nearly tie."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32 = before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_job_on_cuda_writes_the_maps_explain_gives_on_the_cpu(tmp_path, images, demo, full_float32_convolutions):
    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=METHODS, topk=2,
                              batch_size=4, shard_size=3, device="cuda")
    assert summary.explained == 10 and summary.ok
    table = rows(tmp_path / "out").to_pylist()
    assert len(table) == 20
    for row in table:
        expected = _expected(demo, row["source"], METHODS, target=row["target"])
        assert row["target"] == expected.logits.topk(2, dim=1).indices[0, row["rank"]].item()
        for method in METHODS:
            got = np.asarray(row[f"map_{method}"], dtype=np.float32).reshape(row["map_shape"])
            scale = float(expected[method].abs().max())
            assert np.allclose(got, expected[method][0].numpy(), rtol=1e-3, atol=1e-3 * scale), method


def test_decoding_in_processes_writes_the_rows_threads_write(tmp_path, images, demo, monkeypatch, one_torch_thread):
    """$SALIENCY_DECODE_IN=processes (meant for GPU models); the CPU stands in, with a spare core beside a one-thread
    model."""
    from saliency.batch.local import DECODE_IN, plan_threads

    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    sources = [str(tmp_path / "images"), str(tmp_path / "missing.png")]
    tables, summaries = {}, {}
    for mode in ("threads", "processes"):
        monkeypatch.setenv(DECODE_IN, mode)
        plan = plan_threads(demo, cores=3)
        assert plan.beside_model and plan.decode_processes == (mode == "processes")
        summaries[mode] = explain_dataset(sources, str(tmp_path / mode), methods=METHODS, topk=2,
                                          batch_size=3, shard_size=4)
        tables[mode] = rows(tmp_path / mode).to_pylist()
    assert summaries["processes"].explained == 10 and len(summaries["processes"].failed) == 2
    assert tables["processes"] == tables["threads"]
    assert any(r["error"] and "broken.jpg" in r["source"] for r in tables["processes"])


def test_a_wrong_decoding_choice_is_one_clear_error(tmp_path, images, monkeypatch, demo):
    from saliency.batch.local import DECODE_IN, plan_threads

    monkeypatch.setenv(DECODE_IN, "fibres")
    with pytest.raises(OptionError, match="SALIENCY_DECODE_IN must be 'threads' or 'processes'"):
        plan_threads(demo, cores=3)
    with pytest.raises(OptionError, match="SALIENCY_DECODE_IN"):
        explain_dataset([str(images[0])], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # refused before DEST was touched


def test_the_local_engine_says_what_its_driving_thread_waits_for(tmp_path, images):
    import contextlib

    entered = Counter()

    @contextlib.contextmanager
    def stage(name):
        entered[name] += 1
        yield

    summary = explain_dataset([str(tmp_path / "images")], str(tmp_path / "out"), methods=["vanilla"], batch_size=2,
                              shard_size=4, stage=stage)
    assert summary.explained == 10
    shards = 3
    assert entered["decode"] == entered["explain"] == shards and entered["write"] >= shards
    assert set(entered) == {"decode", "explain", "write"}


def test_the_decode_stage_gives_the_pipelines_input_in_a_process_that_never_imports_torch(tmp_path, images, demo):
    """Ray's decode tasks (and the local engine's decoding processes) run this stage only: no torch there."""
    from saliency.batch.decoding import decode
    from saliency.batch.sources import Source
    from saliency.pipeline import prepare

    picture = str(images[0])
    decoded = decode(Source(picture), demo.preprocessing)
    assert np.array_equal(decoded.tensor, prepare(demo, picture).tensor[0].numpy())
    code = f"""
import pickle, sys
import pyarrow as pa
from saliency.batch.decoding import decode_table, from_row
preprocessing = pickle.loads({pickle.dumps(demo.preprocessing)!r})
table = pa.table({{"source": [{picture!r}, "missing.jpg"], "data": [None, None], "image": [7, 8]}})
out = decode_table(table, preprocessing, 10**6)
print(from_row(out.to_pylist()[0]).tensor.tobytes().hex(), out.column("error").to_pylist()[1] is not None,
      out.column("image").to_pylist() == [7, 8], "torch" in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    pixels, *checks = result.stdout.split()
    assert bytes.fromhex(pixels) == decoded.tensor.tobytes()
    assert checks == ["True", "True", "False"]  # the missing file is an error row, "image" came along, no torch
