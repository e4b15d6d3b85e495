"""Image moderation over gRPC: CLIP zero-shot scoring against YAML policies."""

__version__ = "0.1.0"
