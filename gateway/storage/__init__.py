"""Storage: SQLAlchemy 2.x tables, engine set-up and Alembic migrations.

SQLite (a file in the data folder) is the embedded default; PostgreSQL is the
production database. The schema is only ever created by Alembic
(:func:`gateway.storage.db.upgrade_to_head`), never by ``create_all``, so the
migrations are what the tests exercise.
"""
