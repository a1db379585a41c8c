"""`mailward explain MESSAGE.eml`: why did this message end up like that?

The message is re-evaluated by the same Pipeline the milter runs (built by
compose.build_pipeline, called through Pipeline.evaluate), so the trace can never
disagree with what the milter would do now.  Around that verdict, this package reads
what the message itself carries: its hops (Received), the Authentication-Results and
ARC sets others wrote, and its DKIM signatures, and turns each result into the usual
cause in words.
"""
