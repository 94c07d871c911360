//! `xml_to_json` on any bytes: a document or an error, never a panic (DOCTYPEs, depth and
//! element limits included).
#![no_main]

use gridflow::xml::{xml_to_json, Namespaces, XmlToJsonOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut options = XmlToJsonOptions::default();
    let _ = xml_to_json(data, &options);
    options.namespaces = Namespaces::Keep;
    options.arrays.insert("Point".into());
    if let Ok(value) = xml_to_json(data, &options) {
        // And back: whatever xml_to_json gives, json_to_xml handles without panicking.
        let _ = gridflow::xml::json_to_xml(&value, None);
    }
});
