"""The OpenAPI description matches the running app: schemathesis against Hypercorn on 127.0.0.1.

Every operation but the endless event streams and the kill switch gets generated requests
(valid and invalid ones); each response must have a documented status code, content type
and body schema, and none may be a server error. (Not checked: that every schema-valid body
is accepted: which ``options`` a session takes is the app's ``session_spec`` and the
provider's to say, and they answer 422 to the ones they refuse, as documented.) (schemathesis' own pytest plugin does
not run under this pytest, so each operation's strategy is driven by hypothesis here.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import positive_data_acceptance

from sessions.web._openapi import openapi

from .conftest import ServerThread

SKIPPED = {"sessionEvents", "dashboardEvents", "killProcess"}  # endless streams; kills the tree's processes
OPERATIONS = sorted(
    op["operationId"] for ops in openapi()["paths"].values() for op in ops.values() if op["operationId"] not in SKIPPED
)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(server: ServerThread) -> Any:
    return schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth(server))


def auth(server: ServerThread) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token}"}


@pytest.mark.parametrize("operation_id", OPERATIONS)
def test_the_app_answers_as_its_openapi_description_says(
    operation_id: str, api_schema: Any, server: ServerThread
) -> None:
    operation = api_schema.find_operation_by_id(operation_id)

    @given(case=operation.as_strategy())
    @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case: Any) -> None:
        case.call_and_validate(headers=auth(server), timeout=10, excluded_checks=[positive_data_acceptance])

    check()
