//! Reading `/metrics` (and Prometheus' API) over the management link: a minimal HTTP/1.0 GET
//! and a parser for the Prometheus text format, enough for counters at a glance.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::LabError;

/// `GET path` on a plain-HTTP endpoint; returns the body of a 200 answer.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, LabError> {
    let what = format!("http://{addr}{path}");
    let io = |e| LabError::io(format!("GET {what}"), e);
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(io)?;
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .map_err(io)?;
    let mut buf = Vec::new();
    s.take(64 << 20).read_to_end(&mut buf).map_err(io)?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| LabError::Http(format!("{what}: no HTTP header")))?;
    let status = head.lines().next().unwrap_or("");
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(LabError::Http(format!("{what}: {status}")));
    }
    Ok(body.to_string())
}

/// One sample of the text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses the Prometheus text exposition format (comments skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(i) => {
            let end = line.rfind('}')?;
            (
                &line[..i],
                parse_labels(&line[i + 1..end]),
                &line[end + 1..],
            )
        }
        None => {
            let (n, r) = line.split_once(char::is_whitespace)?;
            (n, BTreeMap::new(), r)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(after) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(match n {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &after[end..];
    }
    out
}

/// Sum of every sample named `name` whose labels include all of `want`.
pub fn sum(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            want.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

/// Values of `name` keyed by one label.
pub fn by_label(samples: &[Sample], name: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in samples.iter().filter(|s| s.name == name) {
        if let Some(v) = s.labels.get(label) {
            *out.entry(v.clone()).or_insert(0.0) += s.value;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_text_format() {
        let t = "# HELP x y\n# TYPE x counter\nstockade_gateway_drops_total{reason=\"no_rule\"} 3\n\
                 stockade_gateway_drops_total{reason=\"spoofed\"} 0\nup 1\n\
                 stockade_gateway_packets_total{rule=\"a\",action=\"forward\",direction=\"inbound\"} 5 1700000000\n\
                 h_bucket{le=\"+Inf\"} 2\nodd{l=\"a\\\"b,c\"} 1e3\n";
        let s = parse(t);
        assert_eq!(s.len(), 6);
        assert_eq!(sum(&s, "stockade_gateway_drops_total", &[]), 3.0);
        assert_eq!(
            sum(&s, "stockade_gateway_drops_total", &[("reason", "no_rule")]),
            3.0
        );
        assert_eq!(
            sum(
                &s,
                "stockade_gateway_packets_total",
                &[("action", "forward")]
            ),
            5.0
        );
        let d = by_label(&s, "stockade_gateway_drops_total", "reason");
        assert_eq!(d.get("spoofed"), Some(&0.0));
        assert_eq!(s[5].labels.get("l").unwrap(), "a\"b,c");
        assert_eq!(s[5].value, 1000.0);
    }
}
