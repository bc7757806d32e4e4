"""Benchmark of the batchnorm kernels: reference vs fast, one thread and all threads.

    python benchmarks/bench_batchnorm.py [--repeat N] [--quick]

Times ``batchnorm_forward_train`` + ``batchnorm_backward`` (a training step of a
[batchnorm] layer, or of a convolutional layer's batch normalisation; the rows also
give the forward and backward medians apart), ``batchnorm_forward_infer`` and the
fused inference epilogue ``batchnorm_forward_infer_activate`` with LEAKY, at
darknet-like shapes, and compares each with the memory floor: the bytes the step
must move (forward: read the input, write output, x, x_norm; backward: read delta,
x, x_norm, write delta; inference: read the input, write output and x) divided by
the measured copy bandwidth.

``bench_rows()`` returns the measurements as dicts (name, shape, impl, threads,
median_ms, min_ms, floor_ms; train rows also fwd_ms, bwd_ms) for reuse, e.g. by a
``darkpy bench`` command.  On a shared machine the minimum is the better estimate of
the kernel's own cost.
"""

import argparse
import os
import subprocess
import sys
import time

import numba
import numpy as np

import darkpy.kernels.blas as fast
import darkpy.kernels.reference.blas as reference
from darkpy.kernels.activations import LEAKY

#: (batch, channels, height, width)
SHAPES = [(8, 64, 52, 52), (16, 256, 13, 13), (1, 16, 208, 208), (64, 1024, 1, 1)]


def cpu_model():
    """lscpu's "Model name", or the platform's processor string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import platform
    return platform.processor() or "unknown"


def copy_bandwidth(nbytes=128 << 20, repeat=7):
    """Measured copy bandwidth in bytes/s (bytes read + bytes written per second) on buffers
    larger than the last-level cache."""
    a = np.ones(nbytes // 4, np.float32)
    b = np.empty_like(a)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        np.copyto(b, a)
        best = min(best, time.perf_counter() - t)
    return 2 * nbytes / best


def _state(shape, seed=0):
    batch, c, h, w = shape
    n = batch * c * h * w
    rng = np.random.default_rng(seed)
    s = dict(input=rng.standard_normal(n).astype(np.float32),
             output=np.empty(n, np.float32), x=np.empty(n, np.float32), x_norm=np.empty(n, np.float32),
             delta=rng.standard_normal(n).astype(np.float32),
             mean=np.zeros(c, np.float32), variance=np.zeros(c, np.float32),
             rolling_mean=np.zeros(c, np.float32), rolling_variance=np.ones(c, np.float32),
             scales=rng.uniform(0.5, 2, c).astype(np.float32), biases=rng.standard_normal(c).astype(np.float32),
             bias_updates=np.zeros(c, np.float32), scale_updates=np.zeros(c, np.float32),
             mean_delta=np.zeros(c, np.float32), variance_delta=np.zeros(c, np.float32))
    return s


def _train_step(module, s, batch, c, spatial):
    """One training step; returns (forward, backward) seconds."""
    # backward rewrites delta in place; re-running it on its own output keeps values O(1)
    t0 = time.perf_counter()
    module.batchnorm_forward_train(s["input"], s["output"], s["x"], s["x_norm"], s["mean"], s["variance"],
                                   s["rolling_mean"], s["rolling_variance"], s["scales"], s["biases"],
                                   batch, c, spatial)
    t1 = time.perf_counter()
    module.batchnorm_backward(s["delta"], s["x"], s["x_norm"], s["mean"], s["variance"], s["scales"],
                              s["bias_updates"], s["scale_updates"], s["mean_delta"], s["variance_delta"],
                              batch, c, spatial)
    return t1 - t0, time.perf_counter() - t1


def _infer_step(module, s, batch, c, spatial):
    module.batchnorm_forward_infer(s["input"], s["output"], s["x"], s["rolling_mean"], s["rolling_variance"],
                                   s["scales"], s["biases"], batch, c, spatial)


def _infer_leaky_step(module, s, batch, c, spatial):
    module.batchnorm_forward_infer_activate(s["input"], s["output"], s["x"], s["rolling_mean"],
                                            s["rolling_variance"], s["scales"], s["biases"], batch, c, spatial,
                                            LEAKY)


def _times_ms(fn, repeat):
    """(median, min, parts) of ``repeat`` timed calls, in ms, after one warm-up call.
    When ``fn`` returns a tuple of part times (seconds), the total is their sum and
    ``parts`` their medians; else ``parts`` is None."""
    fn()  # compile / warm the caches
    times, parts = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        split = fn()
        if split is None:
            times.append(time.perf_counter() - t)
        else:
            times.append(sum(split))
            parts.append(split)
    medians = [1e3 * float(np.median(p)) for p in zip(*parts)] if parts else None
    return 1e3 * float(np.median(times)), 1e3 * float(np.min(times)), medians


def bench_rows(shapes=SHAPES, repeat=9, reference_repeat=3, threads=None, bandwidth=None):
    """Run the benchmark; a list of dicts (name, shape, impl, threads, median_ms, min_ms, floor_ms).

    ``threads``: the thread counts to time the fast kernels with (default: 1 and all).
    The reference kernels are serial and timed once, with one thread.
    """
    if bandwidth is None:
        bandwidth = copy_bandwidth()
    all_threads = numba.config.NUMBA_NUM_THREADS
    if threads is None:
        threads = sorted({1, all_threads})
    rows = []
    before = numba.get_num_threads()
    try:
        for shape in shapes:
            batch, c, h, w = shape
            n = batch * c * h * w
            spatial = h * w
            floors = {"train fwd+bwd": (4 * n + 4 * n) * 4 / bandwidth * 1e3,   # fwd 1r+3w, bwd 3r+1w
                      "infer fwd": 3 * n * 4 / bandwidth * 1e3,                 # 1r+2w
                      "infer fwd+leaky": 3 * n * 4 / bandwidth * 1e3}           # the same, activated in place
            for name, step in (("train fwd+bwd", _train_step), ("infer fwd", _infer_step),
                               ("infer fwd+leaky", _infer_leaky_step)):
                for impl, module in (("reference", reference), ("fast", fast)):
                    for t in ([1] if impl == "reference" else threads):
                        numba.set_num_threads(t)
                        s = _state(shape)
                        med, best, parts = _times_ms(lambda: step(module, s, batch, c, spatial),
                                                     reference_repeat if impl == "reference" else repeat)
                        row = dict(name=name, shape=shape, impl=impl, threads=t,
                                   median_ms=med, min_ms=best, floor_ms=floors[name])
                        if parts is not None:
                            row["fwd_ms"], row["bwd_ms"] = parts
                        rows.append(row)
    finally:
        numba.set_num_threads(before)
    return rows


def format_rows(rows):
    head = (f"{'step':15s} {'shape (b,c,h,w)':18s} {'impl':9s} {'thr':>3s} {'median ms':>10s} {'min ms':>8s} "
            f"{'floor ms':>9s} {'med/floor':>9s}  fwd + bwd ms")
    lines = [head, "-" * len(head)]
    for r in rows:
        split = f"  {r['fwd_ms']:.3f} + {r['bwd_ms']:.3f}" if "fwd_ms" in r else ""
        lines.append(f"{r['name']:15s} {str(r['shape']):18s} {r['impl']:9s} {r['threads']:3d} "
                     f"{r['median_ms']:10.3f} {r['min_ms']:8.3f} {r['floor_ms']:9.3f} "
                     f"{r['median_ms'] / r['floor_ms']:9.2f}{split}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed runs per fast measurement (median)")
    parser.add_argument("--quick", action="store_true", help="first shape only")
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth()
    print(f"CPU: {cpu_model()}  ({os.cpu_count()} logical CPUs, numba threads {numba.config.NUMBA_NUM_THREADS})")
    print(f"copy bandwidth (read+write): {bandwidth / 1e9:.1f} GB/s   load average: {os.getloadavg()[0]:.1f}")
    shapes = SHAPES[:1] if args.quick else SHAPES
    rows = bench_rows(shapes, repeat=args.repeat, bandwidth=bandwidth)
    print(format_rows(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
