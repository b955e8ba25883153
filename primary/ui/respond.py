"""How the UI answers: a successful action with JSON to the page's own fetch(), or a
flash and a redirect (the same form works without JavaScript); an error as the styled
page, or as JSON to fetch()."""

from flask import flash, jsonify, redirect, render_template

from primary.ui.session import is_fetch


def done(message: str, next_url: str, **fields):
    """The answer to a successful POST: `{"message": ..., **fields}` to fetch(), else the
    message flashed and a 303 to `next_url`."""
    if is_fetch():
        return jsonify({"message": message, **fields})
    flash(message)
    return redirect(next_url, 303)


def failed(message: str, next_url: str, status: int = 409):
    """An action refused with a way on: `{"error"}` to fetch(), else the message flashed
    as an error and a 303 to `next_url` (where it can be put right)."""
    if is_fetch():
        return jsonify({"error": message}), status
    flash(message, "error")
    return redirect(next_url, 303)


def error_page(status: int, message: str, code: str, headers: dict):
    """An error as the styled page, or as JSON to the page's own fetch()."""
    if is_fetch():
        return jsonify({"error": message, "code": code}), status, headers
    return render_template("error.html", status=status, message=message), status, headers
