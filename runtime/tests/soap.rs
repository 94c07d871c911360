//! Black-box: the `soap` source. SOAP 1.1 and 1.2 requests (operation from SOAPAction or the
//! action parameter), acknowledgement and mapped replies as envelopes, Faults with the right
//! codes and the correlation id in their detail, the WSDL, and dead letters keeping the whole
//! envelope.

mod common;

use std::time::Duration;

use common::*;

const SAMPLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/samples/soap/generation-forecast-A67-soap11.xml"
);
const WSDL: &str = r#"<?xml version="1.0"?><definitions xmlns="http://schemas.xmlsoap.org/wsdl/" name="Forecast"/>"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soap_11_and_12_requests_replies_faults_and_wsdl() {
    let topic = unique("energy.generation.forecast.v1");
    let dlq = format!("{topic}.dlq");
    create_topic(&topic, 1).await;
    create_topic(&dlq, 1).await;
    let dir = test_dir();
    std::fs::write(dir.path().join("forecast.wsdl"), WSDL).unwrap();
    write_pipeline(
        dir.path(),
        "forecast.toml",
        &format!(
            "[source]\nkind='soap'\npath='/soap/forecast'\noperations=['urn:SubmitForecast']\nwsdl='forecast.wsdl'\n[[steps]]\nkind='xml_to_json'\n[[steps]]\nkind='map'\nexpression='{{document: GL_MarketDocument.mRID, type: GL_MarketDocument.type}}'\n[sink]\nkind='kafka'\ntopic='{topic}'\n"
        ),
    );
    write_pipeline(
        dir.path(),
        "lookup.toml",
        "[source]\nkind='soap'\npath='/soap/lookup'\nreply='mapped'\n[[steps]]\nkind='xml_to_json'\n[[steps]]\nkind='map'\nexpression='{mrid: GL_MarketDocument.mRID}'\n[sink]\nkind='file'\npath='out/lookups.ndjson'\n",
    );
    let gf = Gridflow::start(dir.path(), &[]);
    let v11 = std::fs::read_to_string(SAMPLE).unwrap();
    let v12 = v11.replace(
        "http://schemas.xmlsoap.org/soap/envelope/",
        "http://www.w3.org/2003/05/soap-envelope",
    );

    // SOAP 1.1, operation from SOAPAction: an acknowledgement envelope.
    let r = post(
        &gf.http_url("/soap/forecast"),
        "text/xml; charset=utf-8",
        &[
            ("soapaction", "\"urn:SubmitForecast\""),
            ("x-correlation-id", "soap-11"),
        ],
        v11.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/xml"));
    let text = r.text().await.unwrap();
    assert!(
        text.contains("http://schemas.xmlsoap.org/soap/envelope/"),
        "{text}"
    );
    assert!(
        text.contains("<gf:correlationId>soap-11</gf:correlationId><gf:messages>1</gf:messages>"),
        "{text}"
    );

    // SOAP 1.2, operation from the action parameter.
    let r = post(
        &gf.http_url("/soap/forecast"),
        "application/soap+xml; charset=utf-8; action=\"urn:SubmitForecast\"",
        &[("x-correlation-id", "soap-12")],
        v12.clone(),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/soap+xml"));
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("http://www.w3.org/2003/05/soap-envelope"));

    let records = consume(&topic, 2, Duration::from_secs(20)).await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert_eq!(
            r.json(),
            serde_json::json!({"document": "3e7a1c5b-0d2f-4a6e-8b1c-9f3d5e7a0b2c", "type": "A67"})
        );
    }

    // An unknown operation: a Client fault (1.1: HTTP 500).
    let r = post(
        &gf.http_url("/soap/forecast"),
        "text/xml",
        &[("soapaction", "urn:Other")],
        v11.clone(),
    )
    .await;
    assert_eq!(r.status(), 500);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<faultcode>soap:Client</faultcode>"),
        "{text}"
    );

    // A malformed 1.2 envelope: a Sender fault (HTTP 400) with the correlation id, and the
    // whole envelope dead-lettered.
    let broken = v12.replace("</soapenv:Body>", "");
    let r = post(
        &gf.http_url("/soap/forecast"),
        "application/soap+xml; action=urn:SubmitForecast",
        &[("x-correlation-id", "soap-bad")],
        broken.clone(),
    )
    .await;
    assert_eq!(r.status(), 400);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<soap:Value>soap:Sender</soap:Value>"),
        "{text}"
    );
    assert!(
        text.contains("<gf:correlationId>soap-bad</gf:correlationId>"),
        "{text}"
    );
    assert!(text.contains("<gf:code>invalid_xml</gf:code>"), "{text}");
    let dead = consume(&dlq, 1, Duration::from_secs(20)).await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, broken.as_bytes());
    assert_eq!(dead[0].headers["gridflow.correlation_id"], "soap-bad");

    // The WSDL.
    let r = http()
        .get(format!("{}?wsdl", gf.http_url("/soap/forecast")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), WSDL);

    // A mapped reply: the result in the Body.
    let r = post(&gf.http_url("/soap/lookup"), "text/xml", &[], v11).await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("<soap:Body><Result><mrid>3e7a1c5b-0d2f-4a6e-8b1c-9f3d5e7a0b2c</mrid></Result></soap:Body>"),
        "{text}"
    );
}
