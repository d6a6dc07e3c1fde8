"""The one door to the C implementation (:mod:`pgferry._speedups`), chosen once.

:data:`SPEEDUPS` is that module, loaded and configured here once, at the first
import, or None: pgferry was built without a C compiler, or
``PGFERRY_PURE_PYTHON`` is set (to anything but empty). Every user (protocol,
stream, apply, sync) takes it from here. A module whose classes the C code builds
registers them when it defines them (``configure_envelope``,
``configure_decoder``, and ``configure`` for the tuple reader's values and
errors, in :mod:`pgferry.protocol.pgoutput`; importing anything that uses the C
functions imports :mod:`pgferry.protocol` first). This module imports nothing of
pgferry but its errors, so any module may take the door. Each of its functions
has a Python twin, the reference, used without it:
``pgoutput._py_read_tuple``, ``envelope._py_parse_copy_data``,
``staging._py_line`` / ``_py_plain_width`` and ``staging.Stage._py_add``;
``tests/protocol/test_speedups.py`` (``tests/apply/test_staging.py`` for the
last) runs both on the same inputs.
"""

from __future__ import annotations

import os
from types import ModuleType

from pgferry.errors import ProtocolError


class ShortValue(Exception):
    """Internal: a read ran past the end of the buffer at ``offset``."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def unknown_kind(kind: int, offset: int) -> ProtocolError:
    return ProtocolError(f"unknown tuple column kind {bytes([kind])!r}", offset=offset)


def _load() -> ModuleType | None:
    if os.environ.get("PGFERRY_PURE_PYTHON"):
        return None
    try:
        from pgferry import _speedups
    except ImportError:  # built without a C compiler
        return None
    return _speedups


SPEEDUPS = _load()
