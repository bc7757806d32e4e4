"""darknet's class hierarchy (tree.c): ``read_tree`` and the helpers the output layers use.

A tree file has one class per line, ``name parent`` with ``parent`` the line
index of the parent class (``-1`` for a root).  Consecutive lines with the
same parent form a *group*: the classes one softmax is taken over.  darknet's
``read_tree`` records, for every class, its ``parent``, the ``group`` it
belongs to and the group of its children (``child``, -1 for none), and for
every group its ``group_offset`` (first class) and ``group_size``.

darknet's numbering quirk is kept: group indices count group *changes*, so
the classes before the first change belong to group 0 and the group of a class
is the number of changes seen so far (its slot in ``group_offset``).
"""

from dataclasses import dataclass, field

import numpy as np

from darkpy.errors import CfgError


@dataclass
class Tree:
    """darknet's ``tree`` struct (int arrays as numpy int32)."""

    n: int = 0
    groups: int = 0
    parent: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    child: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    group: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    leaf: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    group_size: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    group_offset: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    name: list = field(default_factory=list)


def parse_tree_text(text, path="<string>", where=None):
    """darknet's ``read_tree`` on the text of a tree file."""
    parent, child, group, name = [], [], [], []
    group_offset, group_size_list = [], []
    last_parent = -1
    group_size = 0
    groups = 0
    n = 0
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        # sscanf(line, "%s %d", id, &parent): a missing or unreadable parent stays -1
        ident = fields[0] if fields else ""
        p = -1
        if len(fields) > 1:
            try:
                p = int(fields[1])
            except ValueError:
                p = -1
        if p >= n:
            raise CfgError(f"{path}:{number}: class {ident!r} names parent {p}, "
                           f"which is not an earlier line of the tree", **(where or {}))
        parent.append(p)
        child.append(-1)
        name.append(ident)
        if p != last_parent:
            groups += 1
            group_offset.append(n - group_size)
            group_size_list.append(group_size)
            group_size = 0
            last_parent = p
        group.append(groups)
        if p >= 0:
            child[p] = groups
        n += 1
        group_size += 1
    groups += 1
    group_offset.append(n - group_size)
    group_size_list.append(group_size)
    leaf = np.ones(n, np.int32)
    for i in range(n):
        if parent[i] >= 0:
            leaf[parent[i]] = 0
    return Tree(n=n, groups=groups, parent=np.asarray(parent, np.int32),
                child=np.asarray(child, np.int32), group=np.asarray(group, np.int32), leaf=leaf,
                group_size=np.asarray(group_size_list, np.int32),
                group_offset=np.asarray(group_offset, np.int32), name=name)


def read_tree(path, where=None):
    """darknet's ``read_tree(filename)``; a missing file is a CfgError (darknet would crash)."""
    try:
        with open(path, "r") as f:
            text = f.read()
    except OSError as exc:
        raise CfgError(f"cannot read tree file {path!r}: {exc.strerror}", **(where or {})) from None
    return parse_tree_text(text, path, where)


def get_hierarchy_probability(x, hier, c, stride):
    """darknet's ``get_hierarchy_probability``: the float product of ``x[c*stride]`` up the ancestors of c."""
    p = np.float32(1)
    while c >= 0:
        p = np.float32(p * x[c * stride])
        c = int(hier.parent[c])
    return p
