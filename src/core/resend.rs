//! Exactly once across a daemon restart: recognising a FUSE request the kernel sends again
//! (`FUSE_NOTIFY_RESEND`) whose op the dead daemon already applied, and answering it from
//! what was logged instead of applying it twice.
//!
//! Every op made for a request logs the request's `unique` in its `Accepted` payload
//! (`FsOp::encode_logged`). While the daemon runs, the `AnswerTable` holds the ops applied
//! and not yet answered (the adapter reports each reply with `Fs::replied`); a checkpoint
//! carries them in its `Begun` entry (`encode_carried`), because it reclaims the ring
//! entries that named them. Recovery on a resumed connection rebuilds the table from the
//! ring's applied ops and the carried lists (`inherit`); a fresh mount discards it (a new
//! connection numbers its requests from the start again).
//!
//! The kernel's uniques grow on one connection, but resent requests come back in any
//! order relative to what was answered, so this is a set, never a "highest answered".

use std::collections::HashMap;

use super::ops::RequestId;

/// Most entries a checkpoint carries: the ops in flight at once are bounded by the FUSE
/// serving threads (16 at most), the rest is room for what a restart inherited.
pub const MAX_CARRIED: usize = 64;
/// Version byte of the carried list in a `Begun` payload (after covers_seq and generation).
const CARRIED_V1: u8 = 1;
/// One carried entry: unique, op seq, outcome inode (u64 LE each).
const CARRIED_ENTRY_BYTES: usize = 24;
/// Bytes of the carried list at its largest: version, count (u16), entries.
pub const MAX_CARRIED_BYTES: usize = 1 + 2 + MAX_CARRIED * CARRIED_ENTRY_BYTES;
const _: () = assert!(MAX_CARRIED <= u16::MAX as usize);

/// The FUSE request an op is made for: its id and whether the kernel sent it again after
/// a daemon restart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub id: RequestId,
    pub resent: bool,
}

/// What an applied op leaves for answering its request again: the op's seq (newer ones are
/// kept first when the carried list is full) and the inode its answer reads back
/// (`FsOp::outcome_ino`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Applied {
    pub seq: u64,
    pub ino: u64,
}

/// Applied ops whose answer may not have reached the kernel.
#[derive(Debug, Default)]
pub struct AnswerTable {
    /// Applied by this daemon, reply not yet reported sent.
    unanswered: HashMap<RequestId, Applied>,
    /// Applied by a dead daemon of this connection: most were answered, which nobody can
    /// tell; a resend takes its entry out.
    inherited: HashMap<RequestId, Applied>,
}

impl AnswerTable {
    /// A table for a resumed connection, from what recovery found.
    pub fn inheriting(found: HashMap<RequestId, Applied>) -> AnswerTable {
        AnswerTable {
            unanswered: HashMap::new(),
            inherited: found,
        }
    }

    pub fn applied(&mut self, id: RequestId, applied: Applied) {
        self.unanswered.insert(id, applied);
    }

    /// The op a resent request already had applied, if any. It stays in the table as
    /// unanswered until its reply is reported.
    pub fn resent(&mut self, id: RequestId) -> Option<Applied> {
        if let Some(a) = self.unanswered.get(&id) {
            return Some(*a);
        }
        let a = self.inherited.remove(&id)?;
        self.unanswered.insert(id, a);
        Some(a)
    }

    pub fn replied(&mut self, id: RequestId) {
        self.unanswered.remove(&id);
    }

    pub fn inherited_len(&self) -> usize {
        self.inherited.len()
    }

    /// What a checkpoint carries: every unanswered op, then the newest inherited ones, at
    /// most `MAX_CARRIED` in all. Inherited entries left out are dropped for good (logged).
    pub fn carried(&mut self) -> Vec<(RequestId, Applied)> {
        let mut out: Vec<_> = self.unanswered.iter().map(|(k, v)| (*k, *v)).collect();
        out.sort_by_key(|(_, a)| std::cmp::Reverse(a.seq));
        out.truncate(MAX_CARRIED);
        let room = MAX_CARRIED - out.len();
        if self.inherited.len() > room {
            let mut all: Vec<_> = self.inherited.iter().map(|(k, v)| (*k, *v)).collect();
            all.sort_by_key(|(_, a)| std::cmp::Reverse(a.seq));
            let dropped = all.len() - room;
            all.truncate(room);
            log::info!(
                "exactly-once: forgetting {dropped} ops applied before the restart that no resend asked for \
                 (keeping the newest {room})"
            );
            self.inherited = all.into_iter().collect();
        }
        out.extend(self.inherited.iter().map(|(k, v)| (*k, *v)));
        out
    }
}

/// The carried list as it follows covers_seq and generation in a `Begun` payload.
pub fn encode_carried(list: &[(RequestId, Applied)]) -> Vec<u8> {
    assert!(list.len() <= MAX_CARRIED, "carried list over its bound");
    let mut out = Vec::with_capacity(3 + list.len() * CARRIED_ENTRY_BYTES);
    out.push(CARRIED_V1);
    out.extend_from_slice(&(list.len() as u16).to_le_bytes());
    for (id, a) in list {
        for v in [id.0, a.seq, a.ino] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

/// The carried list of a `Begun` payload's tail (after its 16 bytes of covers_seq and
/// generation); empty for checkpoints logged before the list existed.
pub fn decode_carried(tail: &[u8]) -> Result<Vec<(RequestId, Applied)>, String> {
    let Some((&version, rest)) = tail.split_first() else {
        return Ok(Vec::new());
    };
    if version != CARRIED_V1 {
        return Err(format!(
            "unknown carried-request list version {version} (this build reads {CARRIED_V1})"
        ));
    }
    let count = rest
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or("carried-request list without its count")?;
    let body = &rest[2..];
    if body.len() != count * CARRIED_ENTRY_BYTES {
        return Err(format!(
            "carried-request list names {count} entries but holds {} bytes",
            body.len()
        ));
    }
    let u64_at =
        |c: &[u8], i: usize| u64::from_le_bytes(c[i * 8..i * 8 + 8].try_into().expect("8"));
    Ok(body
        .chunks_exact(CARRIED_ENTRY_BYTES)
        .map(|c| {
            (
                RequestId(u64_at(c, 0)),
                Applied {
                    seq: u64_at(c, 1),
                    ino: u64_at(c, 2),
                },
            )
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carried_list_round_trips_and_has_golden_bytes() {
        let list = vec![(RequestId(7), Applied { seq: 9, ino: 3 })];
        let bytes = encode_carried(&list);
        let mut want = vec![1, 1, 0];
        for v in [7u64, 9, 3] {
            want.extend(v.to_le_bytes());
        }
        assert_eq!(bytes, want);
        assert_eq!(decode_carried(&bytes).unwrap(), list);
        assert_eq!(decode_carried(&[]).unwrap(), vec![]);
        assert!(decode_carried(&bytes[..bytes.len() - 1]).is_err());
        assert!(decode_carried(&[2, 0, 0]).is_err());
        assert!(
            encode_carried(&vec![
                (RequestId(1), Applied { seq: 1, ino: 1 });
                MAX_CARRIED
            ])
            .len()
                <= MAX_CARRIED_BYTES
        );
    }

    #[test]
    fn a_resend_answers_once_from_inherited_and_stays_until_replied() {
        let mut t =
            AnswerTable::inheriting(HashMap::from([(RequestId(5), Applied { seq: 2, ino: 8 })]));
        assert_eq!(t.resent(RequestId(6)), None);
        assert_eq!(t.resent(RequestId(5)), Some(Applied { seq: 2, ino: 8 }));
        assert_eq!(t.inherited_len(), 0);
        // Not replied yet: a checkpoint now still carries it.
        assert_eq!(t.carried().len(), 1);
        t.replied(RequestId(5));
        assert!(t.carried().is_empty());
    }

    #[test]
    fn carried_keeps_unanswered_first_then_newest_inherited() {
        let inherited = (0..200u64)
            .map(|i| (RequestId(1000 + i), Applied { seq: i, ino: 0 }))
            .collect();
        let mut t = AnswerTable::inheriting(inherited);
        t.applied(RequestId(1), Applied { seq: 500, ino: 0 });
        let c = t.carried();
        assert_eq!(c.len(), MAX_CARRIED);
        assert!(c.iter().any(|(id, _)| *id == RequestId(1)));
        assert!(
            c.iter().any(|(id, _)| *id == RequestId(1199)),
            "newest inherited kept"
        );
        assert!(
            !c.iter().any(|(id, _)| *id == RequestId(1000)),
            "oldest dropped"
        );
        assert_eq!(t.inherited_len(), MAX_CARRIED - 1);
    }
}
