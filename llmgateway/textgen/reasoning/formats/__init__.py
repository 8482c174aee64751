"""One module per reasoning format, each defining `FORMAT` (a reasoning.format.ReasoningFormat).

Adding a format is adding a module here: the registry (reasoning/__init__.py) finds it,
and ModelConfig.reasoning_format offers it by its name.
"""
