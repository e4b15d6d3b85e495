"""Generated gRPC stubs for the moderation.v1 API (scripts/generate_protos.sh). Do not edit."""
