"""Every fenced ```python block of README.md, docs/*.md and models/README.md runs, on small data.

The blocks are executed as written, after a small table of substitutions that points them at a
generated ImageFolder of real photos (the bundled samples) instead of ``/data/imagenet/...``, at a
real photo instead of ``cat.jpg``, at the CPU when there is no CUDA device, and cuts loops over
epochs to one epoch. The blocks of one document share a namespace, in order. A block that still
names ``/data/...`` after the substitutions fails: add its path to the table.
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = ["README.md", *sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md")), "models/README.md"]

#: (pattern, replacement) applied to every block, in order. ``{data}``: the generated ImageFolder
#: (also standing in for a prepared folder), ``{photo}``: one real JPEG.
SUBSTITUTIONS = [
    (r'"/data/imagenet(?:-fun)?/(?:train|val)/(stats[-\w]*\.json)"', r'"{data}/\1"'),
    (r'"/data/imagenet(?:-fun)?(?:/(?:train|val))?"', r'"{data}"'),
    (r'"cat\.jpg"', r'"{photo}"'),
    (r"\bfor (\w+) in range\(\s*\w+\s*\):", r"for \1 in range(1):"),  # one epoch
    (r"\bbatch_size=\d+", "batch_size=8"),
    (r"(\b\w*threads)=\d+", r"\1=2"),
    (r'"/data/imagenet-fun/train" *, *256\b', r'"{data}", 8'),
]
#: without a CUDA device
CPU_SUBSTITUTIONS = [
    (r'device="cuda"', 'device="cpu"'),
    (r"\.cuda\(\)", ""),
    (r"\bdevice_id=0\b", "device_id=None"),
]
#: names an explanatory block may use without defining them (``{photo}``: a real JPEG)
PRELUDE = """
data_bytes = open("{photo}", "rb").read()
paths = ["{photo}"] * 256
"""


def python_blocks(document: str):
    text = (REPO / document).read_text()
    return [match.group(1) for match in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M)]


def rewrite(code: str, data: Path, photo: Path, cuda: bool) -> str:
    for pattern, replacement in SUBSTITUTIONS + ([] if cuda else CPU_SUBSTITUTIONS):
        code = re.sub(pattern, replacement, code)
    unmapped = re.search(r"[\"']/data/[^\"']*", code)
    assert unmapped is None, f"{unmapped.group(0)}: a /data/ path without a substitution in SUBSTITUTIONS"
    return code.replace("{data}", str(data)).replace("{photo}", str(photo))


@pytest.fixture(scope="module")
def small_imagefolder(tmp_path_factory, sample_jpegs):
    """An ImageFolder of the 12 bundled photos (128x128 .. 640x901) in 2 classes."""
    root = tmp_path_factory.mktemp("docs") / "train"
    for number, path in enumerate(sorted(sample_jpegs)):
        folder = root / f"class{number % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / Path(path).name)
    return root


def test_every_document_has_been_found():
    assert "docs/loader.md" in DOCUMENTS and "docs/dali.md" in DOCUMENTS
    assert sum(len(python_blocks(d)) for d in DOCUMENTS) >= 5


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document, small_imagefolder, sample_jpegs, tmp_path, monkeypatch):
    import torch

    blocks = python_blocks(document)
    if not blocks:
        return  # a document without Python blocks (its shell commands are tested elsewhere)
    if any("funloader.dali" in block for block in blocks):
        pytest.importorskip("nvidia.dali", reason="NVIDIA DALI is not installed (pip install nvidia-dali-cuda120)")
    data = tmp_path / "data"
    shutil.copytree(small_imagefolder, data)  # compute_stats writes next to the data: a fresh copy per document
    photo = Path(sorted(sample_jpegs)[0])
    cuda = torch.cuda.is_available()
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_{Path(document).stem}"}
    exec(compile(rewrite(PRELUDE, data, photo, cuda), "<prelude>", "exec"), namespace)
    for number, block in enumerate(blocks):
        code = rewrite(block, data, photo, cuda)
        exec(compile(code, f"{document}:python-block-{number}", "exec"), namespace)


def test_substitutions_point_at_the_small_data(small_imagefolder):
    code = rewrite('DCTLoader("/data/imagenet/train", batch_size=256, num_threads=8, device="cuda")\n'
                   "for epoch in range(90):\n    pass\n", small_imagefolder, Path("x.jpg"), cuda=False)
    assert code == (f'DCTLoader("{small_imagefolder}", batch_size=8, num_threads=2, device="cpu")\n'
                    "for epoch in range(1):\n    pass\n")
    assert os.path.isdir(small_imagefolder)
