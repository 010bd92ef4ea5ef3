"""The one exception type for input a user can fix.

It lives in the lowest layer so that anonymize, privmodel and federated all raise the same type,
and the CLI turns it into one line on stderr and exit code 2. Messages name the file, column or row
but never a raw value or key material.
"""


class InputError(ValueError):
    """Bad input (file, column, row, policy, parameter): a one-line message, exit code 2."""
