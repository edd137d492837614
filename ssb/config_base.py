"""The base of every config model: unknown keys and booleans for numbers are errors."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator

_NUMBERS = (int, float, int | None, float | None)


class _Strict(BaseModel):
    # A typo in a YAML key must fail loudly rather than silently fall back to a default.
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # YAML reads `n: yes` and `n=true` as booleans, which pydantic would take as 1.
        if isinstance(value, bool) and info.field_name and cls.model_fields[info.field_name].annotation in _NUMBERS:
            raise ValueError("expected a number, not a boolean")
        return value
