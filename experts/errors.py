"""Registry errors: one base class, one subclass per HTTP status the REST layer maps it to."""
from __future__ import annotations


class CardError(Exception):
    """Anything the registry refuses; the message says what was wrong and what to do."""


class CardNotFound(CardError):
    """No such card, version, or active version (404)."""


class CardConflict(CardError):
    """The request clashes with what is stored: name@version exists, the name is another team's (409)."""


class CardForbidden(CardError):
    """The actor may not do this to this card (403)."""


class CardValidationError(CardError):
    """The card is invalid (422): schema, files, weights, or it does not load on its base."""
