//! Macros shared by the CLI modules. Printing only; no logic lives here.

/// `println!` that ends the process quietly when stdout is a closed pipe (`ark ... | head`)
/// instead of panicking, and with exit 1 on any other write error.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                std::process::exit(0);
            }
            eprintln!("error: cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }};
}
