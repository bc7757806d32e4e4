"""darkpy bench: rows carry the required keys, ratios and floors are computed from the rows
measured, the peak arithmetic, and the network section end to end on a small network.

No timing is asserted (the machine is shared); only what the harness computes from
its measurements.
"""

import json

import numpy as np
import pytest

from darkpy import bench
from darkpy.bench import REQUIRED_KEYS, Context, attach_ratios, non_fma_peak

from conftest import GOLDEN


@pytest.fixture
def ctx(request):
    c = Context(quick=True, threads=[1], repeats=1, darknet_dirs=[], verbose=False, bandwidth_bytes=1 << 20,
                **getattr(request, "param", {}))
    yield c
    c.close()


def _check_rows(rows):
    assert rows
    for r in rows:
        for k in REQUIRED_KEYS:
            assert k in r, (k, r)
        assert r["median_ms"] > 0
        assert isinstance(r["threads"], int)


def test_peak_arithmetic():
    amd = non_fma_peak({"vendor": "AuthenticAMD", "flags": {"avx", "avx2", "fma"}, "mhz": 2500.0,
                        "mhz_source": "test"})
    assert amd["flop_per_cycle"] == 32 and amd["gflops_per_core"] == pytest.approx(80.0)
    assert amd["fma_gflops_per_core"] == pytest.approx(80.0)  # Zen: mul+add pipes reach the FMA rate
    intel = non_fma_peak({"vendor": "GenuineIntel", "flags": {"avx2", "avx512f"}, "mhz": 2000.0,
                          "mhz_source": "test"})
    assert intel["flop_per_cycle"] == 32 and intel["fma_gflops_per_core"] == pytest.approx(2 * 64.0)
    avx2 = non_fma_peak({"vendor": "GenuineIntel", "flags": {"avx2"}, "mhz": 3000.0, "mhz_source": "test"})
    assert avx2["gflops_per_core"] == pytest.approx(48.0)


def test_cpu_info_of_this_machine():
    info = bench.cpu_info()
    assert info["cores"] >= 1
    assert isinstance(info["model"], str) and info["model"]


def test_attach_ratios():
    rows = [
        {"name": "k", "shape": "s", "impl": "fast", "threads": 1, "median_ms": 2.0, "floor_ms": 0.5},
        {"name": "k", "shape": "s", "impl": "fast", "threads": 2, "median_ms": 1.5},
        {"name": "k", "shape": "s", "impl": "reference", "threads": 1, "median_ms": 8.0},
        {"name": "k", "shape": "s", "impl": "darknet-strict", "threads": 1, "median_ms": 10.0},
        {"name": "k", "shape": "s", "impl": "darknet-ofast", "threads": 1, "median_ms": 5.0},
        {"name": "k", "shape": "s", "impl": "opencv-4.14.0", "threads": 2, "median_ms": 1.0},
        {"name": "other", "shape": "s", "impl": "fast", "threads": 1, "median_ms": 3.0},
    ]
    attach_ratios(rows)
    fast1, fast2, ref = rows[0], rows[1], rows[2]
    assert fast1["ratio_to_darknet"] == pytest.approx(0.4) and fast1["darknet_baseline"] == "darknet-ofast"
    assert fast1["ratio_to_darknet_strict"] == pytest.approx(0.2)
    assert fast1["ratio_to_darknet_ofast"] == pytest.approx(0.4)
    assert fast1["ratio_to_reference"] == pytest.approx(0.25)
    assert fast1["time_over_floor"] == pytest.approx(4.0)
    assert "ratio_to_opencv" not in fast1  # OpenCV was measured at 2 threads only
    assert fast2["ratio_to_opencv"] == pytest.approx(1.5)
    assert "ratio_to_reference" not in ref
    assert "ratio_to_darknet" not in rows[-1]  # another (name, shape): no baseline


def test_issue_targets():
    rows = [
        {"name": "batchnorm train fwd+bwd", "shape": "8x64x52x52", "impl": "fast", "threads": 1, "median_ms": 3.0,
         "floor_ms": 2.0},
        {"name": "batchnorm train fwd+bwd", "shape": "8x64x52x52", "impl": "darknet-strict", "threads": 1,
         "median_ms": 10.0},
        {"name": "batchnorm train fwd+bwd", "shape": "8x64x52x52", "impl": "darknet-ofast", "threads": 1,
         "median_ms": 12.0},
        {"name": "yolov3-tiny forward", "shape": "y", "impl": "fast", "threads": 2, "median_ms": 60.0},
        {"name": "yolov3-tiny forward", "shape": "y", "impl": "opencv-4.14.0", "threads": 2, "median_ms": 44.0},
        {"name": "gemm conv8 fwd 256x1152x676", "shape": "g", "impl": "fast", "threads": 1, "median_ms": 1.0,
         "pct_peak": 49.0},
        {"name": "gemm conv2 fwd 32x144x43264", "shape": "g", "impl": "fast", "threads": 1, "median_ms": 1.0,
         "pct_peak": 40.0},
        {"name": "gemm conv2 fwd 32x144x43264", "shape": "c", "impl": bench.FUSED_IMPL, "threads": 1,
         "median_ms": 1.0, "pct_peak": 51.0},
    ]
    targets = {t["target"]: t for t in bench.issue_targets(attach_ratios(rows), 2)}
    bn = targets["batchnorm train fwd+bwd 8x64x52x52, 1 core: time / darknet_ofast"]
    assert bn["value"] == pytest.approx(0.25) and bn["met"]  # against -Ofast, even when it is not the fastest
    floor = targets["batchnorm train fwd+bwd 8x64x52x52, 1 core: time / memory floor (DRAM)"]
    assert floor["value"] == pytest.approx(1.5) and floor["met"]
    fw = targets["yolov3-tiny forward, 2 cores: time / OpenCV dnn on 2"]
    assert fw["value"] == pytest.approx(60 / 44) and fw["met"]
    g = targets["gemm conv8 fwd 256x1152x676 (gemm), 1 core: % of non-FMA peak (at least)"]
    assert g["met"] is False
    # where the layer's own gemm (gemm_im2col) was measured, the target reads that row
    g = targets["gemm conv2 fwd 32x144x43264 (gemm_im2col), 1 core: % of non-FMA peak (at least)"]
    assert g["value"] == 51.0 and g["met"]
    assert not [t for t in targets if t.startswith("gemm conv2 fwd 32x144x43264 (gemm)")]
    assert not [t for t in targets if t.startswith("yolov3-tiny forward, 1 core")]  # not measured


def test_batchnorm_section_rows(ctx):
    bench.batchnorm_section(ctx, shapes=[(2, 3, 4, 5)])
    attach_ratios(ctx.rows)
    _check_rows(ctx.rows)
    impls = {(r["name"], r["impl"]) for r in ctx.rows}
    for name in ("batchnorm train fwd+bwd", "batchnorm infer fwd"):
        for impl in ("fast", "reference", "numpy"):
            assert (name, impl) in impls
    for r in ctx.rows:
        assert r["shape"] == "2x3x4x5"
        assert r["floor"] == "memory" and r["time_over_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"])
        if r["impl"] != "reference":
            assert "ratio_to_reference" in r
        assert "ratio_to_darknet" not in r  # no darknet build given
    train = [r for r in ctx.rows if r["name"] == "batchnorm train fwd+bwd"]
    # floor of train forward+backward: 8 arrays of 2*3*4*5 floats at the measured bandwidth
    assert train[0]["floor_ms"] == pytest.approx(8 * 4 * 120 / (ctx.bandwidth_gbs * 1e9) * 1e3)


def test_numpy_batchnorm_matches_the_formulas():
    """The NumPy baseline computes batchnorm (so its timing is of the real work)."""
    fwd, bwd, infer, st = bench.numpy_batchnorm((3, 2, 4, 4))
    b = st["buffers"]
    fwd()
    bwd()
    x = b["input"].reshape(3, 2, 16).astype(np.float64)
    mean = x.mean(axis=(0, 2))
    var = x.var(axis=(0, 2), ddof=1)
    x_norm = (x - mean[None, :, None]) / (np.sqrt(var) + 1e-6)[None, :, None]
    np.testing.assert_allclose(st["x_norm"], x_norm, rtol=1e-4, atol=1e-5)
    # input gradient of sum(delta_in * (scales*x_norm + biases)) with darknet's 1e-5
    d = b["delta_in"].reshape(3, 2, 16).astype(np.float64) * b["scales"][None, :, None]
    xc = x - mean[None, :, None]
    n = 3 * 16
    sd = np.sqrt(var + 1e-5)
    md = d.sum(axis=(0, 2)) * (-1 / sd)
    vd = (d * xc).sum(axis=(0, 2)) * (-.5 * (var + 1e-5) ** -1.5)
    dx = d / sd[None, :, None] + (2 * vd / n)[None, :, None] * xc + (md / n)[None, :, None]
    np.testing.assert_allclose(st["dx"], dx, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", [0, 1])
def test_conv_section_rows(ctx, index):
    bench.conv_section(ctx, layers=[(index, 3, 6, 6, 4)])
    attach_ratios(ctx.rows)
    _check_rows(ctx.rows)
    assert {r["impl"] for r in ctx.rows} == {"fast", "numpy"}
    flops = bench.conv_flops(3, 6, 6, 4, with_input_delta=index > 0)[0]
    assert flops == 2 * 4 * 36 * 27 * (3 if index else 2)
    for r in ctx.rows:
        assert r["gflops"] == pytest.approx(flops / r["median_ms"] / 1e6)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / ctx.peak["gflops_per_core"])
        assert {"fwd_ms", "bwd_ms", "floor_ms", "time_over_floor"} <= r.keys()


def test_numpy_conv_computes_the_layer():
    """The NumPy conv baseline's forward equals darkpy's (up to rounding): it does the real work."""
    from darkpy.layers import convolutional
    l, net, delta_in = bench._conv_setup(1, 3, 6, 5, 4)
    convolutional.forward(l, net)
    fwd, bwd, st = bench.numpy_conv(l, net, delta_in)
    fwd()
    np.testing.assert_allclose(st["out"].ravel(), l.output, rtol=1e-4, atol=1e-5)


def test_gemm_section_rows(ctx):
    """Through benchmarks/bench_gemm.py's ``bench`` when present, else darkpy.bench's own loop."""
    bench.gemm_section(ctx, shapes=[("tiny nn", 0, 0, 3, 35, 18), ("tiny tn", 1, 0, 5, 7, 4)])
    attach_ratios(ctx.rows)
    _check_rows(ctx.rows)
    for shape, flops in (("gemm(0,0) M=3 N=35 K=18", 2 * 3 * 35 * 18), ("gemm(1,0) M=5 N=7 K=4", 2 * 5 * 7 * 4)):
        rows = [r for r in ctx.rows if r["shape"] == shape]
        assert {"fast", "reference", "numpy (OpenBLAS, FMA)"} <= {r["impl"] for r in rows}
        for r in rows:
            assert r["gflops"] == pytest.approx(flops / r["median_ms"] / 1e6)
            assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / (ctx.peak["gflops_per_core"] * r["threads"]))
            assert r["floor"] == "flops" and r["time_over_floor"] == pytest.approx(r["median_ms"] / r["floor_ms"])
        fast = next(r for r in rows if r["impl"] == "fast")
        ref = next(r for r in rows if r["impl"] == "reference")
        assert fast["ratio_to_reference"] == pytest.approx(fast["median_ms"] / ref["median_ms"])


def test_own_gemm_rows_without_bench_gemm(ctx, monkeypatch):
    """The fallback when benchmarks/bench_gemm.py is absent gives the same kind of rows."""
    monkeypatch.setattr(bench, "load_benchmark", lambda name: None)
    bench.gemm_section(ctx, shapes=[("tiny nt", 0, 1, 3, 6, 5)])
    _check_rows(ctx.rows)
    assert {"fast", "reference", "numpy (OpenBLAS, FMA)"} == {r["impl"] for r in ctx.rows}


def test_own_batchnorm_rows_without_bench_batchnorm(ctx, monkeypatch):
    monkeypatch.setattr(bench, "load_benchmark", lambda name: None)
    bench.batchnorm_section(ctx, shapes=[(2, 3, 4, 5)])
    _check_rows(ctx.rows)
    impls = {(r["name"], r["impl"]) for r in ctx.rows}
    assert ("batchnorm train fwd+bwd", "fast") in impls and ("batchnorm infer fwd", "reference") in impls
    fast = next(r for r in ctx.rows if r["impl"] == "fast" and "train" in r["name"])
    assert {"fwd_ms", "bwd_ms"} <= fast.keys()


def test_darknet_timing_rows(ctx):
    """With DARKNET_DIR set, darknet_time.c compiles and its rows give ratio_to_darknet."""
    dirs = bench.darknet_dirs_from_env()
    if not dirs:
        pytest.skip("DARKNET_DIR is not set")
    ctx.darknet = [b for b in (bench.darknet_build(d, ctx) for d in dirs) if b]
    assert ctx.darknet, ctx.notes
    bench.batchnorm_section(ctx, shapes=[(2, 3, 4, 5)])
    attach_ratios(ctx.rows)
    darknet = [r for r in ctx.rows if r["impl"].startswith("darknet")]
    assert len(darknet) == 2 * len(ctx.darknet)
    fast = next(r for r in ctx.rows if r["impl"] == "fast" and "train" in r["name"])
    base = min((r for r in darknet if "train" in r["name"]), key=lambda r: r["median_ms"])
    assert fast["ratio_to_darknet"] == pytest.approx(fast["median_ms"] / base["median_ms"])


def test_network_section_on_a_small_network(ctx):
    """yolov3-tiny's layer types at 64x64 (the net-tiny64 golden case) through the network section."""
    case = GOLDEN / "net-tiny64"
    ctx.cfg = case / "network.cfg"
    ctx.weights = case / "weights.weights"
    network = bench.load_benchmark("bench_network")
    network.network_section(ctx)
    attach_ratios(ctx.rows)
    _check_rows(ctx.rows)
    fast = next(r for r in ctx.rows if r["impl"] == "fast")
    assert fast["gflops"] > 0
    if any(r["impl"].startswith("opencv") for r in ctx.rows):
        assert "ratio_to_opencv" in fast
        assert ctx.comparisons
        layers = {c["layer"]: c for c in ctx.comparisons}
        assert 0 in layers and layers[0]["opencv_layer"] == "leaky_1"
        for c in ctx.comparisons:
            assert 0 <= c["differing_fraction"] <= 1 and c["median_ulp"] <= c["max_ulp"]


def test_cfg_with_batch(ctx, tmp_path):
    network = bench.load_benchmark("bench_network")
    ctx.cfg = GOLDEN / "net-tiny64" / "network.cfg"
    path = network._cfg_with_batch(ctx, 4)
    from darkpy.network import load_network
    net = load_network(path)
    assert net.batch == 4 and net.subdivisions == 1


def test_main_writes_json(tmp_path, monkeypatch):
    monkeypatch.delenv("DARKNET_DIR", raising=False)
    out = tmp_path / "bench.json"
    rc = bench.main(["--quick", "--only", "batchnorm", "--threads", "1", "--repeats", "1", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["machine"]["model"] and data["machine"]["threads_measured"] == [1]
    _check_rows(data["rows"])
    assert all(r["name"].startswith("batchnorm") for r in data["rows"])
    assert {r["shape"] for r in data["rows"]} == {bench.shape_str(s) for s in bench.BATCHNORM_SHAPES}


def test_bad_options():
    from darkpy.errors import DarkpyError
    with pytest.raises(DarkpyError):
        bench.main(["--only", "nonsense"])
    with pytest.raises(DarkpyError):
        bench.main(["--threads", "999"])
