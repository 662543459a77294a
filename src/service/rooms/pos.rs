//! Places in a room's timeline ([`Pos`]) and their byte encoding in the trees, and the ids
//! of timeline events ([`PduId`]: `short room id ‖ pos key`).
//!
//! Key encoding (the suffix after the 8-byte short room id in `pduid_pdu`, and after the
//! target's short event id in `relations`; the value of `roomid_threadroot`):
//! - `v > 0` (live): `v` as 8 bytes big-endian, the schema-1 layout, so existing keys and
//!   tokens keep their meaning;
//! - `v ≤ 0` (backfilled): `[0; 8] ‖ (v as u64 ^ 1 << 63)` big-endian, 16 bytes (offset
//!   binary).
//!
//! Every live key has a non-zero byte among its first 8, every backfill key starts with 8
//! zero bytes, so backfill keys sort before live keys; among backfill keys offset binary is
//! monotonic in `v`. So `a < b ⇔ key(a) < key(b)` as byte strings, and neither of two
//! distinct keys is a prefix of the other.

use std::{fmt, ops::Deref, str::FromStr};

use super::short::ShortRoomId;
use crate::{Error, Result};

/// A place in a room's timeline. Live events (sent here or received as new) take the
/// stream position of their commit (> 0); events fetched by backfill take minus the
/// stream position of theirs (< 0), so each backfill sorts before everything already
/// there and nothing is ever renumbered. 0 is never stored: it is the boundary between
/// the two halves.
///
/// As a pagination token (decimal), `T` is the boundary just before the event at `T`:
/// backwards from `T` yields positions `< T`, forwards positions `≥ T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos(i64);

/// The encoded key of a [`Pos`]: 8 or 16 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct KeyBytes {
    bytes: [u8; 16],
    len: usize,
}

impl Deref for KeyBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Debug for KeyBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyBytes({:02x?})", &**self)
    }
}

const SIGN: u64 = 1 << 63;

impl Pos {
    /// Before everything: a forward walk's default start.
    pub const MIN: Pos = Pos(i64::MIN);
    /// After everything (no stream position reaches it): a backward walk's default start.
    pub const MAX: Pos = Pos(i64::MAX);

    fn too_large(position: u64) -> Error {
        Error::internal(format!(
            "stream position {position} is beyond timeline positions"
        ))
    }

    /// The place of a live event committed at stream position `position`. Err if the
    /// position does not fit an i64 (never in practice).
    pub fn live(position: u64) -> Result<Pos> {
        i64::try_from(position)
            .map(Pos)
            .map_err(|_| Self::too_large(position))
    }

    /// The place of a backfilled event committed at stream position `position`: minus it.
    pub fn backfilled(position: u64) -> Result<Pos> {
        i64::try_from(position)
            .map(|v| Pos(-v))
            .map_err(|_| Self::too_large(position))
    }

    pub fn is_live(self) -> bool {
        self.0 > 0
    }

    /// The next position (saturating): the forward token just after an event.
    pub fn next(self) -> Pos {
        Pos(self.0.saturating_add(1))
    }

    /// The position as a signed number.
    pub fn get(self) -> i64 {
        self.0
    }

    /// The position halfway between `self` and `other` (rounded towards `self`), without
    /// overflow: for binary searches over positions.
    pub fn midpoint(self, other: Pos) -> Pos {
        let mid = (i128::from(self.0) + i128::from(other.0)).div_euclid(2);
        Pos(i64::try_from(mid).expect("a midpoint of two i64 fits an i64"))
    }

    /// The key suffix of this position (see the module documentation).
    pub fn key(self) -> KeyBytes {
        let mut bytes = [0u8; 16];
        if self.0 > 0 {
            bytes[..8].copy_from_slice(&self.0.to_be_bytes());
            KeyBytes { bytes, len: 8 }
        } else {
            bytes[8..].copy_from_slice(&((self.0 as u64) ^ SIGN).to_be_bytes());
            KeyBytes { bytes, len: 16 }
        }
    }

    /// The position a key suffix encodes; `None` for anything [`Pos::key`] does not make
    /// (a wrong length, an 8-byte key that is not positive, a 16-byte key that does not
    /// start with 8 zero bytes or encodes a positive value). The caller reports corruption.
    pub fn from_key(bytes: &[u8]) -> Option<Pos> {
        match bytes.len() {
            8 => {
                let v = i64::from_be_bytes(bytes.try_into().ok()?);
                (v > 0).then_some(Pos(v))
            }
            16 => {
                if bytes[..8] != [0u8; 8] {
                    return None;
                }
                let v = (u64::from_be_bytes(bytes[8..].try_into().ok()?) ^ SIGN) as i64;
                (v <= 0).then_some(Pos(v))
            }
            _ => None,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Pos {
    type Err = Error;

    /// A pagination token: a decimal i64 (every token issued before backfill existed is a
    /// positive decimal, and means the same boundary).
    fn from_str(token: &str) -> Result<Pos> {
        token
            .parse::<i64>()
            .map(Pos)
            .map_err(|_| Error::invalid_param("Invalid pagination token."))
    }
}

/// The id of a timeline event in `pduid_pdu` and the value of `eventid_pduid`: `short room
/// id (8) ‖ pos key (8 or 16)`, so 16 or 24 bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PduId {
    bytes: [u8; 24],
    len: usize,
}

impl PduId {
    pub fn new(short_room_id: ShortRoomId, pos: Pos) -> PduId {
        let key = pos.key();
        let mut bytes = [0u8; 24];
        bytes[..8].copy_from_slice(&short_room_id.to_be_bytes());
        bytes[8..8 + key.len()].copy_from_slice(&key);
        PduId {
            bytes,
            len: 8 + key.len(),
        }
    }

    /// A stored id; `None` unless it is one [`PduId::new`] makes.
    pub fn from_bytes(bytes: &[u8]) -> Option<PduId> {
        let pos = Pos::from_key(bytes.get(8..)?)?;
        let short_room_id = u64::from_be_bytes(bytes[..8].try_into().ok()?);
        Some(PduId::new(short_room_id, pos))
    }

    pub fn short_room_id(&self) -> ShortRoomId {
        u64::from_be_bytes(self.bytes[..8].try_into().expect("8 bytes"))
    }

    pub fn pos(&self) -> Pos {
        Pos::from_key(&self.bytes[8..self.len]).expect("a PduId holds a valid pos key")
    }
}

impl Deref for PduId {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl fmt::Debug for PduId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PduId({}, {})", self.short_room_id(), self.pos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (splitmix64), so the test needs no crate.
    struct SplitMix(u64);

    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Mostly small positions near the boundary, some anywhere in the range.
        fn pos(&mut self) -> Pos {
            let raw = self.next();
            match raw % 4 {
                0 => Pos(raw as i64),
                1 => Pos((raw >> 40) as i64 - (1 << 23)),
                2 => Pos((raw >> 60) as i64 - 8),
                _ => Pos(-((raw >> 2) as i64)),
            }
        }
    }

    #[track_caller]
    fn check_pair(a: Pos, b: Pos) {
        // As byte strings, the way the trees order keys.
        assert_eq!(a.cmp(&b), a.key()[..].cmp(&b.key()[..]), "{a} vs {b}");
        // And as the full timeline key after a room prefix.
        assert_eq!(
            a.cmp(&b),
            PduId::new(3, a)[..].cmp(&PduId::new(3, b)[..]),
            "{a} vs {b}"
        );
    }

    #[track_caller]
    fn check_round_trip(p: Pos) {
        assert_eq!(Pos::from_key(&p.key()), Some(p), "{p}");
        assert_eq!(p.to_string().parse::<Pos>().unwrap(), p);
        let id = PduId::new(7, p);
        assert_eq!(id.len(), if p.0 > 0 { 16 } else { 24 });
        assert_eq!(PduId::from_bytes(&id), Some(id));
        assert_eq!((id.short_room_id(), id.pos()), (7, p));
    }

    #[test]
    fn pos_keys_sort_like_positions() {
        let boundaries = [
            Pos::MIN,
            Pos(i64::MIN + 1),
            Pos(-2),
            Pos(-1),
            Pos(0),
            Pos(1),
            Pos(2),
            Pos(255),
            Pos(256),
            Pos(i64::MAX - 1),
            Pos::MAX,
        ];
        for a in boundaries {
            check_round_trip(a);
            for b in boundaries {
                check_pair(a, b);
            }
        }
        let mut rng = SplitMix(0x5EED);
        for _ in 0..10_000 {
            let (a, b) = (rng.pos(), rng.pos());
            check_pair(a, b);
            check_pair(b, a);
            check_round_trip(a);
            for boundary in boundaries {
                check_pair(a, boundary);
            }
        }
    }

    #[test]
    fn live_keys_are_the_schema_1_layout() {
        for v in [1u64, 2, 1 << 20, i64::MAX as u64] {
            let p = Pos::live(v).unwrap();
            assert!(p.is_live());
            assert_eq!(&*p.key(), &v.to_be_bytes());
        }
        let mut old = 7u64.to_be_bytes().to_vec();
        old.extend_from_slice(&42u64.to_be_bytes());
        let id = PduId::new(7, Pos::live(42).unwrap());
        assert_eq!(&*id, old.as_slice());
        assert!(Pos::live(i64::MAX as u64 + 1).is_err());
        assert!(Pos::backfilled(u64::MAX).is_err());
        assert_eq!(Pos::backfilled(5).unwrap(), Pos(-5));
        assert!(!Pos::backfilled(5).unwrap().is_live());
        assert!(!Pos(0).is_live());
        assert_eq!(Pos(-1).key().len(), 16);
        assert_eq!(Pos(0).key()[8..], [0x80, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn only_canonical_keys_decode() {
        assert_eq!(Pos::from_key(&[]), None);
        assert_eq!(Pos::from_key(&[0; 7]), None);
        assert_eq!(Pos::from_key(&[0; 9]), None);
        assert_eq!(Pos::from_key(&[0; 24]), None);
        // 0 and negative values have no 8-byte form.
        assert_eq!(Pos::from_key(&[0; 8]), None);
        assert_eq!(Pos::from_key(&u64::MAX.to_be_bytes()), None);
        // A 16-byte key must start with 8 zero bytes and hold a value ≤ 0.
        let mut key = [0u8; 16];
        key[0] = 1;
        assert_eq!(Pos::from_key(&key), None);
        let mut key = [0u8; 16];
        key[8..].copy_from_slice(&((1i64 as u64) ^ SIGN).to_be_bytes());
        assert_eq!(Pos::from_key(&key), None);
        assert_eq!(PduId::from_bytes(&[0; 15]), None);
        assert_eq!(PduId::from_bytes(&[0; 16]), None);
    }

    #[test]
    fn tokens_are_decimal_i64() {
        assert_eq!("1234".parse::<Pos>().unwrap(), Pos(1234));
        assert_eq!("-17".parse::<Pos>().unwrap(), Pos(-17));
        assert_eq!(Pos(-17).to_string(), "-17");
        for bad in ["", "x", "1.5", "99999999999999999999", " 1"] {
            match bad.parse::<Pos>() {
                Err(Error::Matrix {
                    kind: ruma::api::error::ErrorKind::InvalidParam,
                    status,
                    message,
                }) => {
                    assert_eq!(status, http::StatusCode::BAD_REQUEST);
                    assert_eq!(message, "Invalid pagination token.");
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn next_and_midpoint() {
        assert_eq!(Pos(-1).next(), Pos(0));
        assert_eq!(Pos::MAX.next(), Pos::MAX);
        assert_eq!(Pos::MIN.midpoint(Pos::MAX), Pos(-1));
        assert_eq!(Pos(3).midpoint(Pos(4)), Pos(3));
        assert_eq!(Pos(-4).midpoint(Pos(-3)), Pos(-4));
    }
}
