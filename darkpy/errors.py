"""darkpy's exceptions: every user-facing failure is one of these.

Each error names where the problem is (file, line, section or layer index),
what was found and what was expected.  The CLI prints ``str(error)`` and exits
with status 2; a traceback is shown only with ``--debug``.
"""


class DarkpyError(Exception):
    """Base class of every error darkpy raises on purpose.

    ``path``, ``line``, ``section`` and ``layer`` locate the problem when known;
    ``str(err)`` renders ``path:line: [section] (layer N): message``.
    """

    def __init__(self, message, *, path=None, line=None, section=None, layer=None):
        self.message = message
        self.path = None if path is None else str(path)
        self.line = line
        self.section = section
        self.layer = layer
        super().__init__(self._render())

    def locate(self, *, path=None, line=None, section=None, layer=None):
        """Fill in whichever of ``path``, ``line``, ``section``, ``layer`` is still unknown; returns self.

        For a caller that knows where a lower-level error happened (the network
        builder knows the section a ``make_*_layer`` was building)::

            except DarkpyError as e:
                raise e.locate(path=section.path, line=section.line, section=section.header,
                               layer=index)

        A location the error already has is kept.
        """
        if self.path is None and path is not None:
            self.path = str(path)
        if self.line is None:
            self.line = line
        if self.section is None:
            self.section = section
        if self.layer is None:
            self.layer = layer
        self.args = (self._render(),)
        return self

    def _render(self):
        where = []
        if self.path is not None:
            where.append(self.path if self.line is None else f"{self.path}:{self.line}")
        if self.section is not None:
            where.append(f"[{self.section}]" if not str(self.section).startswith("[") else str(self.section))
        if self.layer is not None:
            where.append(f"layer {self.layer}")
        prefix = " ".join(where)
        return f"{prefix}: {self.message}" if prefix else self.message


class CfgError(DarkpyError):
    """A network description (darknet .cfg or YAML) that darkpy cannot accept."""


class ShapeError(CfgError):
    """A layer whose input shape it cannot accept, or an impossible output shape."""


class MemoryLimitError(CfgError):
    """A network whose buffers would exceed the configured memory limit."""


class WeightsError(DarkpyError):
    """A darknet .weights file that is malformed, truncated or mismatched."""


class DumpError(DarkpyError):
    """A dump directory (manifest + raw float32 tensors) that cannot be read."""


class DeviceError(DarkpyError):
    """A requested device (e.g. CUDA) that is not available."""


class DarkpyWarning(UserWarning):
    """Something darknet would accept silently but a user should know about."""
