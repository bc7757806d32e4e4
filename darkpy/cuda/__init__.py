"""The CUDA device: selection, availability and the two exactness profiles.

darkpy's GPU path runs darknet's layers as Numba ``@cuda.jit`` kernels
(``darkpy/kernels/<family>_cuda.py``) with the data kept on the device between
layers (``darkpy.cuda.network``).  Two profiles choose what the GPU reproduces:

* ``strict`` -- darknet's **CPU** results bit for bit: every sum keeps the CPU's
  order (a per-channel sum runs in one thread), no multiply-add is fused, C's
  float/double promotions are copied, and NaNs carry x86's bits (``darkpy.cuda.fp``).
* ``darknet-gpu`` -- darknet's own ``.cu`` kernels (the non-cuDNN build): their
  launch geometry, their block-strided partial sums and the FMAs nvcc puts in
  (``darkpy.kernels.darknet_gpu_cuda``, emulated on the CPU by
  ``darkpy.kernels.reference.darknet_gpu``).

Under ``NUMBA_ENABLE_CUDASIM=1`` Numba runs every kernel in its CUDA simulator
(Python threads on the CPU): slow, but the same kernel code, which is how the
tests check the kernels on a machine without a GPU.  The variable must be set
before ``numba.cuda`` is first imported.

The CLI maps :class:`darkpy.errors.DeviceError` from :func:`require` to exit
status 2.
"""

import os

from darkpy.errors import DarkpyError, DeviceError

#: The exactness profiles of ``--profile``.
PROFILES = ("strict", "darknet-gpu")
#: The devices of ``--device``.
DEVICES = ("cpu", "cuda")


def simulator():
    """True when Numba's CUDA simulator is selected (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        from numba import config
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    return bool(config.ENABLE_CUDASIM)


def _probe():
    """(usable, reason): whether kernels can be launched, and why not."""
    try:
        from numba import cuda
    except Exception as e:  # a broken CUDA toolkit makes the import itself fail
        return False, f"numba.cuda cannot be imported ({type(e).__name__}: {e})"
    if simulator():
        return True, "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run on the CPU in Python"
    try:
        if not cuda.is_available():
            return False, ("numba.cuda finds no usable GPU or CUDA driver "
                           "(set NUMBA_ENABLE_CUDASIM=1 to run the kernels in Numba's CUDA simulator)")
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return True, f"{name} (compute capability {device.compute_capability[0]}.{device.compute_capability[1]})"
    except Exception as e:  # driver present but unusable
        return False, f"the CUDA driver failed: {type(e).__name__}: {e}"


def available():
    """True when CUDA kernels can run here: a GPU with its driver, or the simulator."""
    return _probe()[0]


def describe():
    """One line naming the device kernels run on, or why there is none."""
    return _probe()[1]


def require(allow_simulator=True):
    """Return the device's description, or raise ``DeviceError`` (the CLI exits 2).

    With ``allow_simulator=False`` the simulator does not count as a device: the
    error then says that the simulator is selected.
    """
    ok, reason = _probe()
    if ok and simulator() and not allow_simulator:
        raise DeviceError(f"no CUDA GPU/driver: {reason}; a real GPU was required")
    if not ok:
        raise DeviceError(f"no CUDA GPU/driver: {reason}")
    return reason


def check_profile(profile):
    """Return ``profile`` if it is one of :data:`PROFILES`, else raise ``DarkpyError``."""
    if profile not in PROFILES:
        raise DarkpyError(f"unknown profile {profile!r}: expected one of {', '.join(PROFILES)}")
    return profile


def check_device(device):
    """Return ``device`` if it is one of :data:`DEVICES`, else raise ``DarkpyError``."""
    if device not in DEVICES:
        raise DarkpyError(f"unknown device {device!r}: expected one of {', '.join(DEVICES)}")
    return device


def enable_simulator():
    """Select Numba's CUDA simulator; only effective before ``numba.cuda`` is imported."""
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    try:
        from numba import config
        config.ENABLE_CUDASIM = 1
    except ImportError:  # pragma: no cover
        pass
