"""twisted-statsd: a DogStatsD-compatible metrics server on Twisted.

Run it with ``twistd -n statsd``, or embed it: build the service tree with
:func:`build_service` from a :class:`Config` (see :func:`load_config`) and
attach it to your application with ``setServiceParent``.  Whatever stops it
at start raises :class:`StartupError`, whose message is one line naming the
key, path or address and the reason.
"""

from twisted_statsd.config import Config, ConfigError, load_config
from twisted_statsd.errors import StartupError
from twisted_statsd.service import StatsdService, build_service

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "StartupError", "StatsdService", "__version__", "build_service", "load_config"]
