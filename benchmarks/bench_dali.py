#!/usr/bin/env python
"""DALI pipelines: funloader's operator and external_source fallback vs DALI's own RGB pipeline.

Same as ``funloader bench --sections dali --corpora 224_q90_420,224_q100_420 --threads 1,2 --batch-size 32 --repeats 5 --output benchmarks/results/dali_cpu.json --targets``; extra arguments
override these (``python benchmarks/bench_dali.py --help`` lists them).
"""
import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run(['--sections', 'dali', '--corpora', '224_q90_420,224_q100_420', '--threads', '1,2', '--batch-size', '32', '--repeats', '5', '--output', 'benchmarks/results/dali_cpu.json']))
