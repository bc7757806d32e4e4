"""The ``Layer`` record: darknet's ``struct layer`` (include/darknet.h) in Python.

Field names are darknet's.  Buffers (``output``, ``delta``, ``weights``, ...) are
flat 1-D ``float32`` numpy arrays, exactly like darknet's ``float *``; a field
darknet leaves as a NULL pointer is ``None`` here.  ``forward``, ``backward`` and
``update`` hold the layer module's functions, as darknet's function pointers do:
``l.forward(l, net)``, ``l.backward(l, net)``, ``l.update(l, a)``.

``type`` is the canonical section name (``"convolutional"``, ``"maxpool"``, ...)
and ``activation`` darknet's ``ACTIVATION`` enum value (see
``darkpy.kernels.activations``).
"""

from dataclasses import dataclass

# Integer and float scalars of darknet's struct layer, with darknet's zero
# initialisation (``layer l = {0};``).
_INT_FIELDS = (
    "activation cost_type batch_normalize shortcut batch forced flipped inputs outputs "
    "nweights nbiases extra truths h w c out_h out_w out_c n max_boxes groups size side "
    "stride reverse flatten spatial pad sqrt flip index binary xnor steps hidden truth "
    "noloss softmax classes coords background rescore objectness joint noadjust reorg log "
    "tanh total bias_match random classfix absolute onlyforward stopbackward dontload "
    "dontsave dontloadscales numload workspace_size"
).split()

_FLOAT_FIELDS = (
    "smooth dot angle jitter saturation exposure shift ratio learning_rate_scale clip alpha "
    "beta kappa coord_scale object_scale noobject_scale mask_scale class_scale ignore_thresh "
    "truth_thresh thresh focus temperature probability scale"
).split()

# Pointers of darknet's struct layer used by the CPU code: None until a make_* allocates them.
_POINTER_FIELDS = (
    "mask indexes input_layers input_sizes map counts rand cost biases bias_updates scales "
    "scale_updates weights weight_updates delta output loss squared norms spatial_mean mean "
    "variance mean_delta variance_delta rolling_mean rolling_variance x x_norm m v bias_m "
    "bias_v scale_m scale_v softmax_tree forward backward update"
).split()


class Layer:
    """One darknet layer: every field of darknet's ``struct layer`` that darkpy uses.

    Unset ints are 0, unset floats 0.0 and unset pointers ``None`` (darknet's
    ``layer l = {0}``).  Keyword arguments set fields at construction.
    """

    __slots__ = ("type", "name", *_INT_FIELDS, *_FLOAT_FIELDS, *_POINTER_FIELDS, "extra_fields")

    def __init__(self, type="", **fields):
        self.type = type
        self.name = ""
        for f in _INT_FIELDS:
            setattr(self, f, 0)
        for f in _FLOAT_FIELDS:
            setattr(self, f, 0.0)
        for f in _POINTER_FIELDS:
            setattr(self, f, None)
        self.extra_fields = {}
        for key, value in fields.items():
            setattr(self, key, value)

    def __setattr__(self, key, value):
        if key in Layer.__slots__:
            object.__setattr__(self, key, value)
        else:  # a field of a layer type that darknet keeps in the struct but we have not listed
            self.extra_fields[key] = value

    def __getattr__(self, key):
        try:
            return object.__getattribute__(self, "extra_fields")[key]
        except KeyError:
            raise AttributeError(f"Layer has no field {key!r}") from None

    def __repr__(self):
        return (f"Layer({self.type!r}, {self.batch}x{self.c}x{self.h}x{self.w} -> "
                f"{self.out_c}x{self.out_h}x{self.out_w}, outputs={self.outputs})")


@dataclass
class UpdateArgs:
    """darknet's ``update_args``: what ``update_network`` passes to every layer's update."""

    batch: int = 1
    learning_rate: float = 0.0
    momentum: float = 0.0
    decay: float = 0.0
    adam: int = 0
    B1: float = 0.9
    B2: float = 0.999
    eps: float = 1e-7
    t: int = 0


# ----------------------------------------------------------------------------- buffers under a budget

import contextlib  # noqa: E402

import numpy as np  # noqa: E402

#: The open allocation budget (``memory_budget``): [bytes charged, limit], or None.
_budget = None


class BudgetExceeded(Exception):
    """A buffer that would take the running total past the budget (``needed``, ``limit`` in bytes)."""

    def __init__(self, needed, limit, total):
        self.needed, self.limit, self.total = needed, limit, total
        super().__init__(f"{needed} more bytes would make {total}, over the limit of {limit}")


@contextlib.contextmanager
def memory_budget(limit):
    """Within the block, ``zeros``/``ones``/``full`` refuse (``BudgetExceeded``) before allocating
    a buffer that would take the total past ``limit`` bytes."""
    global _budget
    outer, _budget = _budget, [0, int(limit)]
    try:
        yield
    finally:
        _budget = outer


def charge(nbytes):
    """Count ``nbytes`` against the open budget (if any) before they are allocated."""
    if _budget is not None:
        total = _budget[0] + int(nbytes)
        if total > _budget[1]:
            raise BudgetExceeded(int(nbytes), _budget[1], total)
        _budget[0] = total


def _count(shape):
    n = 1
    for d in (shape if isinstance(shape, tuple) else (shape,)):
        n *= int(d)
    return n


def zeros(shape, dtype=np.float32):
    """``np.zeros`` for a layer buffer (darknet's ``calloc``), checked against the open budget first."""
    charge(max(_count(shape), 0) * np.dtype(dtype).itemsize)
    return np.zeros(shape, dtype)


def ones(shape, dtype=np.float32):
    """``np.ones`` for a layer buffer, checked against the open budget first."""
    charge(max(_count(shape), 0) * np.dtype(dtype).itemsize)
    return np.ones(shape, dtype)


def full(shape, value, dtype=np.float32):
    """``np.full`` for a layer buffer, checked against the open budget first."""
    charge(max(_count(shape), 0) * np.dtype(dtype).itemsize)
    return np.full(shape, value, dtype)
