//! The pruned read of a JSON message (what `map`, `filter` and the Kafka sink's key read of
//! raw bytes) gives serde_json's answer on any input: the same tree, or the same error with
//! the same line and column. The first byte picks the expression, the rest is the message.
#![no_main]

use std::sync::OnceLock;

use gridflow::jmes::need::{from_slice, from_slice_by_serde};
use gridflow::jmes::{Expr, Need};
use libfuzzer_sys::fuzz_target;

const EXPRESSIONS: &[&str] = &[
    "{meter_id: meter_id, measured_at: ts, value: to_number(reading.value), unit: reading.unit, substation: site.substation}",
    "registers[*].value",
    "registers[0].name",
    "status.alarms",
    "device",
    "a.b == 'x'",
    "[a.b, list[0].x]",
    "points[*].v",
    "meta().key",
    "GL_MarketDocument.TimeSeries[*].Period.Point[*].quantity",
];

fn needs() -> &'static [Need] {
    static NEEDS: OnceLock<Vec<Need>> = OnceLock::new();
    NEEDS.get_or_init(|| {
        EXPRESSIONS
            .iter()
            .map(|e| {
                Expr::compile(e)
                    .expect("the expressions compile")
                    .need()
                    .clone()
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let need = &needs()[usize::from(pick) % EXPRESSIONS.len()];
    match (
        from_slice(message, need),
        from_slice_by_serde(message, need),
    ) {
        (Ok(fast), Ok(reference)) => assert_eq!(fast.to_string(), reference.to_string()),
        (Err(fast), Err(reference)) => assert_eq!(fast.to_string(), reference.to_string()),
        (fast, reference) => panic!("pruned read {fast:?}, serde_json {reference:?}"),
    }
});
