"""gRPC transport: servicer, conversions to and from protobuf, server lifecycle."""
