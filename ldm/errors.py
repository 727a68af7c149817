"""Errors a user can act on. The CLI prints their message (no traceback) and exits non-zero."""


class LdmError(Exception):
    """A problem with the user's input or setup; the message says what is wrong and what to do."""


class DataError(LdmError):
    """The data folder cannot be used as it is (missing, empty, failed the quality suite)."""


class WeightsMissing(LdmError):
    """A pretrained network's local weight file is not set, not there, or not the expected one.

    Nothing is downloaded at run time: the message names the file, the setting that points at
    it, and the setting that selects a packaged network instead.
    """
