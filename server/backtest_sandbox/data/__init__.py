"""Market data on the host: the catalog (locate, read, validate, resample, import) and
synthetic bars. Trusted side: no strategy code ever runs here.

May import: `domain/`.
"""
