"""Forged Received-SPF and orphan ARC-Authentication-Results (issue 9, item 6)."""

from __future__ import annotations

from mailward.forgery import (
    find_forged,
    forged_received_spf,
    orphan_aar_claiming,
    received_spf_receivers,
)
from mailward.model import Header, RemoveHeader

OURS = ("mx.example.net",)


def spf(value: str) -> Header:
    return Header("Received-SPF", value)


def test_receiver_key_naming_us_is_forged():
    headers = [
        spf("pass (mx.example.net: domain of a@bank.example designates 192.0.2.1 as permitted"
            " sender) client-ip=192.0.2.1; envelope-from=a@bank.example; receiver=mx.example.net;"),
        spf("pass client-ip=192.0.2.1; receiver=relay.example.org"),
        spf("Pass (mailfrom) identity=mailfrom;\r\n\tclient-ip=192.0.2.1;"
            " receiver=MX.Example.NET."),
    ]
    assert forged_received_spf(headers, OURS) == (
        RemoveHeader("Received-SPF", 3), RemoveHeader("Received-SPF", 1))


def test_comment_host_or_quoted_receiver_is_ours_too():
    assert received_spf_receivers('pass (mx.example.net: yes) receiver="mx.example.net"') == {
        "mx.example.net"}
    assert received_spf_receivers("fail (MX.example.net: no) client-ip=192.0.2.1") == {
        "mx.example.net"}


def test_receiver_inside_a_comment_and_lookalikes_are_not_ours():
    assert received_spf_receivers("pass (receiver=mx.example.net) receiver=other.example") == {
        "other.example"}
    headers = [spf("pass receiver=evil-mx.example.net"), spf("pass receiver=mx.example.net.evil")]
    assert forged_received_spf(headers, OURS) == ()


def test_orphan_aar_claiming_us_is_forged_and_a_sealed_one_is_kept():
    headers = [
        Header("ARC-Authentication-Results", "i=2; mx.example.net; dmarc=pass"),
        Header("ARC-Seal", "i=1; a=rsa-sha256; cv=none; d=relay.example; s=s; b=AAAA"),
        Header("ARC-Message-Signature", "i=1; a=rsa-sha256; d=relay.example; s=s; bh=x; b=y"),
        Header("ARC-Authentication-Results", "i=1; mx.example.net; spf=pass"),
        Header("ARC-Authentication-Results", "i=3; relay.example.org; dkim=pass"),
        Header("arc-authentication-results", "i = 4 ;\r\n\t(c) MX.EXAMPLE.NET; dkim=pass"),
    ]
    assert orphan_aar_claiming(headers, OURS) == (
        RemoveHeader("ARC-Authentication-Results", 4),
        RemoveHeader("ARC-Authentication-Results", 1),
    )


def test_aar_with_only_a_seal_is_still_orphan():
    headers = [
        Header("ARC-Seal", "i=1; a=rsa-sha256; cv=none; d=x.example; s=s; b=AAAA"),
        Header("ARC-Authentication-Results", "i=1; mx.example.net; spf=pass"),
    ]
    assert orphan_aar_claiming(headers, OURS) == (RemoveHeader("ARC-Authentication-Results", 1),)


def test_find_forged_separates_kinds_and_ignores_other_headers():
    headers = [
        Header("Authentication-Results", "mx.example.net; dmarc=pass"),
        spf("pass receiver=mx.example.net"),
        Header("ARC-Authentication-Results", "i=1; mx.example.net; spf=pass"),
    ]
    forged = find_forged(headers, OURS)
    assert forged.received_spf == (RemoveHeader("Received-SPF", 1),)
    assert forged.arc_authentication_results == (RemoveHeader("ARC-Authentication-Results", 1),)
    assert len(forged.removals) == 2
    assert find_forged(headers, ("other.example",)).removals == ()


def test_first_header_received_spf_is_our_policy_services_when_it_prepends():
    headers = [
        spf("pass (mx.example.net: domain of a@x.example designates 192.0.2.1 as permitted"
            " sender) client-ip=192.0.2.1; receiver=mx.example.net"),
        Header("From", "a@x.example"),
        spf("pass client-ip=192.0.2.1; receiver=mx.example.net"),
    ]
    assert forged_received_spf(headers, OURS, first_is_ours=True) == (
        RemoveHeader("Received-SPF", 2),)
    assert forged_received_spf(headers, OURS) == (
        RemoveHeader("Received-SPF", 2), RemoveHeader("Received-SPF", 1))
    assert find_forged(headers, OURS, policy_prepends_spf=True).received_spf == (
        RemoveHeader("Received-SPF", 2),)


def test_a_sender_written_received_spf_sits_below_postfixs_received_and_is_removed():
    # Postfix writes its own Received at the top of every message it receives (smtpd and
    # pickup alike), and a policy service's PREPEND above it.  So a client-written
    # Received-SPF is never the first header the milter sees: even when [policyd.spf] is
    # on but not wired into Postfix, the forgery is second or later, and removed.
    headers = [
        Header("Received", "from client.example (client.example [192.0.2.1]) by"
               " mx.example.net (Postfix) with ESMTP id 4AbC"),
        spf("pass client-ip=192.0.2.1; receiver=mx.example.net"),
        Header("From", "a@x.example"),
    ]
    assert find_forged(headers, OURS, policy_prepends_spf=True).received_spf == (
        RemoveHeader("Received-SPF", 1),)
