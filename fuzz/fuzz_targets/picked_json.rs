//! An expression of field paths, `to_number` and multiselect hashes, on raw JSON bytes (what
//! a `map` step or a Kafka sink's `key` reads, through gridflow's plans and pickers), gives
//! what jmespath gives on serde_json's reading of the bytes, and an error where serde_json
//! refuses them. The first byte picks the expression, the rest is the message.
#![no_main]

use std::sync::OnceLock;

use bytes::Bytes;
use gridflow::jmes::Expr;
use gridflow::message::Payload;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const EXPRESSIONS: &[&str] = &[
    "{meter_id: meter_id, measured_at: ts, value: to_number(reading.value), unit: reading.unit, quality: reading.quality, substation: site.substation, feeder: site.feeder}",
    "meter_id",
    "to_number(a)",
    "{a: a.b.c, b: to_number(a.b.d), c: x, d: x}",
    "{o: {i: reading.value}, s: status, t: tags}",
    "reading.{v: value, n: to_number(value)}",
    "to_number(reading.value).b",
    "{whole: @}",
    "a.{x: b}.x",
];

fn compiled() -> &'static [(Expr, jmespath::Expression<'static>)] {
    static EXPRS: OnceLock<Vec<(Expr, jmespath::Expression<'static>)>> = OnceLock::new();
    EXPRS.get_or_init(|| {
        EXPRESSIONS
            .iter()
            .map(|e| {
                (
                    Expr::compile(e).expect("the expressions compile"),
                    jmespath::compile(e).expect("jmespath compiles them"),
                )
            })
            .collect()
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, message)) = data.split_first() else {
        return;
    };
    let (expr, reference) = &compiled()[usize::from(pick) % EXPRESSIONS.len()];
    let got = expr.search_payload(&Payload::Bytes(Bytes::copy_from_slice(message)));
    match serde_json::from_slice::<Value>(message) {
        Ok(value) => {
            let want = reference.search(&value).expect("these expressions do not fail");
            let want = serde_json::to_value(&*want).expect("a result serialises");
            assert_eq!(got.expect("serde_json read it"), want);
        }
        Err(e) => assert!(got.is_err(), "serde_json refuses it ({e}), gridflow gave {got:?}"),
    }
});
