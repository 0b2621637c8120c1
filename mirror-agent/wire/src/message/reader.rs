//! The bounds-checked cursor over a frame body that the decoder reads with.

use crate::error::WireError;

/// A bounds-checked cursor over a body; every read returns `Malformed` instead of panicking.
pub(super) struct BodyReader<'a> {
    pub(super) kind: &'static str,
    pub(super) body: &'a [u8],
    pub(super) at: usize,
}

impl<'a> BodyReader<'a> {
    pub(super) fn remaining(&self) -> usize {
        self.body.len() - self.at
    }

    pub(super) fn malformed(&self, what: &'static str) -> WireError {
        WireError::Malformed {
            kind: self.kind,
            what,
            at: self.at,
        }
    }

    pub(super) fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.malformed(what));
        }
        let out = &self.body[self.at..self.at + n];
        self.at += n;
        Ok(out)
    }

    pub(super) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, what)?);
        Ok(out)
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A flags byte and the seven reserved bytes after it (Welcome, Ack): refuses a flag
    /// outside `known`, saying `unknown`, and a reserved byte that is set.
    pub(super) fn flags(&mut self, known: u8, unknown: &'static str) -> Result<u8, WireError> {
        let flags = self.u8("flags")?;
        if flags & !known != 0 {
            return Err(self.malformed(unknown));
        }
        let reserved: [u8; 7] = self.array("reserved")?;
        if reserved != [0; 7] {
            return Err(self.malformed("reserved bytes set"));
        }
        Ok(flags)
    }

    /// A u64 that counts only when `present`. Flagged absent it must be zero (else
    /// `nonzero`), like reserved bytes: then every body the decoder accepts is the one
    /// encoding of its message.
    pub(super) fn optional_u64(
        &mut self,
        what: &'static str,
        present: bool,
        nonzero: &'static str,
    ) -> Result<Option<u64>, WireError> {
        let value = self.u64(what)?;
        if !present && value != 0 {
            return Err(self.malformed(nonzero));
        }
        Ok(present.then_some(value))
    }

    pub(super) fn utf8(&mut self, n: usize, what: &'static str) -> Result<String, WireError> {
        let at = self.at;
        let raw = self.bytes(n, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| WireError::Malformed {
            kind: self.kind,
            what: "invalid UTF-8",
            at,
        })
    }
}
