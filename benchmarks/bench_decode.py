#!/usr/bin/env python
"""Decode cost per image: funloader vs the libjpeg floor, jpeg2dct and Pillow, on five corpora.

Same as ``funloader bench --sections decode --corpora 224_q100_420,224_q100_444,224_q90_420,originals_q90_420,224_q90_420_opt --threads 2 --repeats 7 --output benchmarks/results/decode.json --targets``; extra arguments
override these (``python benchmarks/bench_decode.py --help`` lists them).
"""
import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run(['--sections', 'decode', '--corpora', '224_q100_420,224_q100_444,224_q90_420,originals_q90_420,224_q90_420_opt', '--threads', '2', '--repeats', '7', '--output', 'benchmarks/results/decode.json']))
