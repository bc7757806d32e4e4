"""Strict shortcut/upsample/maxpool kernels against the CPU reference, bitwise (CUDA simulator)."""

import os

os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from darkpy import cuda as dcuda  # noqa: E402

if not dcuda.available():
    pytest.skip("no CUDA device and the simulator was not selected first", allow_module_level=True)

from darkpy.check import bitwise_equal  # noqa: E402
from darkpy.errors import ShapeError  # noqa: E402
from darkpy.kernels import pooling_cuda, shapes_cuda  # noqa: E402
from darkpy.kernels.reference import blas as R  # noqa: E402
from darkpy.kernels.reference import pooling as P  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def data(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    if n > 4:
        x[rng.integers(n)] = np.nan
        x[rng.integers(n)] = -np.inf
    return x


def same(a, b):
    assert bitwise_equal(a, b), (a.view(np.uint32), b.view(np.uint32))


@pytest.mark.parametrize("w1,h1,c1,w2,h2,c2", [(4, 4, 2, 2, 2, 3), (2, 2, 3, 4, 4, 2), (3, 3, 2, 3, 3, 2)])
def test_shortcut(w1, h1, c1, w2, h2, c2):
    batch = 2
    add, out = data(batch * w1 * h1 * c1, 1), data(batch * w2 * h2 * c2, 2)
    a, b = out.copy(), out.copy()
    R.shortcut_cpu(batch, w1, h1, c1, add, w2, h2, c2, .5, 1.5, a)
    shapes_cuda.shortcut_gpu(batch, w1, h1, c1, add, w2, h2, c2, .5, 1.5, b)
    same(a, b)


def test_shortcut_refuses_mixed_scaling():
    with pytest.raises(ShapeError):
        shapes_cuda.shortcut_gpu(1, 4, 2, 1, np.zeros(8, np.float32), 2, 2, 1, 1, 1, np.zeros(4, np.float32))


@pytest.mark.parametrize("forward", [1, 0])
def test_upsample(forward):
    batch, c, w, h, stride = 2, 2, 3, 2, 2
    small, big = data(batch * c * w * h, 3), data(batch * c * w * h * stride * stride, 4)
    a_small, b_small, a_big, b_big = small.copy(), small.copy(), big.copy(), big.copy()
    R.upsample_cpu(a_small, w, h, c, batch, stride, forward, .75, a_big)
    shapes_cuda.upsample_gpu(b_small, w, h, c, batch, stride, forward, .75, b_big)
    same(a_small, b_small)
    same(a_big, b_big)


@pytest.mark.parametrize("size,stride,pad", [(2, 2, 0), (2, 1, 1), (3, 2, 1)])
def test_maxpool(size, stride, pad):
    batch, c, h, w = 2, 2, 4, 5
    out_h = (h + pad - size) // stride + 1
    out_w = (w + pad - size) // stride + 1
    x = data(batch * c * h * w, 5)
    n = batch * c * out_h * out_w
    out_a, out_b = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ix_a, ix_b = np.zeros(n, np.int32), np.zeros(n, np.int32)
    P.forward_maxpool(batch, h, w, c, out_h, out_w, size, stride, pad, x, out_a, ix_a)
    pooling_cuda.forward_maxpool_gpu(batch, h, w, c, out_h, out_w, size, stride, pad, x, out_b, ix_b)
    same(out_a, out_b)
    assert np.array_equal(ix_a, ix_b)
    delta = data(n, 6)
    nd_a = data(x.size, 7)
    nd_b = nd_a.copy()
    P.backward_maxpool(batch, c, out_h, out_w, ix_a, delta, nd_a)
    pooling_cuda.backward_maxpool_gpu(batch, h, w, c, out_h, out_w, size, stride, pad, ix_b, delta, nd_b)
    same(nd_a, nd_b)


@pytest.mark.parametrize("forward", [1, 0])
def test_reorg_and_flatten(forward):
    batch, c, h, w, stride = 2, 8, 2, 4, 2
    x = data(batch * c * h * w, 8)
    a, b = np.zeros_like(x), np.zeros_like(x)
    R.reorg_cpu(x, w, h, c, batch, stride, forward, a)
    shapes_cuda.reorg_gpu(x, w, h, c, batch, stride, forward, b)
    same(a, b)
    from numba import cuda
    a = x.copy()
    d = cuda.to_device(x)
    R.flatten(a, h * w, c, batch, forward)
    shapes_cuda.flatten_gpu(d, h * w, c, batch, forward)
    same(a, d.copy_to_host())


@pytest.mark.parametrize("options", ["stride=2", "stride=2\nreverse=1", "stride=2\nflatten=1"])
def test_reorg_layer_in_a_device_network(tmp_path, options):
    from darkpy.cuda.network import DeviceNetwork
    from darkpy.description import load
    from darkpy.network import backward_network, build_network, forward_network
    """Plain, reverse and flatten reorg between two convolutions: outputs and deltas
    (reorg backward writes the first layer's delta) equal the CPU network's."""
    cfg = tmp_path / "reorg.cfg"
    cfg.write_text("[net]\nbatch=1\nheight=4\nwidth=4\nchannels=2\n\n"
                   f"[convolutional]\nfilters=8\nsize=1\nstride=1\npad=0\nactivation=linear\n\n"
                   f"[reorg]\n{options}\n\n"
                   f"[convolutional]\nfilters=2\nsize=1\nstride=1\npad=0\nactivation=linear\n")

    def build():
        net = build_network(load(cfg))
        r = np.random.default_rng(3)
        for l in net.layers:
            if l.weights is not None:
                l.weights[:] = r.standard_normal(l.weights.size).astype(np.float32)
        net.input[:] = r.standard_normal(net.input.size).astype(np.float32)
        net.train = 1
        return net

    cpu, host = build(), build()
    dev = DeviceNetwork(host)
    forward_network(cpu)
    dev.forward()
    cpu.layers[-1].delta[:] = 1
    dev.layers[-1].delta.copy_to_device(np.ones(cpu.layers[-1].delta.size, np.float32))
    backward_network(cpu)
    dev.backward()
    for i, l in enumerate(cpu.layers):
        d = dev.pull_layer(i)
        same(l.output, d.output)
        same(l.delta, d.delta)
