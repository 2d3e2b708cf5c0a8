"""twistd plugin: ``twistd statsd`` runs twisted-statsd (see twisted_statsd.tap)."""

from twisted.application.service import ServiceMaker

statsd = ServiceMaker("twisted-statsd", "twisted_statsd.tap", "A DogStatsD-compatible metrics server.", "statsd")
