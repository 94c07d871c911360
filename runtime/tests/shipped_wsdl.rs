//! The WSDL shipped with `pipelines/generation-forecast-soap.toml` describes what that pipeline's
//! `soap` source accepts: it is well-formed, and its operation, its SOAP 1.1 and 1.2 actions
//! and its address match the source's `operations` and `path`. A WSDL that drifts from the
//! pipeline would hand clients a contract the endpoint refuses with a fault.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

const WSDL_NS: &str = "http://schemas.xmlsoap.org/wsdl/";
const SOAP11_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap/";
const SOAP12_NS: &str = "http://schemas.xmlsoap.org/wsdl/soap12/";
const GL_NS: &str = "urn:iec62325.351:tc57wg16:451-6:generationloaddocument:3:0";

/// The repository root: where `gridflow run` runs the shipped `gridflow.toml`, and what the
/// `wsdl` path of a pipeline is relative to.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One element of the WSDL: its namespace and local name (prefixes resolved with the
/// declarations in scope), and its attributes as written.
#[derive(Debug)]
struct Element {
    ns: String,
    local: String,
    attributes: BTreeMap<String, String>,
}

/// Every element of `xml`, in document order; `Err` when it is not well-formed.
fn elements(xml: &str) -> Result<Vec<Element>, String> {
    let mut reader = Reader::from_str(xml);
    reader.config_mut().check_end_names = true;
    let mut scopes: Vec<BTreeMap<String, String>> = vec![BTreeMap::new()];
    let mut out = Vec::new();
    let mut roots = 0;
    loop {
        let (start, empty) = match reader.read_event().map_err(|e| e.to_string())? {
            Event::Start(e) => (e.into_owned(), false),
            Event::Empty(e) => (e.into_owned(), true),
            Event::End(_) => {
                scopes.pop();
                continue;
            }
            Event::Eof => break,
            _ => continue,
        };
        if scopes.len() == 1 {
            roots += 1;
        }
        let (element, scope) = resolve(&start, scopes.last().unwrap())?;
        out.push(element);
        if !empty {
            scopes.push(scope);
        }
    }
    if roots != 1 || scopes.len() != 1 {
        return Err(format!(
            "{roots} root element(s), {} unclosed",
            scopes.len() - 1
        ));
    }
    Ok(out)
}

/// `start` with its prefix resolved, and the declarations in scope inside it.
fn resolve(
    start: &BytesStart<'_>,
    outer: &BTreeMap<String, String>,
) -> Result<(Element, BTreeMap<String, String>), String> {
    let mut scope = outer.clone();
    let mut attributes = BTreeMap::new();
    for attribute in start.attributes() {
        let attribute = attribute.map_err(|e| e.to_string())?;
        let key = attribute.key.as_ref().to_string();
        let raw = attribute.value.to_string();
        let value = quick_xml::escape::unescape(&raw)
            .map_err(|e| e.to_string())?
            .into_owned();
        match key.strip_prefix("xmlns") {
            Some("") => {
                scope.insert(String::new(), value.clone());
            }
            Some(prefix) if prefix.starts_with(':') => {
                scope.insert(prefix[1..].to_string(), value.clone());
            }
            _ => {}
        }
        attributes.insert(key, value);
    }
    let name = start.name().as_ref().to_string();
    let (prefix, local) = name.split_once(':').unwrap_or(("", &name));
    let ns = scope
        .get(prefix)
        .cloned()
        .ok_or_else(|| format!("undeclared prefix `{prefix}` on <{name}>"))?;
    let element = Element {
        ns,
        local: local.to_string(),
        attributes,
    };
    Ok((element, scope))
}

#[test]
fn the_generation_forecast_wsdl_matches_its_pipeline() {
    let pipeline = repo().join("pipelines/generation-forecast-soap.toml");
    let pipeline = gridflow::config::pipeline::load_file(&pipeline, &|_| None)
        .unwrap_or_else(|d| panic!("the pipeline does not load: {d:?}"));
    assert_eq!(pipeline.config.source.kind(), "soap");
    let source = pipeline.config.source.http().unwrap();
    let operations: BTreeSet<&str> = source.operations.iter().map(String::as_str).collect();
    assert!(
        !operations.is_empty(),
        "the source must name the operations it serves"
    );
    let wsdl_path = source
        .wsdl
        .as_ref()
        .expect("the source serves its WSDL on GET ?wsdl");
    let text = std::fs::read_to_string(repo().join(wsdl_path))
        .unwrap_or_else(|e| panic!("{}: {e}", wsdl_path.display()));

    let all = elements(&text).unwrap_or_else(|e| panic!("the WSDL is not well-formed: {e}"));
    assert_eq!(
        (all[0].ns.as_str(), all[0].local.as_str()),
        (WSDL_NS, "definitions")
    );
    let find = |ns: &str, local: &str| -> Vec<&Element> {
        all.iter()
            .filter(|e| e.ns == ns && e.local == local)
            .collect()
    };

    // The portType's operations, and the bindings of each SOAP version to each of them.
    let operation_names: BTreeSet<&str> = find(WSDL_NS, "operation")
        .iter()
        .map(|e| e.attributes["name"].as_str())
        .collect();
    assert_eq!(
        operation_names,
        BTreeSet::from(["SubmitGenerationForecast"])
    );
    for ns in [SOAP11_NS, SOAP12_NS] {
        assert_eq!(find(ns, "binding").len(), 1, "one binding for {ns}");
        let actions: BTreeSet<&str> = find(ns, "operation")
            .iter()
            .map(|e| e.attributes["soapAction"].as_str())
            .collect();
        assert_eq!(
            actions, operations,
            "the {ns} binding's soapActions are what the source accepts"
        );
        for action in &actions {
            assert!(
                operation_names
                    .iter()
                    .any(|op| action.ends_with(&format!(":{op}"))),
                "{action} names its operation"
            );
        }
        for body in find(ns, "body") {
            assert_eq!(body.attributes["use"], "literal");
        }
        let addresses = find(ns, "address");
        assert_eq!(addresses.len(), 1, "one port for {ns}");
        let location = &addresses[0].attributes["location"];
        assert!(
            location.ends_with(&source.path),
            "{location} is the source's path {}",
            source.path
        );
    }

    // The request is the GL_MarketDocument the steps read (`GL_MarketDocument.type`, ...).
    let parts = find(WSDL_NS, "part");
    let request = parts
        .iter()
        .find(|p| p.attributes["name"] == "document")
        .expect("the request part");
    assert_eq!(request.attributes["element"], "gl:GL_MarketDocument");
    assert_eq!(all[0].attributes["xmlns:gl"], GL_NS);
    let declared: Vec<&str> = find("http://www.w3.org/2001/XMLSchema", "element")
        .iter()
        .map(|e| e.attributes["name"].as_str())
        .collect();
    for name in ["GL_MarketDocument", "Acknowledgement", "error"] {
        assert!(declared.contains(&name), "the types declare {name}");
    }
}

#[test]
fn the_wsdl_check_refuses_what_it_should() {
    assert!(elements("<a><b></a>").is_err());
    assert!(elements("<a/><b/>").is_err());
    assert!(elements("<x:a/>").is_err());
    let ok = elements(r#"<w:d xmlns:w="urn:w"><w:o name="n"/></w:d>"#).unwrap();
    assert_eq!((ok[1].ns.as_str(), ok[1].local.as_str()), ("urn:w", "o"));
}
