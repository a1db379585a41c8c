"""Bayes: a token classifier of the SpamBayes/bogofilter family, trained from mailboxes.

- `tokenizer`: the tokens of one message (selected headers, decoded text and HTML from the
  shared MIME parse, URL hosts, optional word pairs), bounded per message;
- `classifier`: Robinson's per-token probabilities combined with Fisher's chi-square;
- `store`: the token database interface (counts per token, learned messages by digest),
  with SQLite (`sqlite_store`) and Redis (`redis_store`) backends and an in-memory one
  for tests;
- `learning`: learn / forget one message (digest, tokens, store), shared by
  `mailward learn` and the learner service;
- `spool`: the directory the IMAPSieve pipe program writes into and the learner drains.
"""
