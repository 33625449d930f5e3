"""The benchmark corpora, re-encoded with Pillow from real photos.

* ``224_q100_420``, ``224_q100_444``, ``224_q90_420``: centre squares resized to 224x224, the FUN
  paper's input setting (``funloader prepare`` output);
* ``originals_q90_420``: **ImageNet-like originals**, what a training set holds before any
  preparation: shorter side 375 pixels, mixed aspect ratios (4:3 and 3:4 most often, also 1:1, 3:2,
  2:3, like ImageNet's photos), quality 90, 4:2:0;
* ``224_q90_420_opt``: ``224_q90_420`` with optimised Huffman tables (Pillow ``optimize=True``): a
  table set per image, as ``jpegtran -optimize``, mozjpeg and many web photos have.

Photos come from ``--data DIR``, else the shared corpus next to the repository
(``../shared/data/photos``), else the photos bundled in the package.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

#: corpus name -> (how it is made, a one-line description for the report)
CORPORA: Dict[str, dict] = {
    "224_q100_420": dict(size=224, quality=100, subsampling="420"),
    "224_q100_444": dict(size=224, quality=100, subsampling="444"),
    "224_q90_420": dict(size=224, quality=90, subsampling="420"),
    "originals_q90_420": dict(size=None, shorter=375, quality=90, subsampling="420"),
    "224_q90_420_opt": dict(size=224, quality=90, subsampling="420", optimize=True),
}
DESCRIPTIONS: Dict[str, str] = {
    "224_q100_420": "224x224 q100 4:2:0 (the paper's prepared input)",
    "224_q100_444": "224x224 q100 4:4:4 (the authors' released models' input)",
    "224_q90_420": "224x224 q90 4:2:0",
    "originals_q90_420": "ImageNet-like originals: shorter side 375, mixed aspect, q90 4:2:0",
    "224_q90_420_opt": "224x224 q90 4:2:0, optimised Huffman tables (one set per image)",
}
#: width / height of the originals, cycled over the photos (ImageNet is mostly 4:3 landscape)
ORIGINAL_ASPECTS = (4 / 3, 3 / 4, 4 / 3, 1.0, 3 / 2, 4 / 3, 2 / 3)
_SUFFIXES = (".jpg", ".jpeg")


def shared_photos_dir() -> Optional[Path]:
    """``../shared/data/photos`` next to the repository (or ``$FUNLOADER_SHARED_DATA/photos``)."""
    here = Path(__file__).resolve()
    for candidate in (os.environ.get("FUNLOADER_SHARED_DATA", ""), here.parents[3] / "shared" / "data",
                      Path.cwd().parent / "shared" / "data"):
        if candidate and (Path(candidate) / "photos").is_dir() and any((Path(candidate) / "photos").glob("*.jpg")):
            return Path(candidate) / "photos"
    return None


def source_photos(data: Optional[os.PathLike] = None) -> List[Path]:
    """Real photos to build corpora from: the JPEGs under ``data`` (recursively), else the shared
    corpus, else the bundled samples. A ``data`` that is missing or holds no JPEG is a ``UsageError``."""
    from ..data import sample_paths
    from ..errors import UsageError

    if data is not None:
        root = Path(data)
        if not root.is_dir():
            raise UsageError(f"--data {data}: no such folder")
        found = sorted(p for p in root.rglob("*") if p.suffix.lower() in _SUFFIXES and p.is_file())
        if not found:
            raise UsageError(f"--data {data}: no .jpg/.jpeg files in this folder")
        return found
    shared = shared_photos_dir()
    if shared is not None:
        return sorted(shared.glob("*.jpg"))
    return sample_paths()


def _centre_crop_to_aspect(image, aspect: float):
    width, height = image.size
    if width / height > aspect:
        new_width = max(1, round(height * aspect))
        left = (width - new_width) // 2
        return image.crop((left, 0, left + new_width, height))
    new_height = max(1, round(width / aspect))
    top = (height - new_height) // 2
    return image.crop((0, top, width, top + new_height))


def make_corpus(photos: Iterable[Path], folder: Path, *, size: Optional[int] = 224, shorter: Optional[int] = None,
                quality: int = 90, subsampling: str = "420", optimize: bool = False,
                limit: Optional[int] = None) -> List[Path]:
    """Re-encode photos with Pillow (at most ``limit`` of them) and return the paths written.

    ``size``: a centre square resized to ``size x size`` (bicubic). ``shorter``: an original, centre-
    cropped to the next aspect of :data:`ORIGINAL_ASPECTS` and resized so its shorter side is
    ``shorter`` (bicubic). ``optimize``: Huffman tables optimised for each image (else libjpeg's
    standard tables).
    """
    from PIL import Image, ImageOps

    chroma = {"420": 2, "422": 1, "444": 0}[str(subsampling)]
    folder.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    for path in photos:
        if limit is not None and len(written) >= limit:
            break
        try:
            with Image.open(path) as image:
                image = ImageOps.exif_transpose(image).convert("RGB")
        except Exception:  # not a readable photo: not part of the corpus
            continue
        if size is not None:
            side = min(image.size)
            left, top = (image.width - side) // 2, (image.height - side) // 2
            image = image.resize((size, size), Image.BICUBIC, box=(left, top, left + side, top + side))
        elif shorter is not None:
            image = _centre_crop_to_aspect(image, ORIGINAL_ASPECTS[len(written) % len(ORIGINAL_ASPECTS)])
            scale = shorter / min(image.size)
            image = image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))),
                                 Image.BICUBIC)
        target = folder / f"{len(written):05d}_{path.stem}.jpg"
        image.save(target, format="JPEG", quality=quality, subsampling=chroma, optimize=optimize)
        written.append(target)
    if not written:
        raise FileNotFoundError(f"no readable photos to make {folder} from")
    wait_for_writeback()
    return written


def build(name: str, photos: Sequence[Path], folder: Path, *, limit: Optional[int] = None) -> List[Path]:
    """Corpus ``name`` of :data:`CORPORA` made from ``photos`` in ``folder``."""
    if name not in CORPORA:
        from ..errors import UsageError

        raise UsageError(f"unknown corpus {name!r}; choose from {', '.join(CORPORA)}")
    return make_corpus(photos, folder, limit=limit, **CORPORA[name])


def image_folder(files: Sequence[Path], folder: Path, count: int, classes: int = 2) -> Path:
    """A ``classes``-class ImageFolder tree of ``count`` files cycled from ``files`` (so a small
    corpus still makes several full batches; each copy is a real file, read from disk like any
    other). Returns ``folder``."""
    for index in range(count):
        source = Path(files[index % len(files)])
        target = folder / f"class_{index % classes}" / f"{index:05d}_{source.name}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.write_bytes(source.read_bytes())
    wait_for_writeback()
    return folder


def wait_for_writeback() -> None:
    """Blocks until the files just written are on disk. The kernel writes them back in the
    background for seconds afterwards, and that slowed the first timings after a corpus or an
    ImageFolder copy was made (``read_batch_1t`` up to 2x; some loader epochs 1.5-2x)."""
    os.sync()
