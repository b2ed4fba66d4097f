"""Small text helpers for messages a person reads."""

import difflib


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """ "1 error", "2 errors" (and "1 batch", "3 batches" given the plural)."""
    return f"{count:,} {noun if count == 1 else nouns or noun + 's'}"


def first_problem(error: BaseException) -> str:
    """One line for an error: its first non-blank line (the type's name when it has no message).
    torch's load_state_dict starts with a heading ("Error(s) in loading state_dict"): then the
    first real problem, and how many more there are."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()] or [type(error).__name__]
    if len(lines) > 1 and lines[0].startswith("Error(s) in loading state_dict"):
        more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
        return lines[1] + more
    return lines[0]


def did_you_mean(word: str, known) -> str:
    """ " (did you mean 'lr'?)" for the known name closest to a typo, or "" when none is close."""
    close = difflib.get_close_matches(str(word), list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
