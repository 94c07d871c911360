//! The OpenAPI 3.1 document of the HTTP ingress, generated from the routes being served:
//! one operation per HTTP source, its contract as the request schema, its answers.

use serde_json::{json, Map, Value};

use super::route::{HttpRoutes, ReplyMode, CORRELATION_HEADER};

/// A component name for a contract reference (`load-actual@1` → `load-actual_v1`).
fn component_name(reference: &str) -> String {
    reference.replace('@', "_v")
}

/// The contract schema as an OpenAPI 3.1 schema object (its own `$schema`/`$id` dropped: the
/// document's dialect is JSON Schema 2020-12 already).
fn embeddable(schema: &Value) -> Value {
    let mut schema = schema.clone();
    if let Value::Object(map) = &mut schema {
        map.shift_remove("$schema");
        map.shift_remove("$id");
    }
    schema
}

fn problem_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// The document for the routes served now.
pub fn document(routes: &HttpRoutes) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details, with gridflow's fields",
            "required": ["type", "title", "status"],
            "properties": {
                "type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                "detail": {"type": "string"}, "pipeline": {"type": "string"}, "step": {"type": "string"},
                "code": {"type": "string"}, "attempts": {"type": "integer"},
                "correlation_id": {"type": "string"}, "dead_lettered": {"type": "boolean"},
                "violations": {"type": "array", "items": {"type": "object", "properties": {
                    "pointer": {"type": "string"}, "message": {"type": "string"}}}}
            }
        }),
    );
    schemas.insert(
        "Accepted".into(),
        json!({
            "type": "object",
            "required": ["correlation_id", "messages"],
            "properties": {"correlation_id": {"type": "string"}, "messages": {"type": "integer", "minimum": 0}}
        }),
    );
    let mut routes: Vec<_> = routes.table_snapshot();
    routes.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, route) in routes {
        let json_schema = match route.contract() {
            Some(contract) => {
                let name = component_name(&contract.reference);
                schemas.insert(name.clone(), embeddable(&contract.schema));
                json!({"$ref": format!("#/components/schemas/{name}")})
            }
            None => json!({}),
        };
        let mut responses = Map::new();
        if route.soap().is_some() {
            let envelope = json!({"schema": {"type": "string", "description": "A SOAP envelope"}});
            let soap_content =
                json!({"text/xml": envelope.clone(), "application/soap+xml": envelope});
            responses.insert("200".into(), json!({"description": "An acknowledgement or the mapped result, in an envelope", "content": soap_content.clone()}));
            responses.insert(
                "400".into(),
                json!({"description": "SOAP 1.2 Sender fault", "content": soap_content.clone()}),
            );
            responses.insert("500".into(), json!({"description": "SOAP 1.1 fault (Client or Server)", "content": soap_content.clone()}));
            responses.insert("503".into(), json!({"description": "Server/Receiver fault: try again after Retry-After", "content": soap_content.clone()}));
            let operations = if route.config().operations.is_empty() {
                "any".to_string()
            } else {
                route.config().operations.join(", ")
            };
            let mut operation = json!({
                "operationId": route.pipeline().to_string(),
                "summary": format!("SOAP endpoint of pipeline {}", route.pipeline()),
                "description": format!("Operations: {operations}"),
                "requestBody": {"required": true, "content": soap_content},
                "responses": responses,
            });
            if route.config().auth.is_some() {
                operation["security"] = json!([{"apiKey": []}, {"bearer": []}]);
            }
            paths.insert(path, json!({"post": operation}));
            continue;
        }
        match route.config().reply {
            ReplyMode::Ack => {
                responses.insert("202".into(), json!({
                    "description": "Every message the request produced was written",
                    "headers": {"X-Correlation-ID": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Accepted"}}}
                }));
            }
            ReplyMode::Mapped => {
                responses.insert("200".into(), json!({
                    "description": "The pipeline's result (one message, or an array of them)",
                    "content": {"application/json": {"schema": {}}, "application/xml": {"schema": {"type": "string"}}}
                }));
                responses.insert(
                    "204".into(),
                    json!({"description": "The request produced no message"}),
                );
            }
        }
        responses.insert(
            "400".into(),
            problem_response("The body could not be parsed; it was dead-lettered"),
        );
        responses.insert("413".into(), problem_response("The body is too large"));
        responses.insert(
            "422".into(),
            problem_response(
                "A step failed or the contract was violated; the body was dead-lettered",
            ),
        );
        responses.insert(
            "503".into(),
            problem_response("The destination is unavailable; try again after Retry-After"),
        );
        let secured = route.config().auth.is_some();
        if secured {
            responses.insert("401".into(), problem_response("No API key"));
            responses.insert("403".into(), problem_response("API key not accepted"));
        }
        if route.config().quota.is_some() {
            responses.insert(
                "429".into(),
                problem_response("Over quota; try again after Retry-After"),
            );
        }
        let mut operation = json!({
            "operationId": route.pipeline().to_string(),
            "summary": format!("Ingest into pipeline {}", route.pipeline()),
            "parameters": [{
                "name": CORRELATION_HEADER, "in": "header", "required": false,
                "description": "Correlation id; a W3C traceparent's trace id, or a new UUID v7, when absent",
                "schema": {"type": "string"}
            }],
            "requestBody": {
                "required": true,
                "content": {
                    "application/json": {"schema": json_schema},
                    "application/xml": {"schema": {"type": "string"}}
                }
            },
            "responses": responses,
        });
        if secured {
            operation["security"] = json!([{"apiKey": []}, {"bearer": []}]);
        }
        paths.insert(path, json!({"post": operation}));
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gridflow ingress",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "HTTP sources of the pipelines loaded now"
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"}
            }
        }
    })
}
