"""The servers' SQLite options (settings.SQLITE_OPTIONS), the embedded default database.

A transaction that reads and then writes (an admin save, update_or_create, the
demo's model upsert) runs while other processes write (a gateway's request logs
and quota counters). Under SQLite's default deferred transactions the one that
loses the race for the write lock fails at once with "database is locked":
SQLite does not wait there, since waiting could deadlock. The servers' IMMEDIATE
transactions wait for the lock instead.

Each case runs on a database file of its own, through Django's SQLite backend
with the options under test, whatever database the suite itself uses.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from django.conf import settings
from django.db import OperationalError, connections, transaction

WRITERS = 4


@pytest.fixture
def sqlite_alias(tmp_path, django_db_blocker):
    """Register a database alias for a fresh SQLite file with the given options."""
    aliases: list[str] = []

    def register(options: dict) -> str:
        alias = f"sqlite_{uuid.uuid4().hex[:12]}"  # new: a closed alias keeps its wrapper
        # configure_settings fills in Django's defaults; it insists on a "default" entry.
        connections.settings[alias] = connections.configure_settings(
            {
                "default": {},
                alias: {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(tmp_path / f"{alias}.sqlite3"),
                    "OPTIONS": options,
                },
            }
        )[alias]
        aliases.append(alias)
        with connections[alias].cursor() as cursor:
            cursor.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
            cursor.execute("INSERT INTO counter (n) VALUES (0)")
        return alias

    with django_db_blocker.unblock():
        yield register
        for alias in aliases:
            connections[alias].close()
            del connections[alias]
            del connections.settings[alias]


def _read_then_write(alias: str) -> tuple[int, list[str]]:
    """WRITERS threads, each with its own connection, increment the counter at the
    same moment, each reading it and writing it back in one transaction. Returns the
    final count and the errors raised."""
    barrier = threading.Barrier(WRITERS)
    errors: list[str] = []

    def increment() -> None:
        barrier.wait()
        try:
            with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
                cursor.execute("SELECT n FROM counter")
                (n,) = cursor.fetchone()
                time.sleep(0.05)  # the others read meanwhile (or wait for the lock)
                cursor.execute("UPDATE counter SET n = %s", [n + 1])
        except OperationalError as exc:
            errors.append(str(exc))
        finally:
            connections[alias].close()

    threads = [threading.Thread(target=increment) for _ in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT n FROM counter")
        (count,) = cursor.fetchone()
    return count, errors


def test_server_options_make_read_then_write_wait(sqlite_alias):
    count, errors = _read_then_write(sqlite_alias(settings.SQLITE_OPTIONS))
    assert errors == []
    assert count == WRITERS  # no increment failed, none was lost


def test_deferred_transactions_fail_the_same_work(sqlite_alias):
    """The failure the servers' options prevent, reproduced with SQLite's default."""
    options = {**settings.SQLITE_OPTIONS, "transaction_mode": "DEFERRED"}
    count, errors = _read_then_write(sqlite_alias(options))
    assert errors and all("locked" in error for error in errors), errors
    assert count == WRITERS - len(errors)
