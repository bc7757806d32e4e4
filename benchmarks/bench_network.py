"""Network-level rows of ``darkpy bench``: yolov3-tiny forward, a training step, compile time.

* ``network``: yolov3-tiny at 416x416, batch 1, inference forward with darkpy's fast
  kernels on each ``--threads`` count, the reference kernels (one thread; not with
  ``--quick``), each darknet build (``network_predict``), and OpenCV dnn
  (``cv2.dnn.readNetFromDarknet`` on the same cfg, weights and input blob) with
  ``cv2.setNumThreads`` at the same thread counts.  OpenCV's layer outputs are
  compared with darkpy's (which are darknet's bits): fraction of differing
  elements, median and max ULP, in ``ctx.comparisons``.
* ``train``: one ``train_network_datum`` (seen += batch, forward + backward + SGD
  update) at batch 4, darkpy and each darknet build.
* ``compile``: wall time of ``darkpy forward`` on the default network in a fresh
  process, with ``NUMBA_CACHE_DIR`` pointing at an empty directory (cold: every
  kernel compiles) and then at the filled one (warm), beside the time of the bare
  imports.

The weights are yolov3-tiny's COCO weights when ``--weights`` or
``$DARKPY_YOLOV3_TINY_WEIGHTS`` names them; otherwise darkpy's deterministic random
weights (seed 0), written with ``save_weights`` so that darknet and OpenCV read
the same ones.

Runs inside ``darkpy bench`` (``--only network,train,compile``) or alone:
``python benchmarks/bench_network.py [darkpy bench options]``.
"""

import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from darkpy import bench, kernels
from darkpy.bench import run_darknet, set_threads
from darkpy.check import bitwise_equal


def conv_flops(net, training=False):
    """FLOPs of the network's convolutional gemms for one batch (2 per multiply-add).

    Training adds the weight-gradient gemm and, for every layer but the first (whose
    input has no delta in darknet), the input-gradient gemm.
    """
    total = 0
    for i, l in enumerate(net.layers):
        if l.type != "convolutional":
            continue
        per = 2 * l.n * (l.size * l.size * l.c // l.groups) * l.out_h * l.out_w * l.batch
        total += per * ((3 if i > 0 else 2) if training else 1)
    return total


def _network(ctx, batch):
    """yolov3-tiny from ctx.cfg at ``batch``, with the run's weights, input and (zero) truth."""
    from darkpy.network import load_network, randomize_parameters
    net = load_network(ctx.cfg, ctx.weights, batch=batch)
    if ctx.weights is None:
        randomize_parameters(net, 0)
    rng = np.random.Generator(np.random.PCG64(1))
    image = rng.random(net.inputs, dtype=np.float32)
    for b in range(net.batch):
        net.input[b * net.inputs:(b + 1) * net.inputs] = image
    if net.truth is not None:
        net.truth[:] = 0
    return net


def weights_file(ctx, net):
    """The .weights file darknet and OpenCV read: the real one, or darkpy's random weights saved once."""
    if ctx.weights is not None:
        return ctx.weights
    path = ctx.tmp / "random-seed0.weights"
    if not path.exists():
        from darkpy.weights import save_weights
        save_weights(net, path)
    return path


# ----------------------------------------------------------------------------- OpenCV

def opencv():
    """The cv2 module when it has the darknet importer (OpenCV 4.x), else None and why."""
    try:
        import cv2
    except ImportError:
        return None, "OpenCV is not installed (pip install 'darkpy[bench]'): no OpenCV baseline"
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromDarknet"):
        return None, f"OpenCV {cv2.__version__} has no dnn.readNetFromDarknet (dropped in 5.0): no OpenCV baseline"
    return cv2, None


def opencv_blob_name(net, i, names):
    """OpenCV's blob holding darknet layer ``i``'s output, or None.

    OpenCV's darknet importer names a convolution ``conv_<i>`` and its batchnorm
    ``bn_<i>``, but its activation ``<act>_<i+1>``; maxpool ``pool_<i>``, route
    ``identity_<i>``/``concat_<i>``, upsample ``upsample_<i>``.  A yolo layer becomes
    a detection-format blob, not comparable element by element.
    """
    l = net.layers[i]
    candidates = []
    if l.type == "convolutional":
        from darkpy.kernels.activations import LINEAR
        if l.activation != LINEAR:
            candidates += [f"leaky_{i + 1}", f"relu_{i + 1}", f"logistic_{i + 1}", f"tanh_{i + 1}"]
        candidates += [f"bn_{i}" if l.batch_normalize else f"conv_{i}"]
    elif l.type == "maxpool":
        candidates = [f"pool_{i}"]
    elif l.type == "route":
        candidates = [f"identity_{i}", f"concat_{i}"]
    elif l.type == "upsample":
        candidates = [f"upsample_{i}"]
    elif l.type == "shortcut":
        candidates = [f"shortcut_{i}"]
    for c in candidates:
        if c in names:
            return c
    return None


def compare_with_opencv(ctx, cv_net, net):
    """Layer-by-layer ULP distances between OpenCV's blobs and darkpy's outputs (darknet's bits)."""
    from darkpy.check import ulp_distance
    names = set(cv_net.getLayerNames())
    pairs = [(i, opencv_blob_name(net, i, names)) for i in range(net.n)]
    pairs = [(i, b) for i, b in pairs if b]
    if not pairs:
        return
    blobs = cv_net.forward([b for _, b in pairs])
    for (i, name), blob in zip(pairs, blobs):
        l = net.layers[i]
        ours = l.output[:l.outputs * l.batch]
        theirs = np.ascontiguousarray(blob, np.float32).ravel()
        if theirs.size != ours.size:
            continue
        d = ulp_distance(ours, theirs)
        d = np.where(d < 0, np.iinfo(np.int64).max, d)  # NaN against a number: worst possible
        ctx.comparisons.append({
            "layer": i, "type": l.type, "opencv_layer": name, "size": int(ours.size),
            "differing_fraction": float(np.count_nonzero(d) / d.size),
            "median_ulp": float(np.median(d)), "p99_ulp": float(np.percentile(d, 99)), "max_ulp": float(d.max()),
            "max_abs": float(np.max(np.abs(ours.astype(np.float64) - theirs.astype(np.float64))))})


# ----------------------------------------------------------------------------- sections

def network_section(ctx):
    from darkpy.network import forward_network
    ctx.log("== yolov3-tiny 416x416 batch 1 inference forward")
    if ctx.cfg is None:
        ctx.note("yolov3-tiny.cfg not found (--cfg, $DARKPY_SHARED/cfg or ../shared/cfg): no network rows")
        return
    ctx.note(ctx.weights_note)
    net = _network(ctx, batch=1)
    net.train = 0
    shape = f"yolov3-tiny {net.c}x{net.h}x{net.w} b{net.batch}"
    flops = conv_flops(net)
    name = "yolov3-tiny forward"

    for t in ctx.threads:
        set_threads(t)
        times = ctx.samples(lambda: forward_network(net), min_repeats=3 if not ctx.quick else None,
                            max_repeats=15 if not ctx.quick else None)
        ctx.add(name, shape, "fast", t, times, flops=flops, floor_ms=ctx.flops_floor_ms(flops, t), floor="flops")
    set_threads(ctx.max_threads)
    forward_network(net)
    fast_output = net.output.copy()
    if not ctx.quick:
        kernels.use("reference")
        set_threads(1)
        try:
            times = ctx.samples(lambda: forward_network(net), min_repeats=1, max_repeats=2, budget_s=0)
        finally:
            kernels.use("fast")
            set_threads(ctx.max_threads)
        ctx.add(name, shape, "reference", 1, times, flops=flops, floor_ms=ctx.flops_floor_ms(flops, 1),
                floor="flops")
        same = bitwise_equal(fast_output, net.output)
        ctx.note(f"yolov3-tiny forward: fast and reference outputs {'bitwise identical' if same else 'DIFFER'}")
        forward_network(net)  # leave the fast kernels' outputs in the layers

    wfile = weights_file(ctx, net)
    input_file = ctx.tmp / "yolov3-tiny-input.f32"
    net.input.astype("<f4").tofile(input_file)
    for build in ctx.darknet:
        try:
            out = run_darknet(build, ["network", ctx.cfg, wfile, input_file, bench.darknet_repeats(ctx, 5, 1)])
        except (RuntimeError, subprocess.SubprocessError) as exc:
            ctx.note(str(exc))
            continue
        ctx.add(name, shape, build["impl"], 1, out["forward"], flops=flops,
                floor_ms=ctx.flops_floor_ms(flops, 1), floor="flops")

    cv2, why = opencv()
    if cv2 is None:
        ctx.note(why)
        return
    cv_net = cv2.dnn.readNetFromDarknet(str(ctx.cfg), str(wfile))
    cv_net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv_net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    blob = net.input[:net.inputs].reshape(1, net.c, net.h, net.w).copy()
    outs = cv_net.getUnconnectedOutLayersNames()

    def cv_forward():
        cv_net.setInput(blob)
        cv_net.forward(outs)

    previous = cv2.getNumThreads()
    for t in ctx.threads:
        cv2.setNumThreads(t)
        times = ctx.samples(cv_forward, warmup=2, min_repeats=5 if not ctx.quick else None,
                            max_repeats=30 if not ctx.quick else None)
        ctx.add(name, shape, f"opencv-{cv2.__version__}", t, times, flops=flops,
                floor_ms=ctx.flops_floor_ms(flops, t), floor="flops")
    cv2.setNumThreads(previous)
    cv_net.setInput(blob)
    compare_with_opencv(ctx, cv_net, net)


def _cfg_with_batch(ctx, batch):
    """A copy of the cfg whose [net] has batch=<batch> and subdivisions=1 (darknet reads batch from the file)."""
    text = Path(ctx.cfg).read_text()
    out, in_net = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            in_net = s.lower() in ("[net]", "[network]")
        elif in_net and re.match(r"(batch|subdivisions)\s*=", s):
            continue
        out.append(line)
        if in_net and s.lower() in ("[net]", "[network]"):
            out += [f"batch={batch}", "subdivisions=1"]
    path = ctx.tmp / f"yolov3-tiny-batch{batch}.cfg"
    path.write_text("\n".join(out) + "\n")
    return path


def train_section(ctx, batch=4):
    from darkpy.network import train_network_datum
    ctx.log(f"== yolov3-tiny 416x416 training step (forward + backward + update), batch {batch}")
    if ctx.cfg is None:
        ctx.note("yolov3-tiny.cfg not found: no training rows")
        return
    net = _network(ctx, batch=batch)
    shape = f"yolov3-tiny {net.c}x{net.h}x{net.w} b{batch}"
    flops = conv_flops(net, training=True)
    name = f"yolov3-tiny train step b{batch}"
    for t in ctx.threads:
        set_threads(t)
        times = ctx.samples(lambda: train_network_datum(net), min_repeats=2 if not ctx.quick else 1,
                            max_repeats=5 if not ctx.quick else 1, budget_s=0 if ctx.quick else None)
        ctx.add(name, shape, "fast", t, times, flops=flops, floor_ms=ctx.flops_floor_ms(flops, t), floor="flops")
    set_threads(ctx.max_threads)
    if not ctx.darknet:
        return
    wfile = weights_file(ctx, _network(ctx, batch=1) if ctx.weights is None else None)
    cfg = _cfg_with_batch(ctx, batch)
    for build in ctx.darknet:
        try:
            out = run_darknet(build, ["train", cfg, wfile, bench.darknet_repeats(ctx, 3, 1)], timeout=3600)
        except (RuntimeError, subprocess.SubprocessError) as exc:
            ctx.note(str(exc))
            continue
        ctx.add(name, shape, build["impl"], 1, out["train_step"], flops=flops,
                floor_ms=ctx.flops_floor_ms(flops, 1), floor="flops")


def _wall(cmd, env, timeout=1800):
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    dt = (time.perf_counter() - t0) * 1e3
    if proc.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.strip()[-300:]}")
    return dt


def compile_section(ctx):
    from darkpy.cli import DEFAULT_CFG
    ctx.log("== first call of `darkpy forward` on the default network (fresh process)")
    cache = ctx.tmp / "numba-cache"
    cache.mkdir(exist_ok=True)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
    forward = [sys.executable, "-m", "darkpy.cli", "forward", str(DEFAULT_CFG)]
    shape = Path(DEFAULT_CFG).name
    name = "darkpy forward first call"
    threads = ctx.max_threads
    try:
        imports = [_wall([sys.executable, "-c", "import numba, numpy, darkpy.cli, darkpy.network"], env)
                   for _ in range(1 if ctx.quick else 3)]
        cold = [_wall(forward, env)]  # the cache directory starts empty: every kernel compiles
        warm = [_wall(forward, env) for _ in range(1 if ctx.quick else 3)]
    except (RuntimeError, subprocess.SubprocessError) as exc:
        ctx.note(f"compile timing failed: {exc}")
        return
    ctx.add(name, shape, "python + imports only", threads, imports)
    ctx.add(name, shape, "cold Numba cache", threads, cold,
            compile_ms=statistics.median(cold) - statistics.median(warm))
    ctx.add(name, shape, "warm Numba cache", threads, warm)


#: Run in a fresh process per threading layer: yolov3-tiny forward at each thread count.
_THREADING_PROBE = r"""
import json, sys, time
import numba
import numpy as np
from darkpy.network import forward_network, load_network, randomize_parameters
cfg, weights, threads, repeats = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4])
net = load_network(cfg, weights, batch=1)
if weights is None:
    randomize_parameters(net, 0)
net.input[:] = np.random.Generator(np.random.PCG64(1)).random(net.inputs, dtype=np.float32)
out = {}
for t in [int(x) for x in threads.split(",")]:
    numba.set_num_threads(t)
    forward_network(net)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        forward_network(net)
        times.append((time.perf_counter() - t0) * 1e3)
    out[t] = times
print(json.dumps({"layer": numba.threading_layer(), "times": out}))
"""

#: (label, environment) of the threading variants measured.
THREADING_VARIANTS = (
    ("omp", {"NUMBA_THREADING_LAYER": "omp"}),
    ("omp, OMP_WAIT_POLICY=passive", {"NUMBA_THREADING_LAYER": "omp", "OMP_WAIT_POLICY": "passive"}),
    ("workqueue", {"NUMBA_THREADING_LAYER": "workqueue"}),
    ("tbb", {"NUMBA_THREADING_LAYER": "tbb"}),
)


def threading_section(ctx):
    """yolov3-tiny forward under each Numba threading layer (a fresh process each), per thread count."""
    ctx.log("== yolov3-tiny forward per Numba threading layer (fresh processes)")
    if ctx.cfg is None:
        ctx.note("yolov3-tiny.cfg not found: no threading rows")
        return
    net = None if ctx.weights is not None else _network(ctx, batch=1)
    wfile = weights_file(ctx, net) if net is not None else ctx.weights
    repeats = ctx.repeats or (2 if ctx.quick else 7)
    threads = ",".join(map(str, ctx.threads))
    for label, extra in THREADING_VARIANTS:
        env = {**os.environ, **extra}
        proc = subprocess.run([sys.executable, "-c", _THREADING_PROBE, str(ctx.cfg), str(wfile), threads,
                               str(repeats)], env=env, capture_output=True, text=True, timeout=1800)
        if proc.returncode:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            ctx.note(f"threading layer {label}: not measured ({last[:200]})")
            continue
        import json
        got = json.loads(proc.stdout.strip().splitlines()[-1])
        for t, times in got["times"].items():
            ctx.add("yolov3-tiny forward by layer", "yolov3-tiny 3x416x416 b1", f"fast, {label}", int(t), times,
                    threading_layer=got["layer"])


def rows(ctx):
    """All the sections' rows (for a caller holding a ``darkpy.bench.Context``)."""
    for section in (network_section, train_section, compile_section, threading_section):
        section(ctx)
    return ctx.rows


if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--only" not in argv:
        argv += ["--only", "network,train,compile,threading"]
    sys.exit(bench.main(argv))
