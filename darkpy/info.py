"""``darkpy info``: the layer table darknet prints while it builds a network.

darknet's ``parse_network_cfg`` prints a header, then each ``make_*_layer``
prints one row prefixed by the layer index; this module renders the same text
from built ``Layer`` records (the same numbers, including each convolution's
BFLOPs computed in darknet's double-precision order), then darkpy's own total.
"""

HEADER = "layer     filters    size              input                output"


def conv_bflops(l):
    """darknet's per-convolution BFLOPs: ``(2.0*n*size*size*c/groups*out_h*out_w)/1e9`` in double, left to right."""
    v = 2.0 * l.n
    v = v * l.size * l.size * l.c
    v = v / l.groups
    v = v * l.out_h * l.out_w
    return v / 1000000000.


def layer_bflops(l):
    """Billions of floating-point operations of one layer's forward pass as darknet counts them (conv only)."""
    if l.type == "convolutional":
        return conv_bflops(l)
    return 0.0


def layer_row(l):
    """The row darknet's make_<type>_layer prints for this layer (without the index prefix)."""
    t = l.type
    if t == "convolutional":
        return (f"conv  {l.n:5d} {l.size:2d} x{l.size:2d} /{l.stride:2d}  {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  "
                f"{l.out_w:4d} x{l.out_h:4d} x{l.out_c:4d}  {conv_bflops(l):5.3f} BFLOPs")
    if t == "maxpool":
        return (f"max          {l.size} x {l.size} / {l.stride}  {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  "
                f"{l.out_w:4d} x{l.out_h:4d} x{l.out_c:4d}")
    if t == "avgpool":
        return f"avg                     {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  {l.c:4d}"
    if t == "connected":
        return f"connected                            {l.inputs:4d}  ->  {l.outputs:4d}"
    if t == "batchnorm":
        return f"Batch Normalization Layer: {l.w} x {l.h} x {l.c} image"
    if t == "activation":
        return f"Activation Layer: {l.inputs} inputs"
    if t == "route":
        layers = getattr(l, "input_layers", None)
        return "route " + "".join(f" {int(i)}" for i in (layers if layers is not None else []))
    if t == "shortcut":  # darknet's shortcut keeps the source layer's shape in w/h/c, its index in l.index
        return (f"res  {l.index:3d}                {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  "
                f"{l.out_w:4d} x{l.out_h:4d} x{l.out_c:4d}")
    if t == "upsample":
        word = "downsample" if l.reverse else "upsample  "
        return (f"{word}         {l.stride:2d}x  {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  "
                f"{l.out_w:4d} x{l.out_h:4d} x{l.out_c:4d}")
    if t == "reorg":
        if l.extra:
            return f"reorg              {l.inputs:4d}   ->  {l.outputs:4d}"
        return (f"reorg              /{l.stride:2d}  {l.w:4d} x{l.h:4d} x{l.c:4d}   ->  "
                f"{l.out_w:4d} x{l.out_h:4d} x{l.out_c:4d}")
    if t == "softmax":
        return f"softmax                                        {l.inputs:4d}"
    if t == "cost":
        return f"cost                                           {l.inputs:4d}"
    if t == "dropout":
        return f"dropout       p = {float(l.probability):.2f}               {l.inputs:4d}  ->  {l.inputs:4d}"
    if t == "crop":
        return f"Crop Layer: {l.h} x {l.w} -> {l.out_h} x {l.out_w} x {l.c} image"
    if t == "yolo":
        return "yolo"
    if t == "region":
        return "detection"
    if t == "detection":
        return "Detection Layer"
    return t


def network_table(net):
    """darknet's build-time table for ``net``, then the total BFLOPs (darkpy's addition)."""
    lines = [HEADER]
    for i, l in enumerate(net.layers):
        lines.append(f"{i:5d} {layer_row(l)}")
    total = sum(layer_bflops(l) for l in net.layers)
    lines.append(f"Total BFLOPs {total:.3f}")
    return "\n".join(lines)
