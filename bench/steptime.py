"""Shared by the PyTorch step benchmarks in bench/: the median wall time of a step after warm-up, and the BLAS
PyTorch was built with (what the ratios depend on)."""
import statistics, time
import torch


def median_ms(step, warmup, repeats):
    """Run step() warmup times untimed, then repeats times timed; the median in milliseconds."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def blas():
    return "openblas" if "openblas" in torch.__config__.show().lower() else "other"
