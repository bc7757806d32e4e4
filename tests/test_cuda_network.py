"""The device runner: golden cases through ``check_case_device`` and a small network, bitwise,
under Numba's CUDA simulator; device selection errors.

Simulated cases (strict): every batchnorm case of up to 2,000 elements and two
convolutional cases (1x1 leaky, 1x1 linear with batchnorm); the 3x3 path
(im2col/col2im) runs in the network tests.  The larger cases pass too but take
the simulator from seconds to minutes each (see CUDA.md).
"""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from darkpy import cuda as dcuda  # noqa: E402

if not dcuda.available():
    pytest.skip("no CUDA device and the simulator was not selected first", allow_module_level=True)

from conftest import GOLDEN  # noqa: E402

from darkpy.check import bitwise_equal, ulp_distance  # noqa: E402
from darkpy.cuda.network import DeviceNetwork, check_case_device, run_case_device  # noqa: E402
from darkpy.dump import read_case  # noqa: E402
from darkpy.errors import DarkpyError, DeviceError  # noqa: E402
from darkpy.layer import UpdateArgs  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

@pytest.fixture(autouse=True)
def small_blocks(monkeypatch):
    """The simulator runs one Python thread per CUDA thread: the elementwise kernels of
    activations_cuda/im2col_cuda (one thread per element, geometry-independent results)
    get 32-thread blocks here instead of 512."""
    if dcuda.simulator():
        from darkpy.kernels import activations_cuda, im2col_cuda
        monkeypatch.setattr(activations_cuda, "BLOCK", 32)
        monkeypatch.setattr(im2col_cuda, "BLOCK", 32)


SMALL_BN = ["bn-b1c1h1w1", "bn-b1c3h1w2", "bn-b2c3h5w7", "bn-b2c5h4w4-infer", "bn-b2c6h3w5-infer",
            "bn-b3c5h7w3", "bn-b4c8h1w1"]
CONV = ["conv-b3c5h5w5-n3s1x1p0g1-leaky", "conv-b1c8h6w6-n5s1x1p0g1-linear-bn"]


@pytest.mark.parametrize("name", SMALL_BN + CONV)
def test_golden_case_strict(name):
    case = read_case(GOLDEN / name)
    p = case.params
    if case.kind == "batchnorm":
        assert p["batch"] * p["c"] * p["h"] * p["w"] <= 2000
    result = check_case_device(GOLDEN / name, "strict")
    bad = [(r.name, r.differing, r.max_ulp) for r in result.rows if not r.identical]
    assert result.ok and not bad, bad
    assert len(result.rows) >= (9 if case.kind == "convolutional" else 1)


def test_darknet_gpu_profile_runs_the_emulated_order(monkeypatch):
    """The darknet-gpu layer path on a golden case equals the emulation, and differs from
    the (CPU) golden tensors by a few ULPs where darknet's GPU order differs."""
    from darkpy.kernels import darknet_gpu_cuda
    from darkpy.kernels.reference import darknet_gpu as D
    monkeypatch.setattr(darknet_gpu_cuda, "THREADS", 4)
    case = read_case(GOLDEN / "bn-b2c3h5w7")
    out = run_case_device(case, "darknet-gpu")
    batch, c, spatial = 2, 3, 35
    mean, variance = np.zeros(c, np.float32), np.zeros(c, np.float32)
    D.fast_mean_dg(case.flat("input"), batch, c, spatial, mean, 4)
    D.fast_variance_dg(case.flat("input"), mean, batch, c, spatial, variance, 4)
    assert bitwise_equal(out["mean"], mean) and bitwise_equal(out["variance"], variance)
    ulps = {name: int(ulp_distance(case[name], out[name]).max()) for name in ("mean", "variance", "output")}
    print("darknet-gpu (4 threads) vs the CPU golden tensors, max ULPs:", ulps)
    assert ulps["mean"] > 0 or ulps["variance"] > 0


def test_darknet_gpu_profile_on_a_convolutional_case(monkeypatch):
    """A 1x1 leaky layer under darknet-gpu: the gemm and add_bias are the CPU's, the GPU's
    leaky rounds ``.1f*x`` in float (1 ULP from the CPU's double product on some
    negative inputs); the block-strided backward_bias and the fused update axpy leave
    bias_updates/biases a few ULPs off the CPU golden values."""
    from darkpy.kernels import darknet_gpu_cuda
    monkeypatch.setattr(darknet_gpu_cuda, "THREADS", 4)
    name = "conv-b3c5h5w5-n3s1x1p0g1-leaky"
    case = read_case(GOLDEN / name)
    out = run_case_device(case, "darknet-gpu")
    ulps = {t: int(ulp_distance(case[t], out[t]).max())
            for t in ("output", "delta", "bias_updates", "weights", "biases")}
    print("darknet-gpu vs CPU golden, max ULPs:", ulps)
    assert ulps["output"] <= 1
    assert 0 < max(ulps.values()) < 1000


CFG = """[net]
batch=2
height=3
width=3
channels=2
learning_rate=0.1
momentum=0.9
decay=0.0005

[convolutional]
batch_normalize=1
filters=3
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=2
size=1
stride=1
pad=0
activation=logistic

[batchnorm]
"""


def test_device_network_equals_cpu(tmp_path):
    from darkpy.description import load
    from darkpy.network import backward_network, build_network, forward_network
    cfg = tmp_path / "mini.cfg"
    cfg.write_text(CFG)
    rng = np.random.default_rng(5)

    def build():
        net = build_network(load(cfg))
        r = np.random.default_rng(6)
        for l in net.layers:
            for field in ("weights", "biases", "scales", "rolling_mean", "rolling_variance"):
                buf = getattr(l, field)
                if isinstance(buf, np.ndarray):
                    buf[:] = np.abs(r.standard_normal(buf.size)).astype(np.float32) + np.float32(.1)
        net.input[:] = rng.standard_normal(net.input.size).astype(np.float32)
        return net

    cpu = build()
    rng = np.random.default_rng(5)
    dev_net = build()
    dev = DeviceNetwork(dev_net)
    a = UpdateArgs(batch=2, learning_rate=np.float32(.1), momentum=np.float32(.9), decay=np.float32(.0005))
    cpu.train = dev_net.train = 1
    forward_network(cpu)
    dev.forward()
    last = len(cpu.layers) - 1
    delta = np.random.default_rng(7).standard_normal(cpu.layers[last].delta.size).astype(np.float32)
    cpu.layers[last].delta[:] = delta
    dev.layers[last].delta.copy_to_device(delta)
    backward_network(cpu)
    dev.backward()
    for l in cpu.layers:
        if l.update is not None:
            l.update(l, a)
    dev.update(a)
    for i, l in enumerate(cpu.layers):
        d = dev.pull_layer(i)
        for field in ("output", "delta", "x_norm", "mean", "variance", "rolling_mean", "bias_updates",
                      "scale_updates", "weight_updates", "weights", "biases", "scales"):
            want = getattr(l, field, None)
            if isinstance(want, np.ndarray):
                assert bitwise_equal(want, getattr(d, field)), (i, field)


def test_unsupported_layer_and_kind(tmp_path):
    from darkpy.description import load
    from darkpy.network import build_network
    cfg = tmp_path / "pool.cfg"
    cfg.write_text("[net]\nbatch=1\nheight=4\nwidth=4\nchannels=1\n\n[softmax]\n")
    with pytest.raises(DarkpyError, match="no CUDA implementation"):
        DeviceNetwork(build_network(load(cfg)))
    with pytest.raises(DarkpyError, match="unknown profile"):
        check_case_device(GOLDEN / "bn-b1c1h1w1", "fast")


def test_device_selection():
    assert dcuda.available()
    assert "simulator" in dcuda.require().lower()
    with pytest.raises(DeviceError, match="no CUDA GPU/driver.*simulator"):
        dcuda.require(allow_simulator=False)
    assert dcuda.check_profile("darknet-gpu") == "darknet-gpu"
    assert dcuda.check_device("cuda") == "cuda"
    with pytest.raises(DarkpyError):
        dcuda.check_device("tpu")


def test_no_gpu_without_simulator_is_a_device_error():
    """In a process without the simulator and without a GPU, require() raises DeviceError."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = ("import sys\nfrom darkpy import cuda\nfrom darkpy.errors import DeviceError\n"
            "if cuda.available():\n    sys.exit(3)\n"
            "try:\n    cuda.require()\nexcept DeviceError as e:\n    print(e)\n    sys.exit(0)\nsys.exit(1)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode == 3:
        pytest.skip("a real GPU is present")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("no CUDA GPU/driver:")


YOLO_CFG = """[net]
batch=1
height=4
width=4
channels=2
learning_rate=0.01
momentum=0.9
decay=0.0005

[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
filters=4
size=1
stride=1
pad=0
activation=leaky

[shortcut]
from=-2
activation=linear

[maxpool]
size=2
stride=1

[convolutional]
filters=18
size=1
stride=1
pad=0
activation=linear

[yolo]
mask=0,1,2
anchors=1,1, 2,3, 3,2
classes=1
num=3

[route]
layers=-3

[upsample]
stride=2

[route]
layers=-1,0

[convolutional]
filters=18
size=1
stride=1
pad=0
activation=linear

[yolo]
mask=0,1,2
anchors=1,1, 2,3, 3,2
classes=1
num=3
"""


def test_device_network_yolo_layers_equal_cpu(tmp_path):
    """maxpool (overlapping), shortcut, route, upsample and two yolo layers (training,
    loss on the host) on the device equal the CPU network: outputs, deltas, cost."""
    from darkpy.description import load
    from darkpy.network import backward_network, build_network, forward_network
    cfg = tmp_path / "yolo.cfg"
    cfg.write_text(YOLO_CFG)

    def build():
        net = build_network(load(cfg))
        r = np.random.default_rng(11)
        for l in net.layers:
            for field in ("weights", "biases", "scales", "rolling_mean", "rolling_variance"):
                buf = getattr(l, field)
                if isinstance(buf, np.ndarray) and l.type != "yolo":
                    buf[:] = (r.standard_normal(buf.size) * .5).astype(np.float32)
            if l.rolling_variance is not None:
                l.rolling_variance[:] = np.abs(l.rolling_variance) + np.float32(.1)
        net.input[:] = r.standard_normal(net.input.size).astype(np.float32)
        net.truth[:5] = np.array([.3, .4, .2, .3, 0], np.float32)
        net.truth[5:10] = np.array([.7, .6, .4, .5, 0], np.float32)
        net.train = 1
        return net

    cpu, host = build(), build()
    dev = DeviceNetwork(host)
    forward_network(cpu)
    dev.forward()
    assert bitwise_equal(cpu.cost, host.cost) and cpu.cost[0] > 0
    backward_network(cpu)
    dev.backward()
    for i, l in enumerate(cpu.layers):
        d = dev.pull_layer(i)
        for field in ("output", "delta"):
            if getattr(l, field) is not None:
                assert bitwise_equal(getattr(l, field), getattr(d, field)), (i, l.type, field)


def test_module_entry_point_exit_codes():
    """``python -m darkpy.cuda``: 0 when bitwise, 2 without a device (no simulator, no GPU)."""
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    case = str(GOLDEN / "bn-b1c1h1w1")
    ok = subprocess.run([sys.executable, "-m", "darkpy.cuda", "--simulator", "--quiet", case],
                        env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0 and ok.stdout.startswith("PASS"), ok.stdout + ok.stderr
    none = subprocess.run([sys.executable, "-m", "darkpy.cuda", case], env=env, capture_output=True,
                          text=True, timeout=300)
    if none.returncode == 0:
        pytest.skip("a real GPU is present")
    assert none.returncode == 2 and "no CUDA GPU/driver" in none.stderr, none.stdout + none.stderr


def test_bench_rows_run_and_check_bits(tmp_path):
    """The GPU bench rows (darkpy.cuda.bench) time steps whose results are the CPU's bits."""
    from darkpy.cuda import bench
    from darkpy.description import load
    from darkpy.network import build_network
    rows = bench.batchnorm_rows(shapes=((1, 2, 2, 3),), repeat=1)
    assert [r["name"] for r in rows] == ["train fwd+bwd", "infer fwd"]
    assert all(r["bitwise"] is True and r["min_ms"] > 0 and r["impl"] == "cuda-strict" for r in rows)
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text("[net]\nbatch=1\nheight=2\nwidth=2\nchannels=2\n\n"
                   "[convolutional]\nfilters=2\nsize=1\nstride=1\npad=0\nactivation=leaky\n")
    net = build_network(load(cfg))
    rows = bench.network_rows(net, repeat=1)
    assert [r["name"] for r in rows] == ["network forward", "network forward+backward"]
