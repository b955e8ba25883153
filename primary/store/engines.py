"""Which engine a store location names: a PostgreSQL URL, or the path of an SQLite file."""

from pathlib import Path

from primary.store.db import Store


def is_postgres_url(location: str) -> bool:
    return location.startswith(("postgresql://", "postgres://"))


def has_password(url: str) -> bool:
    """Whether a PostgreSQL URL carries a password (refused on a command line, where every
    user of the host can read it, and in the data dir's config)."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        return "password" in conninfo_to_dict(url)
    except Exception:  # psycopg.ProgrammingError: not a URL it reads; connecting says so
        return False


def open_store(location: str) -> Store:
    """The store at `location`: a PostgreSQL URL, or the path of an SQLite file."""
    if is_postgres_url(location):
        # Imported only here: an SQLite install never loads psycopg.
        from primary.store.postgres import PostgresStore

        return PostgresStore(location)
    from primary.store.sqlite import SqliteStore

    return SqliteStore(Path(location))
