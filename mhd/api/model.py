"""The one lazy loader of the Maglev model (`mhd.maglev.predict`, which imports numpy).

The daemon loads it at start (`load`), before the prober runs: loaded on first use instead, even
in a worker thread, numpy's import holds the interpreter lock long enough to make every probe late
(see docs/design.md). Whatever reads the model before that (an app served without `start`, in
tests) loads it off the loop: `get` in a worker thread, `load` from the metrics' worker.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from types import ModuleType

from mhd.api.view import DaemonView
from mhd.maglev.params import Model, model_for

log = logging.getLogger("mhd.api")

MODULE = "mhd.maglev.predict"
_module: ModuleType | None = None
_missing: ImportError | None = None  # the model cannot be imported here (no numpy): said once


def load() -> ModuleType | None:
    """The model, imported on the first call; None when it is not available. Blocks: call it at
    start or off the loop."""
    global _module, _missing
    if _module is None and _missing is None:
        try:
            _module = importlib.import_module(MODULE)
        except ImportError as exc:
            _missing = exc
            log.warning("no Maglev model (%s): /table, /predict and mhd_server_slot_share are unavailable", exc)
    return _module


def unavailable() -> bool:
    """True once an import failed: readers skip the model instead of trying again."""
    return _missing is not None


async def get() -> ModuleType:
    """The model for a request handler; raises ImportError when it is not available."""
    module = _module or await asyncio.to_thread(load)
    if module is None:
        raise ImportError(f"no Maglev model: {_missing}")
    return module


def parameters(view: DaemonView) -> Model:
    """The table the daemon's kernel builds: its variant and size, by the one rule of `model_for`."""
    config, kernel = view.config, view.kernel
    return model_for(
        config.kernel.module if config is not None else "auto",
        kernel.mh_variant if kernel is not None else None,
        kernel.mh_tab_index if kernel is not None else None,
    )
