"""GPU rows for ``darkpy bench``: batchnorm steps and network forward/backward on the device.

The rows have the fields of ``benchmarks/bench_batchnorm.py``'s rows (``name``,
``shape``, ``impl``, ``threads``, ``median_ms``, ``min_ms``) with ``impl``
``cuda-<profile>`` and ``device`` naming the GPU.  Timing brackets each step with
``cuda.synchronize()``; the buffers stay on the device, so no transfer is timed.
Before timing, each benchmark checks that the device computed the CPU's bits
(``bitwise`` in the row) for the strict profile.

Under the CUDA simulator the numbers only show that the code runs.
"""

import statistics
import time

import numpy as np

from darkpy.check import bitwise_equal


def _times_ms(step, repeat):
    from numba import cuda
    times = []
    for _ in range(repeat):
        cuda.synchronize()
        t0 = time.perf_counter()
        step()
        cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), min(times)


def batchnorm_rows(shapes=((1, 16, 52, 52),), repeat=5, profile="strict"):
    """Train (forward + backward) and inference steps of a [batchnorm] layer per shape."""
    from darkpy.cuda import describe
    from darkpy.cuda.network import _kernels, backward_batchnorm, forward_batchnorm, to_device
    from darkpy.cuda.network import _single_layer_net
    from darkpy.layers import batchnorm
    k = _kernels(profile)
    rows = []
    for shape in shapes:
        batch, c, h, w = shape
        rng = np.random.default_rng(0)
        l = batchnorm.make_batchnorm_layer(batch, w, h, c)
        l.scales[:] = rng.standard_normal(c).astype(np.float32)
        l.rolling_variance[:] = 1
        x = rng.standard_normal(batch * c * h * w).astype(np.float32)
        delta = rng.standard_normal(x.size).astype(np.float32)
        for name, train in (("train fwd+bwd", 1), ("infer fwd", 0)):
            cpu = batchnorm.make_batchnorm_layer(batch, w, h, c)
            for field in ("scales", "rolling_variance"):
                getattr(cpu, field)[:] = getattr(l, field)
            d = to_device(l)
            net = _single_layer_net(l, x, np.zeros(x.size, np.float32), None, train)

            def step():
                forward_batchnorm(d, net, k)
                if train:
                    d.delta.copy_to_device(delta)
                    backward_batchnorm(d, net, k)

            step()
            bitwise = None
            if profile == "strict":
                from types import SimpleNamespace
                cpu_net = SimpleNamespace(input=x, delta=np.zeros(x.size, np.float32), train=train)
                cpu.forward(cpu, cpu_net)
                if train:
                    cpu.delta[:] = delta
                    cpu.backward(cpu, cpu_net)
                bitwise = bitwise_equal(cpu.output, d.output.copy_to_host()) and (
                    not train or bitwise_equal(cpu.delta, d.delta.copy_to_host()))
            median_ms, min_ms = _times_ms(step, repeat)
            rows.append(dict(name=name, shape=shape, impl=f"cuda-{profile}", threads=None,
                             median_ms=median_ms, min_ms=min_ms, device=describe(), bitwise=bitwise))
    return rows


def network_rows(net, repeat=3, profile="strict"):
    """``forward`` (inference) and ``forward+backward`` (training) of a built darkpy
    ``Network`` (with its input, and truth for training) on the device."""
    from darkpy.cuda import describe
    from darkpy.cuda.network import DeviceNetwork
    dev = DeviceNetwork(net, profile)
    rows = []
    shape = (net.batch, net.c, net.h, net.w)
    for name, train in (("network forward", 0), ("network forward+backward", 1)):
        net.train = train

        def step():
            dev.forward()
            if train:
                dev.backward()

        step()
        median_ms, min_ms = _times_ms(step, repeat)
        rows.append(dict(name=name, shape=shape, impl=f"cuda-{profile}", threads=None,
                         median_ms=median_ms, min_ms=min_ms, device=describe(), bitwise=None))
    return rows
