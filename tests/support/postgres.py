"""Fresh PostgreSQL databases for tests: the server on 127.0.0.1:5432 (user `postgres`,
trust auth; `scripts/postgres` starts one), as on developer machines and in CI.

    db = create_database("plugin")      # a new, empty database with a unique name
    db.uri                              # postgresql://postgres@127.0.0.1:5432/<name>
    db.query("SELECT 1")                # rows
    db.drop()
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass

import psycopg2

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"
ADMIN_DSN = f"host={HOST} port={PORT} user={USER} dbname=postgres"  # always exists


def admin_sql(sql: str) -> None:
    # CREATE/DROP DATABASE cannot run inside a transaction block.
    conn = psycopg2.connect(ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@dataclass(frozen=True)
class Database:
    name: str

    @property
    def uri(self) -> str:
        return f"postgresql://{USER}@{HOST}:{PORT}/{self.name}"

    def query(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
        with psycopg2.connect(host=HOST, port=PORT, user=USER, dbname=self.name) as conn:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()

    def drop(self) -> None:
        admin_sql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


def create_database(prefix: str) -> Database:
    database = Database(f"{prefix}_{secrets.token_hex(6)}")
    admin_sql(f'CREATE DATABASE "{database.name}"')
    return database
