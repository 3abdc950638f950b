"""The hook process's side of `hook_process`: a loop that runs the batches it is sent.

It runs in the worker (`python -c ...`, see `hook_process._BOOT`), reads messages on a thread
of its own and answers each ``("run", ...)`` with ``("ok", results, states)``,
``("error", description)`` before anything was committed, or ``("refused", description)``
for hooks it could not unpickle.
"""

from __future__ import annotations

import pickle
import queue
import threading
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any


def serve(inbox: Connection, outbox: Connection) -> None:
    """The worker's loop: run batches until the parent closes the pipe."""
    from . import hooks as hooks_module

    messages: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def read() -> None:
        # Always reading: a parent sending while this loop runs a batch never finds the pipe
        # full, so it is always free to read the answers this loop writes.
        while True:
            try:
                messages.put(inbox.recv())
            except Exception:
                messages.put(None)
                return

    threading.Thread(target=read, name="chainwatch-hook-inbox", daemon=True).start()
    groups: dict[tuple[int, ...], Any] = {}
    stores: dict[str, hooks_module.Store] = {}
    outbox.send(("ready",))
    while (message := messages.get()) is not None:
        kind = message[0]
        if kind == "hooks":
            try:
                groups[message[1]] = pickle.loads(message[2])
            except Exception as exc:  # a class this process cannot import, say
                groups[message[1]] = _Refused(repr(exc))
        elif kind == "forget":
            groups.pop(message[1], None)
        elif kind == "run":
            _, key, path, trace_ids = message
            group = groups.get(key)
            if group is None or isinstance(group, _Refused):
                outbox.send(("refused", getattr(group, "why", "unknown hook group")))
                continue
            try:
                store = stores.get(path)
                if store is None:
                    while len(stores) >= 4:
                        stores.pop(next(iter(stores))).close()
                    store = stores[path] = hooks_module.Store(Path(path))
                results = hooks_module.run_batch(group, trace_ids, store)
            except Exception as exc:
                outbox.send(("error", repr(exc)))
                continue
            # The batch is committed: from here on the answer is "ok" whatever happens, or
            # the parent would run the batch again.
            states = [_state(h) for h in group]
            try:
                outbox.send(("ok", results, states))
            except OSError:
                raise
            except Exception:  # a state that does not pickle: the results still count
                outbox.send(("ok", results, [{} for _ in group]))
    for store in stores.values():
        store.close()


class _Refused:
    __slots__ = ("why",)

    def __init__(self, why: str) -> None:
        self.why = why


def _state(hook: Any) -> dict[str, Any]:
    """What a hook wants carried back to the app's copy of it (its `portable_state`)."""
    state = {}
    for name in getattr(hook, "portable_state", ()):
        try:
            state[name] = getattr(hook, name)
        except AttributeError:
            pass
    return state
