"""One wording for validation errors, whether they reach a terminal or an HTTP client."""
from __future__ import annotations

from pydantic import ValidationError


def describe(exc: ValidationError) -> str:
    """`field.path: reason; ...` for every error, so the fix is obvious without a stack trace."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors())
