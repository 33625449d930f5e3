"""The package surface: lazy names in dir(), exported helpers, a clear ImportError without the C
extension, and a one-line DCTImage repr."""
from __future__ import annotations

import subprocess
import sys

import funloader


def test_dir_lists_lazy_names_and_exports():
    names = dir(funloader)
    for name in ("DCTLoader", "DCTImageFolder", "compute_stats", "load_stats", "prepare", "models", "transforms",
                 "dali", "set_max_pixels", "read_batch"):
        assert name in names
    assert "set_max_pixels" in funloader.__all__
    before = funloader.get_max_pixels()
    try:
        funloader.set_max_pixels(1000)
        assert funloader.codec.get_max_pixels() == 1000
    finally:
        funloader.set_max_pixels(before)


def test_missing_extension_says_how_to_build_it():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'funloader._jpegdct':\n"
        "            raise ImportError('no module named funloader._jpegdct')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import funloader\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError") and "build_ext" in last and "pip install -e ." in last and "libjpeg" in last


def test_dct_image_repr_is_one_line(shared_data):
    image = funloader.read_dct(shared_data / "photos" / "darknet__eagle.jpg")
    text = repr(image)
    assert text == f"DCTImage(773x512, YCbCr 4:4:0, baseline, file={str(shared_data / 'photos' / 'darknet__eagle.jpg')!r})"
    assert "\n" not in str(image) and len(text) < 200
    gray = funloader.read_dct((shared_data / "edge" / "derived" / "B_grayscale.jpg").read_bytes())
    assert repr(gray) == "DCTImage(640x427, gray, baseline)"


def test_extension_stub_documents_every_name():
    """funloader/_jpegdct.pyi names every function, method and constant of the C module."""
    import ast
    from pathlib import Path

    from funloader import _jpegdct

    tree = ast.parse((Path(funloader.__file__).parent / "_jpegdct.pyi").read_text())
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    stubbed |= {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}
    public = {name for name in dir(_jpegdct) if not name.startswith("_")}
    assert public == stubbed
    methods = {node.name for cls in tree.body if isinstance(cls, ast.ClassDef) for node in cls.body
               if isinstance(node, ast.FunctionDef)}
    assert methods == {name for name in dir(_jpegdct.Decoder) if not name.startswith("_")}
