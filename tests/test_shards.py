"""funloader.shards: the one shard reader (grouping, labels, size checks, descriptor LRU), attacked
as issue #19 describes, and what DCTImageFolder does with damaged shards and indexes."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import textwrap
import warnings

import numpy as np
import pytest
from PIL import Image

import funloader
from funloader import shards
from funloader.dataset import MAX_CLASSES, DCTImageFolder
from funloader.errors import JPEGDecodeError, UsageError
from funloader.shards import ShardError, ShardWriter, dali_index_path, iter_shard, read_shard_index


def tiny_jpeg(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def write_shard(path, members) -> None:
    """A tar of ``[(name, bytes)]`` written with the library's writer."""
    writer = ShardWriter(path, str(path) + ".tmp")
    for name, data in members:
        writer.add(name, data)
    writer.commit()


def test_member_claiming_a_petabyte_is_refused_naming_the_shard(tmp_path):
    """A header claiming 10**15 bytes gave OSError [Errno 22] (no shard named) in the dataset and an
    empty MemoryError in iter_shard; both now raise ShardError naming shard and member."""
    info = tarfile.TarInfo("000000.jpg")
    info.size = 10 ** 15
    shard = tmp_path / "bomb.tar"
    shard.write_bytes(info.tobuf(format=tarfile.GNU_FORMAT) + tiny_jpeg() + b"\0" * 2048)
    with pytest.raises(ShardError, match=r"bomb.tar: member '000000.jpg' claims 1000000000000000 bytes .* past the end"):
        read_shard_index(shard)
    with pytest.raises(ShardError, match="bomb.tar"):
        list(iter_shard(shard))
    with pytest.raises(ShardError, match="bomb.tar"):
        DCTImageFolder(str(shard))


def test_labels_are_checked(tmp_path):
    jpeg = tiny_jpeg()
    write_shard(tmp_path / "neg.tar", [("a.jpg", jpeg), ("a.cls", b"-3")])
    with pytest.raises(ShardError, match=r"neg.tar: member 'a.cls' holds the negative class index -3"):
        DCTImageFolder(str(tmp_path / "neg.tar"))
    write_shard(tmp_path / "huge.tar", [("a.jpg", jpeg), ("a.cls", b"300000000")])
    with pytest.raises(UsageError, match=r"label 300000000: above 1048575.*pass classes="):
        DCTImageFolder(str(tmp_path / "huge.tar"))  # used to build 300 million class names
    with pytest.raises(UsageError, match="label 300000000: there are 2 classes"):
        DCTImageFolder(str(tmp_path / "huge.tar"), classes=["a", "b"])
    write_shard(tmp_path / "long.tar", [("a.jpg", jpeg), ("a.cls", b"1" * 100)])
    with pytest.raises(ShardError, match="'a.cls' is 100 bytes, not a class index"):
        DCTImageFolder(str(tmp_path / "long.tar"))
    with pytest.raises(UsageError, match="label -2: a class index must be non-negative"):
        DCTImageFolder([(tmp_path / "x.jpg", -2)])
    with pytest.raises(UsageError, match="2.5 is not a class index"):
        DCTImageFolder([(tmp_path / "x.jpg", 2.5)])
    assert DCTImageFolder([(tmp_path / "x.jpg", np.int64(4))]).classes == ["0", "1", "2", "3", "4"]
    assert MAX_CLASSES == 2 ** 20


def _prepared(tmp_path, count=3, per_shard=4, cls=True):
    """A prepare-like shard folder: index.json with shard counts/bytes and per-file labels."""
    root = tmp_path / "prepared"
    root.mkdir()
    entries, files = [], []
    for s in range(count):
        name = f"shard-{s:06d}.tar"
        members = []
        for i in range(per_shard):
            key = f"{s * per_shard + i:08d}"
            members += [(f"{key}.jpg", tiny_jpeg(s * per_shard + i))] + ([(f"{key}.cls", str(i % 2).encode())] if cls else [])
            files.append({"key": key, "label": i % 2, "shard": name})
        write_shard(root / name, members)
        entries.append({"name": name, "count": per_shard, "bytes": (root / name).stat().st_size})
    (root / "index.json").write_text(json.dumps({"classes": ["even", "odd"], "shards": entries, "files": files}))
    return root


def test_a_shard_truncated_at_a_member_boundary_is_detected(tmp_path):
    """13 of 16 shards' worth loaded silently; the counts in index.json are now checked."""
    root = _prepared(tmp_path)
    assert len(DCTImageFolder(root)) == 12
    shard = root / "shard-000001.tar"
    data = shard.read_bytes()
    members = [m for m in tarfile.open(shard) if m.isfile()]
    cut = members[4].offset  # the header of the third sample's image: a member boundary
    shard.write_bytes(data[:cut])
    with pytest.warns(UserWarning, match="ends without tar's end-of-archive blocks"):
        with pytest.raises(UsageError, match=r"shard-000001.tar holds 2 samples, the index records 4.*on_error='skip'"):
            DCTImageFolder(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = DCTImageFolder(root, on_error="skip")
    assert len(dataset) == 10
    with warnings.catch_warnings(record=True) as caught:  # the loader's policy reaches the dataset it builds
        warnings.simplefilter("always")
        assert len(funloader.DCTLoader(root, on_error="skip", normalize=False).dataset) == 10
    assert any("do not match the index" in str(w.message) for w in caught)
    assert any("do not match the index" in str(w.message) and "loading the 10 samples" in str(w.message) for w in caught)


def test_index_json_errors_are_named(tmp_path):
    root = _prepared(tmp_path, count=1, cls=False)  # labels from index.json
    assert DCTImageFolder(root).targets == [0, 1, 0, 1]
    index = json.loads((root / "index.json").read_text())
    index["files"][0]["label"] = 5000000000
    del index["classes"]
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match=r"index.json: sample .*::00000000 has label 5000000000: above"):
        DCTImageFolder(root)
    index["classes"] = ["even", "odd"]
    index["files"][0]["label"] = 2
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="has label 2: there are 2 classes"):
        DCTImageFolder(root)
    index["files"][0]["label"] = "x"
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(UsageError, match="index.json: label of 00000000: 'x' is not a class index"):
        DCTImageFolder(root)
    (root / "index.json").write_text('{"shards": [')
    with pytest.raises(UsageError, match="index.json: not valid JSON"):
        DCTImageFolder(root)
    (root / "index.json").write_text(json.dumps({"shards": [{"nom": "x"}]}))
    with pytest.raises(UsageError, match="index.json: malformed funloader index"):
        DCTImageFolder(root)


def test_duplicate_keys_make_separate_samples_with_a_warning(tmp_path):
    """One rule for every reader (WebDataset's and DALI's): consecutive members with one key are one
    sample; a key that comes back later is another sample. It used to replace the earlier one."""
    first, second = tiny_jpeg(1), tiny_jpeg(2)
    shard = tmp_path / "dup.tar"
    write_shard(shard, [("a.jpg", first), ("a.cls", b"0"), ("b.jpg", tiny_jpeg(3)), ("a.jpg", second), ("a.cls", b"1")])
    with pytest.warns(UserWarning, match=r"dup.tar: 1 key\(s\) appear in more than one sample \('a'\)"):
        index = read_shard_index(shard)
    assert [(key, label) for key, _, _, label in index] == [("a", 0), ("b", None), ("a", 1)]
    with pytest.warns(UserWarning, match="more than one sample"):
        assert [(key, sorted(fields)) for key, fields in iter_shard(shard)] == [("a", ["cls", "jpg"]), ("b", ["jpg"]),
                                                                                ("a", ["cls", "jpg"])]
    with pytest.warns(UserWarning, match="more than one sample"):
        dataset = DCTImageFolder(str(shard), dequantize=False)
    assert dataset.targets == [0, -1, 1]
    np.testing.assert_array_equal(dataset[2][0].numpy(), funloader.read_fun(second))


def test_iter_shard_and_the_dataset_read_the_same_samples(tmp_path):
    shard = tmp_path / "s.tar"
    members = [("x/000001.jpg", tiny_jpeg(1)), ("x/000001.cls", b"1"), ("000002.JPEG", tiny_jpeg(2)),
               ("README", b"no extension"), ("000003.cls", b"2")]
    write_shard(shard, members)
    assert [(k, sorted(f)) for k, f in iter_shard(shard)] == [("x/000001", ["cls", "jpg"]), ("000002", ["JPEG"]),
                                                              ("000003", ["cls"])]
    dataset = DCTImageFolder(str(shard))
    assert [name for name, _ in dataset.samples] == [f"{shard}::x/000001", f"{shard}::000002"]
    assert dataset.targets == [1, -1]
    assert dali_index_path(shard) == str(tmp_path / "s.idx")


def test_descriptor_cache_is_bounded_under_a_low_fd_limit(tmp_path):
    """300 shards with `ulimit -n 256`: sample 502 failed and then even os.listdir failed, because one
    descriptor per shard stayed open forever. A child with RLIMIT_NOFILE 256 now reads all of them."""
    folder = tmp_path / "many"
    folder.mkdir()
    jpeg = tiny_jpeg(7, size=8)
    for s in range(300):
        write_shard(folder / f"shard-{s:06d}.tar", [(f"{s:05d}{i}.jpg", jpeg) for i in range(2)])
    code = f"""
        import json, os, resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
        from funloader import shards
        from funloader.dataset import DCTImageFolder
        dataset = DCTImageFolder({str(folder)!r}, on_error="raise")
        count = sum(1 for i in range(len(dataset)) if dataset[i][0].shape[0] == 192)
        again = sum(1 for i in reversed(range(len(dataset))) if dataset[i][0].shape[0] == 192)
        open_fds = len(os.listdir("/proc/self/fd"))
        print(json.dumps([len(dataset), count, again, shards._DESCRIPTORS.open_count(), shards.MAX_OPEN_SHARDS, open_fds]))
    """
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    total, count, again, cached, limit, open_fds = json.loads(child.stdout.strip().splitlines()[-1])
    assert total == count == again == 600
    assert limit == 32 and cached <= limit and open_fds < 64


def test_descriptor_cache_evicts_least_recently_used(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "MAX_OPEN_SHARDS", 2)
    cache = shards._DescriptorCache()
    paths = []
    for i in range(4):
        path = tmp_path / f"{i}.bin"
        path.write_bytes(bytes([i]) * 10)
        paths.append(str(path))
    for i in (0, 1, 0, 2, 3, 0):
        assert cache.pread(paths[i], 3, 2) == bytes([i]) * 3
        assert cache.open_count() <= 2
    assert list(cache._open) == [paths[3], paths[0]]


def test_duplicate_keys_read_the_same_through_dali(tmp_path):
    """The rule is DALI's: its webdataset reader (plugin backend) yields the same 3 samples in the
    same order as DCTImageFolder and iter_shard."""
    pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")
    from funloader.dali import fun_pipeline

    shard = tmp_path / "dup.tar"
    write_shard(shard, [("a.jpg", tiny_jpeg(1)), ("a.cls", b"0"), ("b.jpg", tiny_jpeg(3)), ("b.cls", b"2"),
                        ("a.jpg", tiny_jpeg(2)), ("a.cls", b"1")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = DCTImageFolder(str(shard), dequantize=False)
        pipe = fun_pipeline(str(shard), 3, num_threads=1, device_id=None, backend="plugin", crop=2,
                            normalize_stats=None, dequantize=False)
        pipe.build()
        images, labels = pipe.run()
    assert np.array(labels.as_tensor()).reshape(-1).tolist() == expected.targets == [0, 2, 1]
    for i in range(3):  # the same image bytes behind each label
        np.testing.assert_array_equal(np.array(images.as_tensor())[i], _decoded(expected.source(i)))


def _decoded(data: bytes) -> np.ndarray:
    out = np.zeros((1, 192, 2, 2), np.int16)
    assert funloader.read_batch([data], out)[0] is None
    return out[0]
