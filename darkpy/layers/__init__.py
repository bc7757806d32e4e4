"""One module per darknet layer type, as darknet's ``src/<type>_layer.c``.

Each module provides ``parse(section, params)`` (darknet's ``parse_<type>``),
``make_<type>_layer(...)``, ``forward(l, net)``, ``backward(l, net)`` and, for
layers with parameters, ``update(l, a)``.  ``parse_layer`` dispatches on the
section's canonical type.
"""

import importlib

from darkpy.errors import CfgError

#: section type -> module under darkpy.layers
MODULES = {
    "convolutional": "convolutional",
    "connected": "connected",
    "activation": "activation",
    "batchnorm": "batchnorm",
    "maxpool": "maxpool",
    "avgpool": "avgpool",
    "route": "route",
    "shortcut": "shortcut",
    "upsample": "upsample",
    "reorg": "reorg",
    "crop": "crop",
    "dropout": "dropout",
    "softmax": "softmax",
    "cost": "cost",
    "yolo": "yolo",
    "region": "region",
    "detection": "detection",
    # darkpy's additions to darknet's layer set
    "layernorm": "layernorm",
    "instancenorm": "instancenorm",
    "groupnorm": "groupnorm",
}


def module_for(section):
    """The layer module of a section, or a CfgError naming the section when darkpy lacks it."""
    name = MODULES.get(section.type)
    if name is None:
        raise CfgError(f"layer type [{section.type}] is not supported by darkpy "
                       f"(supported: {', '.join(sorted(MODULES))})",
                       path=section.path, line=section.line, section=section.header, layer=section.index)
    try:
        return importlib.import_module(f"darkpy.layers.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"darkpy.layers.{name}":
            raise
        raise CfgError(f"layer type [{section.type}] is not implemented yet",
                       path=section.path, line=section.line, section=section.header,
                       layer=section.index) from None


def parse_layer(section, params):
    """Build the Layer of one section with the input shape in ``params`` (darknet's parse_<type>)."""
    l = module_for(section).parse(section, params)
    l.name = section.header
    return l
