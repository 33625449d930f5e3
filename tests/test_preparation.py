"""funloader prepare: conversion, layouts, failures, kill + resume, --shard I/N + --merge, stats, shard files."""
from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import funloader
from funloader import preparation
from funloader.preparation import PrepareError, PrepareFailures, merge, prepare
from funloader.shards import ShardWriter, iter_shard

REPO = Path(__file__).resolve().parents[1]
BAD_INPUTS = {"misc/empty.jpg", "misc/truncated.jpg", "misc/not_an_image.jpg", "misc/garbage.png"}


def tree_bytes(root: Path) -> dict:
    """Every file under root (hidden state included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_index(dst: Path) -> dict:
    return json.loads((dst / "index.json").read_text())


def failures_of(dst: Path) -> dict:
    lines = (dst / "failures.tsv").read_text().splitlines()
    assert lines[0] == "source\treason"
    return dict(line.split("\t", 1) for line in lines[1:])


def decoded_outputs(dst: Path, index: dict) -> dict:
    """key -> output JPEG bytes, read back from the folder tree or the tars."""
    if index["settings"]["format"] == "folder":
        return {e["key"]: (dst / e["path"]).read_bytes() for e in index["files"]}
    out = {}
    for shard in index["shards"]:
        for key, fields in iter_shard(dst / shard["name"]):
            out[key] = fields["jpg"]
    return out


@pytest.fixture(scope="module")
def mixed_src(tmp_path_factory, shared_data):
    """ImageFolder tree: photos/ (real JPEGs), misc/ (PNG, CMYK, EXIF-rotated, and four bad files), a README."""
    root = tmp_path_factory.mktemp("mixed_src")
    photos = sorted((shared_data / "photos").glob("*.jpg"))
    (root / "photos").mkdir()
    for path in photos[::9]:  # 8 real photos of assorted sizes and subsamplings
        (root / "photos" / path.name).write_bytes(path.read_bytes())
    misc = root / "misc"
    misc.mkdir()
    with Image.open(photos[0]) as im:
        im.convert("RGB").save(misc / "photo_as.png")
    cmyk = Image.new("CMYK", (300, 200), (0, 255, 255, 0))  # pure red in CMYK
    cmyk.save(misc / "cmyk_red.jpg", quality=95)
    # Upright picture: portrait 240x320, red top half, blue bottom half. Stored rotated, with EXIF
    # orientation 6 ("rotate 90 CW to display"), so only a reader that applies EXIF sees red on top.
    upright = Image.new("RGB", (240, 320), (0, 0, 255))
    upright.paste((255, 0, 0), (0, 0, 240, 160))
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(misc / "exif_rotated.jpg", quality=95, exif=exif.tobytes())
    (misc / "empty.jpg").write_bytes(b"")
    full = photos[1].read_bytes()
    (misc / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (misc / "not_an_image.jpg").write_text("this is a text file, not a JPEG\n")
    (misc / "garbage.png").write_bytes(bytes(range(256)) * 8)
    (root / "README.txt").write_text("not an image: ignored\n")
    (root / "photos" / ".hidden.jpg").write_bytes(b"hidden files are skipped")
    return root


@pytest.fixture(scope="module")
def big_src(tmp_path_factory, shared_data):
    """~420 items: the shared photos linked into 6 classes (enough work to kill a run part-way)."""
    root = tmp_path_factory.mktemp("big_src")
    photos = sorted((shared_data / "photos").glob("*.jpg"))
    for c in range(6):
        (root / f"class{c}").mkdir()
        for path in photos:
            os.symlink(path, root / f"class{c}" / path.name)
    return root


# ---------------------------------------------------------------------------------------------- basics

@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_dlib_johns_classes_labels_and_decode(tmp_path, shared_data, layout):
    src = shared_data / "labelled" / "dlib_johns"
    dst = tmp_path / "out"
    result = prepare(src, dst, size=224, workers=2, format=layout, shard_size="16", progress=False, verbose=False)
    expected_classes = sorted(p.name for p in src.iterdir() if p.is_dir())
    sources = sorted(str(p.relative_to(src)) for p in src.rglob("*.jpg"))
    index = load_index(dst)
    assert result.complete and result.converted == len(sources) == 55 and result.failed == 0
    assert index["classes"] == expected_classes
    assert sorted(e["source"] for e in index["files"]) == sources
    assert failures_of(dst) == {}
    assert not (dst / preparation.STATE_DIR).exists()
    outputs = decoded_outputs(dst, index)
    for entry in index["files"]:
        data = outputs[entry["key"]]
        assert entry["label"] == expected_classes.index(entry["source"].split("/")[0])
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        assert funloader.read_fun(data).shape == (192, 28, 28)
        assert (entry["width"], entry["height"]) == (224, 224)
    if layout == "folder":
        assert sorted(e["path"] for e in index["files"]) == sources  # same tree, already .jpg
        image = funloader.read_dct(dst / index["files"][0]["path"])
        assert image.sampling[0] == (2, 2) and all(int(q) == 1 for q in image.qtables[0])  # 4:2:0, quality 100
    else:
        assert [s["name"] for s in index["shards"]] == [f"shard-{i:06d}.tar" for i in range(4)]  # 55 / 16 per tar
        labels = {}
        for shard in index["shards"]:
            data = (dst / shard["name"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
            for key, fields in iter_shard(dst / shard["name"]):
                assert set(fields) == {"jpg", "cls"}
                labels[key] = int(fields["cls"])
        assert labels == {e["key"]: e["label"] for e in index["files"]}
        assert len({labels[k] for k in [e["key"] for e in index["files"] if e["path"] == "shard-000000.tar"]}) > 1
    tsv = (dst / "index.tsv").read_text().splitlines()
    assert tsv[0].split("\t") == list(preparation.TSV_COLUMNS) and len(tsv) == 56


def test_shards_read_by_webdataset(tmp_path, shared_data):
    wds = pytest.importorskip("webdataset")
    dst = tmp_path / "out"
    prepare(shared_data / "labelled" / "dlib_johns", dst, size=224, workers=2, format="shards", shard_size="200KB",
            progress=False, verbose=False)
    index = load_index(dst)
    assert len(index["shards"]) > 1
    urls = [str(dst / s["name"]) for s in index["shards"]]
    expected = {e["key"]: e for e in index["files"]}
    seen = 0
    for key, jpeg, cls in wds.WebDataset(urls, shardshuffle=False, empty_check=False).to_tuple("__key__", "jpg", "cls"):
        assert int(cls) == expected[key]["label"]
        assert hashlib.sha256(jpeg).hexdigest() == expected[key]["sha256"]
        assert funloader.read_fun(jpeg).shape == (192, 28, 28)
        seen += 1
    assert seen == 55


def test_shards_read_by_dali(tmp_path, shared_data):
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    dst = tmp_path / "out"
    prepare(shared_data / "labelled" / "dlib_johns", dst, size=224, workers=2, format="shards", shard_size="20",
            shuffle=False, progress=False, verbose=False)
    index = load_index(dst)
    tars = [str(dst / s["name"]) for s in index["shards"]]
    indexes = [t[:-4] + ".idx" for t in tars]  # DALI's index of every tar, written by prepare
    for tar, idx in zip(tars, indexes):
        lines = Path(idx).read_text().splitlines()
        samples = list(iter_shard(tar))
        assert lines[0] == f"v1.2 {len(samples)}"
        data = Path(tar).read_bytes()
        for line, (key, fields) in zip(lines[1:], samples):
            parts = line.split()  # (ext offset size name) per member
            for ext, offset, size, name in zip(parts[0::4], parts[1::4], parts[2::4], parts[3::4]):
                assert name == f"{key}.{ext}" and data[int(offset):int(offset) + int(size)] == fields[ext]

    def read_all(**index_args):
        @pipeline_def(batch_size=5, num_threads=1, device_id=None)
        def pipe():
            jpeg, cls = fn.readers.webdataset(paths=tars, ext=["jpg", "cls"], missing_component_behavior="error",
                                              **index_args)
            return jpeg, cls

        p = pipe()
        p.build()
        got = []
        for _ in range(11):  # 55 samples in batches of 5
            jpegs, classes = p.run()
            for i in range(len(jpegs)):
                got.append((hashlib.sha256(np.array(jpegs.at(i)).tobytes()).hexdigest(),
                            int(np.array(classes.at(i)).tobytes().decode())))
        return got

    expected = [(e["sha256"], e["label"]) for e in index["files"]]  # shuffle=False: key order
    assert read_all() == expected
    assert read_all(index_paths=indexes) == expected


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_mixed_inputs_failures_and_orientation(tmp_path, mixed_src, layout):
    dst = tmp_path / "out"
    with pytest.raises(PrepareFailures) as info:
        prepare(mixed_src, dst, size=224, workers=2, format=layout, shard_size="4", progress=False, verbose=False)
    result = info.value.result
    assert result.failed == 4 and result.converted == 11 and result.ignored == 1  # README.txt
    failures = failures_of(dst)
    assert set(failures) == BAD_INPUTS
    assert "empty file" in failures["misc/empty.jpg"]
    assert "truncated" in failures["misc/truncated.jpg"]
    assert str(mixed_src) not in "".join(failures.values())  # reasons name the relative path only
    index = load_index(dst)
    assert index["classes"] == ["misc", "photos"] and index["counts"] == {"images": 11, "failed": 4, "ignored": 1}
    outputs = decoded_outputs(dst, index)
    by_source = {e["source"]: outputs[e["key"]] for e in index["files"]}
    assert "misc/photo_as.png" in by_source and "photos/.hidden.jpg" not in by_source
    for data in by_source.values():
        assert funloader.read_fun(data).shape == (192, 28, 28)
    if layout == "folder":
        assert (dst / "misc" / "photo_as.jpg").exists()
    upright = np.asarray(Image.open(io.BytesIO(by_source["misc/exif_rotated.jpg"])).convert("RGB")).astype(int)
    assert upright.shape == (224, 224, 3)
    top, bottom = upright[:80].mean(axis=(0, 1)), upright[-80:].mean(axis=(0, 1))
    assert top[0] > 200 and top[2] < 60 and bottom[2] > 200 and bottom[0] < 60
    red = np.asarray(Image.open(io.BytesIO(by_source["misc/cmyk_red.jpg"])).convert("RGB")).astype(int).mean(axis=(0, 1))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_worker_death_fails_only_that_image(tmp_path, mixed_src, monkeypatch, layout):
    victim = sorted(p.name for p in (mixed_src / "photos").glob("*.jpg") if not p.name.startswith("."))[2]
    monkeypatch.setenv("FUNLOADER_PREPARE_TEST_CRASH", victim)  # read by the (spawned) worker processes
    dst = tmp_path / "out"
    result = prepare(mixed_src, dst, size=224, workers=2, format=layout, shard_size="4", allow_failures=True,
                     progress=False, verbose=False)
    failures = failures_of(dst)
    assert set(failures) == BAD_INPUTS | {f"photos/{victim}"}
    assert "worker process died" in failures[f"photos/{victim}"]
    assert result.converted == 10 and load_index(dst)["counts"]["images"] == 10


def test_cli_exit_codes(tmp_path, mixed_src, capsys):
    assert preparation.main([str(mixed_src), str(tmp_path / "a"), "--workers", "1", "--no-progress"]) == 1
    assert "4 input(s) failed" in capsys.readouterr().err
    assert preparation.main([str(mixed_src), str(tmp_path / "b"), "--workers", "1", "--no-progress",
                             "--allow-failures"]) == 0
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    # re-running a finished command changes nothing and skips everything
    before = tree_bytes(tmp_path / "b")
    assert preparation.main([str(mixed_src), str(tmp_path / "b"), "--workers", "1", "--no-progress",
                             "--allow-failures"]) == 0
    assert "converted 0, skipped 15" in capsys.readouterr().err
    assert tree_bytes(tmp_path / "b") == before
    # other settings into the same DST are refused; a bad option is a usage error
    assert preparation.main([str(mixed_src), str(tmp_path / "b"), "--quality", "90", "--no-progress"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert not (tmp_path / "b" / preparation.STATE_DIR).exists()
    assert preparation.main([str(mixed_src), str(tmp_path / "b"), "--workers", "1", "--no-progress",
                             "--allow-failures"]) == 0  # the refused command left nothing in the way
    assert tree_bytes(tmp_path / "b") == before
    with pytest.raises(SystemExit):
        preparation.main([str(mixed_src), str(tmp_path / "c"), "--subsampling", "411"])
    assert preparation.main([str(mixed_src), str(mixed_src / "inside")]) == 2


def test_flat_folder_is_unlabelled(tmp_path, shared_data):
    src = tmp_path / "flat"
    src.mkdir()
    for path in sorted((shared_data / "photos").glob("*.jpg"))[:5]:
        (src / path.name).write_bytes(path.read_bytes())
    prepare(src, tmp_path / "folder", workers=1, progress=False, verbose=False)
    prepare(src, tmp_path / "shards", workers=1, format="shards", progress=False, verbose=False)
    for dst in (tmp_path / "folder", tmp_path / "shards"):
        index = load_index(dst)
        assert index["classes"] == [] and [e["label"] for e in index["files"]] == [-1] * 5
    assert [fields.keys() for _, fields in iter_shard(tmp_path / "shards" / "shard-000000.tar")] == [{"jpg": b""}.keys()] * 5


def test_encoding_options(tmp_path, mixed_src):
    photo = sorted(p for p in (mixed_src / "photos").glob("*.jpg") if not p.name.startswith("."))[0]
    data = photo.read_bytes()
    with Image.open(photo) as im:
        w, h = im.size
    settings = preparation.EncodeSettings(size=224, subsampling="444", quality=90, progressive=True)
    jpeg, out_size, source_size = preparation.encode_image(data, settings)
    image = funloader.read_dct(jpeg)
    assert out_size == (224, 224) and source_size == (w, h)
    assert image.sampling[0] == (1, 1) and image.progressive
    jpeg, out_size, _ = preparation.encode_image(data, preparation.EncodeSettings(size=224, crop="none", resize_shorter=256))
    assert min(out_size) == 256 and abs(out_size[0] / out_size[1] - w / h) < 0.02
    jpeg, out_size, _ = preparation.encode_image(data, preparation.EncodeSettings(size=112, resize_shorter=128))
    assert funloader.read_fun(jpeg).shape == (192, 14, 14)
    with pytest.raises(PrepareError):
        prepare(mixed_src, tmp_path / "x", size=224, resize_shorter=200, progress=False)
    assert preparation.parse_byte_size("1GB") == 10**9 and preparation.parse_byte_size("2MiB") == 2 * 2**20
    assert preparation.parse_shard("1/4") == (1, 4)
    for bad in ("4/4", "1-4", "0/0"):
        with pytest.raises(ValueError):
            preparation.parse_shard(bad)


def test_edge_corpus_failures_match_manifest(tmp_path, shared_data):
    """Every edge-case file Pillow decodes (MANIFEST pillow_decode ok) converts; every other one is listed."""
    import csv

    rows = [r for r in csv.DictReader(open(shared_data / "MANIFEST.tsv", newline=""), delimiter="\t")
            if r["file"].startswith("edge/") and r["file"].count("/") == 1]
    src = tmp_path / "edge"
    src.mkdir()
    for row in rows:
        os.symlink(shared_data / row["file"], src / row["file"].split("/", 1)[1])
    dst = tmp_path / "out"
    result = prepare(src, dst, size=224, workers=2, allow_failures=True, progress=False, verbose=False)
    expected_failures = {r["file"].split("/", 1)[1] for r in rows if r["pillow_decode"].startswith("FAIL")}
    assert set(failures_of(dst)) == expected_failures and len(expected_failures) >= 5
    assert result.ignored == 0 and result.converted == len(rows) - len(expected_failures)
    for entry in load_index(dst)["files"]:
        assert funloader.read_fun(dst / entry["path"]).shape == (192, 28, 28)
    assert any(e["source"].endswith(".mpo") for e in load_index(dst)["files"])


# ---------------------------------------------------------------------------------------------- stats

def test_stats_match_direct_computation(tmp_path, shared_data):
    src = shared_data / "labelled" / "dlib_johns"
    prepare(src, tmp_path / "f", size=224, workers=2, stats="both", progress=False, verbose=False)
    prepare(src, tmp_path / "s", size=224, workers=2, stats="both", format="shards", shard_size="10", progress=False,
            verbose=False)
    index = load_index(tmp_path / "f")
    for mode in ("raw", "dequantized"):
        stack = np.stack([funloader.read_fun(tmp_path / "f" / e["path"], dequantize=mode == "dequantized")
                          for e in index["files"]]).astype(np.float64)
        mean, std = stack.mean(axis=(0, 2, 3)), stack.std(axis=(0, 2, 3))
        for dst in (tmp_path / "f", tmp_path / "s"):
            stats = json.loads((dst / f"stats-{mode}.json").read_text())
            assert stats["dequantized"] == (mode == "dequantized") and stats["count"] == 55
            assert stats["size"] == [28, 28] and len(stats["mean"]) == len(stats["std"]) == 192
            np.testing.assert_allclose(stats["mean"], mean, rtol=1e-7, atol=1e-7)
            np.testing.assert_allclose(stats["std"], std, rtol=1e-7, atol=1e-7)
    for dst in (tmp_path / "f", tmp_path / "s"):
        assert load_index(dst)["stats"] == ["stats-dequantized.json", "stats-raw.json"]
        assert funloader.load_stats(dst)["path"] == str(dst / "stats-dequantized.json")  # what the loader finds


# ---------------------------------------------------------------------------------------------- resume

@pytest.mark.slow
@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_sigkill_then_resume_is_byte_identical(tmp_path, big_src, layout):
    reference = tmp_path / "reference"
    args = ["--workers", "2", "--format", layout, "--shard-size", "10", "--no-progress"]
    prepare(big_src, reference, workers=2, format=layout, shard_size="10", progress=False, verbose=False)
    total = load_index(reference)["counts"]["images"]
    assert total == 420

    dst = tmp_path / "killed"
    journal = dst / preparation.STATE_DIR / "journal-0-of-1.jsonl"
    command = [sys.executable, "-m", "funloader", "prepare", str(big_src), str(dst), *args]
    process = subprocess.Popen(command, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    done_lines = 0
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists():
            done_lines = journal.read_bytes().count(b"\n") - 1  # minus the header
            if done_lines >= (60 if layout == "folder" else 6):
                break
        time.sleep(0.005)
    assert process.poll() is None, f"run finished before it could be killed: {process.stderr.read().decode()}"
    os.killpg(process.pid, signal.SIGKILL)  # the CLI and its worker processes, like an OOM kill or a node loss
    process.wait()
    assert not (dst / "index.json").exists()
    # no partial file under a final name: every output present is complete and equals the reference
    final = {k: v for k, v in tree_bytes(dst).items() if not k.startswith(preparation.STATE_DIR)}
    ref_tree = tree_bytes(reference)
    assert 0 < len(final) < len(ref_tree)
    for name, data in final.items():
        assert data == ref_tree[name], name

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    skipped = int(rerun.stderr.split("skipped ")[1].split(",")[0])
    assert skipped >= done_lines * (1 if layout == "folder" else 10) > 0
    assert tree_bytes(dst) == ref_tree


def test_torn_journal_line_is_dropped(tmp_path):
    path = tmp_path / "journal.jsonl"
    header = {"journal": 1, "settings": {"quality": 100}}
    journal = preparation._Journal(path, header)
    journal.append({"unit": 0, "files": [], "failures": []})
    journal.append({"unit": 1, "files": [], "failures": []})
    journal.close()
    with open(path, "ab") as handle:
        handle.write(b'{"unit": 2, "fil')  # killed mid-write
    journal = preparation._Journal(path, header)
    assert sorted(journal.units) == [0, 1]
    journal.append({"unit": 2, "files": [], "failures": []})
    journal.close()
    lines = path.read_bytes().splitlines()
    assert [json.loads(line).get("unit") for line in lines] == [None, 0, 1, 2]
    with pytest.raises(PrepareError):
        preparation._Journal(path, {"journal": 1, "settings": {"quality": 90}})
    # a journal holding only a header (a mistaken command stopped at once) gives way to new settings
    fresh = tmp_path / "fresh.jsonl"
    preparation._Journal(fresh, header).close()
    preparation._Journal(fresh, {"journal": 1, "settings": {"quality": 90}}).close()
    assert [json.loads(line) for line in fresh.read_bytes().splitlines()] == [{"journal": 1, "settings": {"quality": 90}}]


def test_damaged_output_is_redone(tmp_path, shared_data):
    src = shared_data / "labelled" / "dlib_johns"
    dst = tmp_path / "out"
    prepare(src, dst, workers=1, progress=False, verbose=False)
    reference = tree_bytes(dst)
    victim = dst / load_index(dst)["files"][3]["path"]
    victim.write_bytes(victim.read_bytes()[:100])  # e.g. a later disk problem: size no longer matches
    result = prepare(src, dst, workers=1, progress=False, verbose=False)
    assert result.converted == 1 and result.skipped == 54
    assert tree_bytes(dst) == reference


# ---------------------------------------------------------------------------------------------- sharding

@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_shard_jobs_plus_merge_equal_single_run(tmp_path, mixed_src, layout):
    options = dict(workers=2, format=layout, shard_size="3", stats=True, allow_failures=True, progress=False,
                   verbose=False)
    single = tmp_path / "single"
    prepare(mixed_src, single, **options)

    shared = tmp_path / "shared"
    first = prepare(mixed_src, shared, shard="0/2", **options)
    assert not first.complete and not (shared / "index.json").exists()
    with pytest.raises(PrepareError, match="missing --shard 1/2"):
        merge(shared, progress=False, verbose=False)
    second = prepare(mixed_src, shared, shard=(1, 2), **options)
    assert first.total + second.total == 15 and first.total > 0 and second.total > 0
    merged = merge(shared, allow_failures=True, progress=False, verbose=False)
    assert merged.complete and merged.failed == 4
    assert tree_bytes(shared) == tree_bytes(single)

    # jobs that wrote to separate folders (separate machines) are gathered by merge
    parts = [tmp_path / "job0", tmp_path / "job1"]
    for i, part in enumerate(parts):
        prepare(mixed_src, part, shard=f"{i}/2", **options)
    gathered = tmp_path / "gathered"
    assert preparation.main(["--merge", str(gathered), *map(str, parts), "--allow-failures", "--no-progress"]) == 0
    assert tree_bytes(gathered) == tree_bytes(single)


def test_shard_jobs_with_different_settings_do_not_merge(tmp_path, mixed_src):
    dst = tmp_path / "out"
    prepare(mixed_src, dst, shard="0/2", workers=1, allow_failures=True, progress=False, verbose=False)
    other = tmp_path / "other"
    prepare(mixed_src, other, shard="1/2", quality=90, workers=1, allow_failures=True, progress=False, verbose=False)
    with pytest.raises(PrepareError, match="other settings"):
        merge(dst, [other], progress=False, verbose=False)


# ---------------------------------------------------------------------------------------------- shards.py

def test_shard_writer_is_deterministic_and_atomic(tmp_path):
    members = [("00000000.jpg", b"\xff\xd8abc"), ("00000000.cls", b"3"), ("00000001.jpg", b"x" * 1000)]
    digests = []
    for name in ("a.tar", "b.tar"):
        writer = ShardWriter(tmp_path / name, tmp_path / f".{name}.tmp")
        for member, data in members:
            writer.add(member, data)
        assert not (tmp_path / name).exists()  # nothing under the final name before commit
        size, digest = writer.commit()
        assert size == (tmp_path / name).stat().st_size and not (tmp_path / f".{name}.tmp").exists()
        digests.append(digest)
    assert digests[0] == digests[1] and (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert list(iter_shard(tmp_path / "a.tar")) == [("00000000", {"jpg": b"\xff\xd8abc", "cls": b"3"}),
                                                    ("00000001", {"jpg": b"x" * 1000})]
    writer = ShardWriter(tmp_path / "c.tar", tmp_path / ".c.tmp")
    writer.add("00000000.jpg", b"data")
    writer.abort()
    assert not (tmp_path / "c.tar").exists() and not (tmp_path / ".c.tmp").exists()


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_output_loads_with_dctimagefolder(tmp_path, shared_data, layout):
    dst = tmp_path / "out"
    prepare(shared_data / "labelled" / "dlib_johns", dst, size=224, workers=1, format=layout, shard_size="20",
            progress=False, verbose=False)
    index = load_index(dst)
    dataset = funloader.DCTImageFolder(dst, dequantize=False)
    assert len(dataset) == 55 and dataset.classes == index["classes"]
    assert sorted(dataset.targets) == sorted(e["label"] for e in index["files"])
    coefficients, label = dataset[7]
    assert tuple(coefficients.shape) == (192, 28, 28) and 0 <= label < 5


# ---------------------------------------------------------------------------------------------- merge hardening

MERGE_OPTIONS = dict(workers=1, format="folder", allow_failures=True, progress=False, verbose=False)


@pytest.fixture(scope="module")
def two_jobs(tmp_path_factory, mixed_src):
    """Jobs 0/2 and 1/2 of mixed_src written to separate folders, and the single-run reference."""
    root = tmp_path_factory.mktemp("two_jobs")
    for i in range(2):
        prepare(mixed_src, root / f"job{i}", shard=f"{i}/2", **MERGE_OPTIONS)
    prepare(mixed_src, root / "single", **MERGE_OPTIONS)
    return root


def fresh_jobs(two_jobs, tmp_path):
    import shutil

    parts = []
    for i in range(2):
        shutil.copytree(two_jobs / f"job{i}", tmp_path / f"job{i}", symlinks=True)
        parts.append(tmp_path / f"job{i}")
    return parts


def part_file_of(job_dir: Path) -> Path:
    (path,) = (job_dir / preparation.STATE_DIR).glob("part-*.json")
    return path


def edit_first_file_path(part_file: Path, new_path: str) -> str:
    part = json.loads(part_file.read_text())
    record = next(r for r in part["units"] if r["files"])
    old = record["files"][0]["path"]
    record["files"][0]["path"] = new_path
    part_file.write_text(json.dumps(part))
    return old


@pytest.mark.parametrize("hostile", ["../../victim/important.txt", "/abs/important.txt", "photos/../../x.jpg",
                                     "linked/escape.jpg"])
def test_merge_refuses_paths_outside_the_part_before_moving_anything(tmp_path, two_jobs, hostile):
    """issue 19: a part file listing ../../victim/important.txt made merge overwrite a file outside DST."""
    parts = fresh_jobs(two_jobs, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "important.txt").write_bytes(b"precious")
    (victim / "escape.jpg").write_bytes(b"precious too")
    (parts[1] / "linked").symlink_to(victim)  # a symlinked folder inside the part that leads outside it
    (tmp_path / "abs").mkdir()
    edit_first_file_path(part_file_of(parts[1]), hostile)
    before = {str(p): tree_bytes(p) for p in [*parts, victim]}
    gathered = tmp_path / "gathered"
    with pytest.raises(PrepareError) as info:
        merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    message = str(info.value)
    assert str(part_file_of(parts[1])) in message and ("refusing" in message or "regular file inside" in message)
    assert {str(p): tree_bytes(p) for p in [*parts, victim]} == before  # nothing moved, nothing overwritten
    assert not any(p.is_file() for p in gathered.rglob("*"))


def test_merge_refuses_a_hostile_part_file_inside_dst(tmp_path, two_jobs):
    """The shared-DST case: a planted part file in DST's own bookkeeping folder."""
    import shutil

    parts = fresh_jobs(two_jobs, tmp_path)
    shutil.copy(part_file_of(parts[1]), parts[0] / preparation.STATE_DIR)
    planted = parts[0] / preparation.STATE_DIR / part_file_of(parts[1]).name
    edit_first_file_path(planted, "../victim.jpg")
    before = tree_bytes(tmp_path)
    with pytest.raises(PrepareError, match="refusing"):
        merge(parts[0], allow_failures=True, progress=False, verbose=False)
    assert tree_bytes(tmp_path) == before and not (parts[0] / "index.json").exists()


def test_merge_refuses_a_symlink_listed_as_output(tmp_path, two_jobs):
    parts = fresh_jobs(two_jobs, tmp_path)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"not yours")
    part = json.loads(part_file_of(parts[0]).read_text())
    entry = next(r for r in part["units"] if r["files"])["files"][0]
    (parts[0] / entry["path"]).unlink()
    (parts[0] / entry["path"]).symlink_to(secret)
    before = {str(p): tree_bytes(p) for p in parts}
    with pytest.raises(PrepareError, match="not a regular file"):
        merge(tmp_path / "gathered", parts, allow_failures=True, progress=False, verbose=False)
    assert {str(p): tree_bytes(p) for p in parts} == before and secret.read_bytes() == b"not yours"


def test_merge_checks_counts_and_structure_and_names_the_file(tmp_path, two_jobs, capsys):
    parts = fresh_jobs(two_jobs, tmp_path)
    part_path = part_file_of(parts[1])
    original = part_path.read_bytes()
    part = json.loads(original)
    part["units"] = part["units"][:-1]  # one work unit dropped: counts no longer add up
    part_path.write_text(json.dumps(part))
    with pytest.raises(PrepareError, match="work units"):
        merge(tmp_path / "g1", parts, allow_failures=True, progress=False, verbose=False)
    part = json.loads(original)
    part["units"][0]["files"].append({"key": "99999999", "path": "photos/extra.jpg", "source": "photos/extra.jpg",
                                      "label": 1, "width": 1, "height": 1, "bytes": 1, "sha256": "0"})
    part_path.write_text(json.dumps(part))
    with pytest.raises(PrepareError, match="accounts for"):
        merge(tmp_path / "g2", parts, allow_failures=True, progress=False, verbose=False)
    for damaged in (b'{"format": "funloader-prepared", "job": [1, 2], "units": [{"unit": "x"}]}', b"{not json",
                    b"[1, 2]"):
        part_path.write_bytes(damaged)
        assert preparation.main(["--merge", str(tmp_path / "g3"), *map(str, parts), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(part_path) in err and "Traceback" not in err
    assert not (tmp_path / "g3").exists() or not any(p.is_file() for p in (tmp_path / "g3").rglob("*"))


def test_merge_stopped_part_way_finishes_when_run_again(tmp_path, two_jobs, monkeypatch):
    """issue 19: a merge that failed part-way could be recovered neither by re-running nor by --merge DST."""
    parts = fresh_jobs(two_jobs, tmp_path)
    gathered = tmp_path / "gathered"
    real_move = preparation._move_file
    moved = []

    def disk_full_after_three(source, target):
        if len(moved) == 3:
            raise OSError(28, "No space left on device", str(target))
        moved.append(target)
        real_move(source, target)

    monkeypatch.setattr(preparation, "_move_file", disk_full_after_three)
    with pytest.raises(PrepareError, match="No space left on device.*run the same merge command again"):
        merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    monkeypatch.setattr(preparation, "_move_file", real_move)
    assert len(moved) == 3 and not (gathered / "index.json").exists()
    with pytest.raises(PrepareError, match="name them"):  # without the part folders: a hint, nothing moves
        merge(gathered, allow_failures=True, progress=False, verbose=False)
    merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert tree_bytes(gathered) == tree_bytes(two_jobs / "single")
    # and once more: a finished merge is recognised, nothing changes
    merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert tree_bytes(gathered) == tree_bytes(two_jobs / "single")


def test_merge_with_a_missing_output_moves_nothing_until_the_job_is_redone(tmp_path, two_jobs, mixed_src):
    parts = fresh_jobs(two_jobs, tmp_path)
    part = json.loads(part_file_of(parts[1]).read_text())
    lost = next(r for r in part["units"] if r["files"])["files"][0]["path"]
    (parts[1] / lost).unlink()
    before = {str(p): tree_bytes(p) for p in parts}
    gathered = tmp_path / "gathered"
    with pytest.raises(PrepareError, match="re-run job 1/2"):
        merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert {str(p): tree_bytes(p) for p in parts} == before
    # the part file of a finished job is adopted on re-run: only the lost file is converted again
    result = prepare(mixed_src, parts[1], shard="1/2", **MERGE_OPTIONS)
    assert result.converted == 1
    merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert tree_bytes(gathered) == tree_bytes(two_jobs / "single")


# ---------------------------------------------------------------------------------------------- concurrency

def test_second_run_on_the_same_dst_is_refused_and_harms_nothing(tmp_path, shared_data):
    """issue 19: a second run deleted the first's temp folder and the first died with a traceback."""
    src = tmp_path / "src"
    src.mkdir()
    for path in sorted((shared_data / "photos").glob("*.jpg"))[:40]:
        os.symlink(path, src / path.name)
    dst = tmp_path / "out"
    journal = dst / preparation.STATE_DIR / "journal-0-of-1.jsonl"
    command = [sys.executable, "-m", "funloader", "prepare", str(src), str(dst), "--workers", "1", "--no-progress"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not journal.exists() and first.poll() is None:  # the journal exists once the lock is held
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert first.poll() is None, first.stderr.read().decode()
        with pytest.raises(PrepareError, match="in use by another funloader prepare"):
            prepare(src, dst, workers=1, progress=False, verbose=False)
        with pytest.raises(PrepareError, match="in use by another funloader prepare"):
            merge(dst, progress=False, verbose=False)
        assert first.wait(timeout=120) == 0, first.stderr.read().decode()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert load_index(dst)["counts"]["images"] == 40


def test_jobs_of_one_sharded_run_share_dst_but_not_a_job(tmp_path, mixed_src):
    dst = tmp_path / "out"
    dst.mkdir()
    running_job = preparation._lock_directory(dst, exclusive=False)  # as a running --shard 1/2 job holds it
    try:
        prepare(mixed_src, dst, shard="0/2", **MERGE_OPTIONS)  # another job of the same run: allowed
        with pytest.raises(PrepareError, match="in use"):
            prepare(mixed_src, dst, **MERGE_OPTIONS)  # a whole run would collide with the running job
        job_lock = preparation._lock_job(dst / preparation.STATE_DIR / "lock-1-of-2")
        with pytest.raises(PrepareError, match="job 1-of-2 is already running"):
            prepare(mixed_src, dst, shard="1/2", **MERGE_OPTIONS)
        preparation._unlock(job_lock)
    finally:
        preparation._unlock(running_job)
    prepare(mixed_src, dst, shard="1/2", **MERGE_OPTIONS)
    merge(dst, allow_failures=True, progress=False, verbose=False)
    assert load_index(dst)["counts"] == {"images": 11, "failed": 4, "ignored": 1}
    assert not (dst / preparation.STATE_DIR).exists()


# ---------------------------------------------------------------------------------------------- hostile sources

def test_fifo_device_huge_file_and_link_loops_neither_hang_nor_exhaust(tmp_path, shared_data):
    """issue 19: fifo.jpg hung prepare; zero.jpg -> /dev/zero read until MemoryError; two links to '..'
    hung it and one link to '..' made it write every image 41 times, 40 folders deep.  Runs in a child
    process with a time limit."""
    src = tmp_path / "src"
    photos = sorted((shared_data / "photos").glob("*.jpg"))[:3]
    for folder in ("photos", "other"):
        (src / folder).mkdir(parents=True)
    for path in photos:
        (src / "photos" / path.name).write_bytes(path.read_bytes())
    (src / "other" / "one.jpg").write_bytes(photos[0].read_bytes())
    os.mkfifo(src / "photos" / "fifo.jpg")
    os.symlink("/dev/zero", src / "photos" / "zero.jpg")
    with open(src / "photos" / "huge.jpg", "wb") as handle:  # sparse: 3 GB on paper, no blocks used
        handle.truncate(3 * 10**9)
    os.symlink("..", src / "photos" / "loop_a")
    os.symlink("..", src / "photos" / "loop_b")
    os.symlink("..", src / "other" / "up")
    dst = tmp_path / "dst"
    command = [sys.executable, "-m", "funloader", "prepare", str(src), str(dst), "--workers", "2", "--no-progress"]
    try:
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("prepare hung on a FIFO, a device or a link loop")
    assert run.returncode == 1, run.stderr  # inputs failed: exit 1, not a crash
    assert "Traceback" not in run.stderr and "not following 3 link(s)" in run.stderr
    failures = {row["source"]: row["reason"] for row in preparation.read_tsv(dst / "failures.tsv")}
    assert set(failures) == {"photos/fifo.jpg", "photos/zero.jpg", "photos/huge.jpg"}
    assert "FIFO" in failures["photos/fifo.jpg"] and "character device" in failures["photos/zero.jpg"]
    assert "larger than" in failures["photos/huge.jpg"]
    index = load_index(dst)
    assert sorted(e["source"] for e in index["files"]) == sorted(
        ["other/one.jpg"] + [f"photos/{p.name}" for p in photos])  # each image once
    assert all(p.relative_to(dst).parts[0] in ("photos", "other") and len(p.relative_to(dst).parts) == 2
               for p in dst.rglob("*.jpg"))  # nothing written into nested link folders


def test_unreadable_subfolder_is_reported(tmp_path, shared_data, monkeypatch, capsys):
    """issue 19: an unreadable sub-folder was skipped and prepare still said "ignored 0".

    Tests run as root on CI, and root lists a chmod-000 folder anyway, so as root the folder is made
    unreadable by making ``os.scandir`` fail on it with EACCES (what a non-root user meets)."""
    src = tmp_path / "src"
    photos = sorted((shared_data / "photos").glob("*.jpg"))[:2]
    for folder in ("good", "locked"):
        (src / folder).mkdir(parents=True)
        for path in photos:
            (src / folder / path.name).write_bytes(path.read_bytes())
    locked = src / "locked"
    if os.geteuid() == 0:
        real_scandir = os.scandir

        def scandir(path="."):
            if not isinstance(path, int) and os.fspath(path) == str(locked):
                raise PermissionError(13, "Permission denied", os.fspath(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", scandir)
    else:
        locked.chmod(0)
    try:
        result = prepare(src, tmp_path / "dst", workers=1, progress=False, verbose=True)
    finally:
        locked.chmod(0o755)
    err = capsys.readouterr().err
    assert result.unreadable == [("locked", "Permission denied")] and result.ignored == 1
    assert "1 sub-folder(s)" in err and "locked (Permission denied)" in err and "1 unreadable folder(s)" in err
    assert result.converted == 2


def test_odd_file_names_round_trip_through_manifests_and_resume(tmp_path, shared_data):
    """issue 19: a non-UTF-8 name aborted the run (UnicodeEncodeError); tabs/newlines broke the TSVs."""
    photo = sorted((shared_data / "photos").glob("*.jpg"))[0].read_bytes()
    src = tmp_path / "src"
    (src / "odd").mkdir(parents=True)
    names = [b"caf\xe9.jpg", b"tab\there.jpg", b"new\nline.jpg", b"back\\slash.jpg", b"plain.jpg"]
    for name in names:
        (Path(os.fsdecode(os.fsencode(src / "odd") + b"/" + name))).write_bytes(photo)
    Path(os.fsdecode(os.fsencode(src / "odd") + b"/bad\tname\xff.jpg")).write_bytes(b"not an image")
    for layout in ("folder", "shards"):
        dst = tmp_path / layout
        result = prepare(src, dst, workers=2, format=layout, allow_failures=True, progress=False, verbose=False)
        assert result.converted == 5 and result.failed == 1
        index = load_index(dst)
        expected = sorted("odd/" + os.fsdecode(name) for name in names)
        assert sorted(e["source"] for e in index["files"]) == expected
        rows = preparation.read_tsv(dst / "index.tsv")
        assert [r["source"] for r in rows] == [e["source"] for e in index["files"]]
        assert [r["path"] for r in rows] == [e["path"] for e in index["files"]]
        assert [r["source"] for r in preparation.read_tsv(dst / "failures.tsv")] == ["odd/" + os.fsdecode(b"bad\tname\xff.jpg")]
        if layout == "folder":
            for entry in index["files"]:  # the output is at the same bytes name
                assert (dst / entry["path"]).read_bytes()[:2] == b"\xff\xd8"
            assert os.path.exists(os.fsencode(dst) + b"/odd/caf\xe9.jpg")
        before = tree_bytes(dst)
        again = prepare(src, dst, workers=1, format=layout, allow_failures=True, progress=False, verbose=False)
        assert again.converted == 0 and again.skipped == 6 and tree_bytes(dst) == before


def test_output_name_too_long_is_one_failed_input(tmp_path, shared_data):
    """issue 19: an output name over 255 bytes ended the whole run with a traceback."""
    photo = sorted((shared_data / "photos").glob("*.jpg"))[0]
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    stem = "x" * 251  # x...x.png and x...x.jpg collide as x...x.jpg, so each keeps its suffix: 259 bytes
    with Image.open(photo) as image:
        image.convert("RGB").save(src / "c" / f"{stem}.png")
    (src / "c" / f"{stem}.jpg").write_bytes(photo.read_bytes())
    (src / "c" / "short.jpg").write_bytes(photo.read_bytes())
    dst = tmp_path / "dst"
    with pytest.raises(PrepareFailures):
        prepare(src, dst, workers=2, progress=False, verbose=False)
    failures = {row["source"]: row["reason"] for row in preparation.read_tsv(dst / "failures.tsv")}
    assert set(failures) == {f"c/{stem}.png", f"c/{stem}.jpg"}
    assert all("259-byte name" in reason and "too long" in reason for reason in failures.values())
    assert [e["source"] for e in load_index(dst)["files"]] == ["c/short.jpg"]
    assert not (dst / preparation.STATE_DIR).exists()  # the run finished normally


@pytest.mark.parametrize("layout", ["folder", "shards"])
def test_disk_full_stops_with_a_resume_message_and_resumes_byte_identically(tmp_path, mixed_src, monkeypatch,
                                                                          capsys, layout):
    """Disk full used to end with a raw OSError traceback.  Simulated: os.replace into DST fails with
    ENOSPC after a few outputs (a real full disk needs a small mount, which CI cannot make)."""
    options = dict(workers=1, format=layout, shard_size="3", allow_failures=True, progress=False, verbose=False)
    reference = tmp_path / "reference"
    prepare(mixed_src, reference, **options)
    dst = tmp_path / "dst"
    real_replace = os.replace
    written = []

    def replace(source, target, **kwargs):
        if str(target).startswith(str(dst)) and not str(target).endswith(".json"):
            if len(written) == 2:
                raise OSError(28, "No space left on device", str(target))
            written.append(target)
        return real_replace(source, target, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    args = [str(mixed_src), str(dst), "--workers", "1", "--format", layout, "--shard-size", "3", "--no-progress",
            "--allow-failures"]
    from funloader.cli import main as cli_main

    assert cli_main(["prepare", *args]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]  # one line, no traceback
    assert "Traceback" not in err and "No space left on device" in line and "run the same command again" in line
    monkeypatch.setattr(os, "replace", real_replace)
    assert cli_main(["prepare", *args]) == 0
    assert "skipped 0" not in capsys.readouterr().err
    assert tree_bytes(dst) == tree_bytes(reference)


def test_unwritable_dst_is_a_message_not_a_traceback(tmp_path, mixed_src, monkeypatch, capsys):
    """`prepare` into a read-only DST gave a traceback.  Root can write anywhere on CI, so two real
    unwritable cases are used: a DST below a regular file (ENOTDIR), and a read-only file system
    simulated by making mkdir under DST fail with EROFS (what a read-only mount returns)."""
    from funloader.cli import main as cli_main

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert cli_main(["prepare", str(mixed_src), str(blocker / "dst"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and "cannot create DST" in line and "Not a directory" in line

    readonly = tmp_path / "readonly"
    readonly.mkdir()
    real_mkdir = os.mkdir

    def mkdir(path, *args, **kwargs):
        if str(path).startswith(str(readonly)):
            raise OSError(30, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    assert cli_main(["prepare", str(mixed_src), str(readonly), "--no-progress"]) == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and "Read-only file system" in line and "writable" in line
    assert list(readonly.iterdir()) == []


def test_damaged_index_and_journal_are_named(tmp_path, shared_data, capsys):
    """A malformed index.json or journal line gave a traceback (KeyError/TypeError) or was dropped."""
    src = shared_data / "labelled" / "dlib_johns"
    dst = tmp_path / "out"
    prepare(src, dst, workers=1, progress=False, verbose=False)
    for damage in (b"{not json", b"[1, 2, 3]", (dst / "index.json").read_bytes().replace(b'"source"', b'"sauce"')):
        (dst / "index.json").write_bytes(damage)
        assert preparation.main([str(src), str(dst), "--workers", "1", "--no-progress"]) == 2
        err = capsys.readouterr().err
        (line,) = [line for line in err.splitlines() if "error:" in line]
        assert "Traceback" not in err and str(dst / "index.json") in line, err

    path = tmp_path / "journal.jsonl"
    header = {"journal": 1, "settings": {"format": "folder"}}
    good = {"unit": 0, "files": [], "failures": [{"source": "a.jpg", "reason": "r"}]}
    for bad_line in (b"garbage", b'{"files": []}', b'{"unit": 1, "files": [{"path": "../../x"}], "failures": []}'):
        path.write_bytes(b"\n".join([json.dumps(header).encode(), json.dumps(good).encode(), bad_line,
                                     json.dumps(dict(good, unit=2)).encode()]) + b"\n")
        with pytest.raises(PrepareError, match=f"{path}, line 3"):
            preparation._Journal(path, header)


# ---------------------------------------------------------------------------------------------- image size policy

def test_training_default_keeps_the_aspect_ratio_and_never_enlarges(tmp_path, shared_data):
    """Without --size, prepare writes a training set for exact RandomResizedCrop: aspect ratio kept,
    shorter side TRAIN_SHORTER_SIDE (320), smaller images kept at their size; --size gives squares."""
    photos = sorted((shared_data / "photos").glob("*.jpg"))
    by_size = {}
    for path in photos:
        with Image.open(path) as image:
            by_size[path.name] = image.size
    large = [p for p in photos if min(by_size[p.name]) > 400 and max(by_size[p.name]) / min(by_size[p.name]) > 1.2][:2]
    small = [p for p in photos if min(by_size[p.name]) < preparation.TRAIN_SHORTER_SIDE][:1]
    src = tmp_path / "src"
    (src / "c").mkdir(parents=True)
    for path in large + small:
        os.symlink(path, src / "c" / path.name)
    dst = tmp_path / "train"
    prepare(src, dst, workers=1, progress=False, verbose=False)
    index = load_index(dst)
    assert index["settings"]["crop"] == "none" and index["settings"]["resize_shorter"] == 320
    assert index["settings"]["enlarge"] is False
    for entry in index["files"]:
        width, height = by_size[Path(entry["source"]).name]
        out = (entry["width"], entry["height"])
        with Image.open(dst / entry["path"]) as image:
            assert image.size == out
        if min(width, height) > 320:
            assert min(out) == 320 and abs(max(out) / min(out) - max(width, height) / min(width, height)) < 0.01
            assert (out[0] > out[1]) == (width > height)
        else:
            assert out == (width, height)  # not enlarged
        assert funloader.read_fun(dst / entry["path"]).shape == (192, -(-out[1] // 8), -(-out[0] // 8))
    evaluation = tmp_path / "eval"
    prepare(src, evaluation, size=224, resize_shorter=256, workers=1, progress=False, verbose=False)
    assert {(e["width"], e["height"]) for e in load_index(evaluation)["files"]} == {(224, 224)}
    assert preparation.main([str(src), str(tmp_path / "cli"), "--resize-shorter", "256", "--workers", "1",
                             "--no-progress"]) == 0
    assert all(min(e["width"], e["height"]) == min(256, *by_size[Path(e["source"]).name])
               for e in load_index(tmp_path / "cli")["files"])


def test_merge_keeps_an_identical_copy_and_refuses_to_overwrite_a_different_file(tmp_path, two_jobs):
    """A cross-file-system move killed after its copy leaves the same file on both sides: kept.  A
    different file already in DST under an output's name is never overwritten."""
    parts = fresh_jobs(two_jobs, tmp_path)
    part = json.loads(part_file_of(parts[1]).read_text())
    name = next(r for r in part["units"] if r["files"])["files"][0]["path"]
    gathered = tmp_path / "gathered"
    (gathered / name).parent.mkdir(parents=True)
    (gathered / name).write_bytes(b"someone else's file")
    with pytest.raises(PrepareError, match="already exists with other contents"):
        merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert (gathered / name).read_bytes() == b"someone else's file"
    (gathered / name).write_bytes((parts[1] / name).read_bytes())  # the identical copy
    merge(gathered, parts, allow_failures=True, progress=False, verbose=False)
    assert tree_bytes(gathered) == tree_bytes(two_jobs / "single")
