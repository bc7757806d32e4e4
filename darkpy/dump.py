"""Dump directories: darkpy's and darknet's common exchange format.

One directory per case: ``case.json`` (the manifest) plus one raw little-endian
float32 file per tensor, C order, no header (format ``darkpy-dump/1``, described
in ``shared/golden/README.md``).  ``read_case`` validates a directory before any
computation uses it; ``write_case`` writes one atomically (a temporary
directory beside the target, renamed into place).
"""

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darkpy.errors import DumpError

FORMAT = "darkpy-dump/1"
MANIFEST = "case.json"
KINDS = ("batchnorm", "convolutional", "network")
STAGES = ("given", "forward", "backward", "update")


@dataclass(frozen=True)
class TensorEntry:
    """One manifest row: a tensor's name, its file, its shape and the step that produced it."""

    name: str
    file: str
    shape: tuple
    stage: str

    @property
    def size(self):
        n = 1
        for d in self.shape:
            n *= d
        return n


class Case:
    """A validated dump directory.  ``case[name]`` loads a tensor, shaped as the manifest says."""

    def __init__(self, path, manifest, entries):
        self.path = Path(path)
        self.manifest = manifest
        self.entries = entries
        self._by_name = {e.name: e for e in entries}

    kind = property(lambda self: self.manifest["kind"])
    params = property(lambda self: self.manifest.get("params", {}))
    build = property(lambda self: self.manifest.get("build", {}))

    def names(self, stage=None):
        """Tensor names in manifest order (those of one stage if given)."""
        return [e.name for e in self.entries if stage is None or e.stage == stage]

    def __contains__(self, name):
        return name in self._by_name

    def entry(self, name):
        try:
            return self._by_name[name]
        except KeyError:
            raise DumpError(f"the case has no tensor {name!r}", path=self.path / MANIFEST) from None

    def __getitem__(self, name):
        e = self.entry(name)
        return np.fromfile(self.path / e.file, dtype="<f4").reshape(e.shape)

    def flat(self, name):
        """The tensor as a flat, writable float32 array (darknet's ``float *``)."""
        return np.array(self[name], dtype=np.float32).ravel()

    def file(self, name):
        return self.path / self.entry(name).file

    def __repr__(self):
        return f"Case({str(self.path)!r}, kind={self.kind!r}, {len(self.entries)} tensors)"


def read_case(path):
    """Read and validate a dump directory; every problem is a ``DumpError`` naming the file."""
    path = Path(path)
    mpath = path / MANIFEST
    if not path.is_dir():
        raise DumpError("not a dump directory (expected a directory holding case.json)", path=path)
    try:
        text = mpath.read_text()
    except OSError as exc:
        raise DumpError(f"cannot read the manifest: {exc.strerror or exc}", path=mpath) from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DumpError(f"the manifest is not valid JSON: {exc}", path=mpath,
                        line=getattr(exc, "lineno", None)) from None
    except RecursionError:
        raise DumpError("the manifest is not valid JSON: nested too deeply", path=mpath) from None
    if not isinstance(manifest, dict):
        raise DumpError("the manifest must be a JSON object", path=mpath)
    if manifest.get("format") != FORMAT:
        raise DumpError(f"format is {manifest.get('format')!r}: expected {FORMAT!r}", path=mpath)
    if manifest.get("kind") not in KINDS:
        raise DumpError(f"kind is {manifest.get('kind')!r}: expected one of {', '.join(KINDS)}", path=mpath)
    if not isinstance(manifest.get("params", {}), dict):
        raise DumpError("params must be a JSON object", path=mpath)
    tensors = manifest.get("tensors")
    if not isinstance(tensors, list):
        raise DumpError("tensors must be a list of {name, file, shape, stage}", path=mpath)
    entries, seen = [], set()
    for i, t in enumerate(tensors):
        where = f"tensors[{i}]"
        if not isinstance(t, dict):
            raise DumpError(f"{where} must be an object", path=mpath)
        name, file, shape, stage = t.get("name"), t.get("file"), t.get("shape"), t.get("stage")
        if not isinstance(name, str) or not name:
            raise DumpError(f"{where}.name must be a non-empty string", path=mpath)
        if name in seen:
            raise DumpError(f"{where}: tensor {name!r} is listed twice", path=mpath)
        seen.add(name)
        if (not isinstance(file, str) or not file or os.path.isabs(file)
                or ".." in Path(file).parts or "/" in file or "\\" in file):
            raise DumpError(f"{where} ({name}): file must be a plain file name in the case directory, "
                            f"got {file!r}", path=mpath)
        if (not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                                   and d >= 0 for d in shape)):
            raise DumpError(f"{where} ({name}): shape must be a list of non-negative integers, "
                            f"got {shape!r}", path=mpath)
        if stage not in STAGES:
            raise DumpError(f"{where} ({name}): stage is {stage!r}: expected one of {', '.join(STAGES)}",
                            path=mpath)
        e = TensorEntry(name, file, tuple(shape), stage)
        fpath = path / file
        try:
            nbytes = fpath.stat().st_size if fpath.is_file() else None
        except OSError as exc:
            raise DumpError(f"{where} ({name}): cannot read file {file!r}: {exc.strerror or exc}",
                            path=mpath) from None
        if nbytes is None:
            raise DumpError(f"tensor {name!r}: file {file} is missing", path=fpath)
        if nbytes != 4 * e.size:
            hint = ""
            if nbytes == 8 * e.size:
                hint = " (twice the expected size: float64 data? the format is float32)"
            elif nbytes % 4:
                hint = " (not a whole number of float32 values)"
            raise DumpError(f"tensor {name!r}: {nbytes} bytes, but shape {list(shape)} of float32 "
                            f"needs {4 * e.size}{hint}", path=fpath)
        entries.append(e)
    return Case(path, manifest, entries)


def write_case(path, kind, params, tensors, build=None, extra_files=(), force=False):
    """Write a dump directory atomically.

    ``tensors``: iterable of ``(name, array, shape, stage)``; arrays are written
    as little-endian float32.  ``extra_files``: ``(name, source_path)`` pairs
    copied in (a cfg, a .weights file).  An existing directory is replaced only
    with ``force``; the new one is built beside it and renamed into place, so an
    interrupted run leaves the old one intact.
    """
    path = Path(path)
    if path.exists() and not force:
        raise DumpError("the output directory exists; pass --force to replace it", path=path)
    if kind not in KINDS:
        raise DumpError(f"kind {kind!r}: expected one of {', '.join(KINDS)}", path=path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=parent))
    except OSError as exc:
        raise DumpError(f"cannot create the dump directory: {exc.strerror or exc}", path=path) from None
    try:
        rows = []
        for name, array, shape, stage in tensors:
            arr = np.ascontiguousarray(array, dtype="<f4").ravel()
            shape = [int(d) for d in shape]
            if int(np.prod(shape, dtype=np.int64)) != arr.size:
                raise DumpError(f"tensor {name!r}: {arr.size} values do not fill shape {shape}", path=path)
            fname = f"{name}.f32"
            arr.tofile(tmp / fname)
            rows.append({"name": name, "file": fname, "shape": shape, "stage": stage})
        for name, src in extra_files:
            shutil.copyfile(src, tmp / name)
        manifest = {"format": FORMAT, "kind": kind, "build": build or {}, "params": params, "tensors": rows}
        (tmp / MANIFEST).write_text(_manifest_text(manifest))
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=parent))
            os.rmdir(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _manifest_text(manifest):
    """The manifest as the golden dumps lay it out: one tensor per line."""
    head = {k: v for k, v in manifest.items() if k != "tensors"}
    lines = ["{"]
    for k, v in head.items():
        lines.append(f"  {json.dumps(k)}: {json.dumps(v)},")
    lines.append('  "tensors": [')
    rows = [f"    {json.dumps(t)}" for t in manifest["tensors"]]
    lines.append(",\n".join(rows))
    lines.append("  ]")
    lines.append("}")
    return "\n".join(lines) + "\n"
