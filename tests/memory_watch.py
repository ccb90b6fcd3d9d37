"""Peak resident memory of the test run, per test and per test module: this process and every process it starts.

Why not ``getrusage``: ``RUSAGE_CHILDREN``'s ``ru_maxrss`` counts, for a child that execs (every
``subprocess`` call), the resident size of the process it was forked from, so after the pytest process once
held 8.7 GiB even ``subprocess.run(["true"])`` "peaks" at 8.7 GiB (seen: a 1.5 GiB Python process, then
``true``: RUSAGE_CHILDREN 1.48 GiB). And ``RUSAGE_SELF`` only knows the whole run's peak.

What this does instead (Linux; elsewhere it falls back to ``getrusage``):
- this process: its ``VmHWM`` (peak resident set) is read and reset (``/proc/self/clear_refs``, 5) around
  every test, so each test's peak is its own; a test's window holds its setup (module and session fixtures
  made for it) and teardown (module fixtures ended after it);
- child processes (the ComfyUI servers, headless runners, Chromium and their own children): a daemon thread
  reads the ``VmHWM`` of every descendant every ``interval`` seconds and gives it to the test during which it
  rose. ``VmHWM`` only grows, so the last read before a process ends misses at most the last ``interval`` of
  its life.
"""
from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

GIB = 2 ** 30


def status_bytes(pid: int | str, key: str) -> int | None:
    """``key`` (``VmHWM``, ``VmRSS``) of /proc/<pid>/status in bytes; None if unreadable (gone, not Linux)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def reset_own_peak() -> bool:
    """Start a new VmHWM window for this process; False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


@dataclass
class Peak:
    """The largest resident peak seen in a window: bytes and which process (for children)."""

    bytes: int = 0
    what: str = ""

    def fold(self, value: int | None, what: str = "") -> None:
        if value is not None and value > self.bytes:
            self.bytes, self.what = value, what


@dataclass
class Window:
    """One test's figures."""

    name: str
    own: Peak = field(default_factory=Peak)
    child: Peak = field(default_factory=Peak)
    rss_after: int = 0


class ChildWatch:
    """A daemon thread that keeps, per window, the largest VmHWM of any descendant of this process."""

    def __init__(self, interval: float = 0.25):
        self.interval = interval
        self._lock = threading.Lock()
        self._window = Peak()
        self._last: dict[int, int] = {}  # pid -> its VmHWM at the previous sample
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        try:
            import psutil  # ComfyUI requires it
        except ImportError:
            return False
        self._psutil = psutil
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def sample(self) -> None:
        try:
            children = self._psutil.Process(os.getpid()).children(recursive=True)
        except Exception:  # noqa: BLE001 (a racing exit; the next sample sees the rest)
            return
        with self._lock:  # the thread and take() both sample
            for child in children:
                peak = status_bytes(child.pid, "VmHWM")
                # A window counts a process's peak only when it rose in that window (a server made for a module
                # carries its peak on through the module's later tests; a test that resets it starts it anew).
                if peak is None or peak <= self._last.get(child.pid, 0):
                    if peak is not None:
                        self._last[child.pid] = peak
                    continue
                self._last[child.pid] = peak
                try:
                    name = " ".join(child.cmdline()[:3])[:80] or child.name()
                except Exception:  # noqa: BLE001 (gone meanwhile)
                    name = str(child.pid)
                self._window.fold(peak, name)

    def take(self) -> Peak:
        """The window's peak so far, and start a new window."""
        self.sample()
        with self._lock:
            window, self._window = self._window, Peak()
        return window

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


class MemoryReport:
    """Per-test windows, folded per module; printed at the end of the run."""

    def __init__(self):
        self.resettable = reset_own_peak()
        self.children = ChildWatch()
        self.watching_children = self.children.start()
        self.windows: list[Window] = []

    def begin(self) -> None:
        reset_own_peak()

    def end(self, name: str) -> Window:
        window = Window(name)
        window.own.fold(status_bytes("self", "VmHWM"))
        window.rss_after = status_bytes("self", "VmRSS") or 0
        window.child = self.children.take()
        self.windows.append(window)
        return window

    def peaks(self) -> tuple[int, int]:
        """(this process's peak, the largest child's peak) over the whole run, in bytes."""
        import resource

        own = max((w.own.bytes for w in self.windows), default=0)
        child = max((w.child.bytes for w in self.windows), default=0)
        if not self.resettable:
            own = max(own, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
        if not self.watching_children:
            child = max(child, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
        return own, child

    def modules(self) -> list[tuple[str, Window]]:
        """Per test module: its peaks (own, child) and the RSS after its last test (module fixtures ended)."""
        out: dict[str, Window] = {}
        for window in self.windows:
            module = window.name.split("::")[0]
            folded = out.setdefault(module, Window(module))
            folded.own.fold(window.own.bytes, window.name)
            folded.child.fold(window.child.bytes, window.child.what)
            folded.rss_after = window.rss_after
        return list(out.items())

    def lines(self, top: int = 12) -> list[str]:
        header = ("resident memory per test module (GiB): peak of this process, its resident size after the "
                  "module, peak of its largest child process")
        lines = [header]
        for module, w in self.modules():
            child = f"{w.child.bytes / GIB:5.2f} ({w.child.what})" if w.child.bytes else "    -"
            lines.append(f"  {module:<44} {w.own.bytes / GIB:5.2f} {w.rss_after / GIB:5.2f}  {child}")
        lines.append("tests with the highest peaks (GiB), this process / largest child:")
        for w in sorted(self.windows, key=lambda w: -max(w.own.bytes, w.child.bytes))[:top]:
            lines.append(f"  {w.own.bytes / GIB:5.2f} / {w.child.bytes / GIB:5.2f}  {w.name}")
        return lines
