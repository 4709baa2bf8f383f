"""Child process of ``limits.TimeLimitedPool``: runs pickled ``(fn, args, kwargs)`` calls from stdin.

A fresh interpreter running this file (stdlib imports only), not a fork: it inherits no CUDA
context, thread pools or open files of the trainer, and never re-imports the user's ``__main__``.
Messages are length-prefixed pickles in both directions.
"""

from __future__ import annotations

import importlib
import logging
import pickle
import struct
import sys
from typing import Any, BinaryIO

HEADER = struct.Struct("<Q")


def read_message(stream: BinaryIO) -> Any:
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError("the other side closed the pipe")
    (size,) = HEADER.unpack(header)
    payload = stream.read(size)
    if len(payload) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(payload)


def write_message(stream: BinaryIO, value: Any) -> None:
    payload = pickle.dumps(value)
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def main() -> None:
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # it logs whole adversarial strings
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a print() inside a reward must not corrupt the reply channel
    # Modules named on the command line are imported before "ready", so deadlines never pay for it.
    for name in sys.argv[1:]:
        importlib.import_module(name)
    write_message(sink, ("ready", None))
    while True:
        try:
            fn, args, kwargs = read_message(source)
        except EOFError:
            return
        try:
            reply = ("ok", fn(*args, **kwargs))
        except Exception as err:  # the parent decides what an error means
            reply = ("error", f"{type(err).__name__}: {err}")
        write_message(sink, reply)


if __name__ == "__main__":
    main()
