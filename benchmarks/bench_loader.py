#!/usr/bin/env python
"""Loader images/s to normalised batches: DCTLoader vs the Pillow, paper and DCTNet pipelines, 1 and 2 threads.

Same as ``funloader bench --sections loader --corpora 224_q90_420,224_q100_420,originals_q90_420 --threads 1,2 --batch-size 256 --loader-images 512 --repeats 3 --output benchmarks/results/loader.json --targets``; extra arguments
override these (``python benchmarks/bench_loader.py --help`` lists them).
"""
import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run(['--sections', 'loader', '--corpora', '224_q90_420,224_q100_420,originals_q90_420', '--threads', '1,2', '--batch-size', '256', '--loader-images', '512', '--repeats', '3', '--output', 'benchmarks/results/loader.json']))
