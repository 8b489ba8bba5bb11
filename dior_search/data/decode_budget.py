"""One memory budget for the images being decoded in this process, with a fair queue.

Decoding holds an image's full-size pixels (and its decoder's buffers) until it is shrunk to
what the model sees, so a 35-byte GIF that declares 7000 x 7000 pixels costs hundreds of MB for
a moment. Every decode first reserves its cost (estimated from the file's header) here and
gives it back when the full-size pixels are gone; while the budget is spent, decodes wait.

The queue is fair by cost: requests are grouped in classes by the size of their cost (powers
of two), each class waits in arrival order, and freed memory goes to the classes in turn, so a
flood of expensive images queues behind itself, not in front of cheap ones. Two more rules
keep cheap decodes moving while expensive ones flood in: large decodes (over an eighth of the
budget) leave that eighth free for the others, and at most `large_slots` of them (one per two
cores by default) run at once, since each keeps a core busy for a while; alone, a large decode
may take all that is free.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from dior_search.errors import DiorError

MIB = 1 << 20
# The default budget: an eighth of the machine's memory but at most 1 GiB per core (more decodes
# at once than cores only adds waiting), and at least 1 GiB: enough for a 50-megapixel image of
# most kinds (5 to 14 bytes a pixel; see images.ImageHeader.decode_bytes).
DEFAULT_SHARE_OF_MEMORY = 8
DEFAULT_MIN_BYTES = 1 << 30
DEFAULT_BYTES_PER_CORE = 1 << 30
# A decode costing over this share of the budget is large (see the module's docstring).
LARGE_SHARE = 8
# glibc's malloc serves a buffer this large or larger by its own mmap, given back to the system
# when it is freed (see `return_big_buffers`).
MMAP_THRESHOLD = 4 * MIB
M_MMAP_THRESHOLD = -3


class DecodeQueueTimeout(DiorError):
    """A decode waited for memory until its request's time was up."""

    http_status = 504


class OverBudget(DiorError):
    """A decode that costs more than the whole budget; it could never start."""


@dataclass
class _Waiter:
    cost: int
    granted: bool = False


def machine_memory() -> int | None:
    """Physical memory in bytes, where the platform says (None: unknown)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def default_budget_bytes() -> int:
    """The budget for this machine: see DEFAULT_* above."""
    cores = os.cpu_count() or 1
    memory = machine_memory() or 8 * DEFAULT_MIN_BYTES
    return max(
        DEFAULT_MIN_BYTES, min(memory // DEFAULT_SHARE_OF_MEMORY, cores * DEFAULT_BYTES_PER_CORE)
    )


_allocator_set = False


def return_big_buffers() -> None:
    """Make freed image buffers go back to the system at once (glibc; elsewhere a no-op).

    By default glibc raises its mmap threshold to the size of the last big buffer freed, so
    later decoded images come from the heap arenas of the worker threads that decoded them,
    and their memory stays with the process after they are freed: a burst of large decodes
    left a server at several GB for good. A fixed threshold keeps every buffer of 4 MiB or
    more (an image's pixel blocks) in its own mapping, unmapped when freed.
    """
    global _allocator_set
    if _allocator_set:
        return
    _allocator_set = True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    except OSError:
        pass


class DecodeBudget:
    """Bytes that decodes in flight may hold together; `reserve` waits its turn for them."""

    def __init__(self, capacity: int, large_slots: int | None = None) -> None:
        if capacity < 1:
            raise ValueError("a decode budget must be at least 1 byte")
        return_big_buffers()
        self.capacity = capacity
        self.large_slots = large_slots or max(1, (os.cpu_count() or 1) // 2)
        self.in_use = 0
        self.large_in_use = 0
        self.large_running = 0
        self._queues: dict[int, deque[_Waiter]] = {}
        self._turn = 0
        self._lock = threading.Condition()

    def is_large(self, cost: int) -> bool:
        return cost > self.capacity // LARGE_SHARE

    @contextmanager
    def reserve(self, cost: int, deadline: float | None = None) -> Iterator[None]:
        """Hold `cost` bytes of the budget for the block; wait (until `deadline`) for them."""
        cost = max(1, cost)
        if cost > self.capacity:
            raise OverBudget(
                f"decoding it needs about {cost // MIB + 1} MiB, over the decode budget of "
                f"{self.capacity // MIB} MiB"
            )
        self._acquire(cost, deadline)
        try:
            yield
        finally:
            self._release(cost)

    def _fits(self, cost: int) -> bool:
        if self.in_use + cost > self.capacity:
            return False
        if not self.is_large(cost):
            return True
        if self.large_running == 0:
            return True  # alone among large decodes it may take all that is free
        room = self.capacity - self.capacity // LARGE_SHARE
        return self.large_running < self.large_slots and self.large_in_use + cost <= room

    def _take(self, cost: int) -> None:
        self.in_use += cost
        if self.is_large(cost):
            self.large_in_use += cost
            self.large_running += 1

    def _acquire(self, cost: int, deadline: float | None) -> None:
        size_class = cost.bit_length()
        with self._lock:
            queue = self._queues.setdefault(size_class, deque())
            if not queue and self._fits(cost):
                self._take(cost)
                return
            waiter = _Waiter(cost)
            queue.append(waiter)
            while not waiter.granted:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    queue.remove(waiter)
                    self._dispatch()  # the next in this class may fit where this did not
                    raise DecodeQueueTimeout("the request timed out waiting for memory to decode")
                self._lock.wait(left)

    def _release(self, cost: int) -> None:
        with self._lock:
            self.in_use -= cost
            if self.is_large(cost):
                self.large_in_use -= cost
                self.large_running -= 1
            self._dispatch()

    def _dispatch(self) -> None:
        """Grant waiting heads that fit, one class at a time in turn; under the lock."""
        granted = True
        while granted:
            granted = False
            classes = sorted(c for c, q in self._queues.items() if q)
            if not classes:
                return
            # Start from the class after the one served last: each class gets its turn.
            start = next((i for i, c in enumerate(classes) if c > self._turn), 0)
            for size_class in classes[start:] + classes[:start]:
                head = self._queues[size_class][0]
                if self._fits(head.cost):
                    self._queues[size_class].popleft()
                    self._take(head.cost)
                    head.granted = True
                    self._turn = size_class
                    granted = True
                    self._lock.notify_all()
                    break


_process_budget: DecodeBudget | None = None
_process_lock = threading.Lock()


def process_budget() -> DecodeBudget:
    """The budget every decode in this process shares (sized for the machine by default)."""
    global _process_budget
    with _process_lock:
        if _process_budget is None:
            _process_budget = DecodeBudget(default_budget_bytes())
        return _process_budget
