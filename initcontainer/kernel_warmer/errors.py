"""The one shape of a user-facing input error: it names the field to fix."""

from __future__ import annotations


class FieldError(ValueError):
    """Bad input; ``field`` is the dotted path of what to change, ``message`` says how."""

    def __init__(self, field_path: str, message: str):
        self.field = field_path
        self.message = message
        super().__init__(f"{self.describe(field_path)}: {message}")

    @staticmethod
    def describe(field_path: str) -> str:
        return field_path
