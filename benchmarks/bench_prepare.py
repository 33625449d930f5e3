#!/usr/bin/env python
"""funloader prepare images/s with 1 and 2 worker processes, folder and shards.

Same as ``funloader bench --sections prepare --threads 2 --repeats 3 --output benchmarks/results/prepare.json --targets``; extra arguments
override these (``python benchmarks/bench_prepare.py --help`` lists them).
"""
import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run(['--sections', 'prepare', '--threads', '2', '--repeats', '3', '--output', 'benchmarks/results/prepare.json']))
