"""DALI pipelines (CPU-only here, ``device_id=None``): the native operator and the external_source
fallback against ``read_batch`` / ``DCTLoader`` bit for bit, WebDataset shards, sharding, bad files,
the iterator's epoch length and last-batch policies, the plugin build; GPU variants skip without CUDA.

The plugin is built once per run into the cache (``$FUNLOADER_CACHE_DIR`` or ``~/.cache/funloader``;
about 6-10 s on 2 cores when the cache is cold).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")

import funloader  # noqa: E402
from funloader import transforms as T  # noqa: E402
from funloader.channels import channel_indices  # noqa: E402
from funloader.dali import FUNIterator, fun_pipeline, load_plugin  # noqa: E402
from funloader.dali.build import LIBRARY_NAME  # noqa: E402
from funloader.errors import JPEGDecodeError, UnsupportedJPEGError  # noqa: E402

from conftest import requires_cuda  # noqa: E402

pytestmark = pytest.mark.timeout(300)  # a hung external_source worker fails instead of stalling CI

BACKENDS = ["plugin", "external_source"]


def _raw_pipeline(*args, **kwargs):
    """fun_pipeline with raw int16 coefficients, no normalisation and the block grid centre-cropped
    (resize=None) unless a test asks otherwise (the defaults, like DCTLoader's, dequantise, normalise
    and read originals with the evaluation transform)."""
    kwargs.setdefault("dequantize", False)
    kwargs.setdefault("normalize_stats", None)
    kwargs.setdefault("resize", None)
    return fun_pipeline(*args, **kwargs)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def plugin():
    """Build (cache) and load the plugin once per test session; reports the build time."""
    started = time.perf_counter()
    path = load_plugin()
    print(f"\nfunloader DALI plugin: {path} ({time.perf_counter() - started:.1f} s)")
    return path


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory, sample_jpegs):
    """ImageFolder of the 12 bundled photos (sizes 128x128 .. 640x901: crops and pads) in 3 classes."""
    root = tmp_path_factory.mktemp("dali_folder")
    for number, path in enumerate(sorted(sample_jpegs)):
        folder = root / f"class{number % 3}"
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / Path(path).name)
    return root


@pytest.fixture(scope="session")
def samples(image_folder):
    """``(names, labels)`` of the folder in ImageFolder order."""
    dataset = funloader.DCTImageFolder(image_folder)
    return [name for name, _ in dataset.samples], list(dataset.targets)


def _reference(names, grid=(28, 28), dtype=np.int16, dequantize=False):
    out = np.zeros((len(names), 192, *grid), dtype=dtype)
    errors = funloader.read_batch(names, out, dequantize=dequantize)
    assert errors == [None] * len(names)
    return out


def _epoch(iterator):
    images, labels = [], []
    for x, y in iterator:
        images.append(x.cpu().numpy())
        labels.append(y.cpu().numpy())
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("backend", BACKENDS)
def test_equals_read_batch(backend, plugin, image_folder, samples):
    names, labels = samples
    pipe = _raw_pipeline(image_folder, 5, num_threads=2, device_id=None, backend=backend)
    images, got_labels = _epoch(FUNIterator(pipe))
    assert images.dtype == np.int16 and images.shape == (len(names), 192, 28, 28)
    np.testing.assert_array_equal(images, _reference(names))
    assert got_labels.tolist() == labels


@pytest.mark.parametrize("backend", BACKENDS)
def test_dequantize_keep_and_normalize_equal_transforms(backend, plugin, image_folder, samples):
    names, _ = samples
    rng = np.random.default_rng(0)
    stats = {"mean": rng.normal(0, 20, 192).tolist(), "std": rng.uniform(0.5, 50, 192).tolist()}
    stats["std"][5] = 0.0  # a constant channel: centred only, as transforms.normalize
    reference = _reference(names, dtype=np.float32, dequantize=True)
    expected = T.normalize(reference, stats["mean"], stats["std"])[:, channel_indices("44/10/10")]
    pipe = _raw_pipeline(image_folder, 4, num_threads=2, backend=backend, dequantize=True,
                        keep_channels="44/10/10", normalize_stats=stats)
    images, _ = _epoch(FUNIterator(pipe))
    assert images.dtype == np.float32 and images.shape == (len(names), 64, 28, 28)
    np.testing.assert_array_equal(images, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_keep_mode_zero_and_float16(backend, plugin, image_folder, samples):
    names, _ = samples
    mask = np.zeros((192, 1, 1), np.int16)
    mask[channel_indices("8/4/4")] = 1
    pipe = _raw_pipeline(image_folder, 6, num_threads=2, backend=backend, keep_channels="8/4/4", keep_mode="zero",
                        dtype="float16")
    images, _ = _epoch(FUNIterator(pipe))
    assert images.dtype == np.float16 and images.shape == (len(names), 192, 28, 28)
    np.testing.assert_array_equal(images, (_reference(names) * mask).astype(np.float16))


def test_equals_dct_loader(plugin, image_folder):
    """The same files and no random augmentation: DALI (both backends) == DCTLoader bit for bit, raw,
    dequantized, normalised, with frequency selection (drop and zero); both read these originals
    (128x128 .. 640x901) with the evaluation transform."""
    from funloader import DCTLoader

    rng = np.random.default_rng(1)
    stats = {"mean": rng.normal(0, 10, 192).tolist(), "std": rng.uniform(1, 30, 192).tolist()}
    for dequantize, normalize, keep, keep_mode in [(False, None, None, "drop"), (True, None, "44/10/10", "drop"),
                                                   (True, stats, "44/10/10", "drop"), (False, stats, "16/8/8", "zero")]:
        loader = DCTLoader(image_folder, 5, num_threads=2, dequantize=dequantize, normalize=normalize or False,
                           keep=keep, keep_mode=keep_mode)
        expected = [(x.numpy(), y.numpy()) for x, y in loader]
        for backend in BACKENDS:
            pipe = _raw_pipeline(image_folder, 5, num_threads=2, backend=backend, dequantize=dequantize, resize="auto",
                                 normalize_stats=normalize, keep_channels=keep, keep_mode=keep_mode, dtype="float32")
            got = [(x.numpy(), y.numpy()) for x, y in FUNIterator(pipe)]
            assert len(got) == len(expected)
            for (x, y), (ex, ey) in zip(got, expected):
                assert x.dtype == ex.dtype and x.shape == ex.shape
                np.testing.assert_array_equal(x, ex)
                np.testing.assert_array_equal(y, ey)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flip_always_equals_hflip(backend, plugin, image_folder, samples):
    names, _ = samples
    pipe = _raw_pipeline(image_folder, 12, num_threads=2, backend=backend, flip=1.0, seed=3)
    images, _ = _epoch(FUNIterator(pipe))
    np.testing.assert_array_equal(images, T.hflip(_reference(names)))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dequantize", [False, True])
def test_flip_then_normalize(backend, dequantize, plugin, image_folder, samples):
    """CPU plugin pipelines flip and normalise inside the operator; external_source with DALI ops."""
    names, _ = samples
    rng = np.random.default_rng(4)
    stats = {"mean": rng.normal(0, 10, 192).tolist(), "std": rng.uniform(1, 30, 192).tolist()}
    pipe = _raw_pipeline(image_folder, 12, num_threads=2, backend=backend, flip=1.0, dequantize=dequantize,
                        normalize_stats=stats, keep_channels="20/6/6")
    images, _ = _epoch(FUNIterator(pipe))
    reference = _reference(names, dtype=np.float32, dequantize=dequantize)
    expected = T.normalize(T.hflip(reference), stats["mean"], stats["std"])[:, channel_indices("20/6/6")]
    np.testing.assert_array_equal(images, expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_crop_and_flip_are_block_aligned_windows(backend, plugin, image_folder, samples):
    names, _ = samples
    big = _reference(names, grid=(32, 34))
    flipped = T.hflip(big)
    pipe = _raw_pipeline(image_folder, 4, num_threads=2, backend=backend, decode_grid=(32, 34), random_crop=True,
                        flip=True, seed=7)
    seen_offsets, seen_flips = set(), set()
    for _ in range(2):
        images, _ = _epoch(FUNIterator(pipe))
        for item, image in enumerate(images):
            matches = [(top, left, flip) for flip, source in ((False, big), (True, flipped))
                       for top in range(5) for left in range(7)
                       if np.array_equal(source[item, :, top:top + 28, left:left + 28], image)]
            assert matches, f"sample {item} is not a flipped/unflipped block-aligned 28x28 window"
            seen_offsets.add(matches[0][:2])
            seen_flips.add(matches[0][2])
    assert len(seen_offsets) > 3 and seen_flips == {False, True}


@pytest.mark.parametrize("backend", BACKENDS)
def test_decode_grid_then_centre_crop(backend, plugin, image_folder, samples):
    names, _ = samples
    pipe = _raw_pipeline(image_folder, 12, num_threads=2, backend=backend, decode_grid=(32, 35), crop=(28, 30))
    images, _ = _epoch(FUNIterator(pipe))
    np.testing.assert_array_equal(images, _reference(names, grid=(32, 35))[:, :, 2:30, 2:32])


@pytest.mark.parametrize("backend", BACKENDS)
def test_webdataset_shards(backend, plugin, image_folder, tmp_path_factory):
    shards = tmp_path_factory.mktemp("dali_shards") / "out"
    funloader.prepare(image_folder, shards, format="shards", shard_size=5, workers=1, progress=False, verbose=False)
    dataset = funloader.DCTImageFolder(shards, dequantize=False)
    assert len(dataset.shards) == 3
    expected = _reference([dataset.source(i) for i in range(len(dataset))])
    images, labels = _epoch(FUNIterator(_raw_pipeline(shards, 5, num_threads=2, backend=backend)))
    np.testing.assert_array_equal(images, expected)
    assert labels.tolist() == dataset.targets


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharding_covers_every_sample_once(backend, plugin, samples):
    names, _ = samples
    pairs = [(name, index) for index, name in enumerate(names)]  # label = sample index
    reference = _reference(names)
    for epoch in range(2):
        seen = []
        for shard_id in range(2):
            pipe = _raw_pipeline(pairs, 4, num_threads=2, backend=backend, shard_id=shard_id, num_shards=2,
                                random_shuffle=True, seed=11)
            iterator = FUNIterator(pipe)
            for _ in range(epoch):  # shards move on every epoch, as DALI's readers do
                _epoch(iterator)
            images, labels = _epoch(iterator)
            assert len(labels) == 6
            np.testing.assert_array_equal(images, reference[labels])
            seen += labels.tolist()
        assert sorted(seen) == list(range(len(names)))


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_file_raises_with_its_name_or_is_zeroed(backend, plugin, image_folder, tmp_path):
    root = tmp_path / "folder"
    shutil.copytree(image_folder, root)
    good = sorted(root.glob("class0/*.jpg"))[0]
    truncated = root / "class1" / "zz_truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:3000])
    dataset = funloader.DCTImageFolder(root)
    names = [name for name, _ in dataset.samples]
    bad_index = names.index(str(truncated))

    with pytest.raises(JPEGDecodeError) as info:
        _epoch(FUNIterator(_raw_pipeline(root, 4, num_threads=2, backend=backend)))
    assert info.value.filename == str(truncated)
    assert str(truncated) in str(info.value)

    images, labels = _epoch(FUNIterator(_raw_pipeline(root, 4, num_threads=2, backend=backend, on_error="zero")))
    assert not images[bad_index].any()
    good_indices = [i for i in range(len(names)) if i != bad_index]
    np.testing.assert_array_equal(images[good_indices], _reference([names[i] for i in good_indices]))
    assert labels.tolist() == dataset.targets

    # Normalised: the replaced sample is zero coefficients normalised like the others, whether the
    # normalisation runs in the decode (flip or not) or as a separate DALI step (centred crop + flip).
    stats = {"mean": np.linspace(-3, 3, 192).tolist(), "std": np.linspace(1, 4, 192).tolist()}
    shift = T.normalize(np.zeros((192, 1, 1), np.float32), stats["mean"], stats["std"])
    for options in [dict(), dict(flip=1.0), dict(flip=1.0, decode_grid=29)]:
        images, _ = _epoch(FUNIterator(_raw_pipeline(root, 4, num_threads=2, backend=backend, on_error="zero",
                                                    dequantize=True, normalize_stats=stats, **options)))
        np.testing.assert_array_equal(images[bad_index], np.broadcast_to(shift, images.shape[1:]), err_msg=str(options))


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsupported_jpeg_raises_unsupported(backend, plugin, image_folder, tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    shutil.copytree(image_folder, root)
    cmyk = root / "class2" / "cmyk.jpg"
    Image.new("CMYK", (64, 48), (10, 20, 30, 40)).save(cmyk, quality=90)
    with pytest.raises(UnsupportedJPEGError) as info:
        _epoch(FUNIterator(_raw_pipeline(root, 16, num_threads=2, backend=backend)))
    assert info.value.filename == str(cmyk)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("policy,sizes", [("partial", [5, 5, 2]), ("drop", [5, 5]), ("fill", [5, 5, 5])])
def test_iterator_epoch_length_and_last_batch_policy(backend, policy, sizes, plugin, image_folder, samples):
    names, labels = samples
    iterator = FUNIterator(_raw_pipeline(image_folder, 5, num_threads=2, backend=backend),
                           last_batch_policy=policy)
    reference = _reference(names)
    for _ in range(2):  # auto_reset: the second epoch is the same
        assert len(iterator) == len(sizes)
        batches = [(x.numpy(), y.numpy()) for x, y in iterator]
        assert [len(y) for _, y in batches] == sizes
        images = np.concatenate([x for x, _ in batches])
        got_labels = np.concatenate([y for _, y in batches])
        count = min(len(names), sum(sizes))
        np.testing.assert_array_equal(images[:count], reference[:count])
        assert got_labels[:count].tolist() == labels[:count]
        if policy == "fill":  # padded by repeating the last sample
            np.testing.assert_array_equal(images[count:], np.repeat(reference[-1:], sum(sizes) - count, axis=0))


def test_bad_arguments_are_clear(plugin, image_folder):
    with pytest.raises(ValueError, match="on_error"):
        _raw_pipeline(image_folder, 4, on_error="skip")
    with pytest.raises(ValueError, match="backend"):
        _raw_pipeline(image_folder, 4, backend="gpu")
    with pytest.raises(ValueError, match="decode_grid"):
        _raw_pipeline(image_folder, 4, crop=28, decode_grid=20)
    with pytest.raises(ValueError, match="int16"):
        _raw_pipeline(image_folder, 4, dequantize=True, dtype="int16")


@pytest.mark.slow
def test_plugin_build_is_cached_atomic_and_locked(tmp_path):
    """Two concurrent cold builds into a fresh cache give one library, no leftovers; a rebuild
    is not needed the second time."""
    env = dict(os.environ, FUNLOADER_CACHE_DIR=str(tmp_path))
    command = [sys.executable, "-m", "funloader.dali.build"]
    started = time.perf_counter()
    processes = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
    outputs = [p.communicate(timeout=600) for p in processes]
    elapsed = time.perf_counter() - started
    assert [p.returncode for p in processes] == [0, 0], outputs
    paths = {out.strip() for out, _ in outputs}
    assert len(paths) == 1
    library = Path(paths.pop())
    assert library.name == LIBRARY_NAME and library.parent.parent == tmp_path
    assert sorted(p.name for p in library.parent.iterdir()) == [".lock", LIBRARY_NAME, LIBRARY_NAME + ".manifest.json"]
    stamp = library.stat().st_mtime_ns
    again = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=True)
    assert again.stdout.strip() == str(library) and library.stat().st_mtime_ns == stamp
    print(f"\ncold plugin build (two concurrent requests): {elapsed:.1f} s")


def test_build_without_compiler_is_a_clear_error(monkeypatch, tmp_path):
    from funloader.dali import build as plugin_build

    monkeypatch.setenv("FUNLOADER_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-compiler-funloader")
    with pytest.raises(plugin_build.PluginBuildError, match="compiler"):
        plugin_build.build()


@requires_cuda
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_pipeline_equals_cpu(backend, plugin, image_folder, samples):
    import torch

    names, labels = samples
    rng = np.random.default_rng(2)
    stats = {"mean": rng.normal(0, 10, 192).tolist(), "std": rng.uniform(1, 30, 192).tolist()}
    kwargs = dict(num_threads=2, backend=backend, flip=1.0, dequantize=True, normalize_stats=stats,
                  keep_channels="44/10/10")
    cpu_images, _ = _epoch(FUNIterator(_raw_pipeline(image_folder, 5, device_id=None, **kwargs)))
    iterator = FUNIterator(_raw_pipeline(image_folder, 5, device_id=0, **kwargs))
    gpu_batches = list(iterator)
    assert all(x.is_cuda and y.is_cuda for x, y in gpu_batches)
    gpu_images = torch.cat([x for x, _ in gpu_batches]).cpu().numpy()
    np.testing.assert_allclose(gpu_images, cpu_images, rtol=1e-6, atol=1e-5)
    assert torch.cat([y for _, y in gpu_batches]).cpu().tolist() == labels
    expected = T.normalize(T.hflip(_reference(names, dtype=np.float32, dequantize=True)), stats["mean"], stats["std"])
    np.testing.assert_allclose(gpu_images, expected[:, channel_indices("44/10/10")], rtol=1e-6, atol=1e-5)


def test_plugin_pipeline_reuses_batch_memory(plugin, image_folder):
    """Steady state: a plugin pipeline's 19 MB float32 batches come from DALI's buffer pool, not from
    fresh pages (with plain malloc glibc could unmap and re-fault every batch: about 150 page faults
    per 224x224 image). Counts page faults, not time."""
    import resource

    assert int(os.environ["DALI_MALLOC_POOL_THRESHOLD"].rstrip("kM")) >= 0  # set by funloader.dali (or the user)
    batch = 32
    pipe = _raw_pipeline(image_folder, batch, num_threads=2, backend="plugin", dequantize=True)
    for _ in range(5):
        pipe.run()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    batches = 20
    for _ in range(batches):
        pipe.run()
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages_per_image = 192 * 28 * 28 * 4 / 4096
    assert faults / (batches * batch) < pages_per_image / 5, f"{faults / (batches * batch):.0f} page faults per image"


def test_operator_takes_flip_signs_and_affine_from_python(plugin, image_folder, samples):
    """The C++ operator does not restate the layout rules: it applies the flip signs and the affine it
    is handed (funloader.channels), bit for bit as read_batch with the same arrays; handed other signs
    it follows them, and without signs it refuses to flip."""
    from nvidia.dali import fn, pipeline_def, types

    from funloader.channels import decode_affine, flip_signs, normalization_affine

    names, _ = samples
    rng = np.random.default_rng(5)
    mean, std = rng.normal(0, 10, 192), rng.uniform(1, 30, 192)
    scale, shift = normalization_affine(mean, std)

    def run(signs, normalise=True, dtype=types.FLOAT):
        @pipeline_def(batch_size=len(names), num_threads=2, device_id=None)
        def pipe():
            jpegs, _ = fn.readers.file(files=names, labels=list(range(len(names))))
            args = dict(crop=[28, 28], dequantize=dtype == types.FLOAT, dtype=dtype,
                        flip=fn.random.coin_flip(probability=1.0, dtype=types.INT32))
            if signs is not None:
                args["flip_signs"] = list(map(float, signs))
            if normalise:
                args.update(scale=scale.tolist(), shift=shift.tolist())
            return fn.funloader.dct_decode(jpegs, **args)

        built = pipe()
        built.build()
        return np.stack([np.asarray(t) for t in built.run()[0]])

    gain, bias = decode_affine((scale, shift), flip=True)
    expected = np.empty((len(names), 192, 28, 28), np.float32)
    assert funloader.read_batch(names, expected, dequantize=True, col_maps=np.tile(np.arange(28)[::-1], (len(names), 1)),
                                gain=np.tile(gain, (len(names), 1)), bias=bias) == [None] * len(names)
    np.testing.assert_array_equal(run(flip_signs("h")), expected)
    np.testing.assert_array_equal(run(flip_signs("h")), T.normalize(T.hflip(_reference(names, dtype=np.float32, dequantize=True)), mean, std))
    other = -flip_signs("h")  # not the rule: the operator must use what it is given
    np.testing.assert_array_equal(run(other, normalise=False, dtype=types.INT16), -T.hflip(_reference(names)))
    with pytest.raises(RuntimeError, match="flip_signs"):
        run(None, normalise=False, dtype=types.INT16)


def test_defaults_equal_dct_loader_defaults(plugin, image_folder, tmp_path):
    """fun_pipeline's defaults are DCTLoader's: dequantised coefficients normalised with the
    stats-dequantized.json next to the data (normalize="auto"); both warn the same way without it."""
    from funloader import DCTLoader

    root = tmp_path / "folder"
    shutil.copytree(image_folder, root)
    with pytest.warns(UserWarning, match="funloader stats"):
        fun_pipeline(root, 4, num_threads=2, backend="external_source")
    funloader.compute_stats(root, progress=False)
    expected = [x.numpy() for x, _ in DCTLoader(root, 4, num_threads=2)]
    for backend in BACKENDS:
        got = [x.numpy() for x, _ in FUNIterator(fun_pipeline(root, 4, num_threads=2, backend=backend))]
        assert len(got) == len(expected)
        for x, ex in zip(got, expected):
            assert x.dtype == np.float32
            np.testing.assert_array_equal(x, ex)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_resized_crop_equals_read_batch_of_its_windows(backend, plugin, image_folder, samples):
    """resize=RandomResizedCrop: each sample is the exact resized crop of the window the transform drew
    (whole-image pixel windows), bit for bit as read_batch(boxes=), here flipped and normalised too."""
    names, _ = samples
    rng = np.random.default_rng(6)
    stats = {"mean": rng.normal(0, 10, 192).tolist(), "std": rng.uniform(1, 30, 192).tolist()}
    pipe = _raw_pipeline(image_folder, 4, num_threads=2, backend=backend, resize=T.RandomResizedCrop(20), flip=1.0,
                         dequantize=True, normalize_stats=stats, seed=5)
    images, _ = _epoch(FUNIterator(pipe))
    assert images.shape == (len(names), 192, 20, 20) and images.dtype == np.float32
    if backend == "plugin":
        boxes = np.concatenate(list(pipe.funloader_boxes))[:len(names)]
    else:
        boxes = np.concatenate([pipe.funloader_feeder.box(i, 0, i) for i in range(len(names))])
    sizes = funloader.codec.read_sizes(names)
    assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, :2] + boxes[:, 2:] <= sizes)
    resized = np.empty((len(names), 192, 20, 20), np.float32)
    assert funloader.read_batch(names, resized, boxes=boxes) == [None] * len(names)
    np.testing.assert_array_equal(images, T.normalize(T.hflip(resized), stats["mean"], stats["std"]))


def test_evaluation_transform_equals_dct_loader(plugin, image_folder, tmp_path):
    """resize=ResizeCenterCrop (Resize(256) + CenterCrop(224), native): plugin == external_source ==
    DCTLoader with the same transform, raw (int16, q100 rounding) and normalised float."""
    from funloader import DCTLoader

    rng = np.random.default_rng(7)
    stats = {"mean": rng.normal(0, 10, 192).tolist(), "std": rng.uniform(1, 30, 192).tolist()}
    for dequantize, normalize in [(True, stats), (False, None)]:
        loader = DCTLoader(image_folder, 5, num_threads=2, transform=T.ResizeCenterCrop(28), dequantize=dequantize,
                           normalize=normalize or False)
        expected = np.concatenate([x.numpy() for x, _ in loader])
        for backend in BACKENDS:
            pipe = _raw_pipeline(image_folder, 5, num_threads=2, backend=backend, resize=T.ResizeCenterCrop(28),
                                 dequantize=dequantize, normalize_stats=normalize, dtype="float32")
            images, _ = _epoch(FUNIterator(pipe))
            np.testing.assert_array_equal(images, expected)
    with pytest.raises(ValueError, match="resize"):
        fun_pipeline(image_folder, 4, resize=T.RandomResizedCrop(28, mode="nearest"))


# ---------------------------------------------------------------- colour jitter and mixing (issue 16)
@pytest.mark.parametrize("backend", BACKENDS)
def test_color_jitter_equals_the_transforms(backend, plugin, image_folder, samples):
    """Fixed factors (degenerate ranges): the DALI graph equals funloader.transforms' colour functions
    in the same order, then normalisation; random factors stay per sample and reproducible."""
    import torch

    names, _ = samples
    stats = (np.linspace(-30, 30, 192), np.linspace(2, 50, 192))
    jitter = {"brightness": (1.3, 1.3), "contrast": (0.8, 0.8), "saturation": (1.2, 1.2), "hue": (0.05, 0.05)}
    pipe = fun_pipeline(image_folder, 4, num_threads=2, device_id=None, backend=backend, normalize_stats=stats,
                        color_jitter=jitter, resize=None)
    images, _ = _epoch(FUNIterator(pipe))
    x = torch.from_numpy(_reference(names, dtype=np.float32, dequantize=True))
    expected = T.adjust_hue(T.adjust_saturation(T.adjust_contrast(T.adjust_brightness(x, 1.3), 0.8), 1.2), 0.05)
    np.testing.assert_allclose(images, T.normalize(expected, *stats).numpy(), rtol=1e-4, atol=2e-3)
    runs = []
    for _ in range(2):
        pipe = fun_pipeline(image_folder, 4, num_threads=2, device_id=None, backend=backend, normalize_stats=None,
                            color_jitter={"brightness": 0.4, "saturation": 0.4}, seed=3, resize=None)
        runs.append(_epoch(FUNIterator(pipe))[0])
    np.testing.assert_array_equal(runs[0], runs[1])
    luma_gain = runs[0][:, 1] / np.where(x.numpy()[:, 1] == 0, np.nan, x.numpy()[:, 1])
    per_sample = np.nanmedian(luma_gain.reshape(len(names), -1), axis=1)
    assert len(set(np.round(per_sample, 4))) > 3 and np.all((per_sample >= 0.6 - 1e-4) & (per_sample <= 1.4 + 1e-4))


def test_iterator_mixes_batches(plugin, image_folder, samples):
    import torch

    names, labels = samples
    pipe = fun_pipeline(image_folder, 4, num_threads=2, device_id=None, normalize_stats=None, resize=None)
    mixup = T.Mixup(num_classes=3, alpha=0.4)
    batches = list(FUNIterator(pipe, mixing=mixup, seed=5))
    reference = torch.from_numpy(_reference(names, dtype=np.float32, dequantize=True))
    for number, (x, targets) in enumerate(batches):
        from funloader.loader import _batch_seed

        generator = torch.Generator().manual_seed(_batch_seed(5, 0, 0, number))
        expected_x, expected_t = mixup(reference[4 * number:4 * number + 4],
                                       torch.tensor(labels[4 * number:4 * number + 4]), generator)
        torch.testing.assert_close(x, expected_x)
        torch.testing.assert_close(targets, expected_t)
