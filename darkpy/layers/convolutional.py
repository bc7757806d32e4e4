"""``[convolutional]``: darknet's convolutional_layer.c and ``parse_convolutional`` of parser.c.

The convolution is darknet's: per image ``i`` and group ``j``, ``im2col`` of
the group's input channels into ``net.workspace`` and one
``gemm(0,0, m=n/groups, n=out_h*out_w, k=size*size*c/groups)`` of the group's
filters into the output.  A 1x1 layer skips im2col and hands the input itself
to gemm as the column matrix (so darknet's 1x1 layers ignore ``stride``: with
stride > 1 they read the first out_h*out_w pixels of every plane; we copy
that, and warn).  Then batch normalisation on the layer itself (darknet calls
``forward_batchnorm_layer(l, net)``) or ``add_bias``, then the activation.

Backward: activation gradient, batchnorm backward or ``backward_bias``, then
per image and group ``weight_updates += delta * columns^T`` (gemm(0,1)) and, when
the network has a delta, ``columns = weights^T * delta`` (gemm(1,0) with BETA 0)
into the workspace, which ``col2im`` ADDS into ``net.delta``.  For a 1x1 layer
darknet writes gemm(1,0)'s result straight into ``net.delta`` with BETA 0, so a
1x1 layer OVERWRITES the previous layer's delta (every element is first
multiplied by 0: -0 for a negative value, NaN for inf/NaN) where a larger kernel
adds to it.  Both are copied here.

``update`` is darknet's CPU SGD step (``update_convolutional_layer``), all in
float: ``biases += (lr/batch)*bias_updates``, ``bias_updates *= momentum``, the
same for scales, then ``weight_updates += (-decay*batch)*weights``,
``weights += (lr/batch)*weight_updates``, ``weight_updates *= momentum``, with
``lr = learning_rate*learning_rate_scale``.  darknet has no CPU Adam: ``adam``
only allocates ``m``/``v`` (as darknet does) and the update ignores it.
"""

import math
import warnings

import numpy as np

from darkpy.crand import STATE, rand_r, RAND_MAX
from darkpy.errors import CfgError, DarkpyError, DarkpyWarning, ShapeError
from darkpy.kernels import active, family, kernel
from darkpy.kernels.reference.activations import check_activation, get_activation
from darkpy.kernels.reference.im2col import out_size
from darkpy.layer import Layer, ones, zeros
from darkpy.layers import batchnorm

f32 = np.float32

# darknet's rand_normal keeps a spare Box-Muller value in static variables:
# [have_spare, rand1, rand2], shared by every caller in the process.
_NORMAL_SPARE = np.zeros(3, np.float64)


@kernel
def rand_normal_fill(state, spare, scale, out):
    """``out[i] = scale*rand_normal()`` for every i, darknet's utils.c ``rand_normal``.

    Box-Muller on C's ``rand()``: ``rand1 = -2*log(max(rand()/(double)RAND_MAX, 1e-100))``,
    ``rand2 = rand()/(double)RAND_MAX * TWO_PI`` (TWO_PI is a float literal, promoted),
    returning ``sqrt(rand1)*cos(rand2)`` then, on the next call, the spare
    ``sqrt(rand1)*sin(rand2)``, each rounded to float; the product with the
    float ``scale`` is float.
    """
    two_pi = np.float64(np.float32(6.2831853071795864769252866))
    for i in range(out.shape[0]):
        if spare[0] != 0:
            spare[0] = 0
            r = np.float32(math.sqrt(spare[1]) * math.sin(spare[2]))
        else:
            spare[0] = 1
            rand1 = np.float64(rand_r(state)) / np.float64(RAND_MAX)
            if rand1 < 1e-100:
                rand1 = 1e-100
            spare[1] = -2 * math.log(rand1)
            spare[2] = (np.float64(rand_r(state)) / np.float64(RAND_MAX)) * two_pi
            r = np.float32(math.sqrt(spare[1]) * math.cos(spare[2]))
        out[i] = scale * r


def _where(section, params, key=None):
    opt = section.option(key) if key else None
    return dict(path=section.path, line=opt.line if opt is not None else section.line,
                section=section.header, layer=params.index)


def parse(section, params):
    """darknet's ``parse_convolutional``.

    Options: ``filters`` (1), ``size`` (1), ``stride`` (1), ``pad`` (0; nonzero
    means ``padding = size/2``), ``padding`` (0), ``groups`` (1), ``activation``
    (logistic), ``batch_normalize`` (0), ``binary``/``xnor`` (refused: darkpy
    does not implement XNOR nets), ``flipped`` (0), ``dot`` (0).
    """
    n = section.find_int("filters", 1)
    size = section.find_int("size", 1)
    stride = section.find_int("stride", 1)
    pad = section.find_int("pad", 0)
    padding = section.find_int("padding", 0)
    groups = section.find_int("groups", 1)
    if pad:
        padding = size // 2
    activation_s = section.find_str("activation", "logistic")
    try:
        activation = get_activation(activation_s)
    except CfgError as e:
        raise CfgError(e.message, **_where(section, params, "activation")) from None
    if not (params.h and params.w and params.c):
        raise ShapeError("the layer before [convolutional] must output an image "
                         f"(it outputs {params.c}x{params.h}x{params.w})", **_where(section, params))
    batch_normalize = section.find_int("batch_normalize", 0)
    binary = section.find_int("binary", 0)
    xnor = section.find_int("xnor", 0)
    for key, value in (("binary", binary), ("xnor", xnor)):
        if value:
            raise CfgError(f"{key}={value}: binary/XNOR convolutions are not supported by darkpy",
                           **_where(section, params, key))
    for key, value, low in (("filters", n, 1), ("size", size, 1), ("stride", stride, 1),
                            ("groups", groups, 1), ("padding", padding, 0)):
        if value < low:
            raise CfgError(f"{key}={value}: must be at least {low}", **_where(section, params, key))
    try:
        l = make_convolutional_layer(params.batch, params.h, params.w, params.c, n, groups, size,
                                     stride, padding, activation, batch_normalize, binary, xnor,
                                     params.net.adam if params.net is not None else 0)
    except ShapeError as e:
        key = getattr(e, "option", None)
        raise ShapeError(e.message, **_where(section, params, key)) from None
    l.flipped = section.find_int("flipped", 0)
    l.dot = f32(section.find_float("dot", 0))
    return l


def _shape_error(message, option):
    e = ShapeError(message)
    e.option = option
    return e


def make_convolutional_layer(batch, h, w, c, n, groups, size, stride, padding, activation,
                             batch_normalize, binary, xnor, adam):
    """darknet's ``make_convolutional_layer``.

    ``out_h = (h + 2*padding - size)/stride + 1`` (C division), likewise out_w;
    allocates weights/weight_updates (``c/groups*n*size*size``), biases and
    bias_updates (n), output/delta (``batch*outputs``), and with batch_normalize
    scales (1), scale_updates, mean, variance, mean_delta, variance_delta,
    rolling_mean, rolling_variance, x, x_norm; with adam m, v, bias_m/v,
    scale_m/v.  Weights are ``scale*rand_normal()`` from C's ``rand()`` stream
    (``darkpy.crand``) with darknet's ``scale = sqrt(2./(size*size*c/groups))``.
    ``workspace_size`` is darknet's ``get_workspace_size`` in bytes.
    Raises ``ShapeError`` for a shape darknet cannot compute.
    """
    batch, h, w, c, n, groups, size, stride, padding = (
        int(v) for v in (batch, h, w, c, n, groups, size, stride, padding))
    if binary or xnor:
        raise CfgError("binary/XNOR convolutions are not supported by darkpy")
    for name, value, low in (("batch", batch, 1), ("h", h, 1), ("w", w, 1), ("c", c, 1),
                             ("filters", n, 1), ("groups", groups, 1), ("size", size, 1),
                             ("stride", stride, 1), ("padding", padding, 0)):
        if value < low:
            raise _shape_error(f"convolutional: {name}={value} must be at least {low}", name)
    if n % groups:
        raise _shape_error(f"convolutional: filters={n} is not a multiple of groups={groups}", "groups")
    if c % groups:
        raise _shape_error(f"convolutional: the {c} input channels are not a multiple of "
                           f"groups={groups}", "groups")
    if size == 1 and padding > 0:
        # darknet's 1x1 path hands the unpadded input to gemm as if it were padded: it would
        # read past the end of the input buffer
        raise _shape_error(f"convolutional: size=1 with padding={padding}: darknet's 1x1 path "
                           "ignores padding and reads outside the input", "padding")
    activation = check_activation(activation)

    l = Layer("convolutional")
    l.groups = groups
    l.h = h
    l.w = w
    l.c = c
    l.n = n
    l.binary = binary
    l.xnor = xnor
    l.batch = batch
    l.stride = stride
    l.size = size
    l.pad = padding
    l.batch_normalize = int(batch_normalize)

    l.out_h = out_size(h, size, stride, padding)
    l.out_w = out_size(w, size, stride, padding)
    if l.out_h < 1 or l.out_w < 1:
        raise _shape_error(f"convolutional: size={size} with stride={stride} and padding={padding} "
                           f"on a {h}x{w} input gives a {l.out_h}x{l.out_w} output", "size")
    if size == 1 and stride > 1:
        warnings.warn(f"convolutional: size=1 stride={stride}: darknet's 1x1 path ignores the stride "
                      "(it reads the first out_h*out_w pixels of each plane); darkpy does the same",
                      DarkpyWarning, stacklevel=2)

    l.nweights = c // groups * n * size * size
    l.nbiases = n
    l.weights = zeros(l.nweights, np.float32)
    l.weight_updates = zeros(l.nweights, np.float32)
    l.biases = zeros(n, np.float32)
    l.bias_updates = zeros(n, np.float32)

    scale = f32(math.sqrt(2. / (size * size * c // groups)))
    rand_normal_fill(STATE, _NORMAL_SPARE, scale, l.weights)

    l.out_c = n
    l.outputs = l.out_h * l.out_w * l.out_c
    l.inputs = l.w * l.h * l.c
    l.output = zeros(l.batch * l.outputs, np.float32)
    l.delta = zeros(l.batch * l.outputs, np.float32)

    l.forward = forward
    l.backward = backward
    l.update = update

    if l.batch_normalize:
        l.scales = ones(n, np.float32)
        l.scale_updates = zeros(n, np.float32)
        l.mean = zeros(n, np.float32)
        l.variance = zeros(n, np.float32)
        l.mean_delta = zeros(n, np.float32)
        l.variance_delta = zeros(n, np.float32)
        l.rolling_mean = zeros(n, np.float32)
        l.rolling_variance = zeros(n, np.float32)
        l.x = zeros(l.batch * l.outputs, np.float32)
        l.x_norm = zeros(l.batch * l.outputs, np.float32)
    if adam:
        l.m = zeros(l.nweights, np.float32)
        l.v = zeros(l.nweights, np.float32)
        l.bias_m = zeros(n, np.float32)
        l.scale_m = zeros(n, np.float32)
        l.bias_v = zeros(n, np.float32)
        l.scale_v = zeros(n, np.float32)

    l.workspace_size = get_workspace_size(l)
    l.activation = activation
    return l


def get_workspace_size(l):
    """darknet's ``get_workspace_size`` (CPU): ``out_h*out_w*size*size*c/groups`` floats, in bytes."""
    return l.out_h * l.out_w * l.size * l.size * l.c // l.groups * 4


def _check_net(l, net, need_delta=False):
    """Refuse network buffers smaller than what darknet's loops read and write."""
    def check(name, buf, need):
        if not (isinstance(buf, np.ndarray) and buf.dtype == np.float32 and buf.ndim == 1):
            raise DarkpyError(f"convolutional: net.{name} must be a 1-D float32 array, got "
                              f"{type(buf).__name__}")
        if buf.shape[0] < need:
            raise DarkpyError(f"convolutional: net.{name} holds {buf.shape[0]} floats, the layer "
                              f"needs {need}")
    check("input", net.input, l.inputs * l.batch)
    if l.size != 1:  # a 1x1 layer hands gemm the input itself
        check("workspace", net.workspace, l.workspace_size // 4)
    if need_delta and net.delta is not None:
        check("delta", net.delta, l.inputs * l.batch)


def forward(l, net):
    """darknet's ``forward_convolutional_layer`` (without the XNOR path).

    With the fast kernels a layer with size > 1 runs ``gemm_im2col`` per image and group:
    the same products from the same floats, with B's strips packed straight from the input
    instead of through ``net.workspace`` (left unwritten), and with ``c_zero``: those calls
    write every element of ``l.output`` starting from the +0 that ``fill_cpu`` would have
    stored, so the fill itself is skipped.  The reference kernels run darknet's literal
    sequence: fill_cpu, then im2col_cpu and gemm.  In inference a batch-normalised layer's
    epilogue (forward_batchnorm_layer, then activate_array) is one kernel call,
    ``batchnorm_forward_infer_activate``, whose reference twin is those two calls.
    """
    _check_net(l, net)
    blas = family("blas")
    gemm_family = family("gemm")
    gemm = gemm_family.gemm
    im2col_cpu = family("im2col").im2col_cpu
    fused = active() == "fast" and l.size != 1
    if not fused:
        blas.fill_cpu(l.outputs * l.batch, f32(0), l.output, 1)

    m = l.n // l.groups
    k = l.size * l.size * l.c // l.groups
    n = l.out_w * l.out_h
    group_in = l.c // l.groups * l.h * l.w
    for i in range(l.batch):
        for j in range(l.groups):
            a = l.weights[j * l.nweights // l.groups:]
            b = net.workspace
            c = l.output[(i * l.groups + j) * n * m:]
            im = net.input[(i * l.groups + j) * group_in:]
            if l.size == 1:
                b = im
            elif fused:  # the (i, j) blocks of m*n outputs tile l.output exactly
                gemm_family.gemm_im2col(im, l.c // l.groups, l.h, l.w, l.size, l.stride, l.pad,
                                        m, n, k, 1, a, k, 1, c, n, c_zero=True)
                continue
            else:
                im2col_cpu(im, l.c // l.groups, l.h, l.w, l.size, l.stride, l.pad, b)
            gemm(0, 0, m, n, k, 1, a, k, b, n, 1, c, n)

    if l.batch_normalize and not net.train:
        # forward_batchnorm_layer (inference) then activate_array, as one kernel call: the
        # reference twin is those two calls; the fast one a single pass per channel
        blas.batchnorm_forward_infer_activate(l.output, l.output, l.x, l.rolling_mean, l.rolling_variance,
                                              l.scales, l.biases, l.batch, l.out_c, l.out_h * l.out_w,
                                              l.activation)
        return
    if l.batch_normalize:
        batchnorm.forward(l, net)
    else:
        blas.add_bias(l.output, l.biases, l.batch, l.n, l.out_h * l.out_w)

    family("activations").activate_array(l.output, l.outputs * l.batch, l.activation)


def backward(l, net):
    """darknet's ``backward_convolutional_layer``.

    With the fast kernels, a layer with size > 1 and no ``net.delta`` (the first layer)
    computes the weight update with ``gemm_nt_im2col``: darknet's im2col_cpu + gemm(0,1)
    without the column matrix in ``net.workspace``.  Where net.delta exists the column
    matrix is still written, because darknet's delta step, gemm(1,0) with BETA 0 into the
    workspace, starts from ``columns*0``: -0 for a negative column element, NaN for inf,
    which can show in net.delta's bits.
    """
    _check_net(l, net, need_delta=True)
    blas = family("blas")
    gemm_family = family("gemm")
    gemm = gemm_family.gemm
    fused = active() == "fast" and l.size != 1 and net.delta is None
    im2col = family("im2col")
    m = l.n // l.groups
    n = l.size * l.size * l.c // l.groups
    k = l.out_w * l.out_h

    family("activations").gradient_array(l.output, l.outputs * l.batch, l.activation, l.delta)

    if l.batch_normalize:
        batchnorm.backward(l, net)
    else:
        blas.backward_bias(l.bias_updates, l.delta, l.batch, l.n, k)

    group_in = l.c // l.groups * l.h * l.w
    for i in range(l.batch):
        for j in range(l.groups):
            a = l.delta[(i * l.groups + j) * m * k:]
            b = net.workspace
            c = l.weight_updates[j * l.nweights // l.groups:]
            im = net.input[(i * l.groups + j) * group_in:]

            if l.size == 1:
                b = im
                gemm(0, 1, m, n, k, 1, a, k, b, k, 1, c, n)
            elif fused:  # the same gemm(0,1), B's strips built from the input image
                gemm_family.gemm_nt_im2col(m, n, k, 1, a, k, im, l.c // l.groups, l.h, l.w, l.size, l.stride,
                                           l.pad, 1, c, n)
            else:
                im2col.im2col_cpu(im, l.c // l.groups, l.h, l.w, l.size, l.stride, l.pad, b)
                gemm(0, 1, m, n, k, 1, a, k, b, k, 1, c, n)

            if net.delta is not None:
                imd = net.delta[(i * l.groups + j) * group_in:]
                a = l.weights[j * l.nweights // l.groups:]
                b = l.delta[(i * l.groups + j) * m * k:]
                c = net.workspace
                if l.size == 1:
                    c = imd

                gemm(1, 0, n, k, m, 1, a, n, b, k, 0, c, k)

                if l.size != 1:
                    im2col.col2im_cpu(net.workspace, l.c // l.groups, l.h, l.w, l.size, l.stride,
                                      l.pad, imd)


def update(l, a):
    """darknet's ``update_convolutional_layer``: SGD with momentum and weight decay, in float.

    ``learning_rate = a.learning_rate*l.learning_rate_scale`` (float product);
    ``learning_rate/batch`` and ``-decay*batch`` convert the int batch to float.
    """
    blas = family("blas")
    learning_rate = f32(f32(a.learning_rate) * f32(l.learning_rate_scale))
    momentum = f32(a.momentum)
    decay = f32(a.decay)
    batch = int(a.batch)
    rate = f32(learning_rate / f32(batch))

    blas.axpy_cpu(l.n, rate, l.bias_updates, 1, l.biases, 1)
    blas.scal_cpu(l.n, momentum, l.bias_updates, 1)

    if l.scales is not None:
        blas.axpy_cpu(l.n, rate, l.scale_updates, 1, l.scales, 1)
        blas.scal_cpu(l.n, momentum, l.scale_updates, 1)

    blas.axpy_cpu(l.nweights, f32(-decay * f32(batch)), l.weights, 1, l.weight_updates, 1)
    blas.axpy_cpu(l.nweights, rate, l.weight_updates, 1, l.weights, 1)
    blas.scal_cpu(l.nweights, momentum, l.weight_updates, 1)
