"""Known-content banks: match an image against curated hashes and embeddings (issue 20).

The matching library only; no store, no gRPC. hashing.py computes and parses the
signals (PDQ, MD5, SHA-256) in the text formats HMA and ThreatExchange use; index.py
holds the immutable per-bank indexes (PDQ multi-index hashing, cosine over embeddings,
exact hashes); matcher.py turns bank configs and entries into one immutable
`BankMatcher` and `LiveBanks` swaps in a new one when entries change.
"""
