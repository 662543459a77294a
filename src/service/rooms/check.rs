//! Checking an event against the room's authorization rules, shared by local and (later)
//! remote events: server-server API, "Checks performed on receipt of a PDU", steps 4
//! (against the event's own auth events) and 5 (against the state before it), and finding
//! that state.
//!
//! Each check returns `Result<Result<(), String>>`: the outer error is a storage failure
//! (never a verdict), the inner one the reason the rules refuse the event.

use std::collections::BTreeMap;

use ruma::{
    EventId, OwnedEventId,
    events::StateEventType,
    room_version_rules::{AuthorizationRules, RoomVersionRules},
    state_res::{check_state_dependent_auth_rules, check_state_independent_auth_rules},
};

use super::{
    Rooms,
    pdu::Pdu,
    short::{ShortEventId, ShortStateKey},
    state::StateHash,
};
use crate::{Error, Result};

/// Where the state before a new event comes from.
pub(super) enum BeforeSource {
    /// The create event: nothing before it.
    Empty,
    /// The state after its single prev_event.
    Stored(StateHash),
    /// Resolved over several prev_events (or given by another server); stored as a new
    /// set, a diff against `parent` when there is one.
    Resolved { parent: Option<StateHash> },
}

/// What the checks decided about a stored event (server-server API, "Checks performed on
/// receipt of a PDU"). Stored in `shorteventid_verdict` (absent = accepted): `S` for
/// soft-failed, `R` followed by the reason for rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// Passed the checks against its auth events and the state before it, failed against
    /// the room's current state: stored, never shown to clients, never a forward extremity.
    SoftFailed,
    /// Failed the checks against its auth events or the state before it: stored, in no
    /// state set, never shown, and rejected wherever ruma's rules look at it.
    Rejected(String),
}

/// The longest rejection reason stored, in bytes.
const MAX_REASON_BYTES: usize = 512;

impl Verdict {
    /// The stored value; `None` for accepted (nothing is stored).
    pub(super) fn encode(&self) -> Option<Vec<u8>> {
        match self {
            Verdict::Accepted => None,
            Verdict::SoftFailed => Some(b"S".to_vec()),
            Verdict::Rejected(reason) => {
                let mut end = reason.len().min(MAX_REASON_BYTES);
                while !reason.is_char_boundary(end) {
                    end -= 1;
                }
                let mut value = b"R".to_vec();
                value.extend_from_slice(&reason.as_bytes()[..end]);
                Some(value)
            }
        }
    }

    pub(super) fn decode(value: Option<&[u8]>) -> Result<Verdict> {
        match value {
            None => Ok(Verdict::Accepted),
            Some(b"S") => Ok(Verdict::SoftFailed),
            Some([b'R', reason @ ..]) => Ok(Verdict::Rejected(
                String::from_utf8_lossy(reason).into_owned(),
            )),
            Some(_) => Err(Error::internal("bad value in shorteventid_verdict")),
        }
    }
}

/// Runs a ruma check whose fetch callbacks can only say "missing": the first storage error
/// a callback meets is kept aside and returned instead of the verdict, so a failing disk
/// never reads as a missing event.
struct Failure(std::cell::RefCell<Option<Error>>);

impl Failure {
    fn new() -> Self {
        Self(std::cell::RefCell::new(None))
    }

    fn keep(&self, result: Result<Option<Pdu>>) -> Option<Pdu> {
        match result {
            Ok(pdu) => pdu,
            Err(error) => {
                self.0.borrow_mut().get_or_insert(error);
                None
            }
        }
    }

    fn verdict(self, verdict: std::result::Result<(), String>) -> Result<Result<(), String>> {
        match self.0.into_inner() {
            Some(error) => Err(error),
            None => Ok(verdict),
        }
    }
}

impl Rooms {
    /// The state before an event with these `prev_events`: empty for none, the state after
    /// the single one, or the resolution of the states after several.
    pub(super) fn state_before(
        &self,
        rules: &RoomVersionRules,
        prev_events: &[OwnedEventId],
    ) -> Result<(BTreeMap<ShortStateKey, ShortEventId>, BeforeSource)> {
        let after_of = |id: &OwnedEventId| -> Result<StateHash> {
            self.state_hashes(id)?
                .map(|(_, after)| after)
                .ok_or_else(|| Error::not_found(format!("Unknown prev_event {id}.")))
        };
        match prev_events {
            [] => Ok((BTreeMap::new(), BeforeSource::Empty)),
            [single] => {
                let after = after_of(single)?;
                Ok((
                    (*self.state.load(after)?).clone(),
                    BeforeSource::Stored(after),
                ))
            }
            several => {
                let hashes = several.iter().map(after_of).collect::<Result<Vec<_>>>()?;
                let resolved = self.resolve_states(rules, &hashes, None)?;
                Ok((
                    resolved,
                    BeforeSource::Resolved {
                        parent: Some(hashes[0]),
                    },
                ))
            }
        }
    }

    /// Step 4: the rules that need only the event's own auth events.
    pub(super) fn auth_against_auth_events(
        &self,
        rules: &AuthorizationRules,
        pdu: &Pdu,
    ) -> Result<Result<(), String>> {
        let failure = Failure::new();
        let fetch = |id: &EventId| failure.keep(self.pdu_for_auth(id));
        let verdict = check_state_independent_auth_rules(rules, pdu, fetch);
        failure.verdict(verdict)
    }

    /// Steps 5 and 6: the rules that depend on the room's state, against `state`.
    pub(super) fn auth_against_state(
        &self,
        rules: &AuthorizationRules,
        pdu: &Pdu,
        state: &BTreeMap<ShortStateKey, ShortEventId>,
    ) -> Result<Result<(), String>> {
        let failure = Failure::new();
        let fetch_state = |kind: &StateEventType, key: &str| {
            failure.keep((|| {
                let Some(short_key) = self.short.get_short_state_key(kind, key)? else {
                    return Ok(None);
                };
                let Some(short_event) = state.get(&short_key) else {
                    return Ok(None);
                };
                self.pdu_for_auth(&self.short.event_id(*short_event)?)
            })())
        };
        let verdict = check_state_dependent_auth_rules(rules, pdu, fetch_state);
        failure.verdict(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict;

    #[test]
    fn verdicts_round_trip_and_long_reasons_are_cut_at_a_char_boundary() {
        for verdict in [
            Verdict::Accepted,
            Verdict::SoftFailed,
            Verdict::Rejected("sender is not in the room".into()),
            Verdict::Rejected(String::new()),
        ] {
            let stored = verdict.encode();
            assert_eq!(Verdict::decode(stored.as_deref()).unwrap(), verdict);
        }
        let long = "é".repeat(400); // 800 bytes
        let stored = Verdict::Rejected(long).encode().unwrap();
        assert!(stored.len() <= 513);
        let Verdict::Rejected(reason) = Verdict::decode(Some(&stored)).unwrap() else {
            panic!("rejected");
        };
        assert_eq!(reason, "é".repeat(256));
        assert!(
            Verdict::decode(Some(b"X")).is_err(),
            "corrupt, not accepted"
        );
    }
}
