"""A small twisted.web site that embeds twisted-statsd and reports its own request metrics.

Run it with ``twistd -ny examples/webapp/webapp.tac`` (it needs the ``datadog``
client: ``pip install datadog``).  The site listens on WEBAPP_PORT (8080), the
embedded statsd server on WEBAPP_STATSD_PORT (8125); flushed metrics go to
WEBAPP_METRICS (``metrics.jsonl``) as JSON lines.
"""

import os
import time

from datadog.dogstatsd import DogStatsd
from twisted.application import service, strports
from twisted.web import resource, server

from twisted_statsd import build_service, load_config

WEB_PORT = int(os.environ.get("WEBAPP_PORT", "8080"))
STATSD_PORT = int(os.environ.get("WEBAPP_STATSD_PORT", "8125"))
METRICS = os.environ.get("WEBAPP_METRICS", "metrics.jsonl")


class Hello(resource.Resource):
    """Answers every GET and counts it, with its latency, through DogStatsD."""

    isLeaf = True

    def __init__(self, statsd: DogStatsd):
        super().__init__()
        self.statsd = statsd

    def render_GET(self, request):
        started = time.monotonic()
        body = b"hello from " + request.path + b"\n"
        path = request.path.decode("utf-8", "replace")
        self.statsd.increment("webapp.requests", tags=[f"path:{path}"])
        self.statsd.timing("webapp.latency", (time.monotonic() - started) * 1000, tags=[f"path:{path}"])
        return body


application = service.Application("webapp")

config = load_config(
    data={
        "dogstatsd_port": STATSD_PORT,
        "flush_interval": 10,
        "dogstatsd_tags": ["app:webapp"],
        "sinks": [{"type": "jsonl", "path": METRICS}],
    }
)
build_service(config).setServiceParent(application)

client = DogStatsd(host="127.0.0.1", port=STATSD_PORT, disable_telemetry=True)
site = server.Site(Hello(client))
strports.service(f"tcp:{WEB_PORT}:interface=127.0.0.1", site).setServiceParent(application)
