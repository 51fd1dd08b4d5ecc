"""Process-tree memory sampling from /proc (driver + Ray's helpers and workers) and a description of the machine."""
from __future__ import annotations

import os
import platform
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SAMPLE_S = 0.2


def _children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process we can see."""
    kids: dict[int, list[int]] = {}
    for d in os.scandir("/proc"):
        if not d.name.isdigit():
            continue
        try:
            with open(f"/proc/{d.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # field 4 (ppid) follows the command name, which is in parentheses and may itself contain spaces
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree(pid: int) -> list[int]:
    """pid and all its descendants (by parent pid, so Ray's gcs_server, raylet and workers are included)."""
    kids, out, stack = _children_map(), [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(kids.get(p, ()))
    return out


def _status_kb(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "RssAnon:", "RssShmem:")):
                    k, v = line.split(":", 1)
                    out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


@dataclass
class TreeMemory:
    """Peaks over the samples of the summed memory of a process tree, in MiB."""

    peak_rss_mib: float = 0.0  # sum of VmRSS (shared pages are counted once per process that maps them)
    peak_anon_mib: float = 0.0  # sum of RssAnon: private heap memory, the part that would grow with the listing
    peak_processes: int = 0
    peak_process_rss_mib: float = 0.0  # the largest VmRSS of any one process of the tree: a worker's peak
    samples: int = 0
    first_task_s: float | None = None  # seconds from start() until a process of the tree first ran a watched task


class TreeSampler:
    """Samples the summed RSS of a process tree every SAMPLE_S seconds in a thread, until stop().

    With `watch` (a command-line prefix such as 'ray::RayWorker.process', the title Ray gives an actor while
    it runs that method), also notes when a process of the tree first shows it: the job's start-up time
    (interpreter, Ray, actors) as seen from outside.
    """

    def __init__(self, pid: int, watch: str | None = None):
        self.pid, self.mem, self.watch = pid, TreeMemory(), watch
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "TreeSampler":
        """Start sampling."""
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.pid)
            st = [_status_kb(p) for p in pids]
            m = self.mem
            m.peak_rss_mib = max(m.peak_rss_mib, sum(s.get("VmRSS", 0) for s in st) / 1024)
            m.peak_anon_mib = max(m.peak_anon_mib, sum(s.get("RssAnon", 0) for s in st) / 1024)
            m.peak_processes = max(m.peak_processes, sum(1 for s in st if s))
            m.peak_process_rss_mib = max([m.peak_process_rss_mib, *(s.get("VmRSS", 0) / 1024 for s in st)])
            m.samples += 1
            if self.watch is not None and m.first_task_s is None and any(map(self._runs_task, pids)):
                m.first_task_s = time.perf_counter() - self._t0
            self._stop.wait(SAMPLE_S)

    def _runs_task(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().startswith(self.watch.encode())
        except OSError:
            return False

    def stop(self) -> TreeMemory:
        """Stop and return the peaks."""
        self._stop.set()
        self._thread.join()
        return self.mem


def machine() -> dict:
    """CPU count, memory, load and versions: what a reader needs to compare numbers across machines."""
    info: dict = {"nproc": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    try:
        info["free_g"] = subprocess.run(["free", "-g"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        info["free_g"] = None
    info["loadavg_start"] = os.getloadavg()
    cpu = Path("/proc/cpuinfo")
    if cpu.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpu.read_text().splitlines() if ln.startswith("model name")]
        info["cpu"] = names[0] if names else None
    for mod in ("torch", "onnxruntime", "ray", "numpy", "PIL"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - a missing package is a fact to report, not an error
            info[mod] = None
    return info
