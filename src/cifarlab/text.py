"""Small text helpers for messages a person reads."""


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """"1 error", "2 errors" (and "1 batch", "3 batches" given the plural)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"
