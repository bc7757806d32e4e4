"""C's ``rand()``/``srand()`` as glibc implements them, and darknet's helpers on top.

darknet draws its training randomness (dropout masks, crop offsets, random
initialisation) from the C library's ``rand()``.  glibc's default generator is
the ``TYPE_3`` additive lagged-Fibonacci generator of ``random_r.c``:

* ``srand(seed)``: a seed of 0 becomes 1; ``r[0] = seed`` (as a signed 32-bit
  word), ``r[i] = 16807 * r[i-1] mod (2**31 - 1)`` for ``i = 1..30`` (computed
  with Schrage's method on signed words, so seeds above ``2**31`` go through C's
  truncating division), then 310 outputs are drawn and thrown away;
* every draw: ``r[f] += r[r']`` (32-bit wrap-around, i.e. ``r[i] = r[i-3] + r[i-31]``)
  on a ring of 31 words with a front index ``f`` and a rear index ``r'`` three
  behind it; the output is the new word shifted right by one (``0..RAND_MAX``).

The generator state is a ``uint32`` array of ``STATE_SIZE`` words: the 31 ring
words, then the front and rear indices.  ``rand_r(state)`` and
``rand_uniform_r(state, min, max)`` are Numba kernels, so loops such as
dropout's per-element draws run compiled; ``STATE`` is the process-wide state
that ``srand``/``rand`` use, like the C library's hidden one, and starts as
``srand(1)`` (C's initial state).
"""

import numpy as np

from darkpy.kernels import kernel

#: glibc's RAND_MAX.
RAND_MAX = 2147483647
#: Degree of the TYPE_3 generator (ring words) and its separation (front - rear).
DEG = 31
SEP = 3
#: Ring words + front index + rear index.
STATE_SIZE = DEG + 2
_FRONT = DEG
_REAR = DEG + 1


@kernel
def rand_r(state):
    """One ``rand()`` draw from ``state`` (glibc ``random_r`` TYPE_3), advancing it.

    ``state[f] = state[f] + state[r]`` wrapped to 32 bits; the result is that
    word shifted right by one, an int in ``0..RAND_MAX``.
    """
    front = np.int64(state[_FRONT])
    rear = np.int64(state[_REAR])
    val = (np.int64(state[front]) + np.int64(state[rear])) & 0xFFFFFFFF
    state[front] = np.uint32(val)
    result = val >> 1
    front += 1
    if front >= DEG:
        front = 0
        rear += 1
    else:
        rear += 1
        if rear >= DEG:
            rear = 0
    state[_FRONT] = np.uint32(front)
    state[_REAR] = np.uint32(rear)
    return result


@kernel
def srand_r(state, seed):
    """``srand(seed)`` on ``state``: glibc's ``srandom_r`` for TYPE_3, warm-up included."""
    seed = np.int64(seed) & 0xFFFFFFFF
    if seed == 0:
        seed = 1
    # the seed is stored as a signed 32-bit word
    word = seed - 4294967296 if seed >= 2147483648 else seed
    state[0] = np.uint32(seed)
    for i in range(1, DEG):
        # 16807 * word mod (2^31 - 1) without overflow (Schrage); C's / and % truncate toward zero
        hi = abs(word) // 127773
        lo = abs(word) % 127773
        if word < 0:
            hi = -hi
            lo = -lo
        word = 16807 * lo - 2836 * hi
        if word < 0:
            word += 2147483647
        state[i] = np.uint32(word & 0xFFFFFFFF)
    state[_FRONT] = np.uint32(SEP)
    state[_REAR] = np.uint32(0)
    for _ in range(DEG * 10):
        rand_r(state)


@kernel
def rand_uniform_r(state, min, max):
    """darknet's ``rand_uniform(min, max)`` (utils.c) drawing from ``state``.

    All float: ``((float)rand() / RAND_MAX * (max - min)) + min`` where RAND_MAX
    is converted to float (2147483648.0f); ``min``/``max`` are swapped when
    ``max < min``.
    """
    min = np.float32(min)
    max = np.float32(max)
    if max < min:
        swap = min
        min = max
        max = swap
    r = np.float32(rand_r(state))
    return (r / np.float32(RAND_MAX) * (max - min)) + min


@kernel
def rand_int_r(state, min, max):
    """darknet's ``rand_int(min, max)`` (utils.c): ``rand() % (max - min + 1) + min`` with C's ``%``."""
    if max < min:
        s = min
        min = max
        max = s
    # rand() >= 0 and the modulus >= 1, so C's % and Python's agree here
    return rand_r(state) % (max - min + 1) + min


def new_state(seed=1):
    """A fresh generator state seeded like ``srand(seed)``."""
    state = np.zeros(STATE_SIZE, np.uint32)
    srand_r(state, seed)
    return state


#: The process-wide generator (C's hidden state); C starts as if srand(1) had been called.
STATE = new_state(1)


def srand(seed):
    """C's ``srand``: reseed the process-wide generator."""
    srand_r(STATE, int(seed))


def rand():
    """C's ``rand``: the next int in ``0..RAND_MAX`` from the process-wide generator."""
    return int(rand_r(STATE))


def rand_uniform(min, max):
    """darknet's ``rand_uniform`` on the process-wide generator (a float32)."""
    return rand_uniform_r(STATE, np.float32(min), np.float32(max))


def rand_int(min, max):
    """darknet's ``rand_int`` on the process-wide generator."""
    return int(rand_int_r(STATE, int(min), int(max)))
