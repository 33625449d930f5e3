"""``funloader info FILE...``: what funloader sees in JPEG files (size, sampling, coding, FUN shape, and
which entropy decoder reads it: funloader's own, or libjpeg and why)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from .codec import decoder_path, read_dct
from .errors import JPEGDecodeError


def describe(path: str, strict: bool = True) -> dict:
    """A JSON-able description of one file, or its error."""
    try:
        image = read_dct(path, strict=strict)
    except (JPEGDecodeError, OSError) as error:
        return {"file": path, "error": type(error).__name__, "reason": str(error)}
    taken, reason = decoder_path(path)
    return {
        "file": path,
        "width": image.width,
        "height": image.height,
        "colorspace": image.colorspace,
        "sampling": ["x".join(map(str, s)) for s in image.sampling],
        "blocks": [list(c.shape[:2]) for c in image.coefficients],
        "progressive": image.progressive,
        "arithmetic": image.arithmetic,
        "fun_shape": [192, *image.grid],
        "qtable_dc": [int(t[0]) for t in image.qtables],
        "warnings": image.warnings,
        "decoder": f"{taken} ({reason})" if reason else taken,
    }


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="funloader info", description=__doc__)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--lenient", action="store_true", help="report corrupt-data warnings instead of failing")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        entry = describe(path, strict=not args.lenient)
        failed += "error" in entry
        if args.json:
            print(json.dumps(entry))
        elif "error" in entry:
            print(f"{path}: {entry['error']}: {entry['reason']}")
        else:
            print(f"{path}: {entry['width']}x{entry['height']} {entry['colorspace']} sampling {','.join(entry['sampling'])}"
                  f"{' progressive' if entry['progressive'] else ''}{' arithmetic' if entry['arithmetic'] else ''}"
                  f" -> FUN (192, {entry['fun_shape'][1]}, {entry['fun_shape'][2]}), decoder {entry['decoder']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
