"""RFC 9990 XML for an aggregate report (namespace urn:ietf:params:xml:ns:dmarc-2.0).

Built with ElementTree, so every value is escaped; element order follows the schema
(tests validate against it: tests/unit/data/dmarc-2.0.xsd).
"""

from __future__ import annotations

import gzip
import xml.etree.ElementTree as ET

from mailward.reports.aggregate import AggregateReport

NAMESPACE = "urn:ietf:params:xml:ns:dmarc-2.0"


def _add(parent: ET.Element, name: str, text: str | int | None = None) -> ET.Element:
    element = ET.SubElement(parent, name)
    if text is not None:
        element.text = str(text)
    return element


def report_xml(report: AggregateReport) -> bytes:
    root = ET.Element("feedback", {"xmlns": NAMESPACE})
    _add(root, "version", "1.0")
    meta = _add(root, "report_metadata")
    _add(meta, "org_name", report.reporter.org_name)
    _add(meta, "email", report.reporter.email)
    if report.reporter.contact_info:
        _add(meta, "extra_contact_info", report.reporter.contact_info)
    _add(meta, "report_id", report.report_id)
    dates = _add(meta, "date_range")
    _add(dates, "begin", report.period.begin)
    _add(dates, "end", report.period.end)
    _add(meta, "generator", report.reporter.generator)

    policy = report.policy
    published = _add(root, "policy_published")
    _add(published, "domain", policy.domain)
    _add(published, "discovery_method", policy.discovery_method)
    _add(published, "adkim", policy.adkim)
    _add(published, "aspf", policy.aspf)
    _add(published, "p", policy.p)
    _add(published, "sp", policy.sp)
    _add(published, "np", policy.np)
    _add(published, "testing", policy.testing)
    if policy.fo:
        _add(published, "fo", policy.fo)

    for counted in report.rows:
        row = counted.row
        record = _add(root, "record")
        row_element = _add(record, "row")
        _add(row_element, "source_ip", row.source_ip)
        _add(row_element, "count", counted.count)
        evaluated = _add(row_element, "policy_evaluated")
        _add(evaluated, "disposition", row.disposition.value)
        _add(evaluated, "dkim", row.dkim_aligned)
        _add(evaluated, "spf", row.spf_aligned)
        for reason in row.reasons:
            reason_element = _add(evaluated, "reason")
            _add(reason_element, "type", reason.type.value)
            if reason.comment:
                _add(reason_element, "comment", reason.comment)
        identifiers = _add(record, "identifiers")
        _add(identifiers, "envelope_from", row.envelope_from)
        _add(identifiers, "header_from", row.header_from)
        results = _add(record, "auth_results")
        for dkim in row.dkim:
            dkim_element = _add(results, "dkim")
            _add(dkim_element, "domain", dkim.domain)
            _add(dkim_element, "selector", dkim.selector)
            _add(dkim_element, "result", dkim.result)
        spf_rows = row.spf or ()
        for spf in spf_rows:
            spf_element = _add(results, "spf")
            _add(spf_element, "domain", spf.domain)
            _add(spf_element, "scope", spf.scope)
            _add(spf_element, "result", spf.result)
        if not spf_rows:
            # The schema requires one SPF result: no usable identity is "none".
            spf_element = _add(results, "spf")
            _add(spf_element, "domain", row.envelope_from)
            _add(spf_element, "scope", "mfrom")
            _add(spf_element, "result", "none")
    ET.indent(root)
    body: bytes = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return body + b"\n"


def compressed(xml: bytes) -> bytes:
    """gzip (RFC 1952), with a fixed mtime: a resend is byte for byte the same."""
    return gzip.compress(xml, mtime=0)
