//! `soap` source: SOAP 1.1 and 1.2 on a path of the shared HTTP listener.
//!
//! The version comes from the media type (`text/xml`: 1.1, `application/soap+xml`: 1.2), the
//! operation from `SOAPAction` (1.1) or the `action` parameter (1.2). The Body's payload goes
//! through the pipeline (the whole envelope is what a dead letter keeps). The reply is an
//! envelope: an acknowledgement document, or the mapped result with `reply = "mapped"`.
//! Errors are SOAP Faults (`Client`/`Server` in 1.1, `Sender`/`Receiver` in 1.2) carrying the
//! correlation id, the step and the error code in their detail.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use quick_xml::events::Event;
use quick_xml::Reader;

use super::edge::Refusal;
use super::route::{
    admit, check_contract, retry_after_secs, HttpSource, HttpSourceConfig, ReplyMode, Route,
    SoapRoute,
};
use super::SourceContext;
use crate::ack::{Ack, Outcome};
use crate::error::BuildError;
use crate::error::{ErrorCode, Failure};
use crate::message::{ContentType, Message, Meta, Origin, Payload};

/// SOAP 1.1 or 1.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `text/xml`, `SOAPAction` header, faults `Client`/`Server` with HTTP 500.
    V11,
    /// `application/soap+xml`, `action` parameter, faults `Sender` (400) / `Receiver` (500).
    V12,
}

impl Version {
    fn envelope_ns(self) -> &'static str {
        match self {
            Version::V11 => "http://schemas.xmlsoap.org/soap/envelope/",
            Version::V12 => "http://www.w3.org/2003/05/soap-envelope",
        }
    }

    fn media_type(self) -> &'static str {
        match self {
            Version::V11 => "text/xml; charset=utf-8",
            Version::V12 => "application/soap+xml; charset=utf-8",
        }
    }
}

/// The version and operation of a request, from its headers.
pub fn version_and_action(headers: &HeaderMap) -> Option<(Version, Option<String>)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)?
        .to_str()
        .ok()?
        .to_ascii_lowercase();
    if content_type.starts_with("application/soap+xml") {
        let action = content_type.split(';').find_map(|p| {
            p.trim()
                .strip_prefix("action=")
                .map(|a| a.trim_matches('"').to_string())
        });
        // The parameter's value keeps its case: read it from the raw header.
        let raw = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
        let action = action.and(raw.split(';').find_map(|p| {
            let p = p.trim();
            p.get(..7)
                .filter(|k| k.eq_ignore_ascii_case("action="))
                .map(|_| p[7..].trim_matches('"').to_string())
        }));
        return Some((Version::V12, action));
    }
    if content_type.starts_with("text/xml") {
        let action = headers
            .get("soapaction")
            .and_then(|v| v.to_str().ok())
            .map(|a| a.trim().trim_matches('"').to_string())
            .filter(|a| !a.is_empty());
        return Some((Version::V11, action));
    }
    None
}

/// The bytes between `<Body>` and `</Body>` of a SOAP envelope, trimmed.
pub fn body_content(envelope: &[u8]) -> Result<&[u8], String> {
    let mut reader = Reader::from_reader(envelope);
    reader.config_mut().check_end_names = true;
    let mut depth = 0usize;
    let mut start = None;
    loop {
        let before = reader.buffer_position() as usize;
        match reader.read_event() {
            Err(e) => return Err(format!("the envelope is not well-formed XML: {e}")),
            Ok(Event::DocType(_)) => return Err("a DOCTYPE is not accepted".into()),
            Ok(Event::Start(e)) => {
                depth += 1;
                let local = e.local_name();
                let local: &str = local.as_ref();
                match depth {
                    1 if local != "Envelope" => {
                        return Err("the root element is not a SOAP Envelope".into())
                    }
                    2 if local == "Body" => start = Some(reader.buffer_position() as usize),
                    _ => {}
                }
            }
            Ok(Event::End(e)) => {
                let local = e.local_name();
                let local: &str = local.as_ref();
                if depth == 2 && local == "Body" {
                    let from = start.unwrap_or(before);
                    let content = &envelope[from..before];
                    let trimmed = content.trim_ascii();
                    if trimmed.is_empty() {
                        return Err("the SOAP Body is empty".into());
                    }
                    return Ok(trimmed);
                }
                depth = depth.saturating_sub(1);
            }
            Ok(Event::Eof) => return Err("no SOAP Body in the envelope".into()),
            Ok(_) => {}
        }
    }
}

fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

fn envelope(version: Version, body: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soap:Envelope xmlns:soap=\"{}\"><soap:Body>{body}</soap:Body></soap:Envelope>",
        version.envelope_ns()
    )
}

/// A SOAP Fault response. `client` chooses Client/Sender over Server/Receiver.
pub fn fault(
    version: Version,
    client: bool,
    status: Option<StatusCode>,
    reason: &str,
    correlation_id: &str,
    failure: Option<&Failure>,
) -> Response {
    let mut detail = format!(
        "<gf:error xmlns:gf=\"urn:gridflow\"><gf:correlationId>{}</gf:correlationId>",
        escape(correlation_id)
    );
    if let Some(f) = failure {
        detail.push_str(&format!(
            "<gf:code>{}</gf:code><gf:step>{}</gf:step>",
            f.code.as_str(),
            escape(&f.step)
        ));
    }
    detail.push_str("</gf:error>");
    let (body, default_status) = match version {
        Version::V11 => (
            format!(
                "<soap:Fault><faultcode>soap:{}</faultcode><faultstring>{}</faultstring><detail>{detail}</detail></soap:Fault>",
                if client { "Client" } else { "Server" },
                escape(reason)
            ),
            StatusCode::INTERNAL_SERVER_ERROR,
        ),
        Version::V12 => (
            format!(
                "<soap:Fault><soap:Code><soap:Value>soap:{}</soap:Value></soap:Code><soap:Reason><soap:Text xml:lang=\"en\">{}</soap:Text></soap:Reason><soap:Detail>{detail}</soap:Detail></soap:Fault>",
                if client { "Sender" } else { "Receiver" },
                escape(reason)
            ),
            if client { StatusCode::BAD_REQUEST } else { StatusCode::INTERNAL_SERVER_ERROR },
        ),
    };
    (
        status.unwrap_or(default_status),
        [(header::CONTENT_TYPE, version.media_type())],
        envelope(version, &body),
    )
        .into_response()
}

fn strip_declaration(xml: &str) -> &str {
    let trimmed = xml.trim_start();
    match trimmed.strip_prefix("<?xml") {
        Some(rest) => rest
            .find("?>")
            .map(|i| rest[i + 2..].trim_start())
            .unwrap_or(trimmed),
        None => trimmed,
    }
}

fn success(version: Version, body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, version.media_type())],
        envelope(version, &body),
    )
        .into_response()
}

impl HttpSourceConfig {
    /// Builds a `soap` source on the same listener.
    pub fn build_soap(&self, ctx: &SourceContext) -> Result<HttpSource, BuildError> {
        let wsdl = match &self.wsdl {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                BuildError::at("wsdl", format!("cannot read {}: {e}", path.display()))
            })?),
            None => None,
        };
        self.build_route(
            ctx,
            serve_boxed,
            Some(Arc::new(SoapRoute {
                operations: self.operations.clone(),
                wsdl,
            })),
        )
    }
}

/// [`serve`] as the route table's [`Serve`](super::route::Serve).
fn serve_boxed<'a>(
    route: Route,
    request: Request,
    correlation_id: &'a str,
    path: &'a str,
) -> BoxFuture<'a, Response> {
    Box::pin(serve(route, request, correlation_id, path))
}

/// Serves one request on a SOAP route.
pub async fn serve(route: Route, request: Request, correlation_id: &str, path: &str) -> Response {
    let soap = route.soap().cloned().unwrap_or_default();
    if request.method() == Method::GET {
        return wsdl(&soap, &request);
    }
    let (version, action) = match accept(&route, &soap, &request, correlation_id) {
        Ok(accepted) => accepted,
        Err(fault) => return fault,
    };
    let limit = route.config().max_body_bytes;
    let request_headers = crate::message::request_headers(request.headers());
    // `lease`: the body's share of the listener's body budget, held until the input is
    // settled (also when the client leaves before its answer).
    let (_, body, lease) = match super::ingress::read_body(request, limit).await {
        Ok(read) => read,
        Err(e) => {
            let (status, _, detail) = e.status();
            let mut response = fault(version, true, Some(status), &detail, correlation_id, None);
            e.decorate(&mut response);
            return response;
        }
    };
    let (ack, outcome) = Ack::channel();
    let held = super::ingress::HeldBody::new(lease, outcome);
    let (meta, payload) = envelope_input(
        route.config(),
        route.contract().map(|c| c.as_ref()),
        path,
        action,
        request_headers,
        body,
        correlation_id,
    );
    let reply = Arc::clone(&meta);
    match payload {
        Ok(payload) => {
            route
                .downstream()
                .push(Message { payload, meta, ack })
                .await
        }
        Err(failure) => {
            let message = Message {
                payload: Payload::Bytes(Bytes::new()),
                meta,
                ack,
            };
            route.downstream().reject(message, failure).await
        }
    }
    let outcome = held.outcome().await.unwrap_or_else(|_| {
        Outcome::Failed(Failure::new(
            "engine",
            ErrorCode::Dropped,
            "the pipeline stopped",
        ))
    });
    answer(outcome, &reply, version, &route, correlation_id)
}

/// What the pipeline receives of an accepted envelope: its facts (the whole envelope as the
/// original, the operation as the `soap.action` header) and the Body's content, or the
/// failure the source found (an envelope that is not well-formed, no Body, a Body that breaks
/// the source's contract). Shared by [`serve`] and `gridflow test`.
pub fn envelope_input(
    config: &HttpSourceConfig,
    contract: Option<&crate::contracts::Contract>,
    path: &str,
    action: Option<String>,
    request_headers: Vec<(String, String)>,
    body: Bytes,
    correlation_id: &str,
) -> (Arc<Meta>, Result<Payload, Failure>) {
    let meta = Arc::new(Meta {
        original: body.clone(),
        correlation_id: correlation_id.to_string(),
        content_type: ContentType::Xml,
        origin: Origin::Http {
            path: path.to_string(),
        },
        key: None,
        headers: action
            .iter()
            .map(|a| ("soap.action".to_string(), a.clone().into_bytes()))
            .collect(),
        request_headers,
        received_at: Instant::now(),
        reply: (config.reply == ReplyMode::Mapped).then(|| std::sync::Mutex::new(Vec::new())),
    });
    let payload = body_content(&body)
        .map(|content| Payload::Bytes(body.slice_ref(content)))
        .map_err(|reason| Failure::new("source.soap", ErrorCode::InvalidXml, reason))
        .and_then(|payload| match contract {
            Some(contract) => check_contract(contract, payload, ContentType::Xml, "source.soap"),
            None => Ok(payload),
        });
    (meta, payload)
}

/// `GET <path>?wsdl`: the WSDL, when the route has one.
fn wsdl(soap: &SoapRoute, request: &Request) -> Response {
    let wants_wsdl = request
        .uri()
        .query()
        .is_some_and(|q| q.eq_ignore_ascii_case("wsdl"));
    match (&soap.wsdl, wants_wsdl) {
        (Some(wsdl), true) => (
            [(header::CONTENT_TYPE, "text/xml; charset=utf-8")],
            wsdl.clone(),
        )
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The version and operation of a request this route accepts (a SOAP media type, POST, a
/// served operation, an admitted client), or the fault it is answered with.
fn accept(
    route: &Route,
    soap: &SoapRoute,
    request: &Request,
    correlation_id: &str,
) -> Result<(Version, Option<String>), Response> {
    let Some((version, action)) = version_and_action(request.headers()) else {
        return Err(fault(
            Version::V11,
            true,
            Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
            "a SOAP request is text/xml (1.1) or application/soap+xml (1.2)",
            correlation_id,
            None,
        ));
    };
    if request.method() != Method::POST {
        return Err(fault(
            version,
            true,
            Some(StatusCode::METHOD_NOT_ALLOWED),
            "SOAP requests are POSTed",
            correlation_id,
            None,
        ));
    }
    if let Some(reason) = unknown_operation(&soap.operations, action.as_deref()) {
        return Err(fault(version, true, None, &reason, correlation_id, None));
    }
    if let Err(refusal) = admit(route, request) {
        let (status, reason) = match refusal {
            Refusal::Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "an API key is required".to_string(),
            ),
            Refusal::Forbidden => (
                StatusCode::FORBIDDEN,
                "this API key is not accepted here".to_string(),
            ),
            Refusal::OverQuota(wait) => {
                crate::metrics::quota_rejected(route.pipeline());
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    format!("over quota; retry in {} s", wait.as_secs().max(1)),
                )
            }
        };
        return Err(fault(
            version,
            true,
            Some(status),
            &reason,
            correlation_id,
            None,
        ));
    }
    Ok((version, action))
}

/// Why `action` is refused by a source serving `operations` (empty: any), or `None`.
fn unknown_operation(operations: &[String], action: Option<&str>) -> Option<String> {
    if operations.is_empty() || action.is_some_and(|a| operations.iter().any(|o| o == a)) {
        return None;
    }
    Some(format!(
        "unknown operation {:?}; this endpoint serves {}",
        action.unwrap_or_default(),
        operations.join(", ")
    ))
}

/// The answer once the input is settled: an acknowledgement or the mapped result, a Client
/// fault for an input dead-lettered, a Server fault with `Retry-After` when it could not be
/// written.
fn answer(
    outcome: Outcome,
    meta: &Meta,
    version: Version,
    route: &Route,
    correlation_id: &str,
) -> Response {
    match outcome {
        Outcome::Delivered { messages } => match &meta.reply {
            Some(results) => {
                let results = std::mem::take(&mut *results.lock().unwrap_or_else(|e| e.into_inner()));
                let mut body = String::new();
                for result in results {
                    match result {
                        Payload::Bytes(bytes) => body.push_str(strip_declaration(&String::from_utf8_lossy(&bytes))),
                        Payload::Json(value) | Payload::Parsed { value, .. } => match crate::xml::json_to_xml(&value, Some("Result")) {
                            Ok(xml) => body.push_str(strip_declaration(&String::from_utf8_lossy(&xml))),
                            Err(e) => return fault(version, false, None, &format!("the result cannot be written as XML: {e}"), correlation_id, None),
                        },
                    }
                }
                success(version, body)
            }
            None => success(
                version,
                format!(
                    "<gf:Acknowledgement xmlns:gf=\"urn:gridflow\"><gf:correlationId>{}</gf:correlationId><gf:messages>{messages}</gf:messages></gf:Acknowledgement>",
                    escape(correlation_id)
                ),
            ),
        },
        Outcome::DeadLettered(f) if f.code != ErrorCode::RetriesExhausted => {
            fault(version, true, None, &f.message, correlation_id, Some(&f))
        }
        Outcome::DeadLettered(f) | Outcome::Failed(f) => {
            let mut response = fault(version, false, Some(StatusCode::SERVICE_UNAVAILABLE), &format!("the message could not be written; try again later ({})", f.message), correlation_id, Some(&f));
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs(&f, route.config().retry_after_secs)));
            response
        }
    }
}

/// `kind = "soap"`: SOAP 1.1/1.2 on a path of the shared listener, with the keys of an
/// `http` source (plus `operations` and `wsdl`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(transparent)]
pub struct SoapSourceConfig(pub super::route::HttpSourceConfig);

/// The keys of an `http` source, described by the registry line.
impl schemars::JsonSchema for SoapSourceConfig {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SoapSourceConfig".into()
    }

    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut schema = <super::route::HttpSourceConfig as schemars::JsonSchema>::json_schema(generator);
        schema.remove("description");
        schema
    }
}

impl super::SourceKind for SoapSourceConfig {
    const KIND: &'static str = "soap";
    const EXAMPLE: &'static str = r#"[source]
kind = "soap"
path = "/soap/meter-readings"
operations = ["SubmitReading"]"#;
    const WAITS_FOR_SINK: bool = false;
    const REDELIVERS: bool = true;

    fn check(&self) -> Result<(), crate::error::BuildError> {
        self.0.check()
    }

    fn build(
        &self,
        ctx: &super::SourceContext,
    ) -> Result<Box<dyn super::Source>, crate::error::BuildError> {
        Ok(Box::new(self.0.build_soap(ctx)?))
    }

    fn http(&self) -> Option<&super::route::HttpSourceConfig> {
        Some(&self.0)
    }

    /// The envelope a client would have POSTed: its `Content-Type` gives the version, its
    /// `SOAPAction` header (1.1) or `action` parameter (1.2) the operation. What the source
    /// refuses before reading the body (another media type, an operation it does not serve)
    /// is answered with a fault and never reaches the pipeline: such an input is not a case.
    fn offline_input(
        &self,
        input: &super::OfflineInput<'_>,
    ) -> Result<super::Received, String> {
        let headers = input.http_headers()?;
        let Some((_, action)) = version_and_action(&headers) else {
            return Err(format!(
                "the source answers a `{}` request with a fault before the pipeline: a SOAP request is text/xml (1.1) or application/soap+xml (1.2); give `content_type`",
                input.content_type.unwrap_or("(no Content-Type)")
            ));
        };
        if let Some(reason) = unknown_operation(&self.0.operations, action.as_deref()) {
            return Err(format!(
                "the source answers with a fault before the pipeline: {reason}"
            ));
        }
        let contract = input.contract(self.0.contract.as_deref())?;
        let id = super::route::correlation_id_of(&headers)
            .unwrap_or_else(|| input.correlation_id.to_string());
        Ok(envelope_input(
            &self.0,
            contract.as_deref(),
            &self.0.path,
            action,
            crate::message::request_headers(&headers),
            input.body.clone(),
            &id,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_body_content_of_both_versions() {
        let v11 = br#"<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Header><h>1</h></s:Header><s:Body>
          <m:Doc xmlns:m="urn:x"><m:a>1</m:a></m:Doc>
        </s:Body></s:Envelope>"#;
        assert_eq!(
            body_content(v11).unwrap(),
            br#"<m:Doc xmlns:m="urn:x"><m:a>1</m:a></m:Doc>"#
        );
        assert!(body_content(b"<a><Body/></a>").is_err());
        assert!(body_content(b"<Envelope><Header/></Envelope>").is_err());
        assert!(body_content(b"<Envelope><Body><x></Body></Envelope>").is_err());
    }

    /// `gridflow test`'s input: the source's own checks, before and after the body is read.
    #[test]
    fn an_offline_input_is_read_as_the_source_reads_a_request() {
        let source = crate::sources::parse_source_text(
            "kind = \"soap\"\npath = \"/soap/f\"\noperations = [\"urn:Submit\"]\n",
        )
        .unwrap();
        let contracts = crate::contracts::Contracts::default();
        let envelope = r#"<s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope"><s:Body><Doc>1</Doc></s:Body></s:Envelope>"#;
        let headers = std::collections::BTreeMap::new();
        let input = |body: &'static str, content_type: Option<&'static str>| {
            source.offline_input(&crate::sources::OfflineInput {
                body: Bytes::from_static(body.as_bytes()),
                headers: &headers,
                content_type,
                key: None,
                file: None,
                contracts: &contracts,
                correlation_id: "c-1",
            })
        };

        // SOAP 1.2: the operation from the action parameter, the Body's content to the steps,
        // the whole envelope kept for a dead letter.
        let (meta, payload) = input(
            envelope,
            Some("application/soap+xml; action=\"urn:Submit\""),
        )
        .unwrap();
        assert_eq!(payload.unwrap().to_bytes().as_ref(), b"<Doc>1</Doc>");
        assert_eq!(meta.headers, vec![("soap.action".to_string(), b"urn:Submit".to_vec())]);
        assert_eq!(meta.original.as_ref(), envelope.as_bytes());
        assert_eq!(meta.correlation_id, "c-1");

        // What the source answers with a fault before reading the body is not a case.
        let err = input(envelope, Some("application/soap+xml; action=\"urn:Other\"")).unwrap_err();
        assert!(err.contains("unknown operation \"urn:Other\""), "{err}");
        let err = input(envelope, Some("text/xml")).unwrap_err();
        assert!(err.contains("unknown operation \"\""), "{err}");
        let err = input(envelope, Some("application/xml")).unwrap_err();
        assert!(err.contains("text/xml (1.1) or application/soap+xml (1.2)"), "{err}");
        assert!(input(envelope, None).is_err());

        // A broken envelope reaches the runner as the source's failure: a dead letter.
        let (_, payload) = input(
            "<s:Envelope><s:Body><Doc></s:Body>",
            Some("application/soap+xml; action=urn:Submit"),
        )
        .unwrap();
        let failure = payload.unwrap_err();
        assert_eq!((failure.code, failure.step.as_str()), (ErrorCode::InvalidXml, "source.soap"));
    }

    #[test]
    fn version_and_action_from_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        h.insert("soapaction", HeaderValue::from_static("\"urn:Submit\""));
        assert_eq!(
            version_and_action(&h),
            Some((Version::V11, Some("urn:Submit".into())))
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/soap+xml; charset=utf-8; action=\"urn:Submit\""),
        );
        assert_eq!(
            version_and_action(&h),
            Some((Version::V12, Some("urn:Submit".into())))
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        assert_eq!(version_and_action(&h), None);
    }
}
