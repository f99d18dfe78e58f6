"""Tensor files on disk: safetensors reading, atomic and streaming writing, and model hashes.

What lives here: ``safetensors_io`` (load/save with metadata, memory-mapped reads, ``sshs_*`` and
A1111 hashes, the temp-file-then-rename helper), ``safetensors_stream`` (a writer that lays
tensors out one at a time so a merged checkpoint never sits in memory whole) and ``weights`` (any weights
file, torch pickles only with ``weights_only=True``).

May import: ``library.errors`` only.
"""
