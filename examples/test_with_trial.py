"""How a trial user tests the metrics their code emits: ``trial examples/test_with_trial.py``."""

from datadog.dogstatsd import DogStatsd
from twisted.trial import unittest

from twisted_statsd.testing import StatsdServerMixin


def handle_signup(statsd: DogStatsd, plan: str) -> None:
    """The code under test: it reports a signup."""
    statsd.increment("signups", tags=[f"plan:{plan}"])
    statsd.gauge("signup.queue", 3)


class SignupMetricsTests(StatsdServerMixin, unittest.TestCase):
    def setUp(self):
        self.server = self.start_statsd_server()
        self.statsd = DogStatsd(host=self.server.host, port=self.server.port, disable_telemetry=True)
        self.addCleanup(self.statsd.close_socket)

    async def test_signup_is_counted(self):
        handle_signup(self.statsd, "pro")
        await self.server.flush()
        # a counter is reported as a rate over the 10 s bucket: 1 signup -> 0.1
        self.server.assert_metric("signups", value=0.1, tags=["plan:pro"], type="rate")
        self.server.assert_metric("signup.queue", value=3, type="gauge")
