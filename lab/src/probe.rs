//! `stockade-lab probe`: one bounded connection attempt from inside a host's namespace
//! (`stockade-lab exec client1 -- stockade-lab probe tcp 198.51.100.50:7443`), used by the
//! demo to show that a client cannot reach a stock server.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A TCP connection was established / a UDP answer arrived.
    Reached,
    /// Nothing came back within the time (what the gateway's drop looks like).
    NothingBack,
    /// Something came back saying no (a reset, an ICMP unreachable).
    Refused(String),
    /// The local stack gave up (e.g. no ARP answer: "no route to host").
    Unreachable(String),
}

impl Outcome {
    pub fn reached(&self) -> bool {
        matches!(self, Outcome::Reached)
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Reached => write!(f, "reached"),
            Outcome::NothingBack => write!(f, "nothing came back (timed out)"),
            Outcome::Refused(e) => write!(f, "refused: {e}"),
            Outcome::Unreachable(e) => write!(f, "unreachable: {e}"),
        }
    }
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::NothingBack,
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset => {
            Outcome::Refused(e.to_string())
        }
        _ => Outcome::Unreachable(e.to_string()),
    }
}

pub fn tcp(addr: SocketAddr, timeout: Duration) -> Outcome {
    match TcpStream::connect_timeout(&addr, timeout) {
        Ok(_) => Outcome::Reached,
        Err(e) => classify(&e),
    }
}

/// Sends one datagram and waits for any answer (an ICMP port unreachable shows up as a refusal
/// on the connected socket).
pub fn udp(addr: SocketAddr, timeout: Duration) -> Outcome {
    let bind: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let run = || -> std::io::Result<Outcome> {
        let s = UdpSocket::bind(bind)?;
        s.connect(addr)?;
        s.send(b"stockade-lab probe")?;
        let start = Instant::now();
        let mut buf = [0u8; 512];
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                return Ok(Outcome::NothingBack);
            }
            s.set_read_timeout(Some(left))?;
            match s.recv(&mut buf) {
                Ok(_) => return Ok(Outcome::Reached),
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Ok(classify(&e)),
            }
        }
    };
    run().unwrap_or_else(|e| classify(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_outcomes() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(tcp(addr, Duration::from_secs(2)), Outcome::Reached);
        drop(l);
        assert!(matches!(
            tcp(addr, Duration::from_secs(2)),
            Outcome::Refused(_)
        ));
    }

    #[test]
    fn udp_outcomes() {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = echo.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let mut b = [0u8; 64];
            let (n, from) = echo.recv_from(&mut b).unwrap();
            echo.send_to(&b[..n], from).unwrap();
            echo
        });
        assert_eq!(udp(addr, Duration::from_secs(2)), Outcome::Reached);
        let silent = t.join().unwrap();
        // Bound but never answering: nothing comes back.
        assert_eq!(
            udp(silent.local_addr().unwrap(), Duration::from_millis(300)),
            Outcome::NothingBack
        );
    }
}
