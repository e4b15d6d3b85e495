"""Signals: each turns a decoded image (or frame) into evidence for the decision."""
