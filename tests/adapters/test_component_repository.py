"""The Component Repository client against a fake repository over real HTTP."""

from __future__ import annotations

import pytest

from shared.adapters.component_repository import (
    CatalogueComponentRepository,
    ComponentInvalid,
    ComponentNotFound,
    HttpComponentRepository,
    ResourceSpec,
    make_component_repository,
    parse_component,
)
from shared.clock import FakeClock
from shared.errors import PermanentError, TemporaryError
from shared.settings import Settings
from tests.fakes.component_repo import FakeComponentRepo


def repo_client(fake: FakeComponentRepo, clock: FakeClock, **kw: object) -> HttpComponentRepository:
    return HttpComponentRepository(fake.url, clock=clock, **kw)  # type: ignore[arg-type]


def test_reads_the_hub_shape(component_repo: FakeComponentRepo, clock: FakeClock) -> None:
    component_repo.add(
        "http-get",
        image="reg/http:2",
        replicas=3,
        entrypoint="examples.components.source",
        resources={"cpu": {"request": "50m", "limit": "1"}, "memory": {"limit": "128Mi"}},
        functions=("get", "post"),
    )
    component = repo_client(component_repo, clock).get("http-get")
    assert component.image == "reg/http:2"
    assert component.replicas == 3
    assert component.entrypoint == "examples.components.source"
    assert component.functions == ("get", "post")
    assert component.resources == ResourceSpec("50m", "1", None, "128Mi")
    assert component.is_global is False


def test_caches_for_the_ttl_then_asks_again(
    component_repo: FakeComponentRepo, clock: FakeClock
) -> None:
    component_repo.add("c1")
    client = repo_client(component_repo, clock, ttl_seconds=30)
    for _ in range(5):
        client.get("c1")
    assert component_repo.hits["c1"] == 1
    clock.advance(31)
    client.get("c1")
    assert component_repo.hits["c1"] == 2


def test_unknown_component_is_permanent_and_named(
    component_repo: FakeComponentRepo, clock: FakeClock
) -> None:
    with pytest.raises(ComponentNotFound) as caught:
        repo_client(component_repo, clock).get("nope")
    assert isinstance(caught.value, PermanentError)
    assert "nope" in caught.value.message


@pytest.mark.parametrize(
    ("status", "error"),
    [
        pytest.param(500, TemporaryError, id="a 500 is retried later"),
        pytest.param(503, TemporaryError, id="a 503 is retried later"),
        pytest.param(429, TemporaryError, id="rate limiting is retried later"),
        pytest.param(401, TemporaryError, id="our credentials failing is retried later"),
        pytest.param(400, ComponentInvalid, id="a 400 is permanent"),
    ],
)
def test_errors_are_mapped(
    component_repo: FakeComponentRepo, clock: FakeClock, status: int, error: type[Exception]
) -> None:
    component_repo.add("c1")
    component_repo.fail(status)
    with pytest.raises(error):
        repo_client(component_repo, clock).get("c1")


def test_a_failure_is_not_cached(component_repo: FakeComponentRepo, clock: FakeClock) -> None:
    component_repo.add("c1")
    component_repo.fail(503)
    client = repo_client(component_repo, clock)
    with pytest.raises(TemporaryError):
        client.get("c1")
    assert client.get("c1").id == "c1"


def test_timeout_is_temporary(component_repo: FakeComponentRepo, clock: FakeClock) -> None:
    component_repo.add("c1")
    component_repo.delay = 0.5
    with pytest.raises(TemporaryError):
        repo_client(component_repo, clock, timeout_seconds=0.1).get("c1")


def test_unreachable_is_temporary(clock: FakeClock) -> None:
    client = HttpComponentRepository("http://127.0.0.1:9", clock=clock, timeout_seconds=0.5)
    with pytest.raises(TemporaryError):
        client.get("c1")


def test_service_token_is_sent(component_repo: FakeComponentRepo, clock: FakeClock) -> None:
    component_repo.add("c1")
    repo_client(component_repo, clock, service_token="svc").get("c1")
    assert component_repo.auth_headers == ["Bearer svc"]


def test_ids_are_url_quoted(component_repo: FakeComponentRepo, clock: FakeClock) -> None:
    component_repo.add("a/b c")
    assert repo_client(component_repo, clock).get("a/b c").id == "a/b c"


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        pytest.param({"data": "x"}, "no data object", id="data that is not an object"),
        pytest.param(
            {"data": {"descriptor": {"replicas": -1}}},
            "descriptor.replicas",
            id="negative replicas",
        ),
        pytest.param(
            {"data": {"descriptor": {"replicas": True}}}, "descriptor.replicas", id="bool replicas"
        ),
        pytest.param(
            {"data": {"distribution": {"image": 5}}}, "distribution.image", id="image not a string"
        ),
        pytest.param(
            {"data": {"descriptor": {"resources": {"cpu": {"limit": [1]}}}}},
            "descriptor.resources.cpu.limit",
            id="a quantity that is a list",
        ),
    ],
)
def test_malformed_components_name_the_field(answer: object, problem: str) -> None:
    with pytest.raises(ComponentInvalid) as caught:
        parse_component("c", answer)
    assert problem in caught.value.message + " ".join(caught.value.problems)


def test_kubernetes_style_resources_are_accepted() -> None:
    component = parse_component(
        "c",
        {
            "data": {
                "descriptor": {
                    "resources": {"requests": {"cpu": "10m"}, "limits": {"memory": "1Gi"}}
                }
            }
        },
    )
    assert component.resources == ResourceSpec("10m", None, None, "1Gi")


def test_local_catalogue_serves_the_examples() -> None:
    catalogue = CatalogueComponentRepository()
    assert {"example-source", "example-transform", "example-sink", "example-global-logger"} <= set(
        catalogue.ids()
    )
    assert catalogue.get("example-transform").entrypoint == "examples.components.transform"
    assert catalogue.get("example-global-logger").is_global
    with pytest.raises(ComponentNotFound):
        catalogue.get("missing")


def test_settings_choose_http_or_catalogue(clock: FakeClock) -> None:
    base = {"REDIS_URL": "redis://x:1", "ORCHESTRATOR_KEY": "k" * 32, "ORCHESTRATOR_AUTH": "off"}
    http = make_component_repository(
        Settings.from_env({**base, "COMPONENT_REPOSITORY_URL": "http://repo:1"}), clock
    )
    assert isinstance(http, HttpComponentRepository)
    assert isinstance(
        make_component_repository(Settings.from_env(base), clock), CatalogueComponentRepository
    )


def test_reads_the_component_repository_model(
    component_repo: FakeComponentRepo, clock: FakeClock
) -> None:
    """Top-level `resources` first (as the original driver read it), descriptor.resources
    filling the gaps; imagePullPolicy and environment variables from the descriptor."""
    component_repo.add(
        "crm",
        top_resources={"limits": {"cpu": "1", "memory": "256Mi"}, "requests": {"cpu": "100m"}},
        resources={"cpu": {"request": "50m"}, "memory": {"request": "64Mi"}},
        image_pull_policy="IfNotPresent",
        environment={"API_BASE": "https://crm.example", "RETRIES": 3, "VERBOSE": True},
    )
    component = repo_client(component_repo, clock).get("crm")
    assert component.resources == ResourceSpec("100m", "1", "64Mi", "256Mi")
    assert component.image_pull_policy == "IfNotPresent"
    assert dict(component.environment) == {
        "API_BASE": "https://crm.example",
        "RETRIES": "3",
        "VERBOSE": "true",
    }


def test_the_mongoose_default_of_empty_resources_falls_back() -> None:
    answer = {
        "data": {
            "_id": "663a1f0c2b7e4a0012d4e001",
            "name": "CRM",
            "distribution": {"type": "docker", "image": "reg/crm:1"},
            "resources": {"limits": {}, "requests": {}},
            "descriptor": {"resources": {"limits": {"cpu": "2"}}},
        }
    }
    component = parse_component("663a1f0c2b7e4a0012d4e001", answer)
    assert component.id == "663a1f0c2b7e4a0012d4e001"
    assert component.resources == ResourceSpec(cpu_limit="2")
    assert component.image_pull_policy is None and dict(component.environment) == {}


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"resources": "1 cpu"}, "resources: must be an object"),
        ({"resources": {"limits": {"cpu": ["1"]}}}, "resources.cpu.limit"),
        ({"descriptor": {"imagePullPolicy": "Sometimes"}}, "descriptor.imagePullPolicy"),
        ({"descriptor": {"environment": {"variables": ["A=1"]}}}, "environment.variables"),
        ({"descriptor": {"environment": "A=1"}}, "descriptor.environment"),
        ({"descriptor": {"environment": {"variables": {"1A": "x"}}}}, "not a variable name"),
        ({"descriptor": {"environment": {"variables": {"A": {"b": 1}}}}}, "variables.A"),
        ({"descriptor": {"environment": {"variables": {"A": None}}}}, "variables.A"),
        ({"descriptor": {"environment": {"variables": {"A": "x" * 40000}}}}, "longer than"),
        (
            {"descriptor": {"environment": {"variables": {f"V{i}": "x" for i in range(300)}}}},
            "more than 256",
        ),
    ],
)
def test_a_malformed_component_document_is_invalid_naming_the_field(
    changes: dict[str, object], problem: str
) -> None:
    answer = {"name": "c", "distribution": {"image": "reg/c:1"}, **changes}
    with pytest.raises(ComponentInvalid) as caught:
        parse_component("c", {"data": answer})
    assert any(problem in p for p in caught.value.problems), caught.value.problems
