"""``darkpy bench``: medians of darkpy's kernels and networks, with the baselines of issue 9.

One run measures, on this machine and in this process (so that ratios compare like
with like):

* batchnorm training forward+backward and inference forward at the issue's shapes;
* yolov3-tiny's first, middle and last 3x3 convolutional layers (batch_normalize +
  leaky) forward+backward at 416x416, and their gemm alone (GFLOP/s, % of the
  non-FMA peak);
* yolov3-tiny forward at 416x416 (one thread and all cores), one training step at
  batch 4, and the first-call (compile) time of ``darkpy forward`` with a cold and
  a warm Numba cache (these live in ``benchmarks/bench_network.py`` beside the
  package).

Baselines in the same run: the loop-for-loop reference kernels, NumPy formulations,
darknet itself (``DARKNET_DIR``: one build or several separated by ``:``; a small C
timing program, ``benchmarks/darknet_time.c``, is compiled against each build's
``libdarknet.a`` into a temporary directory), OpenCV dnn when ``cv2`` imports,
PyTorch CPU when ``torch`` imports, and two floors: the bytes a kernel must move at
the copy bandwidth measured here, and its FLOPs at this CPU's non-FMA peak.

Every row is a dict with ``name``, ``shape``, ``impl``, ``threads``, ``median_ms``
and, where measured, ``ratio_to_darknet`` (against the fastest darknet build of the
run; ``ratio_to_darknet_<build>`` for each build), ``ratio_to_opencv`` (OpenCV at
the same thread count), ``ratio_to_reference``, ``gflops``, ``pct_peak``,
``floor_ms`` and ``time_over_floor``.

Run it as ``darkpy bench`` or ``python -m darkpy.bench``; ``--json FILE`` writes
``{"machine": ..., "rows": [...], "comparisons": [...], "notes": [...]}``.
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from darkpy import kernels

#: The sections ``--only`` selects from, in the order they run.
SECTIONS = ("batchnorm", "conv", "gemm", "network", "train", "compile", "threading")
#: Keys every row has.
REQUIRED_KEYS = ("name", "shape", "impl", "threads", "median_ms")
#: Batchnorm shapes (batch, c, h, w) of the issue.
BATCHNORM_SHAPES = ((8, 64, 52, 52), (16, 256, 13, 13), (1, 16, 208, 208), (64, 1024, 1, 1))
#: yolov3-tiny's first, middle and last 3x3 convolutional layers at 416x416:
#: (layer index, c, h, w, filters).  Its 3x3 layers are 0, 2, 4, 6, 8, 10, 12, 14 and 19;
#: 8 is the fifth of the nine.
YOLOV3_TINY_CONV = ((0, 3, 416, 416, 16), (8, 128, 26, 26, 256), (19, 384, 26, 26, 256))

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"


# ----------------------------------------------------------------------------- the machine

def cpu_info():
    """Model, vendor, flags, clock (MHz) and core count of this machine (lscpu, /proc/cpuinfo)."""
    info = {"model": "unknown", "vendor": "unknown", "flags": set(), "mhz": None, "mhz_source": None,
            "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()}
    lscpu = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10,
                             env={**os.environ, "LC_ALL": "C"}).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            lscpu[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    cpuinfo = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            cpuinfo.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    info["model"] = lscpu.get("Model name") or cpuinfo.get("model name") or info["model"]
    info["vendor"] = lscpu.get("Vendor ID") or cpuinfo.get("vendor_id") or info["vendor"]
    info["flags"] = set((lscpu.get("Flags") or cpuinfo.get("flags") or "").split())
    for key, source in (("CPU max MHz", "lscpu CPU max MHz"), ("CPU MHz", "lscpu CPU MHz")):
        if lscpu.get(key):
            info["mhz"], info["mhz_source"] = float(lscpu[key]), source
            break
    else:
        if cpuinfo.get("cpu MHz"):
            info["mhz"], info["mhz_source"] = float(cpuinfo["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    return info


def non_fma_peak(info):
    """This CPU's float32 peak without FMA, per core, in GFLOP/s, and what it assumes.

    Each output element needs one multiply and one add, rounded separately.

    * AMD (Zen 2/3/4): two 256-bit FMUL and two 256-bit FADD pipes per core; a
      512-bit AVX-512 operation (Zen 4) occupies a pipe for two halves, so the lanes
      per cycle stay 8 per pipe.  Non-FMA peak = 2*8 multiplies + 2*8 adds = 32
      FLOP/cycle, the same as the FMA peak (2 FMA pipes x 8 lanes x 2).
    * Intel: two vector FP ports, each doing one multiply, add or FMA per cycle on
      16 lanes (avx512f; assumes the two-FMA-unit server parts) or 8 lanes (avx2).
      Non-FMA peak = 2*lanes FLOP/cycle (one multiply + one add per lane per
      cycle), half the FMA peak of 4*lanes.
    * The clock is lscpu's max MHz, else /proc/cpuinfo's current MHz (a VM reports
      its nominal clock), or ``info["measured_mhz"]`` when larger (turbo: a chain of
      dependent float32 adds timed by benchmarks/bench_gemm.py's ``peak``).
    """
    flags, vendor = info["flags"], info["vendor"]
    lanes = 16 if "avx512f" in flags else 8 if ("avx2" in flags or "avx" in flags) else 4
    mhz, source = info["mhz"] or 0.0, info["mhz_source"]
    if (info.get("measured_mhz") or 0) > mhz:
        mhz, source = info["measured_mhz"], f"measured by dependent adds; {source} says {info['mhz']}"
    ghz = mhz / 1e3
    if "AMD" in vendor.upper():
        pipe_lanes = min(lanes, 8)
        per_cycle = 2 * pipe_lanes + 2 * pipe_lanes
        fma_per_cycle = 2 * pipe_lanes * 2
        assumption = (f"AMD: 2 FMUL + 2 FADD pipes x {pipe_lanes} float32 lanes "
                      f"= {per_cycle} FLOP/cycle without FMA ({fma_per_cycle} with)")
    else:
        per_cycle = 2 * lanes
        fma_per_cycle = 4 * lanes
        assumption = (f"Intel/other: 2 vector FP ports x {lanes} lanes, one mul or add each per cycle "
                      f"= {per_cycle} FLOP/cycle without FMA ({fma_per_cycle} with FMA)")
    return {"lanes": lanes, "flop_per_cycle": per_cycle, "ghz": ghz,
            "gflops_per_core": per_cycle * ghz, "fma_gflops_per_core": fma_per_cycle * ghz,
            "assumption": assumption + f", at {ghz:.3f} GHz ({source})"}


def measured_clock_mhz(ctx):
    """The clock as benchmarks/bench_gemm.py's ``peak`` measures it (dependent float32 adds),
    or None when that file is absent."""
    try:
        module = load_benchmark("bench_gemm")
        return float(module.peak()["measured_mhz"]) if module and hasattr(module, "peak") else None
    except Exception as exc:  # their file may be mid-edit
        ctx.note(f"clock not measured (benchmarks/bench_gemm.py: {type(exc).__name__}: {exc})")
        return None


def copy_bandwidth(nbytes=256 << 20, repeats=5, budget_s=None):
    """Copy bandwidth in GB/s (one core), counting the bytes read plus the bytes written.

    ``numpy.copyto`` between two ``nbytes`` arrays, the best of ``repeats`` (or of as
    many as fit in ``budget_s``): on a shared machine the best run is the one least
    disturbed.  Write-allocate traffic is not counted, the same convention as the
    floors (bytes a kernel reads + bytes it writes).
    """
    n = max(1, nbytes // 4)
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeats or (budget_s and spent < budget_s and runs < 10000):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        dt = time.perf_counter() - t0
        best, spent, runs = min(best, dt), spent + dt, runs + 1
    return 2 * 4 * n / best / 1e9


# ----------------------------------------------------------------------------- the run

class Context:
    """What every section needs: options, machine, floors, baselines found, rows collected."""

    def __init__(self, quick=False, threads=None, only=None, repeats=None, weights=None, cfg=None,
                 darknet_dirs=None, verbose=True, bandwidth_bytes=None):
        import numba
        self.quick = quick
        self.max_threads = numba.config.NUMBA_NUM_THREADS
        self.threads = sorted(set(threads or ([1] if quick else sorted({1, self.max_threads}))))
        for t in self.threads:
            if not 1 <= t <= self.max_threads:
                from darkpy.errors import DarkpyError
                raise DarkpyError(f"--threads {t}: Numba allows 1..{self.max_threads} here "
                                  f"(NUMBA_NUM_THREADS={self.max_threads})")
        self.only = set(only or SECTIONS)
        self.repeats = repeats
        self.verbose = verbose
        self.rows = []
        self.comparisons = []
        self.notes = []
        self._bw_cache = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="darkpy-bench-")
        self.tmp = Path(self._tmp.name)
        self.cpu = cpu_info()
        self.cpu["measured_mhz"] = measured_clock_mhz(self)
        self.peak = non_fma_peak(self.cpu)
        self.bandwidth_gbs = copy_bandwidth(bandwidth_bytes or ((64 << 20) if quick else (256 << 20)))
        self.weights, self.weights_note = find_weights(weights)
        self.cfg = find_cfg(cfg)
        self.darknet = [b for b in (darknet_build(d, self) for d in (darknet_dirs or [])) if b]

    def close(self):
        self._tmp.cleanup()

    # -- output
    def log(self, msg):
        if self.verbose:
            print(msg, flush=True)

    def note(self, msg):
        self.notes.append(msg)
        self.log(f"note: {msg}")

    # -- timing
    def samples(self, fn, setup=None, min_repeats=None, max_repeats=None, budget_s=None, warmup=1):
        """Wall times (ms) of ``fn()``; ``setup()`` runs untimed before each call.

        Repeats until ``min_repeats`` samples and ``budget_s`` seconds are reached, at
        most ``max_repeats`` (``--repeats`` fixes the count).
        """
        if self.repeats:
            lo = hi = self.repeats
        else:
            lo = min_repeats or (2 if self.quick else 5)
            hi = max(lo, max_repeats or (3 if self.quick else 25))
        budget = budget_s if budget_s is not None else (0.2 if self.quick else 1.5)
        for _ in range(warmup):
            if setup:
                setup()
            fn()
        times, spent = [], 0.0
        while len(times) < hi and (len(times) < lo or spent < budget):
            if setup:
                setup()
            t0 = time.perf_counter()
            fn()
            dt = time.perf_counter() - t0
            times.append(dt * 1e3)
            spent += dt
        return times

    def add(self, name, shape, impl, threads, times_ms, **extra):
        """Record a row from its samples (or a single value); returns the row."""
        times_ms = [float(t) for t in (times_ms if isinstance(times_ms, (list, tuple)) else [times_ms])]
        row = {"name": name, "shape": shape_str(shape), "impl": impl, "threads": int(threads),
               "median_ms": statistics.median(times_ms), "min_ms": min(times_ms),
               "repeats": len(times_ms)}
        row.update({k: v for k, v in extra.items() if v is not None})
        flops = row.pop("flops", None)
        if flops:
            row["gflops"] = flops / row["median_ms"] / 1e6
            peak = self.peak["gflops_per_core"] * row["threads"]
            if peak > 0:
                row["pct_peak"] = 100.0 * row["gflops"] / peak
        self.rows.append(row)
        self.log(f"  {row['name']:<34} {row['shape']:<28} {row['impl']:<22} {row['threads']:>2} thr "
                 f"{row['median_ms']:>11.3f} ms")
        return row

    def memory_floor_ms(self, nbytes):
        """``nbytes`` moved at the copy bandwidth of buffers much larger than the caches."""
        return nbytes / (self.bandwidth_gbs * 1e9) * 1e3

    def cached_floor_ms(self, nbytes, working_set):
        """``nbytes`` moved at the copy bandwidth measured with the kernel's working set.

        A benchmark that repeats a kernel on the same buffers finds them in the last-level
        cache when they fit (yolov3-tiny's batchnorm shapes are 1-28 MB here): the copy
        of two ``working_set/2`` arrays, repeated the same way, is its realistic floor.
        """
        key = int(working_set)
        if key not in self._bw_cache:
            self._bw_cache[key] = copy_bandwidth(key // 2, repeats=5, budget_s=0.05 if self.quick else 0.3)
        return nbytes / (self._bw_cache[key] * 1e9) * 1e3

    def flops_floor_ms(self, flops, threads):
        peak = self.peak["gflops_per_core"] * threads
        return flops / (peak * 1e9) * 1e3 if peak > 0 else None


def shape_str(shape):
    if isinstance(shape, str):
        return shape
    return "x".join(str(int(s)) for s in shape)


def set_threads(n):
    import numba
    numba.set_num_threads(n)


# ----------------------------------------------------------------------------- files and baselines

def find_weights(path=None):
    """yolov3-tiny's COCO weights: ``--weights``, else ``$DARKPY_YOLOV3_TINY_WEIGHTS``; else None."""
    path = path or os.environ.get("DARKPY_YOLOV3_TINY_WEIGHTS")
    if path and Path(path).is_file():
        return Path(path), f"weights: {path}"
    why = f"{path} is not a file" if path else "no --weights and no $DARKPY_YOLOV3_TINY_WEIGHTS"
    return None, f"weights: deterministic random weights (darkpy seed 0), {why}"


def find_cfg(path=None):
    """yolov3-tiny.cfg: ``--cfg``, else ``$DARKPY_SHARED/cfg``, else ``../shared/cfg`` beside the checkout."""
    candidates = [Path(path)] if path else []
    if os.environ.get("DARKPY_SHARED"):
        candidates.append(Path(os.environ["DARKPY_SHARED"]) / "cfg" / "yolov3-tiny.cfg")
    candidates.append(ROOT.parent / "shared" / "cfg" / "yolov3-tiny.cfg")
    for c in candidates:
        if c.is_file():
            return c
    return None


def darknet_dirs_from_env():
    return [d for d in os.environ.get("DARKNET_DIR", "").split(os.pathsep) if d]


def darknet_build(directory, ctx):
    """Compile benchmarks/darknet_time.c against one darknet build; a dict, or None with a note."""
    d = Path(directory).expanduser()
    src = BENCHMARKS / "darknet_time.c"
    header, lib = d / "include" / "darknet.h", d / "libdarknet.a"
    if not src.is_file():
        ctx.note(f"darknet: {src} is absent (run from a checkout); darknet not measured")
        return None
    if not header.is_file() or not lib.is_file():
        ctx.note(f"darknet: {d} has no include/darknet.h + libdarknet.a; not measured")
        return None
    label = d.resolve().name
    impl = label if label.startswith("darknet") else f"darknet-{label}"
    exe = ctx.tmp / f"darknet_time-{len(list(ctx.tmp.glob('darknet_time-*')))}"
    cc = os.environ.get("CC", "cc")
    cmd = [cc, "-O2", f"-I{d / 'include'}", str(src), str(lib), "-lm", "-pthread", "-o", str(exe)]
    if os.environ.get("LDLIBS"):
        cmd[-2:-2] = os.environ["LDLIBS"].split()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        ctx.note(f"darknet: compiling darknet_time.c against {d} failed: {proc.stderr.strip()[-300:]}")
        return None
    return {"impl": impl, "dir": str(d), "exe": str(exe)}


def run_darknet(build, args, timeout=1800):
    """Run one darknet_time command; ``{what: [ms, ...]}`` from its TIME lines."""
    proc = subprocess.run([build["exe"], *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise RuntimeError(f"{build['impl']}: darknet_time {' '.join(map(str, args))} exited "
                           f"{proc.returncode}: {proc.stderr.strip()[-300:]}")
    out = {}
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "TIME":
            out[parts[1]] = [float(t) for t in parts[2:]]
    return out


def darknet_repeats(ctx, full, quick=1):
    return ctx.repeats or (quick if ctx.quick else full)


def blas_threads(n):
    """Set OpenBLAS's thread count for NumPy's matmul; True when it could be set."""
    import ctypes
    import glob
    libs = glob.glob(str(Path(np.__file__).parent.parent / "numpy.libs" / "*openblas*"))
    for lib in libs:
        try:
            so = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                    "openblas_set_num_threads64_", "openblas_set_num_threads"):
            if hasattr(so, sym):
                getattr(so, sym)(ctypes.c_int(n))
                return True
    return False


# ----------------------------------------------------------------------------- other engineers' micro-benchmarks

def load_benchmark(name):
    """benchmarks/<name>.py as a module, or None when it is absent (an installed package)."""
    path = BENCHMARKS / f"{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"darkpy_benchmarks_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def external(ctx, module_name, function):
    """``function`` of benchmarks/<module_name>.py, or None (absent, or failing to import: noted)."""
    try:
        module = load_benchmark(module_name)
    except Exception as exc:  # another engineer's file may be mid-edit: fall back to ours
        ctx.note(f"benchmarks/{module_name}.py did not import ({type(exc).__name__}: {exc}); "
                 "using darkpy.bench's own measurement")
        return None
    fn = getattr(module, function, None) if module else None
    return fn if callable(fn) else None


def checked_rows(ctx, module_name, rows):
    """``rows`` when every one has the required keys; else None with a note."""
    rows = list(rows)
    if rows and all(all(k in r for k in REQUIRED_KEYS) for r in rows):
        return rows
    ctx.note(f"benchmarks/{module_name}.py gave rows without {REQUIRED_KEYS}; "
             "using darkpy.bench's own measurement")
    return None


# ----------------------------------------------------------------------------- batchnorm

def _bn_buffers(batch, c, h, w, seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    n = batch * c * h * w
    f = lambda lo, hi, k: rng.uniform(lo, hi, k).astype(np.float32)  # noqa: E731
    z = lambda k: np.zeros(k, np.float32)  # noqa: E731
    return {"input": f(-2, 2, n), "output": z(n), "x": z(n), "x_norm": z(n), "mean": z(c),
            "variance": z(c), "rolling_mean": f(-.1, .1, c), "rolling_variance": f(.5, 1.5, c),
            "scales": f(.5, 1.5, c), "biases": f(-.1, .1, c), "bias_updates": z(c),
            "scale_updates": z(c), "mean_delta": z(c), "variance_delta": z(c),
            "delta_in": f(-1, 1, n), "delta": z(n)}


def _bn_kernel_times(ctx, blas, shape, threads):
    """(train forward, backward, infer forward) samples of one blas family at ``shape``."""
    batch, c, h, w = shape
    s = h * w
    b = _bn_buffers(*shape)
    set_threads(threads)

    def fwd():
        blas.batchnorm_forward_train(b["input"], b["output"], b["x"], b["x_norm"], b["mean"], b["variance"],
                                     b["rolling_mean"], b["rolling_variance"], b["scales"], b["biases"],
                                     batch, c, s)

    def restore():
        b["delta"][:] = b["delta_in"]

    def bwd():
        blas.batchnorm_backward(b["delta"], b["x"], b["x_norm"], b["mean"], b["variance"], b["scales"],
                                b["bias_updates"], b["scale_updates"], b["mean_delta"], b["variance_delta"],
                                batch, c, s)

    def infer():
        blas.batchnorm_forward_infer(b["input"], b["output"], b["x"], b["rolling_mean"],
                                     b["rolling_variance"], b["scales"], b["biases"], batch, c, s)

    tf = ctx.samples(fwd)
    tb = ctx.samples(bwd, setup=restore)
    ti = ctx.samples(infer)
    return tf, tb, ti


def numpy_batchnorm(shape):
    """NumPy float32 formulations of batchnorm's training forward, backward and inference forward.

    Same formulas as darknet (unbiased variance, ``sqrt(var) + 1e-6`` forward,
    ``var + 1e-5`` backward) with NumPy's pairwise reductions: not bit-exact, the
    speed a NumPy user would get.  Returns ``fwd, bwd, infer, state``; ``state``
    holds the buffers and the results (``x_norm``, ``out``, ``dx``, ...).
    """
    batch, c, h, w = shape
    b = _bn_buffers(*shape)
    n = np.float32(batch * h * w)
    X = b["input"].reshape(batch, c, h * w)
    sc, bi = b["scales"][None, :, None], b["biases"][None, :, None]
    state = {"buffers": b}

    def fwd():
        mean = X.mean(axis=(0, 2), dtype=np.float32)
        xc = X - mean[None, :, None]
        var = np.einsum("bcs,bcs->c", xc, xc) / (n - np.float32(1))
        b["rolling_mean"] *= np.float32(.99)
        b["rolling_mean"] += np.float32(.01) * mean
        b["rolling_variance"] *= np.float32(.99)
        b["rolling_variance"] += np.float32(.01) * var
        x_norm = xc / (np.sqrt(var) + np.float32(1e-6))[None, :, None]
        state.update(mean=mean, var=var, x_norm=x_norm, out=x_norm * sc + bi)

    def bwd():
        d = b["delta_in"].reshape(batch, c, h * w)
        x_norm, mean, var = state["x_norm"], state["mean"], state["var"]
        b["bias_updates"] += d.sum(axis=(0, 2), dtype=np.float32)
        b["scale_updates"] += np.einsum("bcs,bcs->c", d, x_norm)
        d = d * sc
        sd = np.sqrt(var + np.float32(1e-5))
        mean_delta = d.sum(axis=(0, 2), dtype=np.float32) * (np.float32(-1) / sd)
        xc = X - mean[None, :, None]
        variance_delta = np.einsum("bcs,bcs->c", d, xc) * (np.float32(-.5) * (var + np.float32(1e-5)) ** np.float32(-1.5))
        state["dx"] = (d / sd[None, :, None] + (np.float32(2) * variance_delta / n)[None, :, None] * xc
                       + (mean_delta / n)[None, :, None])

    def infer():
        den = (np.sqrt(b["rolling_variance"]) + np.float32(1e-6))[None, :, None]
        state["out"] = (X - b["rolling_mean"][None, :, None]) / den * sc + bi

    return fwd, bwd, infer, state


def torch_batchnorm(shape):
    """PyTorch CPU batchnorm (training forward+backward, inference forward), or None when absent."""
    try:
        import torch
    except ImportError:
        return None
    batch, c, h, w = shape
    b = _bn_buffers(*shape)
    x = torch.from_numpy(b["input"].reshape(batch, c, h, w)).requires_grad_(True)
    bn = torch.nn.BatchNorm2d(c, eps=1e-5, momentum=.01)
    g = torch.from_numpy(b["delta_in"].reshape(batch, c, h, w))
    state = {}

    def fwd():
        bn.train()
        state["y"] = bn(x)

    def bwd():
        x.grad = None
        state["y"].backward(g, retain_graph=True)

    def infer():
        bn.eval()
        with torch.no_grad():
            bn(x)

    return fwd, bwd, infer


def _their_batchnorm_rows(ctx, shapes):
    """benchmarks/bench_batchnorm.py's ``bench_rows`` (fast on each thread count, reference on
    one), renamed to this table's names; None when it is absent or fails."""
    fn = external(ctx, "bench_batchnorm", "bench_rows")
    if fn is None:
        return None
    try:
        rows = fn(shapes=[tuple(sh) for sh in shapes], repeat=ctx.repeats or (3 if ctx.quick else 15),
                  reference_repeat=ctx.repeats or (1 if ctx.quick else 3), threads=ctx.threads,
                  bandwidth=ctx.bandwidth_gbs * 1e9)
    except Exception as exc:
        ctx.note(f"benchmarks/bench_batchnorm.py bench_rows() failed ({type(exc).__name__}: {exc}); "
                 "using darkpy.bench's own measurement")
        return None
    rows = checked_rows(ctx, "bench_batchnorm", rows)
    if rows is None:
        return None
    out = []
    for r in rows:
        r = dict(r, shape=shape_str(r["shape"]), source="benchmarks/bench_batchnorm.py")
        if not r["name"].startswith("batchnorm"):
            r["name"] = f"batchnorm {r['name']}"
        r.setdefault("floor", "memory")
        out.append(r)
    return out


def batchnorm_section(ctx, shapes=BATCHNORM_SHAPES):
    """Batchnorm training forward+backward and inference forward at ``shapes`` (batch, c, h, w).

    darkpy's fast and reference kernels come from benchmarks/bench_batchnorm.py when it is
    there (else from ``_bn_kernel_times``); NumPy, PyTorch and darknet are added here.
    Memory floors: the training step reads the input and writes output, x, x_norm, then
    reads delta, x, x_norm and writes delta (8 arrays); inference reads the input and
    writes output and x (3 arrays).
    """
    ctx.log("== batchnorm: train forward+backward, inference forward")
    theirs = _their_batchnorm_rows(ctx, shapes)
    for shape in shapes:
        batch, c, h, w = shape
        n = batch * c * h * w
        floor_train = ctx.memory_floor_ms(8 * 4 * n)
        floor_infer = ctx.memory_floor_ms(3 * 4 * n)
        # working sets: input, output, x, x_norm, delta (train); input, output, x (inference)
        cached = {"train": ctx.cached_floor_ms(8 * 4 * n, 5 * 4 * n), "infer": ctx.cached_floor_ms(3 * 4 * n, 3 * 4 * n)}

        def add_pair(impl, threads, tf, tb, ti):
            total = [f + b for f, b in zip(tf, tb)]
            ctx.add("batchnorm train fwd+bwd", shape, impl, threads, total, floor_ms=floor_train,
                    floor="memory", cached_floor_ms=cached["train"],
                    fwd_ms=statistics.median(tf), bwd_ms=statistics.median(tb))
            ctx.add("batchnorm infer fwd", shape, impl, threads, ti, floor_ms=floor_infer, floor="memory",
                    cached_floor_ms=cached["infer"])

        if theirs is None:
            from darkpy.kernels import blas as fast_blas
            from darkpy.kernels.reference import blas as reference_blas
            for t in ctx.threads:
                add_pair("fast", t, *_bn_kernel_times(ctx, fast_blas, shape, t))
            add_pair("reference", 1, *_bn_kernel_times(ctx, reference_blas, shape, 1))
        else:
            for r in theirs:
                if r["shape"] == shape_str(shape):
                    r["floor_ms"] = floor_train if "train" in r["name"] else floor_infer
                    r["cached_floor_ms"] = cached["train" if "train" in r["name"] else "infer"]
                    ctx.rows.append(r)
                    ctx.log(f"  {r['name']:<34} {r['shape']:<28} {r['impl']:<22} {r['threads']:>2} thr "
                            f"{r['median_ms']:>11.3f} ms  (bench_batchnorm.py)")
        set_threads(ctx.max_threads)
        fwd, bwd, infer, _ = numpy_batchnorm(shape)
        add_pair("numpy", 1, ctx.samples(fwd), ctx.samples(bwd), ctx.samples(infer))
        tb = torch_batchnorm(shape)
        if tb is not None:
            import torch
            for t in ctx.threads:
                torch.set_num_threads(t)
                fwd, bwd, infer = tb
                add_pair("torch", t, ctx.samples(fwd), ctx.samples(bwd), ctx.samples(infer))
        for build in ctx.darknet:
            try:
                out = run_darknet(build, ["batchnorm", batch, c, h, w, darknet_repeats(ctx, 11, 3)])
            except (RuntimeError, subprocess.SubprocessError) as exc:
                ctx.note(str(exc))
                continue
            add_pair(build["impl"], 1, out["batchnorm_train_forward"], out["batchnorm_backward"],
                     out["batchnorm_infer_forward"])
    if torch_batchnorm(shapes[0]) is None:
        ctx.note("PyTorch is not installed: no torch batchnorm baseline")


# ----------------------------------------------------------------------------- convolution and gemm

def _conv_setup(index, c, h, w, filters, seed=0):
    """A yolov3-tiny 3x3 layer (batch 1, batch_normalize, leaky) and a network around it."""
    from darkpy.kernels.activations import LEAKY
    from darkpy.layers.convolutional import make_convolutional_layer
    from darkpy.network import Network
    l = make_convolutional_layer(1, h, w, c, filters, 1, 3, 1, 1, LEAKY, 1, 0, 0, 0)
    rng = np.random.Generator(np.random.PCG64(seed))
    l.biases[:] = rng.uniform(-.1, .1, filters).astype(np.float32)
    l.rolling_variance[:] = 1
    net = Network()
    net.input = rng.random(c * h * w, dtype=np.float32)
    net.workspace = np.zeros(l.workspace_size // 4, np.float32)
    # layer 0 of yolov3-tiny has no previous delta: darknet skips the input-gradient gemm
    net.delta = None if index == 0 else np.zeros(c * h * w, np.float32)
    net.train = 1
    delta_in = rng.uniform(-1, 1, l.outputs).astype(np.float32)
    return l, net, delta_in


def conv_flops(c, h, w, filters, with_input_delta):
    m, k, n = filters, 9 * c, h * w
    return 2 * m * n * k * (3 if with_input_delta else 2), 2 * m * n * k


def numpy_conv(l, net, delta_in):
    """NumPy formulation of a 3x3 stride-1 convolution + batchnorm + leaky, forward and backward.

    im2col with ``sliding_window_view`` and OpenBLAS matmul (FMA, its own summation
    order: not bit-exact).  Returns ``fwd, bwd, state`` (``state`` holds ``out`` and
    the intermediate arrays).
    """
    from numpy.lib.stride_tricks import sliding_window_view
    c, h, w, n, size, pad = l.c, l.h, l.w, l.n, l.size, l.pad
    W = l.weights.reshape(n, c * size * size)
    st = {}
    f32 = np.float32

    def fwd():
        xp = np.pad(net.input.reshape(c, h, w), ((0, 0), (pad, pad), (pad, pad)))
        cols = sliding_window_view(xp, (size, size), axis=(1, 2))  # c, oh, ow, k, k
        cols = np.ascontiguousarray(cols.transpose(0, 3, 4, 1, 2)).reshape(c * size * size, h * w)
        y = W @ cols
        mean = y.mean(axis=1, dtype=f32)
        yc = y - mean[:, None]
        var = np.einsum("cs,cs->c", yc, yc) / f32(h * w - 1)
        x_norm = yc / (np.sqrt(var) + f32(1e-6))[:, None]
        z = x_norm * l.scales[:, None] + l.biases[:, None]
        st.update(cols=cols, yc=yc, var=var, x_norm=x_norm, out=np.where(z > 0, z, f32(.1) * z))

    def bwd():
        d = delta_in.reshape(n, h * w) * np.where(st["out"] > 0, f32(1), f32(.1))
        l.bias_updates += d.sum(axis=1, dtype=f32)
        l.scale_updates += np.einsum("cs,cs->c", d, st["x_norm"])
        d = d * l.scales[:, None]
        var, yc, m = st["var"], st["yc"], f32(h * w)
        sd = np.sqrt(var + f32(1e-5))
        mean_delta = d.sum(axis=1, dtype=f32) * (f32(-1) / sd)
        variance_delta = np.einsum("cs,cs->c", d, yc) * (f32(-.5) * (var + f32(1e-5)) ** f32(-1.5))
        d = d / sd[:, None] + (f32(2) * variance_delta / m)[:, None] * yc + (mean_delta / m)[:, None]
        l.weight_updates += (d @ st["cols"].T).ravel()
        if net.delta is not None:
            dcols = (W.T @ d).reshape(c, size, size, h, w)
            dx = np.zeros((c, h + 2 * pad, w + 2 * pad), f32)
            for ki in range(size):
                for kj in range(size):
                    dx[:, ki:ki + h, kj:kj + w] += dcols[:, ki, kj]
            net.delta += dx[:, pad:pad + h, pad:pad + w].ravel()

    return fwd, bwd, st


def conv_section(ctx, layers=YOLOV3_TINY_CONV):
    from darkpy.layers import convolutional
    ctx.log("== convolutional (batch_normalize, leaky) forward+backward, yolov3-tiny 3x3 layers, batch 1")
    for index, c, h, w, filters in layers:
        l, net, delta_in = _conv_setup(index, c, h, w, filters)
        shape = f"L{index}:{c}x{h}x{w}->{filters}"
        flops, _ = conv_flops(c, h, w, filters, net.delta is not None)

        def restore():
            l.delta[:] = delta_in

        def fwd():
            convolutional.forward(l, net)

        def bwd():
            convolutional.backward(l, net)

        impls = [("fast", t) for t in ctx.threads]
        if not ctx.quick:
            impls.append(("reference", 1))
        for impl, t in impls:
            kernels.use(impl)
            set_threads(t)
            try:
                heavy = impl == "reference"
                tf = ctx.samples(fwd, min_repeats=2 if heavy else None, max_repeats=3 if heavy else None)
                tb = ctx.samples(bwd, setup=restore, min_repeats=2 if heavy else None,
                                 max_repeats=3 if heavy else None)
            finally:
                kernels.use("fast")
            ctx.add("conv+bn+leaky fwd+bwd", shape, impl, t, [a + b for a, b in zip(tf, tb)], flops=flops,
                    floor_ms=ctx.flops_floor_ms(flops, t), floor="flops",
                    fwd_ms=statistics.median(tf), bwd_ms=statistics.median(tb))
        set_threads(ctx.max_threads)
        fwd_np, bwd_np, _ = numpy_conv(l, net, delta_in)
        for t in ctx.threads:
            if not blas_threads(t) and t != ctx.threads[-1]:
                continue
            tf = ctx.samples(fwd_np)
            tb = ctx.samples(bwd_np)
            ctx.add("conv+bn+leaky fwd+bwd", shape, "numpy", t, [a + b for a, b in zip(tf, tb)], flops=flops,
                    floor_ms=ctx.flops_floor_ms(flops, t), floor="flops",
                    fwd_ms=statistics.median(tf), bwd_ms=statistics.median(tb))
        blas_threads(ctx.max_threads)


#: gemm shapes of the fallback (benchmarks/bench_gemm.py's format: name, TA, TB, M, N, K): the
#: forward gemm of the three conv layers (M = filters, N = h*w, K = 9c) and layer 8's backward pair.
GEMM_SHAPES = tuple((f"conv{i} fwd {n}x{9 * c}x{h * w}", 0, 0, n, h * w, 9 * c) for i, c, h, w, n in YOLOV3_TINY_CONV) + (
    ("conv8 weight_updates (nt)", 0, 1, 256, 1152, 676), ("conv8 delta (tn)", 1, 0, 1152, 676, 256))


def _gemm_operands(TA, TB, M, N, K, seed=0):
    rng = np.random.Generator(np.random.PCG64(seed))
    A = rng.uniform(-1, 1, M * K).astype(np.float32)
    B = rng.uniform(-1, 1, K * N).astype(np.float32)
    return A, (M if TA else K), B, (K if TB else N), np.zeros(M * N, np.float32), N


def _own_gemm_rows(ctx, shapes):
    from darkpy.kernels import gemm as fast_gemm
    from darkpy.kernels.reference import gemm as reference_gemm
    rows = []
    for label, TA, TB, M, N, K in shapes:
        A, lda, B, ldb, C, ldc = _gemm_operands(TA, TB, M, N, K)
        impls = [("fast", fast_gemm, t) for t in ctx.threads]
        if not ctx.quick or M * N * K < 10 ** 8:
            impls.append(("reference", reference_gemm, 1))
        for impl, g, t in impls:
            set_threads(t)
            heavy = impl == "reference"
            times = ctx.samples(lambda: g.gemm(TA, TB, M, N, K, 1, A, lda, B, ldb, 1, C, ldc),
                                min_repeats=2 if heavy else None, max_repeats=3 if heavy else None)
            rows.append({"name": label, "shape": f"gemm({TA},{TB}) M={M} N={N} K={K}", "impl": impl,
                         "threads": t, "median_ms": statistics.median(times), "min_ms": min(times),
                         "repeats": len(times)})
    set_threads(ctx.max_threads)
    return rows


def gemm_section(ctx, shapes=None):
    """darknet's ``gemm`` alone (ALPHA = BETA = 1) at yolov3-tiny's 3x3 layer shapes.

    darkpy's rows come from benchmarks/bench_gemm.py's ``bench`` when it is there (its
    shapes: every 3x3 forward gemm and layer 8's backward pair; ``--quick``: four of
    them), else from the same loop here over ``GEMM_SHAPES``; NumPy's ``matmul``
    (OpenBLAS: FMA and its own summation order) is added for each.  GFLOP/s counts
    2*M*N*K; % of peak and the floor use this run's non-FMA peak x threads.
    """
    ctx.log("== gemm alone at yolov3-tiny's 3x3 layer shapes")
    module = None
    try:
        module = load_benchmark("bench_gemm")
    except Exception as exc:
        ctx.note(f"benchmarks/bench_gemm.py did not import ({type(exc).__name__}: {exc}); "
                 "using darkpy.bench's own measurement")
    fn = getattr(module, "bench", None) if module else None
    if shapes is None:
        shapes = (getattr(module, "QUICK" if ctx.quick else "SHAPES", None) if module else None) or GEMM_SHAPES
    rows = None
    if callable(fn):
        try:
            rows = checked_rows(ctx, "bench_gemm", fn(
                shapes=list(shapes), threads=ctx.threads, repeat=ctx.repeats or (3 if ctx.quick else 9),
                reference_repeat=ctx.repeats or 2, with_reference=not ctx.quick or all(
                    M * N * K < 10 ** 8 for _, _, _, M, N, K in shapes),
                info={"gflops_per_core": ctx.peak["gflops_per_core"]}))
            for r in rows or []:
                r["source"] = "benchmarks/bench_gemm.py"
        except Exception as exc:
            ctx.note(f"benchmarks/bench_gemm.py bench() failed ({type(exc).__name__}: {exc}); "
                     "using darkpy.bench's own measurement")
            rows = None
    if rows is None:
        rows = _own_gemm_rows(ctx, shapes)
    for label, TA, TB, M, N, K in shapes:
        flops = 2 * M * N * K
        shape = f"gemm({TA},{TB}) M={M} N={N} K={K}"
        for r in rows:
            if r["shape"] != shape:
                continue
            t = r["threads"]
            extra = {k: v for k, v in r.items() if k not in (
                "name", "shape", "impl", "threads", "median_ms", "min_ms", "repeats", "gflops", "pct_peak")}
            row = ctx.add(f"gemm {label}", shape, r["impl"], t, [r["median_ms"]], flops=flops,
                          floor_ms=ctx.flops_floor_ms(flops, t), floor="flops", **extra)
            row["min_ms"] = r.get("min_ms", row["min_ms"])
            row["repeats"] = r.get("repeats")
        A, _, B, _, _, _ = _gemm_operands(TA, TB, M, N, K)
        A2 = A.reshape(K, M).T if TA else A.reshape(M, K)
        B2 = B.reshape(N, K).T if TB else B.reshape(K, N)
        for t in ctx.threads:
            if not blas_threads(t) and t != ctx.threads[-1]:
                continue
            times = ctx.samples(lambda: np.matmul(A2, B2))
            ctx.add(f"gemm {label}", shape, "numpy (OpenBLAS, FMA)", t, times, flops=flops,
                    floor_ms=ctx.flops_floor_ms(flops, t), floor="flops")
        blas_threads(ctx.max_threads)
    fused = getattr(module, "bench_fused", None) if module else None
    if callable(fused):
        # the convolution's gemm as the fast convolutional forward runs it: B packed straight
        # from the image (gemm_im2col), against the fast im2col_cpu + gemm pair it replaces
        try:
            frows = checked_rows(ctx, "bench_fused", fused(
                shapes=list(shapes), threads=ctx.threads, repeat=ctx.repeats or (3 if ctx.quick else 9),
                info={"gflops_per_core": ctx.peak["gflops_per_core"]}))
        except Exception as exc:
            ctx.note(f"benchmarks/bench_gemm.py bench_fused() failed ({type(exc).__name__}: {exc})")
            frows = []
        for r in frows or []:
            label = r["name"]
            M, N, K = next((M, N, K) for lab, _, _, M, N, K in shapes if lab == label)
            flops = 2 * M * N * K
            impl = {"gemm_im2col": FUSED_IMPL, "im2col+gemm": "fast im2col_cpu + gemm"}.get(r["impl"], r["impl"])
            row = ctx.add(f"gemm {label}", r["shape"], impl, r["threads"], [r["median_ms"]], flops=flops,
                          floor_ms=ctx.flops_floor_ms(flops, r["threads"]), floor="flops",
                          source="benchmarks/bench_gemm.py")
            row["min_ms"] = r.get("min_ms", row["min_ms"])
            row["repeats"] = r.get("repeats")


#: The impl label of the convolution's own gemm (what issue 9's gemm target is about).
FUSED_IMPL = "fast gemm_im2col (the layer's)"


# ----------------------------------------------------------------------------- ratios, table, JSON

def attach_ratios(rows):
    """Add ratio_to_darknet[_<build>], ratio_to_opencv, ratio_to_reference and time_over_floor."""
    groups = {}
    for r in rows:
        groups.setdefault((r["name"], r["shape"]), []).append(r)
    for group in groups.values():
        darknet = [r for r in group if str(r["impl"]).startswith("darknet")]
        fastest = min(darknet, key=lambda r: r["median_ms"]) if darknet else None
        opencv = {r["threads"]: r for r in group if str(r["impl"]).startswith("opencv")}
        reference = {r["threads"]: r for r in group if r["impl"] == "reference"}
        for r in group:
            if fastest is not None:
                r["ratio_to_darknet"] = r["median_ms"] / fastest["median_ms"]
                r["darknet_baseline"] = fastest["impl"]
                for d in darknet:
                    r[f"ratio_to_{d['impl'].replace('-', '_')}"] = r["median_ms"] / d["median_ms"]
            o = opencv.get(r["threads"])
            if o is not None and not str(r["impl"]).startswith("opencv"):
                r["ratio_to_opencv"] = r["median_ms"] / o["median_ms"]
            ref = reference.get(r["threads"]) or reference.get(1)
            if ref is not None and r is not ref:
                r["ratio_to_reference"] = r["median_ms"] / ref["median_ms"]
            if r.get("floor_ms"):
                r["time_over_floor"] = r["median_ms"] / r["floor_ms"]
            if r.get("cached_floor_ms"):
                r["time_over_cached_floor"] = r["median_ms"] / r["cached_floor_ms"]
    return rows


def _ofast_ratio(r):
    """The row's ratio to the -Ofast darknet build (a build whose name says ofast), else to the fastest."""
    for k, v in r.items():
        if k.startswith("ratio_to_darknet_") and "ofast" in k:
            return v, k[len("ratio_to_"):]
    return r.get("ratio_to_darknet"), r.get("darknet_baseline")


def issue_targets(rows, max_threads):
    """Issue 9's "done when" limits, evaluated on this run's rows (those that were measured)."""
    out = []

    def find(name, shape=None, impl="fast", threads=1):
        for r in rows:
            if r["name"] == name and r["impl"] == impl and r["threads"] == threads and (
                    shape is None or r["shape"] == shape):
                return r
        return None

    bn = find("batchnorm train fwd+bwd", "8x64x52x52")
    if bn is not None:
        ratio, base = _ofast_ratio(bn)
        if ratio is not None:
            out.append({"target": f"batchnorm train fwd+bwd 8x64x52x52, 1 core: time / {base}",
                        "value": ratio, "limit": 0.3})
        out.append({"target": "batchnorm train fwd+bwd 8x64x52x52, 1 core: time / memory floor (DRAM)",
                    "value": bn.get("time_over_floor"), "limit": 2.0})
        if bn.get("time_over_cached_floor"):
            out.append({"target": "  (same, against the cached copy bandwidth of its working set)",
                        "value": bn["time_over_cached_floor"], "limit": 2.0})
    fw = find("yolov3-tiny forward", threads=max_threads)
    if fw is not None and fw.get("ratio_to_opencv") is not None:
        out.append({"target": f"yolov3-tiny forward, {max_threads} cores: time / OpenCV dnn on {max_threads}",
                    "value": fw["ratio_to_opencv"], "limit": 1.5})
    fw1 = find("yolov3-tiny forward", threads=1)
    if fw1 is not None:
        ratio, base = _ofast_ratio(fw1)
        if ratio is not None:
            out.append({"target": f"yolov3-tiny forward, 1 core: time / {base}", "value": ratio, "limit": 0.15})
        if fw1.get("ratio_to_opencv") is not None:
            out.append({"target": "  (1 core: time / OpenCV dnn on 1; no limit set)",
                        "value": fw1["ratio_to_opencv"], "limit": None})
    # the convolution's gemm: gemm_im2col where it was measured (what the fast layer runs),
    # else darknet's gemm alone on a column matrix
    gemm_rows = {}
    for r in rows:
        if r["name"].startswith("gemm ") and " fwd " in r["name"] and r["threads"] == 1 \
                and "pct_peak" in r and r["impl"] in ("fast", FUSED_IMPL):
            if r["impl"] == FUSED_IMPL or r["name"] not in gemm_rows:
                gemm_rows[r["name"]] = r
    for name, r in gemm_rows.items():
        how = "gemm_im2col" if r["impl"] == FUSED_IMPL else "gemm"
        out.append({"target": f"{name} ({how}), 1 core: % of non-FMA peak (at least)",
                    "value": r["pct_peak"], "limit": 50.0, "at_least": True})
    for t in out:
        v, lim = t["value"], t["limit"]
        t["met"] = None if v is None or lim is None else (v >= lim if t.get("at_least") else v <= lim)
    return out


def format_targets(targets):
    if not targets:
        return ""
    lines = ["Issue 9 targets (this run):"]
    for t in targets:
        status = "" if t["met"] is None else ("met" if t["met"] else "NOT met")
        limit = "" if t["limit"] is None else (f">= {t['limit']:g}" if t.get("at_least") else f"<= {t['limit']:g}")
        value = "n/a" if t["value"] is None else f"{t['value']:.3g}"
        lines.append(f"  {t['target']:<78} {value:>8}  {limit:<8} {status}")
    return "\n".join(lines)


def _fmt(v, spec):
    return "" if v is None else format(v, spec)


def grouped(rows):
    """Rows reordered so that each (name, shape) group is contiguous, groups in first-seen order."""
    order = {}
    for r in rows:
        order.setdefault((r["name"], r["shape"]), len(order))
    return sorted(rows, key=lambda r: order[(r["name"], r["shape"])])


def format_table(rows):
    head = (f"{'name':<30} {'shape':<28} {'impl':<22} {'thr':>3} {'median ms':>11} {'GFLOP/s':>8} "
            f"{'%peak':>6} {'t/floor':>7} {'t/cache':>7} {'x darknet':>9} {'x opencv':>8} {'x ref':>7}")
    lines = [head, "-" * len(head)]
    last = None
    for r in grouped(rows):
        if last is not None and (r["name"], r["shape"]) != last:
            lines.append("")
        last = (r["name"], r["shape"])
        lines.append(f"{r['name'][:30]:<30} {r['shape'][:28]:<28} {str(r['impl'])[:22]:<22} {r['threads']:>3} "
                     f"{r['median_ms']:>11.3f} {_fmt(r.get('gflops'), '8.2f'):>8} {_fmt(r.get('pct_peak'), '6.1f'):>6} "
                     f"{_fmt(r.get('time_over_floor'), '7.2f'):>7} {_fmt(r.get('time_over_cached_floor'), '7.2f'):>7} "
                     f"{_fmt(r.get('ratio_to_darknet'), '9.3f'):>9} "
                     f"{_fmt(r.get('ratio_to_opencv'), '8.2f'):>8} {_fmt(r.get('ratio_to_reference'), '7.3f'):>7}")
    return "\n".join(lines)


def format_comparisons(comparisons):
    if not comparisons:
        return ""
    head = (f"{'layer':>5} {'type':<14} {'opencv blob':<14} {'elements':>9} {'differing':>9} {'median ULP':>10} "
            f"{'p99 ULP':>10} {'max ULP':>11} {'max |diff|':>10}")
    lines = ["OpenCV dnn vs darkpy (= darknet bits), layer by layer:", head]
    for c in comparisons:
        lines.append(f"{c['layer']:>5} {c['type']:<14} {c['opencv_layer']:<14} {c['size']:>9} "
                     f"{100 * c['differing_fraction']:>8.1f}% {c['median_ulp']:>10.0f} {c['p99_ulp']:>10.0f} "
                     f"{c['max_ulp']:>11.0f} {c['max_abs']:>10.3g}")
    return "\n".join(lines)


def machine_record(ctx):
    import numba
    try:
        layer = numba.threading_layer()
    except ValueError:
        layer = "not yet initialised"
    return {"model": ctx.cpu["model"], "vendor": ctx.cpu["vendor"], "cores": ctx.cpu["cores"],
            "mhz": ctx.cpu["mhz"], "mhz_source": ctx.cpu["mhz_source"], "measured_mhz": ctx.cpu.get("measured_mhz"),
            "peak_ghz": ctx.peak["ghz"],
            "vector": "avx512f" if "avx512f" in ctx.cpu["flags"] else "avx2" if "avx2" in ctx.cpu["flags"] else "other",
            "non_fma_peak_gflops_per_core": ctx.peak["gflops_per_core"],
            "fma_peak_gflops_per_core": ctx.peak["fma_gflops_per_core"], "peak_assumption": ctx.peak["assumption"],
            "copy_bandwidth_gbs": ctx.bandwidth_gbs, "numba": numba.__version__, "numpy": np.__version__,
            "NUMBA_NUM_THREADS": ctx.max_threads, "threads_measured": ctx.threads,
            "numba_threading_layer": layer, "python": sys.version.split()[0],
            "loadavg_start": list(os.getloadavg()), "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
            "darknet_builds": [{"impl": b["impl"], "dir": b["dir"]} for b in ctx.darknet],
            "weights": str(ctx.weights) if ctx.weights else None, "cfg": str(ctx.cfg) if ctx.cfg else None}


# ----------------------------------------------------------------------------- command line

def add_arguments(p):
    """The options of ``darkpy bench`` (shared by the CLI sub-command and ``python -m darkpy.bench``)."""
    p.add_argument("--json", metavar="FILE", help="also write the rows (and machine, notes) as JSON")
    p.add_argument("--quick", action="store_true", help="small repeat counts, fewer baselines (a smoke test)")
    p.add_argument("--threads", metavar="N[,N...]", help="Numba thread counts to measure "
                   "(default: 1 and all cores; --quick: 1)")
    p.add_argument("--only", metavar="SECTION[,...]",
                   help=f"run only these sections: {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--repeats", type=int, help="fixed number of timed repeats per measurement")
    p.add_argument("--weights", help="yolov3-tiny COCO .weights (default: $DARKPY_YOLOV3_TINY_WEIGHTS, "
                   "else deterministic random weights)")
    p.add_argument("--cfg", help="yolov3-tiny.cfg (default: ../shared/cfg/yolov3-tiny.cfg beside the checkout)")
    p.add_argument("--darknet", action="append", metavar="DIR", default=None,
                   help="a darknet build to time (repeatable; default: $DARKNET_DIR, ':'-separated)")
    return p


def _parse_list(text, what, cast=str, choices=None):
    if not text:
        return None
    items = [cast(t.strip()) for t in str(text).split(",") if t.strip()]
    if choices:
        bad = [t for t in items if t not in choices]
        if bad:
            from darkpy.errors import DarkpyError
            raise DarkpyError(f"{what}: unknown {', '.join(map(str, bad))}; choose from {', '.join(choices)}")
    return items


def run(ctx):
    """Run the selected sections into ``ctx.rows``; returns ctx."""
    network = None
    if {"network", "train", "compile", "threading"} & ctx.only:
        network = load_benchmark("bench_network")
        if network is None:
            ctx.note("benchmarks/bench_network.py is absent (installed package): no network rows")
    sections = {"batchnorm": batchnorm_section, "conv": conv_section, "gemm": gemm_section}
    if network is not None:
        sections.update(network=network.network_section, train=network.train_section,
                        compile=network.compile_section, threading=network.threading_section)
    for name in SECTIONS:
        if name in ctx.only and name in sections:
            t0 = time.perf_counter()
            sections[name](ctx)
            ctx.log(f"   ({name}: {time.perf_counter() - t0:.1f} s)")
    set_threads(ctx.max_threads)
    ctx.rows[:] = grouped(attach_ratios(ctx.rows))
    return ctx


def main(args):
    """``darkpy bench``: run, print the table, optionally write JSON; returns the exit code."""
    if not isinstance(args, argparse.Namespace):
        args = add_arguments(argparse.ArgumentParser(prog="darkpy bench")).parse_args(args)
    threads = _parse_list(args.threads, "--threads", int)
    only = _parse_list(args.only, "--only", str, SECTIONS)
    dirs = args.darknet if args.darknet else darknet_dirs_from_env()
    kernels.use("fast")
    ctx = Context(quick=args.quick, threads=threads, only=only, repeats=args.repeats,
                  weights=args.weights, cfg=args.cfg, darknet_dirs=dirs)
    try:
        m = machine_record(ctx)
        print(f"CPU: {m['model']} ({m['vendor']}), {m['cores']} cores, {m['vector']}, "
              f"{m['mhz']} MHz ({m['mhz_source']}), measured {m['measured_mhz'] or 0:.0f} MHz")
        print(f"threads: NUMBA_NUM_THREADS={m['NUMBA_NUM_THREADS']}, measured at {ctx.threads}; "
              f"load average at start {' '.join(f'{x:.2f}' for x in m['loadavg_start'])}")
        print(f"non-FMA float32 peak {m['non_fma_peak_gflops_per_core']:.1f} GFLOP/s per core "
              f"({m['peak_assumption']})")
        print(f"copy bandwidth (one core, read+write) {m['copy_bandwidth_gbs']:.2f} GB/s")
        print(f"darknet builds: {', '.join(b['impl'] + ' ' + b['dir'] for b in ctx.darknet) or 'none (set DARKNET_DIR)'}")
        print(ctx.weights_note)
        run(ctx)
        m = machine_record(ctx)
        m["loadavg_end"] = list(os.getloadavg())
        print()
        print(f"CPU: {m['model']}; Numba threading layer {m['numba_threading_layer']}; "
              f"load average at end {' '.join(f'{x:.2f}' for x in m['loadavg_end'])}")
        print(format_table(ctx.rows))
        if ctx.comparisons:
            print()
            print(format_comparisons(ctx.comparisons))
        targets = issue_targets(ctx.rows, ctx.max_threads)
        if targets:
            print()
            print(format_targets(targets))
        for n in ctx.notes:
            print(f"note: {n}")
        if args.json:
            path = Path(args.json)
            if path.parent and not path.parent.exists():
                path.parent.mkdir(parents=True)
            path.write_text(json.dumps({"machine": m, "rows": ctx.rows, "comparisons": ctx.comparisons,
                                        "targets": targets, "notes": ctx.notes}, indent=1, default=_json_default) + "\n")
            print(f"wrote {path}")
    finally:
        ctx.close()
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    from darkpy.errors import DarkpyError
    try:
        sys.exit(main(sys.argv[1:]))
    except DarkpyError as exc:
        print(f"darkpy bench: error: {exc}", file=sys.stderr)
        sys.exit(2)
