"""Dev Triton: a real tritonserver with a scripted TensorRT-LLM look-alike model."""
