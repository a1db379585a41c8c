"""DMARC reports: aggregate (RFC 9990) and failure (RFC 9991) reports from what the milter saw.

The milter records each DMARC evaluation through a `Recorder` (recorder.py) into a
report store (store.py), grouped into rows with counts.  `mailward dmarc-report`
(commands/reports.py) later aggregates one report per policy domain and UTC day
(aggregate.py), renders the RFC 9990 XML (xml.py), checks each `rua` destination
(destinations.py) and hands the gzip-compressed report to the local Postfix over SMTP
on loopback (mail.py, sender.py), where the milter signs it like any outbound mail.
"""
