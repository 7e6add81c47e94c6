"""Test support, put on PYTHONPATH of a child process: ``FEWSHOT_SQLITE_FAULT=readonly:<db file>`` opens that
sqlite file read-only, as in a read-only folder (binding root too, whom chmod does not stop);
``full:<db file>`` lets it grow by no page, as on a full disk ("database or disk is full")."""
import os

_mode, _, _target = os.environ.get("FEWSHOT_SQLITE_FAULT", "").partition(":")
if _mode in ("readonly", "full") and _target:
    import sqlite3
    import sqlite3.dbapi2 as _dbapi

    _connect = _dbapi.connect

    def connect(database, *args, **kwargs):
        if not isinstance(database, (str, os.PathLike)) or os.path.abspath(os.fspath(database)) != _target:
            return _connect(database, *args, **kwargs)
        if _mode == "readonly":
            kwargs["uri"] = True
            return _connect(f"file:{_target}?mode=ro", *args, **kwargs)
        con = _connect(database, *args, **kwargs)
        con.execute("PRAGMA max_page_count = 1")  # clamped to the pages it has: no room to grow
        return con

    _dbapi.connect = sqlite3.connect = connect
