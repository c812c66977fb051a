"""Liveness-based memory planning over a kernel sequence.

Every intermediate value (one that is neither kept nor a graph input) lives from the kernel
that writes it to the last kernel that reads it, both inclusive. Walking the kernels in order,
each output of a kernel gets a buffer first and only then do the values whose last use is that
kernel die, so a kernel's outputs never share a buffer with its own inputs (generated code may
read an input after writing part of an output).

A dying value's buffer goes back to a free pool; a new value takes the smallest free buffer
that is big enough (best fit), else grows the largest free one, else gets a new buffer. Sizes
are rounded up to 64 bytes, so buffers laid end to end in one arena stay aligned.
"""

from __future__ import annotations

from typing import Any

from kiln.errors import ArtifactError
from kiln.runtime.format import round_up, split_args, value_nbytes


def live_ranges(kernels: list[dict[str, Any]], keep: set[str]) -> dict[str, tuple[int, int]]:
    """``{value: (first kernel index, last kernel index)}`` for every non-kept kernel arg.

    Raises ArtifactError when a value is read before it is written, or written twice.
    """
    ranges: dict[str, list[int]] = {}
    for i, kernel in enumerate(kernels):
        ins, outs = split_args(kernel)
        for name in ins:
            if name in keep:
                continue
            if name not in ranges:
                raise ArtifactError(f"kernel #{i} ({kernel.get('func')}) reads {name!r} "
                                    "before any kernel writes it")
            ranges[name][1] = i
        for name in outs:
            if name in keep:
                continue
            if name in ranges or name in ins:
                raise ArtifactError(f"kernel #{i} ({kernel.get('func')}) writes {name!r}, "
                                    "which another argument already defines")
            ranges[name] = [i, i]
    return {name: (a, b) for name, (a, b) in ranges.items()}


def plan_memory(
    kernels: list[dict[str, Any]], values: dict[str, dict[str, Any]], keep: set[str]
) -> dict[str, Any]:
    """Plan buffers for the intermediates of ``kernels``; returns the manifest's "memory".

    ``values`` maps names to ``{"shape", "dtype"}``; ``keep`` names values that get no arena
    buffer (graph inputs, constants and graph outputs). The result holds ``buffers`` (id and
    nbytes), ``assign`` (value -> buffer id), ``peak_bytes`` (the arena: sum of buffers) and
    ``naive_bytes`` (one 64-byte-rounded buffer per intermediate value).
    """
    ranges = live_ranges(kernels, keep)
    dying: dict[int, list[str]] = {}
    for name, (_, last) in ranges.items():
        dying.setdefault(last, []).append(name)
    sizes: list[int] = []
    free: list[int] = []
    assign: dict[str, int] = {}
    for i, kernel in enumerate(kernels):
        for name in split_args(kernel)[1]:
            if name in ranges:
                assign[name] = _take(free, sizes, round_up(value_nbytes(values[name])))
        for name in dying.get(i, ()):
            free.append(assign[name])
    naive = sum(round_up(value_nbytes(values[name])) for name in ranges)
    return {
        "buffers": [{"id": i, "nbytes": n} for i, n in enumerate(sizes)],
        "assign": assign,
        "peak_bytes": sum(sizes),
        "naive_bytes": naive,
    }


def _take(free: list[int], sizes: list[int], need: int) -> int:
    """Pick a buffer of at least ``need`` bytes, removing it from ``free``."""
    fitting = [b for b in free if sizes[b] >= need]
    if fitting:
        best = min(fitting, key=lambda b: (sizes[b], b))
    elif free:
        best = max(free, key=lambda b: (sizes[b], -b))
        sizes[best] = need  # growing a free buffer costs less than a new one
    else:
        sizes.append(need)
        return len(sizes) - 1
    free.remove(best)
    return best


def check_plan(
    kernels: list[dict[str, Any]],
    values: dict[str, dict[str, Any]],
    keep: set[str],
    memory: dict[str, Any],
) -> None:
    """Check that ``memory`` is a sound plan for ``kernels``; raise ArtifactError if not.

    Sound means: every intermediate, and nothing else, has a buffer big enough for it; two
    values whose live ranges overlap (sharing even one kernel) never share a buffer; and the
    sizes are exactly what ``plan_memory`` makes (each buffer as big as the largest value it
    holds, rounded up; ``peak_bytes`` and ``naive_bytes`` their sums, where present). The
    exact sizes matter: the executor lays buffers end to end, so a wrong size anywhere (even
    of a buffer that holds nothing) would shift every buffer after it onto another.
    """
    ranges = live_ranges(kernels, keep)
    sizes = [b["nbytes"] for b in memory["buffers"]]
    extra = sorted(set(memory["assign"]) - set(ranges))
    if extra:
        raise ArtifactError(f"memory plan: {extra[0]!r} is not an intermediate value")
    by_buffer: dict[int, list[tuple[int, int, str]]] = {}
    for name, (first, last) in ranges.items():
        buf = memory["assign"].get(name)
        if buf is None or not 0 <= buf < len(sizes):
            raise ArtifactError(f"memory plan: {name!r} has no buffer")
        if sizes[buf] < value_nbytes(values[name]):
            raise ArtifactError(f"memory plan: buffer {buf} ({sizes[buf]} bytes) is too small "
                                f"for {name!r} ({value_nbytes(values[name])} bytes)")
        by_buffer.setdefault(buf, []).append((first, last, name))
    for buf, users in by_buffer.items():
        users.sort()
        for (_, last, a), (first, _, b) in zip(users, users[1:]):
            if first <= last:
                raise ArtifactError(f"memory plan: {a!r} and {b!r} are live at the same time "
                                    f"but share buffer {buf}")
    _check_sizes(memory, sizes, by_buffer, values)


def _check_sizes(memory: dict[str, Any], sizes: list[int],
                 by_buffer: dict[int, list[tuple[int, int, str]]],
                 values: dict[str, dict[str, Any]]) -> None:
    def need(name: str) -> int:
        return round_up(value_nbytes(values[name]))

    for buf, size in enumerate(sizes):
        if buf not in by_buffer:
            raise ArtifactError(f"memory plan: buffer {buf} holds no value")
        largest = max(need(name) for _, _, name in by_buffer[buf])
        if size != largest:
            raise ArtifactError(f"memory plan: buffer {buf} has {size} bytes, but the largest "
                                f"value it holds needs {largest}")
    figures = {"peak_bytes": sum(sizes),
               "naive_bytes": sum(need(n) for users in by_buffer.values() for *_, n in users)}
    for key, expected in figures.items():
        if key in memory and memory[key] != expected:
            raise ArtifactError(f"memory plan: {key} is {memory[key]!r}, the buffers make "
                                f"{expected}")
