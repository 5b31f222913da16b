//! systemd readiness notification (`sd_notify`) for `Type=notify` units.
//!
//! Owns only sending state lines (`READY=1`, `STOPPING=1`, `STATUS=...`) as one datagram to
//! the socket named by `$NOTIFY_SOCKET`, which systemd sets for the service's main process.
//! A name starting with `@` is an abstract socket (Linux). Without the variable (not started
//! by systemd, tests, the playground) every call does nothing. Must not decide *when* a node
//! is ready: start-up (`server.rs`) calls it at its milestones.
//!
//! std's `UnixDatagram` only: the protocol is one datagram, not worth a dependency.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (newline-separated `KEY=VALUE` lines) to systemd, if it is listening.
/// Failure is logged, never fatal: a node that serves but could not say so is better than
/// one that stops; systemd then fails the start on its own timeout.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path.to_string_lossy(), state) {
        tracing::warn!(error = %e, socket = %path.to_string_lossy(), "cannot notify systemd");
    }
}

/// Sends one datagram with `state` to the notification socket `path` (`@name` = abstract).
pub fn send(path: &str, state: &str) -> std::io::Result<()> {
    let addr = socket_addr(path)?;
    let sock = UnixDatagram::unbound()?;
    sock.send_to_addr(state.as_bytes(), &addr)?;
    Ok(())
}

fn socket_addr(path: &str) -> std::io::Result<SocketAddr> {
    match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(name.as_bytes())
        }
        None if path.starts_with('/') => SocketAddr::from_pathname(path),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("NOTIFY_SOCKET {path:?} is neither an absolute path nor an abstract name (@...)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recv(sock: &UnixDatagram) -> String {
        sock.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 256];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn sends_to_a_path_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        send(path.to_str().unwrap(), "READY=1\nSTATUS=serving").unwrap();
        assert_eq!(recv(&listener), "READY=1\nSTATUS=serving");
        send(path.to_str().unwrap(), "STOPPING=1").unwrap();
        assert_eq!(recv(&listener), "STOPPING=1");
    }

    #[test]
    fn sends_to_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ark-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        send(&format!("@{name}"), "READY=1").unwrap();
        assert_eq!(recv(&listener), "READY=1");
    }

    #[test]
    fn refuses_a_relative_name_and_reports_a_missing_socket() {
        assert!(send("relative.sock", "READY=1").is_err());
        let dir = tempfile::tempdir().unwrap();
        assert!(send(dir.path().join("absent.sock").to_str().unwrap(), "READY=1").is_err());
    }
}
