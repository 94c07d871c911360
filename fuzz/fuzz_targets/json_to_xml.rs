//! `json_to_xml` on any JSON document (with and without a root name): bytes or an error,
//! never a panic; and reading what it wrote back never panics either.
#![no_main]

use gridflow::xml::{json_to_xml, xml_to_json, XmlToJsonOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    for root in [None, Some("Root"), Some("1bad")] {
        if let Ok(bytes) = json_to_xml(&value, root) {
            let _ = xml_to_json(&bytes, &XmlToJsonOptions::default());
        }
    }
});
