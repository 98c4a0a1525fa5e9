"""A FastAPI service whose endpoints call a gRPC backend through a conngrpc pool."""
