"""The admin HTTP endpoint: health, status, per-metric statistics, live contexts, explain.

Off unless ``admin_port`` is set, and bound to loopback (``admin_host``) by
default.  Every resource reads the running server; nothing here is on the hot
path (see :mod:`twisted_statsd.admin.service` for what per-metric statistics
add to intake while they are on).
"""

from twisted_statsd.admin.service import AdminService

__all__ = ["AdminService"]
