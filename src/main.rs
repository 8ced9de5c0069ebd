//! The `pgtransit` binary: everything happens in the library; see `pgtransit::cli`.

fn main() -> std::process::ExitCode {
    pgtransit::cli::main()
}
