"""Examples of conngrpc in real programs (not part of the installed package)."""
