"""Errors a user can act on; each message names the table, file or column at fault."""


class ShoplakeError(Exception):
    """Base of shoplake's own errors; the CLI prints these without a traceback and exits non-zero."""


class UnknownTableError(ShoplakeError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class DataError(ShoplakeError):
    """The data, or the lake's state, is at fault: a retry on the same data fails the same way, so orchestration fails
    such a task at once (a service's error, such as a write conflict or an unreachable store, is retried)."""


class TableNotFoundError(DataError):
    """The table is in the catalogue but has never been written."""


class SchemaMismatchError(DataError):
    """A DataFrame does not fit its table's declared schema."""


class WriteConflictError(ShoplakeError):
    """Another writer committed to the same table first; nothing of this write was committed."""


class InputError(DataError):
    """An input file is missing, unreadable or not in a supported format."""
