"""CPU speed tricks, each chosen per backend by ``backend.choose`` (none on GPU/TPU).

``backend`` (the table of choices), ``conv`` (Winograd / im2col convolutions),
``pool`` (tile max-pool with an elementwise gradient), ``pixels`` (uint8 channels
packed in one word, so a crop is one gather), ``host_memory`` (huge pages).
Nothing here imports training, checkpointing, models or data (tests/test_layout.py).
"""
