"""PostgreSQL in a guest, the seeds' "database state testing": seed a database once, commit,
branch three children, run a different migration in each, and check that every child saw the same
baseline and only its own migration, the parent none, and that the server process in each child is
the parent's (same PID and start time), not a restart."""

from __future__ import annotations

import pytest

from vers.images import GuestImages
from vers.repo import Repo

from .conftest import boot, gexec, vers

pytestmark = [pytest.mark.vm, pytest.mark.slow]

ROWS = 1000
SEED = ("psql -v ON_ERROR_STOP=1 -qc \"CREATE TABLE items (id int PRIMARY KEY, name text); "
        f"INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, {ROWS}) g;\"")
#: One migration per child: each adds a different column or table and touches different rows.
MIGRATIONS = [
    "ALTER TABLE items ADD COLUMN price int; UPDATE items SET price = id * 2;",
    "ALTER TABLE items ADD COLUMN color text; DELETE FROM items WHERE id > 900;",
    "CREATE TABLE orders (item int REFERENCES items); INSERT INTO orders VALUES (1), (2);",
]
#: The server's PID and start time, then what the database holds, one line each (psql runs -c
#: commands in order); one `vers exec` per look, since each costs seconds under TCG.
REPORT = ("echo server $(head -n1 /var/lib/postgresql/15/main/postmaster.pid); "
          "psql -v ON_ERROR_STOP=1 -At -c 'SELECT pg_postmaster_start_time()' "
          "-c 'SELECT count(*), sum(id) FROM items' "
          "-c \"SELECT string_agg(column_name, ',' ORDER BY ordinal_position) "
          "FROM information_schema.columns WHERE table_name = 'items'\" "
          "-c \"SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables "
          "WHERE schemaname = 'public'\"")


def report(repo: Repo, vm: str, before: str = "") -> dict[str, str]:
    lines = gexec(repo, vm, before + REPORT).strip().splitlines()
    server, started, counts, cols, tabs = lines[-5:]
    return {"server": f"{server} {started}", "counts": counts, "columns": cols, "tables": tabs}


def test_each_branch_child_runs_its_own_migration_on_the_same_baseline(
        imgrepo: Repo, postgres_image: GuestImages) -> None:
    cwd = imgrepo.root
    parent = boot(imgrepo, "postgres", name="pg")
    # A fresh boot answers psql at once: the server started before the agent reported ready.
    base = report(imgrepo, parent, SEED + " && ")
    baseline = f"{ROWS}|{ROWS * (ROWS + 1) // 2}"
    assert base["counts"] == baseline and base["columns"] == "id,name"
    vers(cwd, "commit", parent, "-m", f"{ROWS} items")
    children = vers(cwd, "branch", parent, "--count", "3").split()
    assert len(children) == 3
    seen = []
    for child, migration in zip(children, MIGRATIONS):
        before = report(imgrepo, child)
        assert before == base, "the child did not start from the parent's database and server"
        migrate = f"psql -v ON_ERROR_STOP=1 -qc \"BEGIN; {migration} COMMIT;\" && "
        seen.append(report(imgrepo, child, migrate))
    assert [s["server"] for s in seen] == [base["server"]] * 3, "a server was restarted"
    assert [(s["columns"], s["tables"]) for s in seen] == [
        ("id,name,price", "items"), ("id,name,color", "items"), ("id,name", "items,orders")]
    assert [s["counts"] for s in seen] == [baseline, f"900|{900 * 901 // 2}", baseline]
    assert report(imgrepo, parent) == base, "a child's migration reached the parent"
    vers(cwd, "kill", parent, *children)
