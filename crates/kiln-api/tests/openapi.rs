//! The OpenAPI document in the repository is the one the code generates:
//! a route or a type that changes without the document fails here.

use std::path::Path;

#[test]
fn the_committed_document_is_what_the_code_generates() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.json");
    let committed =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let generated = kiln_api::openapi::json();
    assert!(
        committed == generated,
        "{} is not what the code generates; refresh it with `cargo run -p kiln -- openapi > docs/openapi.json`",
        file.display()
    );
}

#[test]
fn every_operation_needs_a_token_and_documents_its_errors() {
    let doc: serde_json::Value = serde_json::from_str(kiln_api::openapi::json()).unwrap();
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["token"]["scheme"], "bearer");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path}: no 401");
            if method != "get" {
                assert!(responses.contains_key("403"), "{method} {path}: no 403");
            }
            assert!(
                responses.keys().any(|s| s.starts_with('2')),
                "{method} {path}: no success"
            );
        }
    }
    // Every resource the console shows, and the actions it offers.
    for path in [
        "/v1/pipelines",
        "/v1/executions/{id}",
        "/v1/executions/{id}/logs/stream",
        "/v1/executions/{id}/retry",
        "/v1/pipelines/{name}/executions",
        "/v1/images",
        "/v1/images/{name}/{version}/{build}",
        "/v1/templates",
        "/v1/groups/{name}/scale",
        "/v1/groups/{name}/rollback",
        "/v1/instances",
        "/v1/parameters",
        "/v1/parameters/history",
        "/v1/events",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(doc["paths"].get(path).is_some(), "{path} is not documented");
    }
    assert!(operations >= 28, "{operations} operations");
}
