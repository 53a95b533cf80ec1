"""Running the model validation of deeply nested resources without exhausting the stack.

fhir.resources validates nested elements recursively: about eight Python frames and up to
25 KiB of C stack per element step (measured on CPython 3.11 with pydantic-core 2). With the
default recursion limit of 1000, a resource about 120 steps deep fails with RecursionError;
in an 8 MiB thread a resource about 370 steps deep overflows the C stack. Resources as deep
as `max_resource_depth` (at most 500) are therefore validated in a thread of their own,
whose stack is sized for the resource's depth, after raising the interpreter's recursion
limit to cover it. The limit is raised only, never lowered (other threads may be deep in a
validation), and is bounded by the depth the settings allow.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Depths up to this run in the caller's thread: ~300 frames and under 1 MiB of C stack.
SHALLOW = 32
_FRAMES_PER_STEP = 10  # measured: 8 to 8.5
_BASE_FRAMES = 200
_STACK_PER_STEP = 64 * 1024  # measured: up to 25 KiB
_BASE_STACK = 4 * 1024 * 1024

_lock = threading.Lock()


def call_at_depth(depth: int, work: Callable[[], T]) -> T:
    """`work()`, which recurses about `depth` element steps deep, run where it has room."""
    if depth <= SHALLOW:
        return work()
    outcome: list[T] = []
    failure: list[BaseException] = []

    def run() -> None:
        try:
            outcome.append(work())
        except BaseException as e:  # handed to the caller, which raises it
            failure.append(e)

    with _lock:
        if sys.getrecursionlimit() < _BASE_FRAMES + _FRAMES_PER_STEP * depth:
            sys.setrecursionlimit(_BASE_FRAMES + _FRAMES_PER_STEP * depth)
        # stack_size applies to the threads started after it: set for this one, then restored.
        previous = threading.stack_size(_BASE_STACK + _STACK_PER_STEP * depth)
        try:
            thread = threading.Thread(target=run, name="hub-deep-validation", daemon=True)
            thread.start()
        finally:
            threading.stack_size(previous)
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
