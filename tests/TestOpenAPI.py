"""The OpenAPI document describes every route the app has, and is itself valid OpenAPI 3.1."""

import re

from openapi_spec_validator import validate


def test_the_document_is_valid_openapi(client):
    validate(client.get("/openapi.json").get_json())


def test_the_document_describes_exactly_the_apps_routes(app, client):
    document = client.get("/openapi.json").get_json()
    documented = {(path, method.upper()) for path, item in document["paths"].items() for method in item}
    served = {
        (re.sub(r"<(?:\w+:)?(\w+)>", lambda m: "{" + {"job_id": "jobId"}.get(m[1], m[1]) + "}", rule.rule), method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert documented == served


def test_every_operation_documents_its_errors_as_json(client):
    document = client.get("/openapi.json").get_json()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert "503" in operation["responses"], (path, method)
            assert any(code.startswith("2") for code in operation["responses"]), (path, method)
