"""The judging core: decode -> signals -> decide -> escalate. Transport-free: no grpc here."""
