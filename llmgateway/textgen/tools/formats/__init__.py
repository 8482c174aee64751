"""One module per tool format, each defining `FORMAT` (a tools.format.ToolFormat).

Adding a format is adding a module here: the registry (tools/__init__.py) finds it,
and ModelConfig.tool_format offers it by its name.
"""
