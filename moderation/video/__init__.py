"""Short videos: sampled decoding (decode.py) and timed segments from per-frame judgements (segments.py)."""
