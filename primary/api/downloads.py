"""Responses that hand a stored file to a client, shared by the API and the UI."""

from collections.abc import Iterator

from flask import Response


def artifacts_tar(info: dict, chunks: Iterator[bytes]) -> Response:
    """A job's artifacts as the tar its worker sent (`info` from runs.artifacts.read)."""
    response = Response(chunks, mimetype="application/x-tar")
    response.headers["Content-Length"] = str(info["size"])
    response.headers["X-Sha256"] = info["sha256"]
    response.headers["X-Run-Attempt"] = str(info["attempt"])
    name = f"run-{info['run_id']}-{info['job']}-artifacts.tar"
    response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response
