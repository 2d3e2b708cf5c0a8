"""Enrichment: from a parsed message to what the aggregator keys on (spec §1.3, §6.2).

The order is DogStatsD's: the mapper renames the metric and adds its tags,
special tags are pulled out (``host:`` and the
``dd.internal.*`` tags), the namespace is prefixed unless the name is on the
exclusion list, the block list is checked against the namespaced name, and the
``dogstatsd_tags`` are appended.  For metrics the result depends only on the
non-value part of a line, which is what lets the pipeline cache it per line
shape.
"""

from __future__ import annotations

from typing import NamedTuple

from twisted_statsd.core.limits import TagRules
from twisted_statsd.core.mapper import MetricMapper
from twisted_statsd.core.model import (
    HISTOGRAM,
    TIMING,
    Context,
    Event,
    EventMessage,
    MetricMessage,
    ServiceCheck,
    ServiceCheckMessage,
)

_HOST = b"host:"
_CONTAINER_TAG = b"container_id:"
# Tags consumed by the agent's origin enrichment and never emitted (spec §1.3).
_INTERNAL_PREFIXES = (b"dd.internal.entity_id:", b"dd.internal.card:", b"dd.internal.jmx_check_name:")


class Target(NamedTuple):
    """Where the samples of one metric line go: a context and its type, plus an optional copy."""

    type: bytes
    context: Context
    rate: float
    copy: Context | None  # histogram_copy_to_distribution's distribution context


class Blocklist:
    """``statsd_metric_blocklist``: exact names, or prefixes when ``match_prefix`` is on."""

    def __init__(self, names, match_prefix: bool = False):
        self._match_prefix = match_prefix
        self._names = frozenset(names)
        self._prefixes = tuple(names)

    def __bool__(self):
        return bool(self._names)

    def blocks(self, name: str) -> bool:
        if self._match_prefix:
            return name.startswith(self._prefixes)
        return name in self._names


def _split_special_tags(tags):
    """Return (host or None, remaining tags); the last ``host:`` tag wins."""
    host = None
    kept = []
    for tag in tags:
        if tag.startswith(_HOST):
            host = tag[5:]
        elif not tag.startswith(_INTERNAL_PREFIXES):
            kept.append(tag)
    return host, kept


# Tag lists split by _split_special_tags, remembered: new contexts mostly
# repeat tag lists seen before (a new metric name of a known pod), so
# learning one need not walk its tags again.  Past the bound it starts over.
_SPLIT_CACHE_SIZE = 10_000


def container_id(local_data: bytes | None) -> bytes | None:
    """The container ID in a ``c:`` field: ``ci-<id>``, ``cid-<id>`` or a bare ID (spec §2.6).

    A cgroup inode (``in-<n>``) needs the host's cgroup tree to resolve, so it
    gives no ID here.
    """
    if not local_data:
        return None
    for item in local_data.split(b","):
        if item.startswith(b"ci-"):
            return item[3:] or None
        if item.startswith(b"cid-"):
            return item[4:] or None
        if b"," not in local_data and not item.startswith(b"in-"):
            return item
    return None


def _add_origin(tags: list, local_data: bytes | None, origin: bytes | None) -> None:
    """Tag with the sender's container: the ``c:`` field wins over the detected origin."""
    cid = container_id(local_data) or origin
    if cid:
        tags.append(_CONTAINER_TAG + cid)


def _sorted_unique(tags) -> tuple[str, ...]:
    return tuple(sorted({t.decode("utf-8", "replace") for t in tags}))


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class Enricher:
    """Applies the configured enrichment; pure, built once from the configuration."""

    def __init__(
        self,
        *,
        hostname: str,
        extra_tags=(),
        namespace: str = "",
        namespace_exclusions=(),
        blocklist: Blocklist | None = None,
        histogram_copy_prefix: str | None = None,
        mapper: MetricMapper | None = None,
        tag_rules: TagRules | None = None,
    ):
        self.hostname = hostname.encode()
        self.extra_tags = [t.encode() for t in extra_tags]
        self.namespace = namespace.encode()
        self.namespace_exclusions = tuple(p.encode() for p in namespace_exclusions)
        self.blocklist = blocklist or Blocklist(())
        self.histogram_copy_prefix = None if histogram_copy_prefix is None else histogram_copy_prefix.encode()
        # Replaced as a whole on reload; a pipeline using this enricher must drop its cache then.
        self.mapper = mapper
        # metric_tag_filterlist and the tag value limits; replaced as a whole on reload, like the mapper.
        self.tag_rules = tag_rules or TagRules()
        self._splits: dict[tuple[bytes, ...], tuple[bytes | None, tuple[bytes, ...]]] = {}

    def metric_target(
        self, message: MetricMessage, origin: bytes | None = None, *, learn: bool = True
    ) -> Target | None:
        """The target of a metric line, or None when the block list drops it.

        ``learn`` False leaves the tag value limits' memory as it is (for ``/explain``).
        """
        name, tags = message.name, message.tags
        if self.mapper is not None:
            mapped = self.mapper.map(name)
            if mapped is not None:
                name, extra = mapped
                tags = [*tags, *extra]
        host, tags = self._split(tags)
        if message.container_id is not None or origin is not None:
            _add_origin(tags, message.container_id, origin)
        if host is None:
            host = self.hostname
        if self.namespace and not name.startswith(self.namespace_exclusions):
            name = self.namespace + name
        if self.blocklist and self.blocklist.blocks(_text(name)):
            return None
        if self.tag_rules:
            tags = self.tag_rules.apply(name, tags, learn=learn)
        tags.extend(self.extra_tags)
        copy = None
        if self.histogram_copy_prefix is not None and message.type in (HISTOGRAM, TIMING):
            copy = Context(self.histogram_copy_prefix + name, host, tags)
        return Target(message.type, Context(name, host, tags), message.rate, copy)

    def _split(self, tags: list[bytes]) -> tuple[bytes | None, list[bytes]]:
        """``_split_special_tags(tags)``, remembered per tag list; the caller owns the list returned."""
        frozen = tuple(tags)
        split = self._splits.get(frozen)
        if split is None:
            host, kept = _split_special_tags(frozen)
            if len(self._splits) >= _SPLIT_CACHE_SIZE:
                self._splits.clear()
            split = self._splits[frozen] = host, tuple(kept)
        return split[0], list(split[1])

    def _host_and_tags(self, message: EventMessage | ServiceCheckMessage, origin: bytes | None) -> tuple[str, tuple]:
        """The host (a ``host:`` tag wins) and the sorted, de-duplicated tags of an event or service check."""
        host, tags = _split_special_tags(message.tags)
        _add_origin(tags, message.container_id, origin)
        tags.extend(self.extra_tags)
        return _text(self._host(message.host, host)), _sorted_unique(tags)

    def event(self, message: EventMessage, now: float, origin: bytes | None = None) -> Event:
        host, tags = self._host_and_tags(message, origin)
        return Event(
            title=_text(message.title),
            text=_text(message.text),
            timestamp=message.timestamp or int(now),
            priority=message.priority,
            alert_type=message.alert_type,
            host=host,
            aggregation_key=_text(message.aggregation_key),
            source_type=_text(message.source_type),
            tags=tags,
        )

    def service_check(self, message: ServiceCheckMessage, now: float, origin: bytes | None = None) -> ServiceCheck:
        host, tags = self._host_and_tags(message, origin)
        return ServiceCheck(
            name=_text(message.name),
            status=message.status,
            timestamp=message.timestamp or int(now),
            host=host,
            message=_text(message.message),
            tags=tags,
        )

    def _host(self, field_host, tag_host) -> bytes:
        """An explicit ``h:`` field beats a ``host:`` tag, which beats the hostname."""
        if field_host is not None:
            return field_host
        if tag_host is not None:
            return tag_host
        return self.hostname
