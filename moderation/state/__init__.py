"""State that outlives a request: embedding store and thumbnails."""
