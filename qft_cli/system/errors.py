"""The one exception type for bad user input.

Library code raises :class:`QftInputError` when the *user* asked for something that cannot be
done (unknown alias, missing file, layer beyond depth, ...). The CLI turns it into one line on
stderr and exit status 2, with no traceback. Every other exception is a bug or an environment
failure and is reported as such.
"""


class QftInputError(ValueError):
    """Bad input from the user. ``str(err)`` is one line naming the problem and the fix."""


def first_line(err: BaseException) -> str:
    """The first line of ``str(err)`` with its white space folded to single spaces, for quoting a
    library's exception inside one :class:`QftInputError` line (``"could not read X (ValueError:
    <first line>): fix"``). Leading blank lines are skipped; an empty message gives ``""``."""
    return " ".join(str(err).strip().split("\n", 1)[0].split())
