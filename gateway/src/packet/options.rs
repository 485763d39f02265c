//! The layout of a TCP segment's options, by exact bytes: what the one_way check (claim 1)
//! admits after the handshake is a fixed set of layouts, so that the nftables plane, which
//! matches bytes at fixed offsets, can admit exactly the same ones.

/// Up to four SACK blocks `(left, right)` (RFC 2018), in the order sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SackBlocks {
    len: u8,
    edges: [(u32, u32); 4],
}

impl SackBlocks {
    /// The blocks.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.edges[..usize::from(self.len)].iter().copied()
    }
    /// How many there are.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }
    /// None at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// What a segment's option bytes are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptionLayout {
    /// No options (data offset 5).
    #[default]
    None,
    /// `NOP NOP TS`: a timestamp alone (data offset 8).
    Ts,
    /// `NOP NOP SACK` with 1 to 4 blocks, or `NOP NOP TS NOP NOP SACK` with 1 to 3: what
    /// Linux, the BSDs and Windows send on an ACK while data is missing.
    Sack {
        /// Preceded by `NOP NOP TS`.
        ts: bool,
        /// The blocks.
        blocks: SackBlocks,
    },
    /// Anything else (every SYN with options is this too).
    Other,
}

/// The first four bytes of `NOP NOP TS`.
pub const TS_PREFIX: u32 = 0x0101_080a;
/// The first four bytes of `NOP NOP SACK` with `n` blocks.
pub const fn sack_prefix(n: u32) -> u32 {
    0x0101_0500 | (2 + 8 * n)
}

/// Classifies option bytes (the TCP header after its first 20 bytes).
pub fn classify(opts: &[u8]) -> OptionLayout {
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if opts.is_empty() {
        return OptionLayout::None;
    }
    let (ts, rest) = if opts.len() >= 12 && be(opts) == TS_PREFIX {
        (true, &opts[12..])
    } else {
        (false, opts)
    };
    if ts && rest.is_empty() {
        return OptionLayout::Ts;
    }
    let n = rest.len().saturating_sub(4) / 8;
    if rest.len() < 12 || rest.len() != 4 + 8 * n || be(rest) != sack_prefix(n as u32) {
        return OptionLayout::Other;
    }
    let mut blocks = SackBlocks {
        len: n as u8,
        ..Default::default()
    };
    for (i, b) in rest[4..].chunks_exact(8).enumerate() {
        blocks.edges[i] = (be(&b[..4]), be(&b[4..]));
    }
    OptionLayout::Sack { ts, blocks }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9];

    fn sack(n: u8) -> Vec<u8> {
        let mut v = vec![1, 1, 5, 2 + 8 * n];
        for i in 0..u32::from(n) {
            v.extend_from_slice(&(100 * i + 10).to_be_bytes());
            v.extend_from_slice(&(100 * i + 20).to_be_bytes());
        }
        v
    }

    #[test]
    fn exact_layouts() {
        assert_eq!(classify(&[]), OptionLayout::None);
        assert_eq!(classify(&TS), OptionLayout::Ts);
        for n in 1..=4u8 {
            let OptionLayout::Sack { ts: false, blocks } = classify(&sack(n)) else {
                panic!("{n} blocks");
            };
            assert_eq!(blocks.len(), usize::from(n));
            assert_eq!(
                blocks.iter().last(),
                Some((100 * u32::from(n) - 90, 100 * u32::from(n) - 80))
            );
        }
        for n in 1..=3u8 {
            let mut v = TS.to_vec();
            v.extend(sack(n));
            assert!(
                matches!(classify(&v), OptionLayout::Sack { ts: true, blocks } if blocks.len() == usize::from(n))
            );
        }
    }

    #[test]
    fn everything_else_is_other() {
        let other: &[&[u8]] = &[
            &[1, 1, 1, 1],                                      // padding alone
            &[0, 0, 0, 0],                                      // EOL
            &[8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 1, 1],             // TS then padding
            &[1, 1, 8, 10, 0, 0, 0, 7, 0, 0, 0, 9, 0, 0, 0, 0], // TS, then EOL padding
            &[2, 4, 5, 180],                                    // MSS after the handshake
            &[1, 1, 5, 10, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0], // SACK length says 1 block, 2 follow... misaligned
            &[1, 1, 5, 18, 0, 0, 0, 1, 0, 0, 0, 2],             // length says 2 blocks, 1 present
            &[1, 1, 253, 4],                                    // experimental
            &[1, 1, 5, 2],                                      // SACK with no block
        ];
        for o in other {
            assert_eq!(classify(o), OptionLayout::Other, "{o:?}");
        }
    }
}
