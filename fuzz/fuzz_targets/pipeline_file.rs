//! A pipeline file, as `gridflow validate` and the reloader read it: any bytes give a config
//! or diagnostics, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lookup = |name: &str| (name == "SET").then(|| "value".to_string());
    match gridflow::config::pipeline::parse_pipeline(std::path::Path::new("fuzz.toml"), text, &lookup) {
        Ok(config) => {
            // What the engine would build next: every step and sink checks.
            for step in &config.steps {
                let _ = step.check();
            }
            let _ = config.sink.check();
        }
        Err(diagnostics) => {
            for d in diagnostics {
                let _ = d.to_string();
            }
        }
    }
});
