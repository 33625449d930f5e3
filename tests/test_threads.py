"""Thread safety of the native decoder.

* ``read_batch`` with many native threads over a mixed list of good and bad files and buffers gives
  exactly what one thread gives: the same arrays, the same error classes and messages per item.
* Several Python threads calling ``read_dct`` / ``read_fun`` / ``read_batch`` at once (the GIL is
  released while decoding, so they really run in parallel) get the same results as one thread.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from funloader import codec
from funloader.errors import JPEGDecodeError

from test_hostile import EDGE_ROWS, REGRESSIONS, SHARED, patch_sof, segments

GRID = (9, 7)

# lenient decodes issue JPEGWarning; warnings.catch_warnings() is not thread-safe, so filter here
pytestmark = pytest.mark.filterwarnings("ignore::funloader.errors.JPEGWarning")


def mixed_sources(sample_jpegs):
    """~150 items: good photos (paths and bytes), and bad ones: truncated, bit-flipped, bomb header,
    empty, not a JPEG, a missing path, and (with the shared corpus) every edge file under 100 kB."""
    rng = np.random.default_rng(1234)
    sources = []
    for path in sample_jpegs:
        data = Path(path).read_bytes()
        sources += [str(path), data]
        sources.append(data[:len(data) * 2 // 3])                      # truncated inside scan data
        sources.append(data[:next(s for m, s, _ in segments(data) if m == 0xDA) + 6])  # inside the SOS header
        flipped = bytearray(data)
        for position in rng.integers(len(data) // 2, len(data), 6):
            flipped[int(position)] ^= 0x5A
        sources.append(bytes(flipped))                                  # corrupt scan data
        sources.append(patch_sof(data, 64250, 64250))                  # bomb header
    sources += [str(path) for path in sorted(REGRESSIONS.glob("*.jpg"))]  # kept fuzzing finds
    sources += [b"", b"\xff\xd8", b"not a jpeg at all", bytearray(b"\xff\xd8\xff\xe0" + b"\x00" * 40),
                str(Path(sample_jpegs[0]).with_name("no_such_file.jpg"))]
    if SHARED is not None:
        # the small ones (the multi-megapixel files would only make the test slow)
        sources += [str(SHARED / row["file"]) for row in EDGE_ROWS if int(row["bytes"]) < 100_000]
    # the same items again in another order, so that threads decode the same file at the same time
    order = np.random.default_rng(99).permutation(len(sources))
    return sources + [sources[i] for i in order]


def _describe(error):
    return None if error is None else (type(error).__name__, str(error))


def _batch(sources, threads, strict, dequantize=False):
    dtype = np.float32 if dequantize else np.int16
    out = np.full((len(sources), 192, *GRID), 77, dtype=dtype)
    errors = codec.read_batch(sources, out, threads=threads, strict=strict, dequantize=dequantize, warn=False)
    return out, [_describe(e) for e in errors]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("strict", [True, False], ids=["strict", "lenient"])
def test_many_native_threads_equal_one(sample_jpegs, strict):
    sources = mixed_sources(sample_jpegs)
    reference, reference_errors = _batch(sources, 1, strict)
    failed = sum(e is not None for e in reference_errors)
    assert 0 < failed < len(sources)  # the list really is mixed
    assert not reference[[e is not None for e in reference_errors]].any()
    for threads in (2, 3, 16, len(sources) + 5):
        out, errors = _batch(sources, threads, strict)
        assert errors == reference_errors, f"threads={threads}"
        assert np.array_equal(out, reference), f"threads={threads}"
    out, errors = _batch(sources, 8, strict, dequantize=True)
    reference_float, float_errors = _batch(sources, 1, strict, dequantize=True)
    assert errors == float_errors == reference_errors
    assert np.array_equal(out, reference_float)


def _single(source, strict):
    """read_dct + read_fun of one source: (description, coefficient arrays or None)."""
    try:
        image = codec.read_dct(source, strict=strict)
        fun = codec.read_fun(source, strict=strict)
    except (JPEGDecodeError, OSError) as error:
        return _describe(error), None
    return None, (image.coefficients, fun)


def _same_single(a, b):
    if a[0] != b[0] or (a[1] is None) != (b[1] is None):
        return False
    if a[1] is None:
        return True
    (planes_a, fun_a), (planes_b, fun_b) = a[1], b[1]
    return all(np.array_equal(x, y) for x, y in zip(planes_a, planes_b)) and np.array_equal(fun_a, fun_b)


@pytest.mark.timeout(180)
def test_concurrent_python_threads_are_safe(sample_jpegs):
    """6 Python threads, each decoding the whole mixed list at once (in its own order; read_dct and
    read_fun per item, then read_batch with 2 native threads; strict or lenient by thread)."""
    sources = mixed_sources(sample_jpegs)
    expected = {strict: [_single(source, strict) for source in sources] for strict in (True, False)}
    expected_batch = {strict: _batch(sources, 1, strict) for strict in (True, False)}
    barrier = threading.Barrier(6)

    def worker(seed):
        barrier.wait()  # start together
        rng = np.random.default_rng(seed)
        mismatches = []
        for strict in (bool(seed % 2),):
            for index in rng.permutation(len(sources)):
                got = _single(sources[index], strict)
                if not _same_single(got, expected[strict][index]):
                    mismatches.append((seed, int(index), strict, got[0], expected[strict][index][0]))
            out, errors = _batch(sources, 2, strict)
            if errors != expected_batch[strict][1] or not np.array_equal(out, expected_batch[strict][0]):
                mismatches.append((seed, "read_batch", strict))
        return mismatches

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(worker, range(6)))
    assert [m for result in results for m in result] == []
