"""One family of domain errors; the CLI turns exactly these into clean messages (anything else is a bug)."""


class ScotdError(Exception):
    """An error the user can fix: bad input, a missing file, a refused resume."""


class DataFormatError(ScotdError):
    """A data file line that does not match its schema; names the file, line and field."""

    def __init__(self, path, line: int | None, field: str, problem: str):
        self.path, self.line, self.field = str(path), line, field
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: field {field!r}: {problem}")
