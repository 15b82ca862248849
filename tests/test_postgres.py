"""The records, admin, dashboard and API-key tests again, on PostgreSQL (DATABASE_URL) instead of
SQLite: a nested pytest run against the tests' own PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import PROJECT_DIR
from tests.database_servers import is_postgres, with_database_name

# The nested run starts servers and a browser too (postgres comes with postgres_url).
pytestmark = [pytest.mark.server, pytest.mark.browser]

ON_BOTH_DATABASES = [
    "tests/test_records.py",
    "tests/test_admin.py",
    "tests/test_dashboard.py",
    "tests/test_dashboard_browser.py",
    "tests/test_access.py",
]


@pytest.mark.skipif(is_postgres(os.environ.get("DATABASE_URL", "")), reason="this whole run is on PostgreSQL")
def test_records_admin_and_dashboard_tests_pass_on_postgresql(postgres_url: str) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-W",
            "ignore::pytest.PytestWarning",
            *ON_BOTH_DATABASES,
        ],
        cwd=PROJECT_DIR,
        env={**os.environ, "DATABASE_URL": with_database_name(postgres_url, "llamasite")},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-2000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
