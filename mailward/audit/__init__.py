"""`mailward audit DOMAIN`: the mail administrator's DNS and server checklist as code.

Each family (MX, reverse DNS, SMTP/STARTTLS, SPF, DKIM, DMARC, MTA-STS/TLS-RPT/DANE)
is one module whose `audit(context)` yields `Finding`s; `runner.run_audit` runs them in
order and turns a temporary DNS or network failure into a "could not check" entry
instead of a finding, because a timeout says nothing about the domain's setup.
"""
