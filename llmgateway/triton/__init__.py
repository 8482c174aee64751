"""The Triton core: the only code that knows about tensors and gRPC."""
