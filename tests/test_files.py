"""funloader.files: the folder walker and the capped reader, attacked as issue #19 describes.

FIFOs, /dev/zero and symlink loops run in a child interpreter with a time limit, so a regression
shows up as a failed test (the child's hang or crash), never as a hung suite."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import funloader
from funloader import files
from funloader.dataset import DCTImageFolder
from funloader.errors import FunloaderError, JPEGDecodeError
from funloader.files import MAX_FILE_BYTES, FileRefusedError, read_file, read_head, walk_files


def run_child(code: str, timeout: float = 30):
    """Run ``code`` (which prints one JSON line last) in a fresh interpreter with a time limit."""
    try:
        child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                               timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"child did not finish within {timeout} s (hang?)")
    assert child.returncode == 0, f"child exited with {child.returncode}:\n{child.stderr[-4000:]}"
    return json.loads(child.stdout.strip().splitlines()[-1])


@pytest.fixture()
def hostile_folder(tmp_path, sample_jpegs):
    """``root/cls/`` with two real JPEGs, a FIFO and a link to /dev/zero named like images, two
    links to ``..`` (a loop), a link to the class folder itself and a broken link."""
    root = tmp_path / "root"
    (root / "cls" / "sub").mkdir(parents=True)
    shutil.copy(sample_jpegs[0], root / "cls" / "a.jpg")
    shutil.copy(sample_jpegs[1], root / "cls" / "sub" / "b.jpg")
    os.mkfifo(root / "cls" / "fifo.jpg")
    os.symlink("/dev/zero", root / "cls" / "zero.jpg")
    os.symlink("..", root / "cls" / "up1")
    os.symlink("..", root / "cls" / "sub" / "up2")
    os.symlink(str(root / "cls"), root / "cls" / "sub" / "self")
    os.symlink(str(root / "missing"), root / "cls" / "broken.jpg")
    return root


def test_walker_follows_each_folder_once_and_opens_no_special_file(hostile_folder):
    code = f"""
        import json
        from funloader.files import walk_files
        listing = walk_files({str(hostile_folder / 'cls')!r})
        print(json.dumps([listing.files, listing.not_regular, listing.links_skipped, listing.unreadable]))
    """
    found, not_regular, links_skipped, unreadable = run_child(code, timeout=20)
    cls = hostile_folder / "cls"
    assert found == [str(cls / "a.jpg"), str(cls / "sub" / "b.jpg")]  # each image once, loops not followed
    assert not_regular == sorted(str(cls / n) for n in ("broken.jpg", "fifo.jpg", "zero.jpg"))
    # up1 -> root (above the walked folder: an ancestor all the same), up2 -> cls, self -> cls
    assert links_skipped == [str(cls / "sub" / "self"), str(cls / "sub" / "up2"), str(cls / "up1")]
    assert unreadable == []


def test_a_link_to_a_folder_outside_is_followed_once(tmp_path, sample_jpegs):
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.copy(sample_jpegs[0], outside / "x.jpg")
    top = tmp_path / "top"
    top.mkdir()
    os.symlink(outside, top / "one")
    os.symlink(outside, top / "two")
    listing = walk_files(top)
    assert listing.files == [str(top / "one" / "x.jpg")]  # the first link in walk order, once
    assert listing.links_skipped == [str(top / "two")]


def test_real_folders_win_over_links_to_them(tmp_path, sample_jpegs):
    top = tmp_path / "top"
    (top / "b_real").mkdir(parents=True)
    shutil.copy(sample_jpegs[0], top / "b_real" / "x.jpg")
    os.symlink("b_real", top / "a_link")  # sorts before the real folder, still not preferred
    listing = walk_files(top)
    assert listing.files == [str(top / "b_real" / "x.jpg")] and listing.links_skipped == [str(top / "a_link")]


def test_a_link_to_the_parent_does_not_list_the_other_classes(tmp_path, sample_jpegs):
    """``root/a/up -> ..`` used to list every class's images again as class ``a`` (41 times with
    ``os.walk(followlinks=True)`` until the path got too long)."""
    for name, photo in (("a", sample_jpegs[0]), ("b", sample_jpegs[1])):
        (tmp_path / name).mkdir()
        shutil.copy(photo, tmp_path / name / "x.jpg")
    os.symlink("..", tmp_path / "a" / "up")
    with pytest.warns(UserWarning, match="1 links to an ancestor") as caught:
        dataset = DCTImageFolder(tmp_path)
    assert caught[0].filename == __file__  # the warning points at the caller's line
    assert dataset.samples == [(str(tmp_path / "a" / "x.jpg"), 0), (str(tmp_path / "b" / "x.jpg"), 1)]


def test_a_class_folder_linking_to_the_root_is_not_a_class(tmp_path, sample_jpegs):
    """``root/all -> .`` would have been a class holding every other class's images."""
    for name, photo in (("a", sample_jpegs[0]), ("b", sample_jpegs[1])):
        (tmp_path / name).mkdir()
        shutil.copy(photo, tmp_path / name / "x.jpg")
    os.symlink(".", tmp_path / "all")
    os.symlink("..", tmp_path / "up")
    with pytest.warns(UserWarning, match="2 links to an ancestor"):
        dataset = DCTImageFolder(tmp_path)
    assert dataset.classes == ["a", "b"] and len(dataset) == 2


def test_dataset_on_a_hostile_folder_lists_each_image_once_and_warns(hostile_folder):
    code = f"""
        import json, warnings
        from funloader.dataset import DCTImageFolder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            dataset = DCTImageFolder({str(hostile_folder)!r})
            items = [tuple(dataset[i][0].shape) for i in range(len(dataset))]
        print(json.dumps([dataset.samples, items, [str(w.message) for w in caught]]))
    """
    samples, shapes, messages = run_child(code, timeout=30)
    cls = hostile_folder / "cls"
    assert samples == [[str(cls / "a.jpg"), 0], [str(cls / "sub" / "b.jpg"), 0]]
    assert len(shapes) == 2
    assert len(messages) == 1 and "fifo.jpg" in messages[0] and "zero.jpg" in messages[0] and "up2" in messages[0]


def test_fifo_and_dev_zero_as_samples_are_refused_without_blocking(hostile_folder, sample_jpegs):
    """A file list naming a FIFO and /dev/zero: __getitem__, describe_error and DCTLoader refuse them
    (they used to block forever / read until MemoryError), and on_error="skip" replaces them."""
    cls = hostile_folder / "cls"
    code = f"""
        import json, warnings
        import funloader
        from funloader.dataset import DCTImageFolder
        warnings.simplefilter("ignore")
        pairs = [({str(cls / 'fifo.jpg')!r}, 0), ({str(cls / 'zero.jpg')!r}, 0), ({str(sample_jpegs[0])!r}, 1)]
        out = []
        for index in (0, 1):
            try:
                DCTImageFolder(pairs)[index]
                out.append("decoded")
            except Exception as error:
                out.append([type(error).__name__, str(error)])
        dataset = DCTImageFolder(pairs)
        out.append([type(dataset.describe_error(0, OSError("x"))).__name__, type(dataset.describe_error(1, OSError("y"))).__name__])
        skipping = DCTImageFolder(pairs, on_error="skip")
        out.append([skipping[0][1], skipping[1][1], skipping.skipped])
        try:
            next(iter(funloader.DCTLoader(DCTImageFolder(pairs), batch_size=3, normalize=False, size=4)))
            out.append("decoded")
        except Exception as error:
            out.append([type(error).__name__, str(error)])
        loader = funloader.DCTLoader(DCTImageFolder(pairs, on_error="skip"), batch_size=3, normalize=False, size=4)
        x, y = next(iter(loader))
        out.append(y.tolist())
        print(json.dumps(out))
    """
    fifo, zero, described, skipped, loader_error, labels = run_child(code, timeout=30)
    for (kind, message), name in ((fifo, "fifo.jpg"), (zero, "zero.jpg")):
        assert kind == "JPEGDecodeError" and name in message and "not a regular file" in message
    assert described == ["OSError", "OSError"]  # the core's error kept; nothing opened blocking
    assert skipped == [1, 1, 2]
    assert loader_error[0] in ("OSError", "JPEGDecodeError") and "fifo.jpg" in loader_error[1]
    assert labels == [1, 1, 1]


def test_size_cap_refuses_a_sparse_3_gb_file_before_reading(tmp_path, sample_jpegs):
    """One cap on every path: __getitem__ used to read a 3 GB sparse .jpg that read_batch refuses."""
    big = tmp_path / "big.jpg"
    with open(big, "wb") as handle:
        handle.write(open(sample_jpegs[0], "rb").read())
        handle.truncate(3 * 2 ** 30)  # sparse: no disk used
    with pytest.raises(FileRefusedError, match="larger than the 2147483648-byte limit") as caught:
        read_file(big)
    assert caught.value.filename == str(big) and isinstance(caught.value, OSError)
    assert isinstance(caught.value, FunloaderError)
    with pytest.raises(FileRefusedError):
        read_head(big)
    dataset = DCTImageFolder([(big, 0), (sample_jpegs[0], 1)], on_error="skip")
    x, label = dataset[0]
    assert label == 1 and dataset.skipped == 1 and "larger than" in dataset.bad_samples[0]
    with pytest.raises(JPEGDecodeError, match="big.jpg.*larger than"):
        DCTImageFolder([(big, 0)])[0]
    errors = funloader.read_batch([str(big)], np.zeros((1, 192, 2, 2), np.int16))  # the C core: same cap
    assert errors[0] is not None and "2 GiB" in str(errors[0])
    assert MAX_FILE_BYTES == 2 ** 31


def test_reader_returns_the_bytes_and_refuses_directories(tmp_path, sample_jpegs):
    data = open(sample_jpegs[0], "rb").read()
    assert read_file(sample_jpegs[0]) == data and read_head(sample_jpegs[0], 5) == data[:5]
    with pytest.raises(FileRefusedError, match="a directory"):
        read_file(tmp_path)
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    with pytest.raises(FileRefusedError, match="100 bytes, larger than the 99-byte limit"):
        read_file(small, limit=99)
    assert read_file(small, limit=100) == b"x" * 100
    with pytest.raises(FileNotFoundError):
        read_file(tmp_path / "missing.jpg")


def test_unreadable_subfolder_is_reported(tmp_path, sample_jpegs, monkeypatch):
    """A sub-folder that cannot be listed is reported (walk, dataset warning), not skipped silently.

    Tests run as root on CI, where mode 000 does not stop a listing: as root the refusal is
    simulated by making ``os.scandir`` raise ``PermissionError`` for that folder, which is exactly
    what a non-root user gets (and what the walker has to handle)."""
    root = tmp_path / "root"
    (root / "cls" / "locked").mkdir(parents=True)
    shutil.copy(sample_jpegs[0], root / "cls" / "a.jpg")
    shutil.copy(sample_jpegs[1], root / "cls" / "locked" / "b.jpg")
    locked = str(root / "cls" / "locked")
    if os.geteuid() == 0:
        real_scandir = os.scandir

        def scandir(path="."):
            if os.fspath(path) == locked:
                raise PermissionError(13, "Permission denied", locked)
            return real_scandir(path)

        monkeypatch.setattr(files.os, "scandir", scandir)
    else:
        os.chmod(locked, 0)
    try:
        listing = walk_files(root / "cls")
        assert listing.files == [str(root / "cls" / "a.jpg")]
        assert listing.unreadable == [(locked, "Permission denied")]
        with pytest.warns(UserWarning, match="1 unreadable sub-folder.*locked.*Permission denied"):
            dataset = DCTImageFolder(root)
        assert len(dataset) == 1 and dataset.walk_problems.unreadable == [(locked, "Permission denied")]
    finally:
        os.chmod(locked, 0o755)


def test_refusal_pickles_with_its_name():
    import pickle

    error = pickle.loads(pickle.dumps(FileRefusedError("x.jpg", "a FIFO (named pipe), not a regular file")))
    assert str(error) == "x.jpg: a FIFO (named pipe), not a regular file" and error.filename == "x.jpg"
