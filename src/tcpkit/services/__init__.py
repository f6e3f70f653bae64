"""The built-in services: ``reverse`` (7800) and ``factor`` (7801)."""
