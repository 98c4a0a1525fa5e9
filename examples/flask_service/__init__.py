"""A Flask service under gunicorn that calls a gRPC backend through a conngrpc.sync pool."""
