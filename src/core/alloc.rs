//! The volume block allocator: a bitmap rebuilt at mount from the metadata (it is never
//! stored), handing out blocks next-fit so that a file written in order lands in order.

pub struct Allocator {
    bits: Vec<u64>,
    total: u64,
    free: u64,
    cursor: u64,
}

impl Allocator {
    /// All blocks in `[first, total)` free, the ones before `first` reserved.
    pub fn new(first: u64, total: u64) -> Allocator {
        let mut a = Allocator {
            bits: vec![0; total.div_ceil(64) as usize],
            total,
            free: total,
            cursor: first,
        };
        for b in 0..first.min(total) {
            a.mark_used(b);
        }
        a
    }

    pub fn is_used(&self, b: u64) -> bool {
        b < self.total && self.bits[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Marks `b` used; false when it already was (a double reference) or is out of range.
    pub fn mark_used(&mut self, b: u64) -> bool {
        if b >= self.total || self.is_used(b) {
            return false;
        }
        self.bits[(b / 64) as usize] |= 1 << (b % 64);
        self.free -= 1;
        true
    }

    pub fn free(&mut self, b: u64) {
        debug_assert!(self.is_used(b), "freeing a free block {b}");
        if self.is_used(b) {
            self.bits[(b / 64) as usize] &= !(1 << (b % 64));
            self.free += 1;
        }
    }

    pub fn free_blocks(&self) -> u64 {
        self.free
    }

    pub fn total_blocks(&self) -> u64 {
        self.total
    }

    /// One block, preferring `hint` (the block after the previous one of the same file).
    pub fn alloc_near(&mut self, hint: Option<u64>) -> Option<u64> {
        if let Some(h) = hint {
            if h < self.total && !self.is_used(h) {
                self.mark_used(h);
                self.cursor = h + 1;
                return Some(h);
            }
        }
        self.alloc_run(1)
    }

    /// `n` contiguous blocks, next-fit from the cursor, wrapping once.
    pub fn alloc_run(&mut self, n: u64) -> Option<u64> {
        if n == 0 || n > self.free {
            return None;
        }
        for (from, to) in [(self.cursor, self.total), (0, self.cursor.min(self.total))] {
            let mut start = from;
            while start + n <= to {
                // Skip whole used words quickly.
                if start % 64 == 0 && self.bits[(start / 64) as usize] == u64::MAX {
                    start += 64;
                    continue;
                }
                match (start..start + n).find(|&b| self.is_used(b)) {
                    Some(used) => start = used + 1,
                    None => {
                        for b in start..start + n {
                            self.mark_used(b);
                        }
                        self.cursor = start + n;
                        return Some(start);
                    }
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_contiguous_and_never_overlap() {
        let mut a = Allocator::new(16, 1000);
        let r1 = a.alloc_run(100).unwrap();
        let r2 = a.alloc_run(100).unwrap();
        assert!(r1 >= 16 && r2 >= r1 + 100);
        a.free(r1 + 5);
        assert_eq!(a.free_blocks(), 1000 - 16 - 200 + 1);
        assert_eq!(a.alloc_near(Some(r1 + 5)), Some(r1 + 5));
        assert!(!a.mark_used(r1));
        assert_eq!(a.alloc_run(10_000), None);
    }
}
