"""The ``[yolo]`` layer on the device, as darknet's GPU build splits it.

darknet's ``forward_yolo_layer_gpu`` copies the input to the output and applies
the logistic to x, y, objectness and the classes on the device, then, when
training, copies the output to the host and runs the CPU ``forward_yolo_layer``
(truth matching, deltas, cost) there, and copies the delta back.  We do the same:
the logistic through ``darkpy.kernels.activations_cuda`` (CPU bits), the
training part through the CPU ``yolo_training_deltas`` of ``darkpy.layers.yolo``
on the host twin of the layer (``l.host``).  Backward is ``net.delta += delta``
(``axpy_gpu``).
"""

import numpy as np

from darkpy.kernels.reference.activations import LOGISTIC


def forward_yolo(l, net, k):
    """``darkpy.layers.yolo.forward`` with the logistic on the device and the loss on the host."""
    from darkpy.errors import DarkpyError
    from darkpy.layers import yolo
    size = l.outputs * l.batch
    k.blas.copy_gpu(size, net.input, 1, l.output, 1)
    spatial = l.w * l.h
    for b in range(l.batch):
        for n in range(l.n):
            index = yolo.entry_index(b, n * spatial, 0, l.w, l.h, l.classes, l.outputs)
            k.activations.activate_array_gpu(l.output[index:], 2 * spatial, LOGISTIC)
            index = yolo.entry_index(b, n * spatial, 4, l.w, l.h, l.classes, l.outputs)
            k.activations.activate_array_gpu(l.output[index:], (1 + l.classes) * spatial, LOGISTIC)
    k.blas.fill_gpu(size, 0, l.delta, 1)
    if not net.train:
        return
    host = l.host
    truth = net.host_truth
    if truth is None:
        raise DarkpyError("yolo: training needs net.truth (boxes x, y, w, h, class per image)")
    l.output.copy_to_host(host.output)
    host.delta[:size] = 0
    host.cost[0] = 0
    stats = np.zeros(10, np.float32)
    has_map = host.map is not None
    cmap = host.map if has_map else np.zeros(1, np.int32)
    status = yolo.yolo_training_deltas(host.output, host.delta, truth, host.biases, host.mask, cmap, has_map,
                                       l.batch, l.w, l.h, l.n, l.total, l.classes, l.outputs, l.truths,
                                       l.max_boxes, net.w, net.h, np.float32(l.ignore_thresh),
                                       np.float32(l.truth_thresh), stats)
    if status:
        raise yolo.truth_error(host, status, int(stats[8]), int(stats[9]), truth)
    host.cost[0] = yolo.squared_magnitude_cost(host.delta, size)
    l.delta.copy_to_device(host.delta)


def backward_yolo(l, net, k):
    """``darkpy.layers.yolo.backward`` on the device: ``net.delta += delta``."""
    if net.delta is None:
        return
    k.blas.axpy_gpu(l.batch * l.inputs, 1, l.delta, 1, net.delta, 1)


LAYERS = {"yolo": (forward_yolo, backward_yolo, None)}
