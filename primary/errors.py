"""Errors the services raise; the views turn them into JSON answers."""

import errno


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str, **fields):
        super().__init__(message)
        self.message = message
        self.fields = fields
        self.headers: dict[str, str] = {}

    def with_header(self, name: str, value: str) -> "ApiError":
        self.headers[name] = value
        return self


class BadRequest(ApiError):
    pass


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Gone(ApiError):
    """It existed and was deleted on purpose (a run the retention policy pruned)."""

    status = 410
    code = "pruned"


class Conflict(ApiError):
    status = 409
    code = "conflict"


def conflict(code: str, message: str, **fields) -> Conflict:
    err = Conflict(message, **fields)
    err.code = code
    return err


class StorageFull(ApiError):
    """The primary's disk (or quota) is full: nothing was stored; the caller may retry."""

    status = 507
    code = "storage_full"


class StorageUnavailable(ApiError):
    """The primary cannot write its data dir (read-only, permissions, I/O error)."""

    status = 503
    code = "storage_unavailable"


FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def storage_error(exc: OSError, what: str) -> ApiError:
    """The answer for an OSError met while storing `what` (e.g. "the log of run 3"). The
    message names the cause, not the data dir's paths: those are for the primary's log."""
    cause = exc.strerror or type(exc).__name__
    if exc.errno in FULL_ERRNOS:
        return StorageFull(f"the primary's disk is full ({cause}): could not store {what}")
    return StorageUnavailable(
        f"the primary cannot write its data ({cause}): could not store {what}"
    )
