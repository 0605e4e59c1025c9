"""A trap of TVMScript-heavy imports, and the context manager that avoids it.

Used by the int8 tensor intrinsics (registered on first use) and by tuning's builder
processes, both of which import ``tvm.s_tir.tensor_intrin``-like modules.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def fast_tvmscript_import() -> Iterator[None]:
    """Memoise ``inspect.getmodule`` for pseudo-files while TVMScript-heavy modules import.

    ``inspect.getsourcefile`` asks ``getmodule(obj, filename)`` for frames whose file does
    not exist (``<frozen ...>``, ``<string>``), and each such call scans all of
    ``sys.modules``. TVMScript's parser does that for every parsed function, which is what
    makes ``import tvm.s_tir.tensor_intrin`` (done by every ``TuneContext``) take ~50 s.
    """
    original = inspect.getmodule
    cache: dict[str, Any] = {}

    def getmodule(obj: Any, _filename: str | None = None) -> Any:
        if _filename is not None and not os.path.exists(_filename):
            if _filename not in cache:
                cache[_filename] = original(obj, _filename)
            return cache[_filename]
        return original(obj, _filename)

    inspect.getmodule = getmodule
    try:
        yield
    finally:
        inspect.getmodule = original
