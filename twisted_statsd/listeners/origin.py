"""Origin detection: from a sender's PID to the ID of the container it runs in.

The Unix listeners learn the sending process from the kernel (SCM_CREDENTIALS
on datagrams, SO_PEERCRED on stream connections); its ``/proc/<pid>/cgroup``
names the cgroup, and container runtimes put the container ID in the cgroup
path (docker, containerd, CRI-O, podman, Kubernetes, ECS; cgroup v1 and v2).
The ID becomes the packet buffer's origin, which the pipeline turns into a
``container_id:<id>`` tag (spec §2.3).

Lookups are cached per PID for a minute, "no container" included, as the agent
does; failures are not cached.  A lookup is one small procfs read (about 20 µs,
served from kernel memory, never from disk), and at most
``max_lookups_per_second`` happen per second, so a flood of new senders cannot
stall the reactor: beyond that budget a packet goes through untagged and the
skipped lookup is counted.  Any failure is counted and logged, rate-limited,
and the packet is still processed, untagged.
"""

from __future__ import annotations

import re

from twisted_statsd._ratelimit import RateLimitedReporter

#: How long a PID's container (or lack of one) is remembered, as in the agent.
ORIGIN_TTL = 60.0
#: Upper bound on /proc reads per second (about 10 ms of reactor time at most).
MAX_LOOKUPS_PER_SECOND = 500

_CONTAINER_ID = (
    r"[0-9a-f]{64}"  # docker, containerd, CRI-O, podman
    r"|[0-9a-f]{32}-[0-9]+"  # ECS Fargate task containers
    r"|[0-9a-f]{8}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{4}[-_][0-9a-f]{12}"  # UUID-style runtimes
)
# One path component: the ID alone or after a runtime prefix ending in "-"
# (docker-<id>.scope, cri-containerd-<id>.scope, crio-<id>, libpod-<id>.scope).
_COMPONENT = re.compile(rf"(?:.*-)?({_CONTAINER_ID})(?:\.scope)?")


def container_id_from_path(path: str) -> str | None:
    """The container ID in one cgroup path, from its deepest component that names one."""
    for component in reversed(path.split("/")):
        match = _COMPONENT.fullmatch(component)
        if match:
            return match.group(1)
    return None


def container_id_from_cgroup(text: str) -> str | None:
    """The container ID in the contents of a ``/proc/<pid>/cgroup`` file, or None.

    cgroup v1 has one ``<id>:<controllers>:<path>`` line per hierarchy, v2 a
    single ``0::<path>`` line; the first line whose path names a container
    wins.  A v2 path of ``/`` (a private cgroup namespace) names nothing.
    """
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            found = container_id_from_path(parts[2].strip())
            if found:
                return found
    return None


class OriginResolver:
    """Maps PIDs to container IDs through ``/proc``, with a TTL cache and a lookup budget.

    Invariant: ``_cache[pid]`` is ``(origin, expires_at)``; an entry past its
    expiry is never returned, and :meth:`expire` removes such entries so the
    cache holds only PIDs seen within the last TTL.
    """

    def __init__(
        self,
        reporter: RateLimitedReporter,
        *,
        proc_root: str = "/proc",
        ttl: float = ORIGIN_TTL,
        max_lookups_per_second: int = MAX_LOOKUPS_PER_SECOND,
    ):
        self.reporter = reporter
        self.proc_root = proc_root
        self.ttl = ttl
        self.max_lookups_per_second = max_lookups_per_second
        self._cache: dict[int, tuple[bytes | None, float]] = {}
        self._window_start = float("-inf")
        self._lookups = 0

    def origin(self, pid: int | None, now: float) -> bytes | None:
        """The container ID of process ``pid`` as bytes, or None (no container, or a failure)."""
        entry = self._cache.get(pid) if pid is not None else None
        if entry is not None and entry[1] > now:
            return entry[0]
        return self._lookup(pid, now)

    def _lookup(self, pid: int | None, now: float) -> bytes | None:
        if pid is None:
            self._fail("no sender credentials came with the packet", b"")
            return None
        if pid == 0:
            self._fail(
                "the sender's PID is 0: it belongs to another PID namespace (run the server in the host PID namespace)",
                b"pid=0",
            )
            return None
        if now - self._window_start >= 1.0:
            self._window_start, self._lookups = now, 0
        if self._lookups >= self.max_lookups_per_second:
            self.reporter.report(
                "origin_detection_throttled",
                f"more than {self.max_lookups_per_second} new senders per second; packet left untagged",
                b"pid=%d" % pid,
                dropped=False,
            )
            return None
        self._lookups += 1
        path = f"{self.proc_root}/{pid}/cgroup"
        try:
            with open(path, "rb") as f:
                text = f.read().decode("ascii", "replace")
        except OSError as e:
            self._fail(f"cannot read {path}: {e.strerror or e}", b"pid=%d" % pid)
            return None
        found = container_id_from_cgroup(text)
        origin = found.encode() if found else None
        self._cache[pid] = (origin, now + self.ttl)
        return origin

    def _fail(self, message: str, sample: bytes) -> None:
        self.reporter.report("origin_detection_failed", message, sample, dropped=False)

    def expire(self, now: float) -> set[bytes]:
        """Forget PIDs past their TTL; return the origins still cached (live senders)."""
        cache = self._cache
        for pid in [pid for pid, (_, expires) in cache.items() if expires <= now]:
            del cache[pid]
        return {origin for origin, _ in cache.values() if origin is not None}
