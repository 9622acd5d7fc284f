"""The project's own exception types; adapters translate library errors into these with ``raise ... from``."""

from __future__ import annotations


class FlexnpuError(Exception):
    """Base of every error flexnpu raises on purpose."""


class ValidationError(FlexnpuError, ValueError):
    """A value from outside (a pod spec, a claim, a flag, a request body) is not acceptable.

    The message always names the field and the offending value, so that a user can fix it without reading code.
    """

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={value!r}: {reason}")


class ConfigError(ValidationError):
    """A setting (flag, environment variable, config-file key) is malformed or out of range."""


class NotReadyError(FlexnpuError):
    """A command or component exists in the CLI but is not implemented in this build."""
