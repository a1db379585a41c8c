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

from mailward import metricvalues

metricvalues.install()  # before the first metric below is made (see metricvalues.py)

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
MILTER_HEADER_OVERFLOW = Counter(
    "mailward_milter_header_overflow_total",
    "Messages rejected because their header block exceeded milter.max_headers or"
    " milter.max_header_bytes.",
)
MILTER_FORGED_AR_REMOVED = Counter(
    "mailward_milter_forged_authentication_results_removed_total",
    "Authentication-Results headers claiming our authserv-id removed from untrusted mail.",
)
MILTER_PROTOCOL_ERRORS = Counter(
    "mailward_milter_protocol_errors_total",
    "Milter packets from the MTA side that broke the protocol, by kind: session_closed"
    " (malformed framing or command; that one session was ended), macro_without_value (a"
    " macro name without its value was dropped; the session went on).",
    ["kind"],
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
POLICYD_POLICY_DECISIONS = Counter(
    "mailward_policyd_policy_decisions_total",
    "Decisions of each policy (spf, greylist, ratelimit): skip, dunno, prepend, defer, "
    "reject.  A decision overridden by an earlier policy's defer or reject is not made.",
    ["policy", "decision"],
)
POLICYD_POLICY_SECONDS = Histogram(
    "mailward_policyd_policy_duration_seconds",
    "Time one policy took for one request, DNS and state backend included.",
    ["policy"],
    buckets=_LATENCY_BUCKETS,
)
POLICYD_SPF_RESULTS = Counter(
    "mailward_policyd_spf_results_total",
    "SPF results the policy service computed (cached ones not counted again), by identity.",
    ["identity", "result"],
)
POLICYD_SPF_CACHE = Counter(
    "mailward_policyd_spf_cache_lookups_total",
    "Per-transaction SPF result cache lookups (one per identity and recipient), by result.",
    ["result"],
)
STATE_ERRORS = Counter(
    "mailward_state_errors_total",
    "State backend failures (greylisting, rate limits), by backend and operation; the "
    "request is answered as [policyd] on_state_error says.",
    ["backend", "operation"],
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

# --------------------------------------------------------------------------- inbound checks

CHECK_RESULTS = Counter(
    "mailward_check_results_total",
    "Inbound checks run, by check and result (the check's bounded result label, or "
    "\"error\" when the check raised and was reported as temperror).",
    ["check", "result"],
)
CHECK_SECONDS = Histogram(
    "mailward_check_duration_seconds",
    "Time one inbound check took for one message, DNS included, by check.",
    ["check"],
    buckets=_LATENCY_BUCKETS,
)

# --------------------------------------------------------------------------- DKIM verify

DKIM_SIGNATURES = Counter(
    "mailward_dkim_signatures_total",
    "DKIM signatures on inbound mail, by result and problem (\"none\" for a pass).",
    ["result", "problem"],
)
DKIM_SIGNATURES_IGNORED = Counter(
    "mailward_dkim_signatures_ignored_total",
    "DKIM signatures neither verified nor reported: beyond twice dkim.max_signatures.",
)
DKIM_KEY_CACHE_LOOKUPS = Counter(
    "mailward_dkim_key_cache_lookups_total",
    "Lookups in the parsed DKIM key cache, by result (hit or miss).",
    ["result"],
)

# --------------------------------------------------------------------------- signing

DKIM_SIGN_MESSAGES = Counter(
    "mailward_dkim_sign_messages_total",
    "Outbound messages the DKIM signer decided about, by result: signed, not_selected, "
    "no_key, no_from, multiple_from, bad_from, oversized, oversized_tempfail, error, "
    "error_tempfail.",
    ["result"],
)
DKIM_SIGNATURES_ADDED = Counter(
    "mailward_dkim_signatures_added_total",
    "DKIM-Signature headers added to outbound mail, by algorithm.",
    ["algorithm"],
)
DKIM_SIGN_SECONDS = Histogram(
    "mailward_dkim_sign_duration_seconds",
    "Time to canonicalize, hash and sign one message with all of its keys.",
    buckets=_LATENCY_BUCKETS,
)
ARC_SEALS = Counter(
    "mailward_arc_seals_total",
    "ARC sets added as an intermediary, by the chain validation status sealed (cv), "
    "or not sealed and why.",
    ["result"],
)

# --------------------------------------------------------------------------- DMARC

DMARC_RESULTS = Counter(
    "mailward_dmarc_results_total",
    "DMARC evaluations of inbound mail, by result and the disposition the policy asks for.",
    ["result", "disposition"],
)
DMARC_ENFORCEMENT = Counter(
    "mailward_dmarc_enforcement_total",
    "What enforcement did with a DMARC failure: reject, quarantine_hold, quarantine_header, "
    "tempfail, report_only, arc_override, size_exempt (nothing: no failure to act on).",
    ["outcome"],
)

# --------------------------------------------------------------------------- DMARC reports
DMARC_REPORT_RECORDS = Counter(
    "mailward_dmarc_report_records_total",
    "DMARC evaluations offered to the report recorder: recorded, skipped (no policy "
    "record, nothing to report), error (the report store failed; the message went on).",
    ["outcome"],
)
DMARC_REPORTS = Counter(
    "mailward_dmarc_reports_total",
    "Aggregate and failure reports by kind (aggregate, failure) and outcome: generated, "
    "sent, deferred (to be retried), failed (given up), dropped (a destination refused "
    "for good: unauthorized, too large, suppressed), rate_limited.",
    ["kind", "outcome"],
)
DMARC_REPORT_ROWS_PENDING = Gauge(
    "mailward_dmarc_report_rows_pending",
    "Recorded report rows not yet part of a finished report (set by dmarc-report send).",
)

# --------------------------------------------------------------------------- bayes

BAYES_LEARNED = Gauge(
    "mailward_bayes_learned_messages",
    "Messages the Bayes database has learned, by class (as last read by this process).",
    ["class"],
    multiprocess_mode="mostrecent",
)
BAYES_ACTIVE = Gauge(
    "mailward_bayes_active",
    "1 when Bayes has learned its minimum of spam and ham and classifies, else 0.",
    multiprocess_mode="mostrecent",
)

# --------------------------------------------------------------------------- scoring

SPAM_SCORE = Histogram(
    "mailward_spam_score",
    "Spam score of each scored inbound message.",
    buckets=(-5.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 15.0, 20.0, 50.0),
)
SPAM_ACTIONS = Counter(
    "mailward_spam_actions_total",
    "Scoring decisions by action"
    " (no_action, add_header, rewrite_subject, greylist, quarantine, reject).",
    ["action"],
)
SPAM_GREYLIST = Counter(
    "mailward_spam_greylist_total",
    "Spam-score greylist steps by result (pass, defer, unavailable).",
    ["result"],
)
SPAM_SYMBOLS = Counter(
    "mailward_spam_symbols_total",
    "Symbols that contributed to a message's score, by name (a bounded set).",
    ["symbol"],
)
SPAM_FORGED_HEADERS_REMOVED = Counter(
    "mailward_milter_forged_spam_headers_removed_total",
    "X-Spam-* and X-Mailward-* headers removed from untrusted mail.",
)
DNSLIST_LOOKUPS = Counter(
    "mailward_dnslist_lookups_total",
    "DNS list lookups by kind (dnsbl, rhsbl, urilist), list name and status "
    "(clean, listed, error_code, timeout, error).",
    ["kind", "list", "status"],
)

# --------------------------------------------------------------------------- tlspolicy

TLSPOLICY_CONNECTIONS = Counter(
    "mailward_tlspolicy_connections_total",
    "Socketmap connections accepted from Postfix.",
)
TLSPOLICY_ACTIVE_CONNECTIONS = Gauge(
    "mailward_tlspolicy_active_connections",
    "Socketmap connections currently open.",
    multiprocess_mode="livesum",
)
TLSPOLICY_ANSWERS = Counter(
    "mailward_tlspolicy_answers_total",
    "Socketmap answers by kind (secure, override, notfound, temp, perm).",
    ["kind"],
)
TLSPOLICY_DECISIONS = Counter(
    "mailward_tlspolicy_decisions_total",
    "Policy decisions by mechanism (mta_sts, override, none, dane) and mode (the MTA-STS "
    "mode; dane-only or dane for DANE).",
    ["mechanism", "mode"],
)
TLSPOLICY_FETCHES = Counter(
    "mailward_tlspolicy_policy_fetches_total",
    "MTA-STS policy fetches by outcome (ok, certificate_error, timeout, too_large, ...).",
    ["outcome"],
)
TLSPOLICY_CACHE = Counter(
    "mailward_tlspolicy_cache_lookups_total",
    "Where answers came from: memory (an answer still valid, no DNS), cache (policy cached, "
    "TXT id checked), fetched, stale_cache (refresh failed), none.",
    ["source"],
)
TLSPOLICY_ANSWER_SECONDS = Histogram(
    "mailward_tlspolicy_answer_duration_seconds",
    "Time from a complete socketmap request to its answer.",
    buckets=_LATENCY_BUCKETS,
)
TLSPOLICY_PROTOCOL_ERRORS = Counter(
    "mailward_tlspolicy_protocol_errors_total",
    "Socketmap connections closed for a protocol error, by kind.",
    ["kind"],
)

TLSPOLICY_DANE_LOOKUPS = Counter(
    "mailward_tlspolicy_dane_lookups_total",
    "DANE checks of a destination by outcome (dane_only, dane, no_tlsa, insecure, no_mx, "
    "tempfail: a failed lookup in a signed zone, answered TEMP).",
    ["outcome"],
)

TLSPOLICY_CACHE_ERRORS = Counter(
    "mailward_tlspolicy_cache_errors_total",
    "Failed operations (get, put, delete) on the shared Redis policy cache; the service "
    "goes on with its own copy.",
    ["operation"],
)

POLICYD_EVICTED_CONNECTIONS = Counter(
    "mailward_policyd_evicted_connections_total",
    "Idle policy connections closed at the connection cap to admit a new client.",
)


BAYES_AUTOLEARN = Counter(
    "mailward_bayes_autolearn_total",
    "Inbound messages handed to the learner by autolearn, by class and outcome "
    "(spooled, error).",
    ["class", "outcome"],
)

# --------------------------------------------------------------------------- forged trace headers

MILTER_FORGED_TRACE_HEADERS_REMOVED = Counter(
    "mailward_milter_forged_trace_headers_removed_total",
    "Received-SPF and orphan ARC-Authentication-Results headers claiming our host, "
    "removed from untrusted mail, by header (received_spf, arc_authentication_results).",
    ["header"],
)

# --------------------------------------------------------------------------- spamd (SpamAssassin)

SPAMD_REQUESTS = Counter(
    "mailward_spamd_requests_total",
    "Messages the spamd check handled, by outcome: scored, too_large (not sent), timeout, "
    "refused, connection_error, spamd_error, bad_answer (all but scored score nothing).",
    ["outcome"],
)
SPAMD_REQUEST_SECONDS = Histogram(
    "mailward_spamd_request_duration_seconds",
    "Time from connecting to spamd to its complete answer (or the failure).",
    buckets=_LATENCY_BUCKETS,
)
