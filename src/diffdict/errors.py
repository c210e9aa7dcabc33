"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class DiffdictError(Exception):
    """Bad input or a broken file, reported to the user as one clear line."""

    exit_code = 2
