//! The resume cursor a client holds: for every partition of the conversation-events log, the
//! next offset it has not seen. One opaque string covers all of a user's conversations.
//!
//! It is sound because a socket pod fans the log out in one sequence and a socket delivers in
//! order: when a client received an event stamped with cursor `V`, it has received every event
//! of its rooms that lies below `V` in any partition. Positions come from the log, never from
//! clocks, so gateways with skewed clocks cannot make a client miss anything.

use std::fmt::Write as _;

/// Next offset per partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor(pub Vec<i64>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor: {0}")]
pub struct CursorError(pub &'static str);

const PREFIX: &str = "v1.";

impl Cursor {
    pub fn encode(&self) -> String {
        let mut s = String::with_capacity(PREFIX.len() + self.0.len() * 4);
        s.push_str(PREFIX);
        for (i, o) in self.0.iter().enumerate() {
            if i > 0 {
                s.push('.');
            }
            let _ = write!(s, "{o}");
        }
        s
    }

    /// Parses a cursor of a log with `partitions` partitions.
    pub fn decode(s: &str, partitions: usize) -> Result<Self, CursorError> {
        let body = s
            .strip_prefix(PREFIX)
            .ok_or(CursorError("unknown version"))?;
        if s.len() > 24 * partitions + PREFIX.len() {
            return Err(CursorError("too long"));
        }
        let offsets = body
            .split('.')
            .map(|p| p.parse::<i64>().ok().filter(|o| *o >= 0))
            .collect::<Option<Vec<i64>>>()
            .ok_or(CursorError("not a list of offsets"))?;
        if offsets.len() != partitions {
            return Err(CursorError("made for a log with another partition count"));
        }
        Ok(Self(offsets))
    }

    /// Element-wise maximum.
    pub fn max(&self, other: &[i64]) -> Cursor {
        Cursor(
            self.0
                .iter()
                .zip(other)
                .map(|(a, b)| (*a).max(*b))
                .collect(),
        )
    }

    /// Every partition at or beyond `other`'s.
    pub fn covers(&self, other: &[i64]) -> bool {
        self.0.iter().zip(other).all(|(a, b)| a >= b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let c = Cursor(vec![0, 17, 3]);
        assert_eq!(c.encode(), "v1.0.17.3");
        assert_eq!(Cursor::decode("v1.0.17.3", 3).unwrap(), c);
        assert!(Cursor::decode("v1.0.17", 3).is_err());
        assert!(Cursor::decode("v2.0.1.2", 3).is_err());
        assert!(Cursor::decode("v1.0.-1.2", 3).is_err());
        assert!(Cursor::decode("v1.a.b.c", 3).is_err());
        assert!(Cursor::decode("", 3).is_err());
        assert_eq!(c.max(&[1, 2, 3]), Cursor(vec![1, 17, 3]));
        assert!(c.covers(&[0, 17, 2]));
        assert!(!c.covers(&[1, 0, 0]));
    }
}
