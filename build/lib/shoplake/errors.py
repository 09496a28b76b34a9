"""Errors a user can act on; each message names the table, file or column at fault."""


class ShoplakeError(Exception):
    """Base of shoplake's own errors; the CLI prints these without a traceback and exits non-zero."""


class UnknownTableError(ShoplakeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class TableNotFoundError(ShoplakeError):
    """The table is in the catalogue but has never been written."""


class SchemaMismatchError(ShoplakeError):
    """A DataFrame does not fit its table's declared schema."""


class WriteConflictError(ShoplakeError):
    """Another writer committed to the same table first; nothing of this write was committed."""


class InputError(ShoplakeError):
    """An input file is missing, unreadable or not in a supported format."""
