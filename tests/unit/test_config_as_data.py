"""as_data writes a Config back as data load_config reads into the same values: what workers are started with."""

from __future__ import annotations

import json
from dataclasses import fields, replace

from twisted_statsd.config import Config, as_data, load_config
from twisted_statsd.workers import SERVER_ONLY_KEYS, config_data

# A value other than the default for every key (and the awkward ones: a random
# port, a sub-millisecond duration, mapper profiles, the memory limiter).
EVERY_KEY_CHANGED = {
    "hostname": "worker-host",
    "dogstatsd_port": "__random__",
    "bind_host": "127.0.0.2",
    "dogstatsd_non_local_traffic": True,
    "dogstatsd_buffer_size": 1234,
    "dogstatsd_packet_buffer_size": 7,
    "dogstatsd_packet_buffer_flush_timeout": "250us",
    "dogstatsd_so_rcvbuf": 65536,
    "dogstatsd_socket": "/tmp/x.sock",
    "dogstatsd_stream_socket": "/tmp/y.sock",
    "dogstatsd_socket_mode": "0700",
    "dogstatsd_stream_max_connections": 3,
    "dogstatsd_stream_log_too_big": True,
    "dogstatsd_stream_idle_timeout": "90s",
    "dogstatsd_stream_max_connections_per_user": 4,
    "dogstatsd_tcp_port": 8127,
    "dogstatsd_tcp_max_connections": 5,
    "dogstatsd_tcp_idle_timeout": "2m",
    "dogstatsd_tls_cert": "/etc/statsd/cert.pem",
    "dogstatsd_tls_key": "/etc/statsd/key.pem",
    "dogstatsd_tls_ca": "/etc/statsd/ca.pem",
    "dogstatsd_allowed_senders": ["10.0.0.0/8", "::1/128"],
    "dogstatsd_origin_detection": True,
    "dogstatsd_mem_based_rate_limiter": {"enabled": True, "low_soft_limit": 0.5, "check_interval": 2.5},
    "dogstatsd_context_limiter": {"limit": 100, "sender_limit": 10, "key_tag_name": "pod", "entry_timeout": 60},
    "metric_tag_filterlist": [{"metric_name": "m", "action": "include", "tags": ["env"]}],
    "dogstatsd_tag_value_limits": [{"metric_name": "m", "tag": "user", "limit": 5}],
    "dogstatsd_eol_required": ["udp"],
    "dogstatsd_tags": ["b:2", "a:1"],
    "dogstatsd_expiry_seconds": 60,
    "dogstatsd_zero_fill_limit": 5000,
    "dogstatsd_context_expiry_seconds": 5,
    "dogstatsd_no_aggregation_pipeline": False,
    "dogstatsd_origin_detection_client": True,
    "dogstatsd_disable_verbose_logs": True,
    "statsd_metric_namespace": "ns",
    "statsd_metric_namespace_blacklist": ["x"],
    "statsd_metric_blocklist": ["bad.metric"],
    "statsd_metric_blocklist_match_prefix": True,
    "histogram_aggregates": ["max", "sum"],
    "histogram_percentiles": ["0.5", "0.99"],
    "histogram_copy_to_distribution": True,
    "histogram_copy_to_distribution_prefix": "dist.",
    "flush_interval": 3,
    "dogstatsd_mapper_profiles": [
        {"name": "p", "prefix": "app.", "mappings": [{"match": "app.*.hits", "name": "hits", "tags": {"k": "$1"}}]}
    ],
    "dogstatsd_mapper_cache_size": 10,
    "api_key": "secret",
    "site": "datadoghq.eu",
    "dd_url": "http://127.0.0.1:1",
    "dogstatsd_workers": 3,
    "statsd_forward_host": "127.0.0.1",
    "statsd_forward_port": 9999,
    "admin_port": "__random__",
    "admin_host": "::1",
    "dogstatsd_metrics_stats_enable": True,
    "sinks": [{"type": "jsonl", "path": "/tmp/out.jsonl"}],
}


def test_every_key_is_exercised():
    keys = {f.name for f in fields(Config) if "convert" in f.metadata}
    assert keys == set(EVERY_KEY_CHANGED)
    default = load_config()
    config = load_config(data=EVERY_KEY_CHANGED)
    assert [k for k in keys if getattr(config, k) == getattr(default, k)] == []


def test_as_data_reads_back_the_same_config():
    for config in (load_config(), load_config(data=EVERY_KEY_CHANGED)):
        data = json.loads(json.dumps(as_data(config)))
        assert load_config(data=data) == config


def test_workers_get_every_key_but_the_sinks_and_the_api_key():
    config = load_config(data=EVERY_KEY_CHANGED)
    data = json.loads(json.dumps(config_data(config)))
    assert SERVER_ONLY_KEYS.isdisjoint(data)
    assert "secret" not in json.dumps(data)
    assert load_config(data=data) == replace(config, sinks=(), api_key="")
