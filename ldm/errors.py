"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class LdmError(Exception):
    """A problem with the user's input or setup; the message says what is wrong and what to do."""


class DataError(LdmError):
    """The data folder cannot be used as it is (missing, empty, failed the quality suite)."""
