//! The limit of the XML path in `benches/peers.sh`: quick-xml's tokenizer alone, over one
//! document held in memory, again and again. No allocation of a tree, no JSON, no events: what
//! any XML pipeline must at least pay to read the document.
//!
//! ```text
//! xml_loop <file> <seconds>     prints `documents=<n> seconds=<s> per_second=<r> mb_per_second=<m>`
//! ```
//!
//! One thread, the whole time on one core.

use std::time::{Duration, Instant};

use quick_xml::events::Event;
use quick_xml::Reader;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(file), Some(seconds)) = (args.first(), args.get(1)) else {
        eprintln!("usage: xml_loop <file> <seconds>");
        std::process::exit(2);
    };
    let document = std::fs::read(file).unwrap();
    let seconds: f64 = seconds.parse().unwrap();
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(seconds);
    let (mut documents, mut tokens) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(1024);
    while Instant::now() < until {
        let mut reader = Reader::from_reader(document.as_slice());
        loop {
            match reader.read_event_into(&mut buf) {
                Ok(Event::Eof) => break,
                Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                    // Attributes are tokens a pipeline reads too.
                    tokens += 1 + e.attributes().count() as u64;
                }
                Ok(Event::Text(t)) => {
                    tokens += u64::from(!t.is_empty());
                }
                Ok(_) => tokens += 1,
                Err(e) => panic!("{file}: {e}"),
            }
            buf.clear();
        }
        documents += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mb = documents as f64 * document.len() as f64 / 1e6;
    println!(
        "documents={documents} seconds={elapsed:.3} per_second={:.0} mb_per_second={:.1} tokens={tokens}",
        documents as f64 / elapsed,
        mb / elapsed
    );
}
