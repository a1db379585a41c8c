"""Every Prometheus metric Mailward exports, defined in one place.

Naming follows Prometheus rules: prefix `mailward_`, `_total` for counters, `_seconds`
for durations, base units.  Label values are bounded enumerations (actions, checks,
outcomes, record types), never addresses or domains, so that cardinality stays flat
however much mail flows.

The milter service runs several worker processes; they report through
prometheus_client's multiprocess mode, which the CLI switches on (by setting
PROMETHEUS_MULTIPROC_DIR) before this module is first imported.  Gauges therefore name
their multiprocess aggregation explicitly.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# Latency buckets for work that is usually sub-millisecond but may wait on DNS.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)

# --------------------------------------------------------------------------- milter

MILTER_SESSIONS = Counter(
    "mailward_milter_sessions_total",
    "SMTP sessions (milter connections) opened by the MTA.",
)
MILTER_ACTIVE_SESSIONS = Gauge(
    "mailward_milter_active_sessions",
    "Milter sessions currently open.",
    multiprocess_mode="livesum",
)
MILTER_MESSAGES = Counter(
    "mailward_milter_messages_total",
    "Messages that reached end-of-message, by verdict action and direction.",
    ["action", "direction"],
)
MILTER_MESSAGE_SECONDS = Histogram(
    "mailward_milter_message_duration_seconds",
    "Time the engine spent deciding about one message (end-of-message to verdict).",
    buckets=_LATENCY_BUCKETS,
)
MILTER_MESSAGE_BYTES = Histogram(
    "mailward_milter_message_size_bytes",
    "Size of message bodies as sent by the client.",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864),
)
MILTER_BODY_TRUNCATED = Counter(
    "mailward_milter_body_truncated_total",
    "Messages whose body exceeded milter.max_body_size; checks saw only a prefix.",
)
MILTER_FORGED_AR_REMOVED = Counter(
    "mailward_milter_forged_authentication_results_removed_total",
    "Authentication-Results headers claiming our authserv-id removed from untrusted mail.",
)

# --------------------------------------------------------------------------- policyd

POLICYD_CONNECTIONS = Counter(
    "mailward_policyd_connections_total",
    "Connections accepted by the policy service.",
)
POLICYD_ACTIVE_CONNECTIONS = Gauge(
    "mailward_policyd_active_connections",
    "Policy connections currently open.",
    multiprocess_mode="livesum",
)
POLICYD_REQUESTS = Counter(
    "mailward_policyd_requests_total",
    "Policy requests answered, by protocol state and action.",
    ["protocol_state", "action"],
)
POLICYD_REQUEST_SECONDS = Histogram(
    "mailward_policyd_request_duration_seconds",
    "Time from a complete policy request to its answer.",
    buckets=_LATENCY_BUCKETS,
)
POLICYD_PROTOCOL_ERRORS = Counter(
    "mailward_policyd_protocol_errors_total",
    "Malformed policy input, by kind; the connection is answered safely or closed.",
    ["kind"],
)

# --------------------------------------------------------------------------- engine

ERRORS = Counter(
    "mailward_errors_total",
    "Unexpected exceptions, by component; each is logged with its traceback.",
    ["component"],
)
CONFIG_RELOADS = Counter(
    "mailward_config_reloads_total",
    "Configuration reloads (SIGHUP), by result.",
    ["result"],
)

# --------------------------------------------------------------------------- DNS

DNS_QUERIES = Counter(
    "mailward_dns_queries_total",
    "DNS queries sent to the resolver (cache misses), by record type and outcome.",
    ["rdtype", "outcome"],
)
DNS_QUERY_SECONDS = Histogram(
    "mailward_dns_query_duration_seconds",
    "Time one DNS query took on the wire, by record type.",
    ["rdtype"],
    buckets=_LATENCY_BUCKETS,
)
DNS_CACHE_LOOKUPS = Counter(
    "mailward_dns_cache_lookups_total",
    "DNS cache lookups, by result (hit or miss).",
    ["result"],
)
