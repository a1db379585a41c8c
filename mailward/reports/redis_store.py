"""The report store on Redis, for several MX hosts that report as one receiver.

Same operations and meaning as the SQLite store (store.py).  Keys, all under `prefix`:
`rows:<day>:<domain>` (hash row key -> count, HINCRBY: atomic across hosts),
`policy:<day>:<domain>`, `periods` (sorted set of `<day>|<domain>`, score = day),
`report:<id>` (hash), `done:<day>:<domain>` (the period's report is finished),
`delivered:<id>` (set of URIs), and for failure reports `ruf:queue` (list of ids),
`ruf:msg:<id>` (hash) and `ruf:rate:*` (sorted sets of recent reports, for the limits,
checked and updated in one Lua script).  Every key expires after `keep_days`.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from mailward import turns
from mailward.reports.records import Observation, PublishedPolicy, ReportRow
from mailward.reports.store import (
    DAY,
    CountedRow,
    Period,
    QueuedFailureReport,
    ReportState,
    ReportStatus,
    ReportStoreError,
    day_of,
)

# KEYS: all-destinations rate set, this destination's rate set, id counter, queue.
# ARGV: now, since, total limit, destination limit, ttl seconds, uri, domain, org, message.
_QUEUE_FAILURE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[2])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return 0 end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
local id = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[1], ARGV[1], id)
redis.call('ZADD', KEYS[2], ARGV[1], id)
redis.call('EXPIRE', KEYS[1], 7200)
redis.call('EXPIRE', KEYS[2], 7200)
local msg = KEYS[4] .. ':' .. id
redis.call('HSET', msg, 'uri', ARGV[6], 'domain', ARGV[7], 'org', ARGV[8],
           'message', ARGV[9], 'attempts', 0)
redis.call('EXPIRE', msg, ARGV[5])
redis.call('RPUSH', KEYS[4], id)
return id
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisReportStore:
    backend = "redis"

    def __init__(self, url: str, prefix: str = "mailward:dmarc:", timeout: float = 1.0,
                 keep_days: int = 31) -> None:
        self.prefix = prefix
        self.ttl = (keep_days + 2) * DAY
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self._queue_failure = self._client.register_script(_QUEUE_FAILURE)

    def _key(self, *parts: object) -> str:
        return self.prefix + ":".join(str(part) for part in parts)

    def _call(self, operation: str, run: Any) -> Any:
        try:
            with turns.waiting():  # another message computes meanwhile
                return run()
        except RedisError as exc:
            raise ReportStoreError(f"redis {operation}: {exc}") from exc

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ recording

    def add(self, observation: Observation, now: float, count: int = 1) -> None:
        day, domain = day_of(now), observation.policy.domain
        rows, policy = self._key("rows", day, domain), self._key("policy", day, domain)

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hincrby(rows, observation.row.key(), count)
            pipe.expire(rows, self.ttl)
            pipe.set(policy, json.dumps(asdict(observation.policy), sort_keys=True),
                     ex=self.ttl)
            pipe.zadd(self._key("periods"), {f"{day}|{domain}": day})
            pipe.execute()

        self._call("add", run)

    # ------------------------------------------------------------------ reading

    def periods(self, before_day: int | None = None, domain: str | None = None) -> list[Period]:
        high = "+inf" if before_day is None else f"({before_day}"
        members = self._call("periods", lambda: self._client.zrangebyscore(
            self._key("periods"), "-inf", high))
        found = []
        for member in members:
            day, _, name = _text(member).partition("|")
            if domain is None or name == domain:
                found.append(Period(int(day), name))
        return sorted(found, key=lambda p: (p.day, p.policy_domain))

    def rows(self, period: Period) -> list[CountedRow]:
        data = self._call("rows", lambda: self._client.hgetall(
            self._key("rows", period.day, period.policy_domain)))
        rows = [CountedRow(ReportRow.from_key(_text(k)), int(v)) for k, v in data.items()]
        return sorted(rows, key=lambda r: (-r.count, r.row.key()))

    def policy(self, period: Period) -> PublishedPolicy | None:
        text = self._call("policy", lambda: self._client.get(
            self._key("policy", period.day, period.policy_domain)))
        if text is None:
            return None
        data = json.loads(_text(text))
        data["rua"], data["ruf"] = tuple(data["rua"]), tuple(data["ruf"])
        return PublishedPolicy(**data)

    def pending_rows(self) -> int:
        total = 0
        for period in self.periods():
            done = self._call("pending", lambda p=period: self._client.exists(
                self._key("done", p.day, p.policy_domain)))
            if not done:
                total += int(self._call("pending", lambda p=period: self._client.hlen(
                    self._key("rows", p.day, p.policy_domain))))
        return total

    # ------------------------------------------------------------------ sending state

    def status(self, report_id: str) -> ReportStatus | None:
        data = self._call("status", lambda: self._client.hgetall(self._key("report", report_id)))
        if not data:
            return None
        fields = {_text(k): _text(v) for k, v in data.items()}
        return ReportStatus(ReportState(fields["state"]), int(fields["attempts"]),
                            float(fields["next_attempt"]))

    def delivered(self, report_id: str) -> set[str]:
        members = self._call("delivered", lambda: self._client.smembers(
            self._key("delivered", report_id)))
        return {_text(m) for m in members}

    def mark_delivered(self, report_id: str, uri: str, now: float) -> None:
        key = self._key("delivered", report_id)

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.sadd(key, uri)
            pipe.expire(key, self.ttl)
            pipe.execute()

        self._call("mark_delivered", run)

    def set_status(self, report_id: str, period: Period, status: ReportStatus,
                   error: str = "") -> None:
        key = self._key("report", report_id)

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping={"state": status.state.value,
                                    "attempts": status.attempts,
                                    "next_attempt": repr(status.next_attempt),
                                    "last_error": error[:500]})
            pipe.expire(key, self.ttl)
            if status.state is not ReportState.PENDING:
                pipe.set(self._key("done", period.day, period.policy_domain), report_id,
                         ex=self.ttl)
            pipe.execute()

        self._call("set_status", run)

    # ------------------------------------------------------------------ failure reports

    def queue_failure_report(self, report: QueuedFailureReport, now: float,
                             per_destination_per_hour: int, total_per_hour: int) -> bool:
        keys = [self._key("ruf", "rate", "all"), self._key("ruf", "rate", report.uri),
                self._key("ruf", "ids"), self._key("ruf", "queue")]
        args: list[bytes | str | int | float] = [
            repr(now), repr(now - 3600), total_per_hour, per_destination_per_hour, self.ttl,
            report.uri, report.policy_domain, report.org_domain, report.message]
        queued = self._call("queue_failure_report",
                            lambda: self._queue_failure(keys=keys, args=args))
        return bool(queued)

    def queued_failure_reports(self, limit: int) -> list[QueuedFailureReport]:
        ids = self._call("queued", lambda: self._client.lrange(
            self._key("ruf", "queue"), 0, limit - 1))
        found = []
        for ident in ids:
            data = self._call("queued", lambda i=ident: self._client.hgetall(
                self._key("ruf", "queue") + ":" + _text(i)))
            if not data:
                continue
            fields = {_text(k): v for k, v in data.items()}
            found.append(QueuedFailureReport(
                _text(fields["uri"]), _text(fields["domain"]), _text(fields["org"]),
                bytes(fields["message"]), int(_text(ident)), int(_text(fields["attempts"]))))
        return found

    def finish_failure_report(self, ident: int, state: str, attempts: int) -> None:
        queue = self._key("ruf", "queue")
        message = f"{queue}:{ident}"

        def run() -> None:
            pipe = self._client.pipeline(transaction=True)
            if state == "queued":
                pipe.hset(message, "attempts", attempts)
                # To the back of the queue: the others get their turn first.
                pipe.lrem(queue, 1, str(ident))
                pipe.rpush(queue, ident)
            else:
                pipe.lrem(queue, 1, str(ident))
                pipe.delete(message)
            pipe.execute()

        self._call("finish_failure_report", run)

    # ------------------------------------------------------------------ housekeeping

    def purge(self, before_day: int) -> int:
        """Keys expire by themselves; this drops old periods from the index."""
        removed = self._call("purge", lambda: self._client.zremrangebyscore(
            self._key("periods"), "-inf", f"({before_day}"))
        return int(removed)
