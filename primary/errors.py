"""Errors the services raise; the views turn them into JSON answers."""


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


class Conflict(ApiError):
    status = 409
    code = "conflict"


def conflict(code: str, message: str, **fields) -> Conflict:
    err = Conflict(message, **fields)
    err.code = code
    return err
