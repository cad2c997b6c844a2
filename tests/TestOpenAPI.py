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


def test_docs_group_the_routes_by_resource_and_show_a_lock_only_with_tokens(client, configured):
    """/docs listed every route under one "default" heading, each with a padlock though no token was needed.
    Now each operation is tagged with its resource; without API_TOKENS the document declares no security
    (Swagger UI then draws no lock); with them, every operation needs the bearer token but the open ones."""
    open_document = client.get("/openapi.json").get_json()
    operations = [(path, op) for path, item in open_document["paths"].items() for op in item.values()]
    assert {op["tags"][0] for _, op in operations} == {"Jobs", "Results", "Images", "Callbacks", "Service"}
    assert dict(operations)["/imageapi"]["tags"] == ["Jobs"] and dict(operations)["/result/file"]["tags"] == ["Results"]
    assert "security" not in open_document and "securitySchemes" not in open_document["components"]
    assert not any("security" in op for _, op in operations)

    guarded = configured(api_tokens="alice:a-token").get("/openapi.json", headers={"Authorization": "Bearer a-token"})
    guarded = guarded.get_json()
    validate(guarded)
    assert guarded["security"] == [{"bearer": []}]
    assert guarded["paths"]["/health"]["get"]["security"] == [{}]
    assert "security" not in guarded["paths"]["/imageapi"]["post"]  # the document's: the token
