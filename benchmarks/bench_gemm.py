"""Benchmark darknet's gemm: the reference transliteration against the fast kernels.

    python benchmarks/bench_gemm.py [--quick] [--repeat N] [--no-reference] [--no-fused]

Shapes are yolov3-tiny's (416 x 416) 3x3 convolutions as darknet calls gemm:
forward ``gemm(0,0, M=filters, N=out_h*out_w, K=c*9)``, and for one layer the
backward calls ``gemm(0,1, filters, c*9, out_h*out_w)`` (weight_updates) and
``gemm(1,0, c*9, out_h*out_w, filters)`` (delta).  Each is timed on one thread
and on all cores; GFLOP/s counts 2*M*N*K and is compared with the CPU's peak
for separate multiplies and adds (no FMA: the bit-exact contract forbids it).

``bench(...)`` returns the rows as dicts (name, shape, impl, threads, median_ms,
gflops, pct_peak, plus min_ms, cpu_ms and pct_peak_cpu) for reuse, e.g. by a
``darkpy bench`` command; ``peak()`` returns the assumptions behind pct_peak.
On a machine shared with other processes, wall times are pessimistic: cpu_ms
(process CPU time of all threads) and pct_peak_cpu (flop per CPU-second
against one core's peak) count only the time the benchmark actually ran.

``bench_fused(...)`` times, per forward shape, what the convolutional layer does with
one image: the fast ``im2col_cpu`` into a buffer followed by the fast ``gemm`` (the
path before issue 9), against ``gemm_im2col`` (B packed straight from the image,
``c_zero``: no separate fill of C).  Both rows count the gemm's 2*M*N*K flop.
"""

import argparse
import os
import platform
import re
import subprocess
import time

import numba
import numpy as np
from numba import njit

from darkpy.kernels import gemm as fast
from darkpy.kernels.reference import gemm as reference

#: (name, TA, TB, M, N, K)
SHAPES = [
    ("conv0 fwd 16x27x173056", 0, 0, 16, 173056, 27),
    ("conv2 fwd 32x144x43264", 0, 0, 32, 43264, 144),
    ("conv4 fwd 64x288x10816", 0, 0, 64, 10816, 288),
    ("conv6 fwd 128x576x2704", 0, 0, 128, 2704, 576),
    ("conv8 fwd 256x1152x676", 0, 0, 256, 676, 1152),
    ("conv10 fwd 512x2304x169", 0, 0, 512, 169, 2304),
    ("conv12 fwd 1024x4608x169", 0, 0, 1024, 169, 4608),
    ("l21 fwd 256x3456x676", 0, 0, 256, 676, 3456),  # (layer 14, 512x2304x169, is conv10's shape)
    ("conv8 weight_updates (nt)", 0, 1, 256, 1152, 676),
    ("conv8 delta (tn)", 1, 0, 1152, 676, 256),
]
QUICK = [SHAPES[0], SHAPES[4], SHAPES[8], SHAPES[9]]
#: The 3x3 (stride 1, pad 1) convolution behind each forward shape: name -> (channels, height, width).
CONV_INPUTS = {"conv0": (3, 416, 416), "conv2": (16, 208, 208), "conv4": (32, 104, 104), "conv6": (64, 52, 52),
               "conv8": (128, 26, 26), "conv10": (256, 13, 13), "conv12": (512, 13, 13), "l21": (384, 26, 26)}


def _lscpu():
    try:
        return subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return ""


def _cpuinfo():
    try:
        with open("/proc/cpuinfo") as f:
            return f.read()
    except OSError:
        return ""


def _field(text, key):
    m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.M)
    return m.group(1).strip() if m else None


@njit(error_model="numpy")
def _add_chain(n, x, y):
    # n dependent float32 additions: one per FADD latency
    for _ in range(n):
        x = x + y
    return x


def _measured_clock_hz(latency_cycles):
    """Clock estimated from a chain of dependent float32 adds (each waits ``latency_cycles``)."""
    n = 20_000_000
    _add_chain(10, np.float32(1), np.float32(1e-30))
    # CPU time, not wall time: on a shared machine the chain is paused while others run
    best = min(_timed(lambda: _add_chain(n, np.float32(1), np.float32(1e-30)))[1] for _ in range(5))
    return n * latency_cycles / best


def _timed(fn):
    """Wall seconds and process CPU seconds (all threads) of one call of ``fn``."""
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def peak():
    """The CPU's float32 peak for separate multiplies and adds, per core, with how it was found."""
    lscpu, cpuinfo = _lscpu(), _cpuinfo()
    model = _field(lscpu, "Model name") or _field(cpuinfo, "model name") or platform.processor() or "unknown"
    vendor = _field(lscpu, "Vendor ID") or _field(cpuinfo, "vendor_id") or ""
    family = int(_field(lscpu, "CPU family") or _field(cpuinfo, "cpu family") or 0)
    cpu_model = _field(lscpu, "Model") or _field(cpuinfo, "model") or "0"
    cpu_model = int(cpu_model) if cpu_model.isdigit() else 0
    flags = set((_field(lscpu, "Flags") or _field(cpuinfo, "flags") or "").split())
    # flop per cycle without FMA: vector lanes x (multiply pipes + add pipes)
    if "AMD" in vendor and (family >= 25 or (family == 23 and cpu_model >= 0x30)):
        lanes, pipes, why = 8, 4, "AMD Zen2/3/4: 2 FMUL + 2 FADD pipes, 8 float32 lanes (256-bit)"
    elif "AMD" in vendor and family == 23:
        lanes, pipes, why = 4, 4, "AMD Zen1: 2 FMUL + 2 FADD pipes, 128-bit datapath (4 lanes)"
    elif "avx512f" in flags:
        lanes, pipes, why = 16, 2, "AVX-512: 2 FMA ports doing a multiply or an add each, 16 lanes"
    elif "avx2" in flags or "avx" in flags:
        lanes, pipes, why = 8, 2, "AVX2: 2 FMA ports doing a multiply or an add each, 8 lanes"
    else:
        lanes, pipes, why = 4, 2, "SSE: 2 ports, 4 lanes"
    flop_per_cycle = lanes * pipes
    mhz = _field(cpuinfo, "cpu MHz")
    max_mhz = _field(lscpu, "CPU max MHz")
    nominal_hz = float(max_mhz or mhz or 0) * 1e6
    fadd_latency = 3 if "AMD" in vendor and family >= 23 else 4
    measured_hz = _measured_clock_hz(fadd_latency)
    clock = max(nominal_hz, measured_hz)
    return {
        "model": model, "vendor": vendor, "family": family, "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags, "fma": "fma" in flags, "flop_per_cycle": flop_per_cycle,
        "pipes": why, "nominal_mhz": nominal_hz / 1e6,
        "nominal_source": "lscpu CPU max MHz" if max_mhz else "/proc/cpuinfo cpu MHz",
        "measured_mhz": measured_hz / 1e6, "fadd_latency": fadd_latency, "clock_mhz": clock / 1e6,
        "gflops_per_core": flop_per_cycle * clock / 1e9, "cores": os.cpu_count(),
    }


def _operands(rng, TA, TB, M, N, K):
    A = rng.standard_normal(M * K).astype(np.float32)
    B = rng.standard_normal(K * N).astype(np.float32)
    C = rng.standard_normal(M * N).astype(np.float32)
    return A, (M if TA else K), B, (K if TB else N), C, N


def _time_gemm(module, TA, TB, M, N, K, ops, repeat):
    A, lda, B, ldb, C, ldc = ops
    module.gemm(TA, TB, M, N, K, 1.0, A, lda, B, ldb, 1.0, C, ldc)  # compile / warm caches
    times = np.array([_timed(lambda: module.gemm(TA, TB, M, N, K, 1.0, A, lda, B, ldb, 1.0, C, ldc))
                      for _ in range(repeat)])
    return float(np.median(times[:, 0])), float(np.min(times[:, 0])), float(np.median(times[:, 1]))


def bench(shapes=SHAPES, threads=None, repeat=7, reference_repeat=3, with_reference=True, info=None):
    """Time every shape: the reference on one thread, the fast kernels on each count in
    ``threads`` (default: 1 and all cores).  Returns one dict per measurement."""
    info = info or peak()
    all_cores = numba.config.NUMBA_NUM_THREADS
    threads = threads or sorted({1, all_cores})
    rng = np.random.default_rng(0)
    rows = []
    saved = numba.get_num_threads()
    try:
        for name, TA, TB, M, N, K in shapes:
            ops = _operands(rng, TA, TB, M, N, K)
            flop = 2.0 * M * N * K
            runs = [("reference", 1, reference, reference_repeat)] if with_reference else []
            runs += [("fast", t, fast, repeat) for t in threads]
            for impl, t, module, rep in runs:
                numba.set_num_threads(t)
                med, best, cpu = _time_gemm(module, TA, TB, M, N, K, ops, rep)
                gflops = flop / med / 1e9
                rows.append({
                    "name": name, "shape": f"gemm({TA},{TB}) M={M} N={N} K={K}", "impl": impl,
                    "threads": t, "median_ms": med * 1e3, "min_ms": best * 1e3, "repeats": rep,
                    "gflops": gflops,
                    "pct_peak": 100.0 * gflops / (info["gflops_per_core"] * t),
                    # CPU time of all threads: what the work cost where other processes share the cores
                    "cpu_ms": cpu * 1e3,
                    "pct_peak_cpu": 100.0 * flop / cpu / 1e9 / info["gflops_per_core"],
                })
    finally:
        numba.set_num_threads(saved)
    return rows


def bench_fused(shapes=SHAPES, threads=None, repeat=7, info=None):
    """Per forward shape with a known convolution (``CONV_INPUTS``): the fast im2col_cpu + gemm
    against gemm_im2col, timed alternately in one process (min and median of ``repeat``)."""
    from darkpy.kernels import im2col as fast_im2col
    info = info or peak()
    threads = threads or sorted({1, numba.config.NUMBA_NUM_THREADS})
    rng = np.random.default_rng(1)
    rows = []
    saved = numba.get_num_threads()
    try:
        for name, TA, TB, M, N, K in shapes:
            conv = CONV_INPUTS.get(name.split()[0])
            if TA or TB or conv is None:
                continue
            channels, height, width = conv
            assert K == 9 * channels and N == height * width
            im = rng.standard_normal(channels * height * width).astype(np.float32)
            A = rng.standard_normal(M * K).astype(np.float32)
            B = np.empty(K * N, np.float32)
            C = np.zeros(M * N, np.float32)

            def unfused():
                fast_im2col.im2col_cpu(im, channels, height, width, 3, 1, 1, B)
                fast.gemm(0, 0, M, N, K, 1.0, A, K, B, N, 1.0, C, N)

            def fused():
                fast.gemm_im2col(im, channels, height, width, 3, 1, 1, M, N, K, 1.0, A, K, 1.0, C, N, c_zero=True)

            flop = 2.0 * M * N * K
            for t in threads:
                numba.set_num_threads(t)
                unfused(), fused()  # compile / warm caches
                times = {"im2col+gemm": [], "gemm_im2col": []}
                for _ in range(repeat):
                    times["im2col+gemm"].append(_timed(unfused))
                    times["gemm_im2col"].append(_timed(fused))
                for impl, ts in times.items():
                    ts = np.array(ts)
                    med, best, cpu = float(np.median(ts[:, 0])), float(np.min(ts[:, 0])), float(np.median(ts[:, 1]))
                    rows.append({
                        "name": name, "shape": f"conv {channels}x{height}x{width} -> gemm M={M} N={N} K={K}",
                        "impl": impl, "threads": t, "median_ms": med * 1e3, "min_ms": best * 1e3,
                        "repeats": repeat, "gflops": flop / med / 1e9,
                        "pct_peak": 100.0 * flop / med / 1e9 / (info["gflops_per_core"] * t),
                        "pct_peak_min": 100.0 * flop / best / 1e9 / (info["gflops_per_core"] * t),
                        "cpu_ms": cpu * 1e3, "pct_peak_cpu": 100.0 * flop / cpu / 1e9 / info["gflops_per_core"],
                    })
    finally:
        numba.set_num_threads(saved)
    return rows


#: What a ``darkpy bench`` command may call: the same as ``bench``.
run = bench


def format_peak(info):
    return "\n".join([
        f"CPU: {info['model']} ({info['vendor']} family {info['family']}), {info['cores']} logical cores",
        f"  flags: avx2={info['avx2']} avx512f={info['avx512f']} fma={info['fma']} (FMA unused: bit-exactness)",
        f"  assumed pipes: {info['pipes']} -> {info['flop_per_cycle']} flop/cycle without FMA",
        f"  clock: nominal {info['nominal_mhz']:.0f} MHz ({info['nominal_source']}), measured "
        f"{info['measured_mhz']:.0f} MHz (dependent float32 adds, {info['fadd_latency']}-cycle latency "
        f"assumed); using the larger, {info['clock_mhz']:.0f} MHz",
        f"  peak: {info['gflops_per_core']:.1f} GFLOP/s per core (pct_peak of a row uses threads x this)",
    ])


def format_fused_rows(rows):
    head = f"{'shape':<9} {'convolution -> gemm':<44} {'impl':<12} {'thr':>3} {'median ms':>10} {'min ms':>9} " \
           f"{'% peak':>7} {'% peak(min)':>12}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name'].split()[0]:<9} {r['shape']:<44} {r['impl']:<12} {r['threads']:>3} "
                     f"{r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['pct_peak']:>6.0f}% {r['pct_peak_min']:>11.0f}%")
    return "\n".join(lines)


def format_rows(rows):
    head = f"{'shape':<27} {'gemm':<28} {'impl':<9} {'thr':>3} {'median ms':>10} {'min ms':>9} " \
           f"{'GFLOP/s':>8} {'% peak':>7} {'cpu ms':>8} {'% peak/cpu-s':>13}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['name']:<27} {r['shape']:<28} {r['impl']:<9} {r['threads']:>3} "
                     f"{r['median_ms']:>10.2f} {r['min_ms']:>9.2f} {r['gflops']:>8.1f} {r['pct_peak']:>6.0f}% "
                     f"{r['cpu_ms']:>8.2f} {r['pct_peak_cpu']:>12.0f}%")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four shapes instead of ten")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs of the fast kernels per row")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference")
    parser.add_argument("--no-fused", action="store_true", help="skip im2col+gemm against gemm_im2col")
    args = parser.parse_args(argv)
    model = _field(_lscpu(), "Model name") or _field(_cpuinfo(), "model name") or "unknown"
    print(f"lscpu model name: {model}")
    info = peak()
    print(format_peak(info))
    try:
        load = os.getloadavg()[0]
        if load > 0.5 * (os.cpu_count() or 1):
            print(f"  note: load average {load:.1f} on {os.cpu_count()} cores: other processes share the "
                  f"CPU, wall times are pessimistic; 'cpu ms' (median process CPU time, all threads) and "
                  f"'% peak/cpu-s' (GFLOP per CPU-second against one core's peak) count only the time "
                  f"this process ran")
    except OSError:
        pass
    rows = bench(QUICK if args.quick else SHAPES, repeat=args.repeat, with_reference=not args.no_reference,
                 info=info)
    print(format_rows(rows))
    if not args.no_fused:
        fused = bench_fused(QUICK if args.quick else SHAPES, repeat=args.repeat, info=info)
        print()
        print("what the convolutional layer runs per image (fast kernels):")
        print(format_fused_rows(fused))
        rows = rows + fused
    return rows


if __name__ == "__main__":
    main()
