"""Market data on the host: the catalog (locate, prepare, hash, import; catalog.py), one file
read and validated (bars_file.py), bars resampled, cut, adjusted and written (frames.py),
several feeds on one clock (alignment.py), and synthetic bars. Trusted side: no strategy code
ever runs here.

May import: `domain/`.
"""
