"""Listeners: what the server does with each result besides answering (see queue.py)."""

from moderation.serving.listeners.category_metrics import CategoryMetricsListener
from moderation.serving.listeners.embedding_store import EmbeddingStoreListener
from moderation.serving.listeners.queue import LISTENER_QUEUE, Listener, ListenerQueue, Listeners
from moderation.serving.listeners.review import ReviewQueueListener
from moderation.serving.listeners.shadow import ShadowListener
from moderation.serving.listeners.thumbnails import ThumbnailListener

__all__ = [
    "LISTENER_QUEUE", "CategoryMetricsListener", "EmbeddingStoreListener", "Listener", "ListenerQueue", "Listeners",
    "ReviewQueueListener", "ShadowListener", "ThumbnailListener",
]  # fmt: skip
