"""How a UI action answers: JSON to the page's own fetch(), or a flash and a redirect (the
same form works without JavaScript)."""

from flask import flash, jsonify, redirect

from primary.ui.session import is_fetch


def done(message: str, next_url: str, **fields):
    """The answer to a successful POST: `{"message": ..., **fields}` to fetch(), else the
    message flashed and a 303 to `next_url`."""
    if is_fetch():
        return jsonify({"message": message, **fields})
    flash(message)
    return redirect(next_url, 303)
