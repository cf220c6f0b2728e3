//! `kilnd`: the daemon. The gRPC server arrives with the daemon issue; until then it says so.

fn main() -> std::process::ExitCode {
    eprintln!("kilnd: the daemon is not built yet; use `kiln image inspect` or `kiln unpack`");
    std::process::ExitCode::from(64)
}
