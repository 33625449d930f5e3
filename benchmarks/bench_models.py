#!/usr/bin/env python
"""FUN models vs RGB baselines: parameters, multiply-adds, batch-1 and batch-64 speed (add --device cuda on a GPU).

Same as ``funloader bench --sections models --threads 2 --repeats 5 --output benchmarks/results/models_cpu.json --targets``; extra arguments
override these (``python benchmarks/bench_models.py --help`` lists them).
"""
import sys

from _run import run

if __name__ == "__main__":
    sys.exit(run(['--sections', 'models', '--threads', '2', '--repeats', '5', '--output', 'benchmarks/results/models_cpu.json']))
