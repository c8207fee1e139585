"""Keep paramiko from importing ``invoke`` until it is needed.

paramiko's ssh_config module imports invoke when it is imported, only to
evaluate ``Match exec`` lines; invoke brings yaml, asyncio and unittest.mock
along, about 75 ms of every SSH run here. A stand-in module takes its place
until paramiko first uses it, and then the real one is imported.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types


class _Deferred(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if sys.modules.get("invoke") is self:
            del sys.modules["invoke"]
        return getattr(importlib.import_module("invoke"), name)


def defer_invoke() -> None:
    """Put the stand-in in place, if invoke is installed and not yet imported."""
    if "invoke" in sys.modules or "paramiko" in sys.modules:
        return
    if importlib.util.find_spec("invoke") is None:
        return  # paramiko's own fallback applies: Match exec is an error
    sys.modules["invoke"] = _Deferred("invoke")
