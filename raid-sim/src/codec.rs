//! Little-endian field writers and readers for the on-disk formats: offsets follow from
//! field sizes, never typed in.

/// Sequential little-endian writer: offsets follow from field sizes.
pub(crate) struct Put<'a> {
    pub(crate) buf: &'a mut [u8],
    pub(crate) at: usize,
}

impl Put<'_> {
    pub(crate) fn bytes(&mut self, b: &[u8]) {
        self.buf[self.at..self.at + b.len()].copy_from_slice(b);
        self.at += b.len();
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.bytes(&v.to_le_bytes());
    }
}

/// Sequential little-endian reader over a buffer already checked to be long enough.
pub(crate) struct Get<'a> {
    pub(crate) buf: &'a [u8],
    pub(crate) at: usize,
}

impl Get<'_> {
    pub(crate) fn bytes(&mut self, n: usize) -> &[u8] {
        let b = &self.buf[self.at..self.at + n];
        self.at += n;
        b
    }
    pub(crate) fn u32(&mut self) -> u32 {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.bytes(4));
        u32::from_le_bytes(a)
    }
    pub(crate) fn u64(&mut self) -> u64 {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.bytes(8));
        u64::from_le_bytes(a)
    }
    pub(crate) fn u128(&mut self) -> u128 {
        let mut a = [0u8; 16];
        a.copy_from_slice(self.bytes(16));
        u128::from_le_bytes(a)
    }
}
