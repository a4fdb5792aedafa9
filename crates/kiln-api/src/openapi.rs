//! The OpenAPI document: generated from the handlers' declarations
//! (utoipa), kept in the repository as docs/openapi.json (a test fails when
//! they differ; `kiln openapi > docs/openapi.json` refreshes it), and served
//! at `/openapi.json`.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Map, Value};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, Ref, RefOr, ResponseBuilder, SecurityRequirement,
};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kiln",
        description = "The kiln daemon's API: pipelines and their executions, images and their lineage, launch templates, groups and instances, parameters, live events and metrics. It listens on loopback only. Every call needs a token: `Authorization: Bearer TOKEN` with the state directory's api-token (every call) or api-token-read (GET and HEAD only).",
        license(name = "Apache-2.0")
    ),
    components(schemas(crate::ErrorBody, crate::pipelines::StageName)),
    tags(
        (name = "pipelines", description = "Pipelines from kiln.yaml (CodePipeline)"),
        (name = "executions", description = "Executions, their stages, logs and variables"),
        (name = "images", description = "Image versions and their lineage (Image Builder)"),
        (name = "templates", description = "Launch template versions"),
        (name = "groups", description = "Groups of instances and their rollouts (Auto Scaling)"),
        (name = "instances", description = "Instances and their output"),
        (name = "parameters", description = "The parameter store (SSM Parameter Store)"),
        (name = "events", description = "Server-sent events of live changes"),
        (name = "console", description = "The web console's sign-in"),
        (name = "daemon", description = "Health, metrics and this document"),
    )
)]
struct ApiDoc;

/// The document before the routes add their paths.
pub fn base() -> Document {
    ApiDoc::openapi()
}

fn error(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// What every operation shares: the token it needs and the errors any call
/// may get (no token, a read-only token for a change, input that does not
/// parse).
pub fn finish(doc: &mut Document) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "token",
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The state directory's api-token, or api-token-read for GET and HEAD",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "console_session",
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            crate::console::COOKIE,
            "The console's session, from a one-time login code",
        ))),
    );
    doc.security = Some(vec![
        SecurityRequirement::new("token", Vec::<String>::new()),
        SecurityRequirement::new("console_session", Vec::<String>::new()),
    ]);
    for item in doc.paths.paths.values_mut() {
        let reads = [item.get.as_mut(), item.head.as_mut()];
        for op in reads.into_iter().flatten() {
            add_common(op, false);
        }
        let changes = [
            item.post.as_mut(),
            item.put.as_mut(),
            item.patch.as_mut(),
            item.delete.as_mut(),
        ];
        for op in changes.into_iter().flatten() {
            add_common(op, true);
        }
    }
}

fn add_common(op: &mut utoipa::openapi::path::Operation, changes: bool) {
    let r = &mut op.responses.responses;
    r.entry("400".into())
        .or_insert_with(|| error("A path, query or body that does not parse"));
    r.entry("401".into())
        .or_insert_with(|| error("No token, or not one of the daemon's"));
    if changes {
        r.entry("403".into())
            .or_insert_with(|| error("The read-only token cannot change state"));
    }
    if op.request_body.is_some() {
        r.entry("415".into())
            .or_insert_with(|| error("The body is not application/json"));
        r.entry("422".into())
            .or_insert_with(|| error("The body does not match the schema"));
    }
}

/// A body that flattens a struct which refuses unknown fields (GroupSpec
/// in CreateGroup) comes out of utoipa as `allOf` of two closed objects,
/// which no value satisfies. serde reads it as one closed object with the
/// fields of both, and so does the document after this.
fn merge_closed_flattens(doc: &mut Value) {
    let Some(schemas) = doc
        .pointer("/components/schemas")
        .and_then(Value::as_object)
        .cloned()
    else {
        return;
    };
    for (name, schema) in &schemas {
        let Some(parts) = schema.get("allOf").and_then(Value::as_array) else {
            continue;
        };
        let resolved: Vec<&Value> = parts
            .iter()
            .map(|p| match p.get("$ref").and_then(Value::as_str) {
                Some(r) => r
                    .strip_prefix("#/components/schemas/")
                    .and_then(|n| schemas.get(n))
                    .unwrap_or(p),
                None => p,
            })
            .collect();
        if !resolved
            .iter()
            .any(|p| p.get("additionalProperties") == Some(&Value::Bool(false)))
        {
            continue;
        }
        let mut properties = Map::new();
        let mut required = Vec::new();
        for p in &resolved {
            if let Some(props) = p.get("properties").and_then(Value::as_object) {
                properties.extend(props.clone());
            }
            if let Some(req) = p.get("required").and_then(Value::as_array) {
                required.extend(req.iter().cloned());
            }
        }
        let mut merged = Map::new();
        merged.insert("type".into(), "object".into());
        if let Some(d) = schema.get("description") {
            merged.insert("description".into(), d.clone());
        }
        merged.insert("required".into(), Value::Array(required));
        merged.insert("properties".into(), Value::Object(properties));
        merged.insert("additionalProperties".into(), Value::Bool(false));
        doc["components"]["schemas"][name] = Value::Object(merged);
    }
}

/// The document as JSON, built once.
pub fn json() -> &'static str {
    static JSON: OnceLock<String> = OnceLock::new();
    JSON.get_or_init(|| {
        let mut doc = serde_json::to_value(crate::openapi_document()).unwrap_or_default();
        merge_closed_flattens(&mut doc);
        let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
        text.push('\n');
        text
    })
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "daemon",
    responses((status = 200, description = "The OpenAPI document", content_type = "application/json",
        body = Object)))]
pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], json())
}
