"""Responses that hand a stored file to a client, shared by the API and the UI."""

from collections.abc import Iterator
from urllib.parse import quote

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


def artifact_file(info: dict, chunks: Iterator[bytes]) -> Response:
    """One file of a job's artifacts (`info` from runs.artifacts.read_file): always a
    download, never a page of this site (it is a job's output)."""
    response = Response(chunks, mimetype="application/octet-stream")
    response.headers["Content-Length"] = str(info["size"])
    response.headers["X-Run-Attempt"] = str(info["attempt"])
    response.headers["X-Content-Type-Options"] = "nosniff"
    name = info["path"].rpartition("/")[2]
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return response
