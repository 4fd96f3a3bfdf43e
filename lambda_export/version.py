"""The package version (the one place it is written besides ``pyproject.toml``; a test keeps the two equal)."""

__version__ = "0.1.0"
