"""Helpers that only tests (unit, conformance, integration) use.

Production modules hold what the services run; what exists only to build inputs for
tests or to drive a check outside the pipeline lives here:

- `dkimpy.dkim_dnsfunc`: dkimpy's DNS hook answered by our resolver, so tests can
  verify what we sign with an independent implementation;
- `evidence.SpfEvidence`: an SPF outcome as DMARC reads it, without running SPF;
- `checks`: the A-R results of one check for one message, without a pipeline.
"""
