"""The stand-alone benchmark scripts are ``funloader bench --sections ...`` with the project's
longer settings and its speed targets (``--targets``); extra arguments are passed on."""
from __future__ import annotations

import os
import sys
from typing import List

# Every loader pipeline allocates a large batch tensor per batch; transparent huge pages cut their
# page-fault cost (read by torch at its first allocation, so set before torch is imported).
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")


def run(defaults: List[str]) -> int:
    from funloader.bench.__main__ import main
    from funloader.errors import FunloaderError

    try:
        return main(defaults + ["--targets"] + sys.argv[1:])  # later arguments override the defaults
    except FunloaderError as error:
        print(f"{sys.argv[0]}: error: {error}", file=sys.stderr)
        return 2
