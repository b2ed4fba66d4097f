"""The one base class of every error a user can cause and fix (bad input, missing files).

The command line prints these as a single line and exits 1; any other exception is a bug
and keeps its traceback.
"""


class CifarlabError(Exception):
    """A mistake the user can fix; the message is one line that names the file, field or value."""
