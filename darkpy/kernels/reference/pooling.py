"""Reference kernels of the loops darknet keeps inside its layer files.

Loop for loop transliterations of ``forward_maxpool_layer``/``backward_maxpool_layer``
(maxpool_layer.c), ``forward_avgpool_layer``/``backward_avgpool_layer``
(avgpool_layer.c), the copy loop of ``forward_crop_layer`` (crop_layer.c) and
``forward_dropout_layer``/``backward_dropout_layer`` (dropout_layer.c).  Same
loop order, same index arithmetic, float arithmetic kept in float32 as in C.
The fast twins in ``darkpy/kernels/pooling.py`` must agree with these bit for bit.

Buffers are flat 1-D arrays: ``float32`` for data, ``int32`` for maxpool's
``indexes``, and a ``darkpy.crand`` state (``uint32``) for dropout's draws.
"""

import numpy as np

from darkpy.crand import rand_uniform_r
from darkpy.kernels import kernel

#: C's FLT_MAX (float.h) as a float32: maxpool starts every window at -FLT_MAX.
FLT_MAX = np.float32(3.4028234663852886e+38)


@kernel
def c_div(a, b):
    """C's integer division (truncates toward zero), for ``-pad/2`` with a negative pad."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


@kernel
def forward_maxpool(batch, in_h, in_w, c, out_h, out_w, size, stride, pad, input, output, indexes):
    """darknet's ``forward_maxpool_layer``.

    Every output is the largest input of its ``size`` x ``size`` window, the
    window starting at ``(-pad/2, -pad/2)`` (C's truncating division) plus
    ``stride`` times the output position.  Positions outside the image count as
    ``-FLT_MAX``; the first strictly larger value wins (ties keep the earlier
    one, NaN never wins).  ``indexes`` receives the flat input index of the
    winner, or -1 when nothing beat ``-FLT_MAX``.
    """
    w_offset = c_div(-pad, 2)
    h_offset = c_div(-pad, 2)
    h = out_h
    w = out_w
    for b in range(batch):
        for k in range(c):
            for i in range(h):
                for j in range(w):
                    out_index = j + w * (i + h * (k + c * b))
                    max = -FLT_MAX
                    max_i = -1
                    for n in range(size):
                        for m in range(size):
                            cur_h = h_offset + i * stride + n
                            cur_w = w_offset + j * stride + m
                            index = cur_w + in_w * (cur_h + in_h * (k + b * c))
                            valid = cur_h >= 0 and cur_h < in_h and cur_w >= 0 and cur_w < in_w
                            val = input[index] if valid else -FLT_MAX
                            max_i = index if val > max else max_i
                            max = val if val > max else max
                    output[out_index] = max
                    indexes[out_index] = max_i


@kernel
def backward_maxpool(batch, c, out_h, out_w, indexes, delta, net_delta):
    """darknet's ``backward_maxpool_layer``: ``net_delta[indexes[i]] += delta[i]`` in output order.

    With overlapping windows (stride < size) one input gathers several deltas,
    added in increasing output index as in C.  An index of -1 (a window where
    nothing beat -FLT_MAX) makes darknet write just before ``net.delta``
    (outside the buffer); it is skipped here, leaving ``net_delta`` as darknet does.
    """
    h = out_h
    w = out_w
    for i in range(h * w * c * batch):
        index = indexes[i]
        if index >= 0:
            net_delta[index] += delta[i]


@kernel
def forward_avgpool(batch, h, w, c, input, output):
    """darknet's ``forward_avgpool_layer``: each channel's float sum, then ``/= h*w``.

    The sum accumulates in float32 in input order; ``h*w`` is converted to float
    for the division (C's ``float /= int``).
    """
    for b in range(batch):
        for k in range(c):
            out_index = k + b * c
            output[out_index] = np.float32(0)
            for i in range(h * w):
                in_index = i + h * w * (k + b * c)
                output[out_index] += input[in_index]
            output[out_index] /= np.float32(h * w)


@kernel
def backward_avgpool(batch, h, w, c, delta, net_delta):
    """darknet's ``backward_avgpool_layer``: ``net_delta[in] += delta[out] / (float)(h*w)``."""
    for b in range(batch):
        for k in range(c):
            out_index = k + b * c
            for i in range(h * w):
                in_index = i + h * w * (k + b * c)
                net_delta[in_index] += delta[out_index] / np.float32(h * w)


@kernel
def forward_crop(batch, h, w, c, out_h, out_w, dh, dw, flip, scale, trans, input, output):
    """The copy loop of darknet's ``forward_crop_layer``.

    Output pixel ``(i, j)`` reads input row ``i + dh`` and column ``j + dw``
    (``w - dw - j - 1`` when flipped), as ``input*scale + trans`` in float.
    The offsets, flip and the (scale, trans) pair are chosen by the layer.
    """
    scale = np.float32(scale)
    trans = np.float32(trans)
    count = 0
    for b in range(batch):
        for k in range(c):
            for i in range(out_h):
                for j in range(out_w):
                    if flip:
                        col = w - dw - j - 1
                    else:
                        col = j + dw
                    row = i + dh
                    index = col + w * (row + h * (k + c * b))
                    output[count] = input[index] * scale + trans
                    count += 1


@kernel
def forward_dropout(n, probability, scale, state, rand, input):
    """darknet's ``forward_dropout_layer`` (training): one ``rand_uniform(0, 1)`` per element.

    The draw is kept in ``rand``; an element whose draw is below ``probability``
    becomes 0, any other is multiplied by ``scale`` (both float32 as in C).
    ``state`` is the ``darkpy.crand`` generator the draws come from, in element order.
    """
    probability = np.float32(probability)
    scale = np.float32(scale)
    for i in range(n):
        r = rand_uniform_r(state, np.float32(0), np.float32(1))
        rand[i] = r
        if r < probability:
            input[i] = np.float32(0)
        else:
            input[i] *= scale


@kernel
def backward_dropout(n, probability, scale, rand, delta):
    """darknet's ``backward_dropout_layer``: the forward's mask and scale applied to ``delta``."""
    probability = np.float32(probability)
    scale = np.float32(scale)
    for i in range(n):
        r = rand[i]
        if r < probability:
            delta[i] = np.float32(0)
        else:
            delta[i] *= scale
