//! The `gridflow` binary: everything lives in the library; this only hands over to the CLI.

/// mimalloc instead of the system allocator: with glibc malloc, allocation was a quarter of
/// the engine's time on the map benchmark (docs/benchmarks-history.md, profile).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    gridflow::cli::main()
}
