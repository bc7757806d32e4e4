"""darknet's ``.weights`` files, read and written byte for byte as darknet does.

Mirrors ``load_weights``, ``load_weights_upto``, ``save_weights``,
``save_weights_upto`` and the per-layer ``load_*_weights`` / ``save_*_weights``
functions of darknet's ``parser.c``.

The file format
---------------
A header, then every parametric layer's tensors back to back, raw
little-endian float32 with no per-layer framing:

* ``int32 major, minor, revision``;
* ``seen`` (images trained on): a 64-bit ``size_t`` when
  ``major*10 + minor >= 2 and major < 1000 and minor < 1000``, else a 32-bit
  ``int``.  darknet always writes ``0, 2, 0`` and a 64-bit ``seen``;
* connected-layer weights were stored transposed (``inputs x outputs``) by
  very old darknets, flagged by ``major > 1000 or minor > 1000``.

Per layer, in network order (layers with ``dontload`` are skipped when
reading, layers with ``dontsave`` when writing):

=================  ==================================================================
convolutional,     biases[n]; if batch_normalize: scales[n], rolling_mean[n],
deconvolutional    rolling_variance[n]; weights[nweights]
connected          biases[outputs]; weights[outputs*inputs]; if batch_normalize:
                   scales, rolling_mean, rolling_variance [outputs each]
batchnorm          scales[c], rolling_mean[c], rolling_variance[c]
rnn                connected sub-layers input_layer, self_layer, output_layer
lstm               connected sub-layers wi, wf, wo, wg, ui, uf, uo, ug
gru                connected sub-layers wz, wr, wh, uz, ur, uh
crnn               convolutional sub-layers input_layer, self_layer, output_layer
local              biases[outputs]; weights[size*size*c*n*out_w*out_h]
=================  ==================================================================

Reading copies darknet's quirks: a convolutional layer with ``numload``
reads that many filters (``l.n = l.numload`` on darknet's local copy, so
``c/groups*numload*size*size`` weights), ``dontloadscales`` skips the batch
norm tensors when reading (never when writing), and ``flipped`` transposes
the weights read from ``(c*size*size) x n`` to ``n x (c*size*size)``.

Where darknet is silent, darkpy is not
--------------------------------------
darknet ``fread``\\ s blindly: a short file leaves a layer half-loaded and the
rest untouched, without a word.  Here the whole file is checked against the
network *before* any array is written:

* a file that runs out inside a layer raises :class:`~darkpy.errors.WeightsError`
  naming the layer, the tensor and the shortfall, and leaves the network
  untouched;
* a file that ends exactly between two layers is what darknet's partial
  files are (``darknet53.conv.74``, written by ``save_weights_upto``): the
  layers it holds are loaded and a :class:`~darkpy.errors.DarkpyWarning`
  names the first layer left with its current values, as darknet leaves them;
* bytes left over after the last layer, and NaN/inf in a loaded tensor, are
  warnings.

Writing goes to a temporary file in the destination directory, which
replaces the destination only once complete (``os.replace``): a failure
midway never leaves a half-written ``.weights`` file, and an existing file is
overwritten only with ``force=True``.
"""

import os
import secrets
import stat
import struct
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from darkpy.errors import DarkpyWarning, WeightsError

#: The version darknet's save_weights_upto writes: major 0, minor 2, revision 0.
SAVE_VERSION = (0, 2, 0)

_FLOAT = 4  # sizeof(float)

# The sub-layers darknet reads and writes, in its order, for each recurrent type.
_RECURRENT_CONNECTED = {
    "rnn": ("input_layer", "self_layer", "output_layer"),
    "lstm": ("wi", "wf", "wo", "wg", "ui", "uf", "uo", "ug"),
    "gru": ("wz", "wr", "wh", "uz", "ur", "uh"),
}
_RECURRENT_CONVOLUTIONAL = {
    "crnn": ("input_layer", "self_layer", "output_layer"),
}


@dataclass(frozen=True)
class WeightsHeader:
    """The header of a ``.weights`` file, as ``load_weights_upto`` reads it."""

    major: int
    minor: int
    revision: int
    #: images seen in training, converted to darknet's ``size_t``
    seen: int
    #: 8 when ``seen`` is stored as a 64-bit size_t, 4 when as a 32-bit int
    seen_bytes: int
    #: connected-layer weights are stored ``inputs x outputs``
    transpose: bool

    @property
    def size(self):
        """Bytes the header occupies."""
        return 12 + self.seen_bytes


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` read."""

    header: WeightsHeader
    #: indexes of the layers whose tensors were read, in order
    layers: tuple
    #: float32 values read
    floats: int
    #: bytes after the last tensor read (0 for an exactly matching file)
    leftover_bytes: int
    #: index of the first layer that wanted weights the file did not have, or None
    stopped_at: int = None


@dataclass
class _Tensor:
    """One contiguous run of float32 values in the file: ``count`` of ``array``."""

    index: int        # layer index in net.layers
    type: str         # that layer's type, for messages
    name: str         # "biases", "weights", "wz.scales", ...
    array: object     # the layer's flat float32 buffer
    count: int
    transpose: tuple = None  # (rows, cols): transpose_matrix applied after reading


# ----------------------------------------------------------------------------- helpers

def _c_int(value):
    """``value`` wrapped to a 32-bit two's-complement int, as the x86 build computes ``int`` sums."""
    return (value + 2**31) % 2**32 - 2**31


def _c_div(a, b):
    """C's int division ``a/b``: truncates toward zero."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


def _error(message, path, t=None):
    if t is None:
        return WeightsError(message, path=path)
    return WeightsError(message, path=path, section=t.type, layer=t.index)


def _floats(nbytes):
    """``nbytes`` as a float count, naming stray bytes that do not make up a float."""
    whole, stray = divmod(nbytes, _FLOAT)
    return f"{whole}" if not stray else f"{whole} (and {stray} stray bytes)"


def _layer_field(l, name, index, path):
    try:
        return getattr(l, name)
    except AttributeError:
        raise WeightsError(f"has no field {name!r}, which its .weights section needs",
                           path=path, section=l.type, layer=index) from None


# ----------------------------------------------------------------------------- header

def _parse_header(head, path, size):
    """Decode a header from the first bytes ``head`` of a file of ``size`` bytes."""
    if size < 12:
        raise WeightsError(f"header needs 12 bytes (int32 major, minor, revision), "
                           f"file has {size}", path=path)
    major, minor, revision = struct.unpack_from("<iii", head, 0)
    # load_weights_upto's test, with the int arithmetic of the C code.
    if _c_int(_c_int(major * 10) + minor) >= 2 and major < 1000 and minor < 1000:
        need, fmt, kind = 20, "<Q", "64-bit size_t"
    else:
        need, fmt, kind = 16, "<i", "32-bit int"
    if size < need:
        raise WeightsError(f"header of version {major}.{minor}.{revision} needs {need} bytes "
                           f"(seen as a {kind}), file has {size}", path=path)
    (seen,) = struct.unpack_from(fmt, head, 12)
    # darknet stores an int seen into its size_t: a negative one wraps around.
    seen %= 2**64
    transpose = major > 1000 or minor > 1000
    return WeightsHeader(major, minor, revision, seen, need - 12, transpose)


def read_header(path):
    """The :class:`WeightsHeader` of the ``.weights`` file at ``path``."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(20)
            size = os.fstat(f.fileno()).st_size
    except OSError as e:
        raise WeightsError(f"cannot read weights file: {e.strerror or e}", path=path) from e
    return _parse_header(head, path, size)


# ----------------------------------------------------------------------------- per-layer plans

def _convolutional_tensors(l, index, type, prefix, loading, path):
    """load_convolutional_weights / save_convolutional_weights: the tensors, in file order."""
    n = l.n
    if loading:
        if l.numload:        # darknet sets l.n = l.numload on its copy of the layer
            n = l.numload
        if l.groups == 0:
            raise WeightsError(f"{prefix}groups is 0: darknet's c/groups divides by zero here",
                               path=path, section=type, layer=index)
        num = _c_div(l.c, l.groups) * n * l.size * l.size
    else:
        num = l.nweights
    tensors = [_Tensor(index, type, prefix + "biases", l.biases, n)]
    if l.batch_normalize and not (loading and l.dontloadscales):
        tensors += [_Tensor(index, type, prefix + "scales", l.scales, n),
                    _Tensor(index, type, prefix + "rolling_mean", l.rolling_mean, n),
                    _Tensor(index, type, prefix + "rolling_variance", l.rolling_variance, n)]
    weights = _Tensor(index, type, prefix + "weights", l.weights, num)
    if loading and l.flipped:
        weights.transpose = (l.c * l.size * l.size, n)
    tensors.append(weights)
    return tensors


def _connected_tensors(l, index, type, prefix, loading, transpose):
    """load_connected_weights / save_connected_weights: the tensors, in file order."""
    weights = _Tensor(index, type, prefix + "weights", l.weights, l.outputs * l.inputs)
    if loading and transpose:
        weights.transpose = (l.inputs, l.outputs)
    tensors = [_Tensor(index, type, prefix + "biases", l.biases, l.outputs), weights]
    if l.batch_normalize and not (loading and l.dontloadscales):
        tensors += [_Tensor(index, type, prefix + "scales", l.scales, l.outputs),
                    _Tensor(index, type, prefix + "rolling_mean", l.rolling_mean, l.outputs),
                    _Tensor(index, type, prefix + "rolling_variance", l.rolling_variance, l.outputs)]
    return tensors


#: darkpy's normalisation layers beyond darknet; their tensors are listed by the layer modules.
_DARKPY_NORMS = ("layernorm", "instancenorm", "groupnorm")


def _layer_tensors(l, index, loading, transpose, path):
    """Every tensor layer ``l`` reads (``loading``) or writes, in darknet's file order."""
    type = l.type
    if type in ("convolutional", "deconvolutional"):
        return _convolutional_tensors(l, index, type, "", loading, path)
    if type == "connected":
        return _connected_tensors(l, index, type, "", loading, transpose)
    if type in _DARKPY_NORMS or (type == "batchnorm" and getattr(l, "style", "darknet") == "caffe"):
        # darkpy's own layers (not in darknet's format): Caffe's three blobs (running mean sum,
        # running variance sum, scale factor), or a norm layer's scales then biases.
        from darkpy.layers import caffe_batchnorm, groupnorm
        module = caffe_batchnorm if type == "batchnorm" else groupnorm
        return [_Tensor(index, type, name, array, count) for name, array, count in module.weight_tensors(l)]
    if type == "batchnorm":
        return [_Tensor(index, type, "scales", l.scales, l.c),
                _Tensor(index, type, "rolling_mean", l.rolling_mean, l.c),
                _Tensor(index, type, "rolling_variance", l.rolling_variance, l.c)]
    if type in _RECURRENT_CONNECTED:
        tensors = []
        for sub in _RECURRENT_CONNECTED[type]:
            sl = _layer_field(l, sub, index, path)
            tensors += _connected_tensors(sl, index, type, sub + ".", loading, transpose)
        return tensors
    if type in _RECURRENT_CONVOLUTIONAL:
        tensors = []
        for sub in _RECURRENT_CONVOLUTIONAL[type]:
            sl = _layer_field(l, sub, index, path)
            tensors += _convolutional_tensors(sl, index, type, sub + ".", loading, path)
        return tensors
    if type == "local":
        locations = l.out_w * l.out_h
        return [_Tensor(index, type, "biases", l.biases, l.outputs),
                _Tensor(index, type, "weights", l.weights,
                        l.size * l.size * l.c * l.n * locations)]
    return []  # no parameters in the file


def _check_tensor(t, path, writable):
    """Refuse a tensor whose buffer cannot hold what darknet would read or write."""
    a = t.array
    if t.count < 0:
        raise _error(f"{t.name} has a negative size ({t.count}); check n, c, numload", path, t)
    if a is None:
        if t.count == 0:
            return
        raise _error(f"{t.name} is not allocated but {t.count} floats belong to it", path, t)
    if not isinstance(a, np.ndarray) or a.dtype != np.float32 or a.ndim != 1 \
            or not a.flags.c_contiguous:
        raise _error(f"{t.name} must be a flat contiguous float32 array", path, t)
    if writable and not a.flags.writeable:
        raise _error(f"{t.name} is read-only", path, t)
    span = t.count if t.transpose is None else max(t.count, t.transpose[0] * t.transpose[1])
    if a.size < span:
        what = "transposing" if span > t.count else "storing"
        raise _error(f"{t.name} holds {a.size} floats; {what} it needs {span} "
                     "(darknet would overrun the buffer)", path, t)


def _plan(net, loading, start, stop, transpose, path):
    """[(layer index, [tensors])] for layers [start, stop) that read/write something."""
    n = net.n
    if n > len(net.layers):
        raise WeightsError(f"the network says n={n} layers but holds {len(net.layers)}", path=path)
    plan = []
    for i in range(max(start, 0), min(n, stop)):
        l = net.layers[i]
        if (l.dontload if loading else l.dontsave):
            continue
        tensors = _layer_tensors(l, i, loading, transpose, path)
        for t in tensors:
            _check_tensor(t, path, writable=loading)
        tensors = [t for t in tensors if t.count]
        if tensors:
            plan.append((i, tensors))
    return plan


# ----------------------------------------------------------------------------- loading

def transpose_matrix(a, rows, cols):
    """darknet's ``transpose_matrix``: ``a[0:rows*cols]`` (rows x cols) becomes its cols x rows transpose, in place."""
    m = a[:rows * cols]
    m[:] = m.reshape(rows, cols).T.ravel()


def load_weights(net, path, cutoff=None, start=0):
    """Read darknet's ``.weights`` file ``path`` into ``net`` (``load_weights_upto``).

    Layers ``[start, min(net.n, cutoff))`` without ``dontload`` read their
    tensors, in network order, from the start of the file's data (``start``
    is darknet's: it does not seek, so a non-zero ``start`` reads the file's
    first tensors into layer ``start``).  Values are read straight into the
    layers' existing float32 arrays and ``net.seen`` is set from the header.

    Raises :class:`WeightsError` (with the network untouched) for a missing
    or unreadable file, a short header, a file that runs out inside a layer,
    or a layer whose arrays cannot hold its tensors.  Warns
    (:class:`DarkpyWarning`) about a file that ends between layers, bytes
    left over after a full load, and NaN/inf in a loaded tensor.
    Returns a :class:`LoadReport`.
    """
    path = os.fspath(path)
    stop = net.n if cutoff is None else cutoff
    try:
        f = open(path, "rb")
    except OSError as e:
        raise WeightsError(f"cannot open weights file: {e.strerror or e}", path=path) from e
    with f:
        try:
            size = os.fstat(f.fileno()).st_size
            head = f.read(20)
        except OSError as e:
            raise WeightsError(f"cannot read weights file: {e.strerror or e}", path=path) from e
        header = _parse_header(head, path, size)
        plan = _plan(net, True, start, stop, header.transpose, path)

        # Check the whole file against the network before touching any array.
        left = size - header.size
        loaded, stopped_at = [], None
        for i, tensors in plan:
            if left == 0:
                stopped_at = i
                break
            for t in tensors:
                if left < t.count * _FLOAT:
                    raise _error(f"needed {t.count} floats for {t.name}, file has "
                                 f"{_floats(left)} left", path, t)
                left -= t.count * _FLOAT
            loaded.append((i, tensors))

        f.seek(header.size)
        floats = 0
        for i, tensors in loaded:
            for t in tensors:
                buf = t.array[:t.count]
                try:
                    got = f.readinto(buf.view(np.uint8))
                except OSError as e:
                    raise _error(f"cannot read {t.name}: {e.strerror or e}", path, t) from e
                if got != t.count * _FLOAT:  # the file shrank under us
                    raise _error(f"needed {t.count} floats for {t.name}, read only "
                                 f"{_floats(got)}", path, t)
                if sys.byteorder == "big":
                    buf.byteswap(inplace=True)
                if t.transpose is not None:
                    transpose_matrix(t.array, *t.transpose)
                floats += t.count
    net.seen = header.seen

    for i, tensors in loaded:
        for t in tensors:
            values = t.array[:t.count]
            bad = ~np.isfinite(values)
            if bad.any():
                nan = int(np.isnan(values).sum())
                first = int(np.argmax(bad))
                warnings.warn(f"{path}: layer {i} ({t.type}): {t.name} holds {nan} NaN and "
                              f"{int(bad.sum()) - nan} infinite values of {t.count} "
                              f"(first at index {first})", DarkpyWarning, stacklevel=2)
    if stopped_at is not None:
        missing = [f"{i} ({tensors[0].type})" for i, tensors in plan if i >= stopped_at]
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        warnings.warn(f"{path}: the file ends before layer {stopped_at}: layers {shown} keep "
                      "their current weights (darknet does the same, e.g. for a "
                      "darknet53.conv.74 file)", DarkpyWarning, stacklevel=2)
    elif left and stop >= net.n:
        warnings.warn(f"{path}: {left} bytes left over after the last layer's weights: "
                      "the network may not be the one this file was saved from",
                      DarkpyWarning, stacklevel=2)
    return LoadReport(header, tuple(i for i, _ in loaded), floats, left, stopped_at)


def load_weights_upto(net, path, start, cutoff):
    """darknet's ``load_weights_upto(net, filename, start, cutoff)``."""
    return load_weights(net, path, cutoff=cutoff, start=start)


# ----------------------------------------------------------------------------- saving

def _write_array(f, array, count):
    """Write ``array[:count]`` as little-endian float32 (darknet's fwrite of a float*)."""
    f.write(array[:count].astype("<f4", copy=False).data)


def save_weights(net, path, cutoff=None, force=False):
    """Write ``net``'s parameters to ``path`` as darknet's ``save_weights_upto`` does.

    Header ``0, 2, 0`` and ``net.seen`` as a 64-bit size_t, then layers
    ``[0, min(net.n, cutoff))`` without ``dontsave``, in network order.
    The file is written to a temporary file beside ``path`` and moved over it
    only when complete.  An existing ``path`` is replaced only with
    ``force=True``.  Raises :class:`WeightsError`.
    """
    path = os.fspath(path)
    stop = net.n if cutoff is None else cutoff
    seen = int(net.seen)
    if not 0 <= seen < 2**64:
        raise WeightsError(f"seen={seen} does not fit darknet's size_t", path=path)
    plan = _plan(net, False, 0, stop, False, path)
    if os.path.isdir(path):
        raise WeightsError("is a directory", path=path)
    if os.path.lexists(path) and not force:
        raise WeightsError("exists; pass force=True to overwrite it", path=path)

    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
        try:   # 0o666 less the umask, like darknet's fopen(filename, "wb")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
            break
        except FileExistsError:
            continue
        except OSError as e:
            raise WeightsError(f"cannot create a file in {directory}: {e.strerror or e}",
                               path=path) from e
    else:
        raise WeightsError(f"cannot find a free temporary name in {directory}", path=path)

    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<iiiQ", *SAVE_VERSION, seen))
            for _, tensors in plan:
                for t in tensors:
                    _write_array(f, t.array, t.count)
            f.flush()
            os.fsync(f.fileno())
        if os.path.exists(path):  # darknet's fopen("wb") keeps an existing file's permissions
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise WeightsError(f"cannot write weights file: {e.strerror or e}", path=path) from e
        raise
    try:  # make the rename itself durable
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_weights_upto(net, path, cutoff, force=False):
    """darknet's ``save_weights_upto(net, filename, cutoff)``."""
    save_weights(net, path, cutoff=cutoff, force=force)
