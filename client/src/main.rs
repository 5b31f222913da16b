//! `ark`: the Ark command-line client. Parses arguments and hands over to [`ark_client::cli`].

fn main() -> std::process::ExitCode {
    ark_client::cli::main()
}
