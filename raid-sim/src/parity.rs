//! XOR parity. Works on 64-byte groups of u64 words so the compiler emits wide vector
//! code; the tail is handled byte by byte.

const GROUP: usize = 64;

/// `dst ^= src`.
pub fn xor_into(dst: &mut [u8], src: &[u8]) {
    assert_eq!(dst.len(), src.len(), "xor of unequal lengths");
    let mut d = dst.chunks_exact_mut(GROUP);
    let mut s = src.chunks_exact(GROUP);
    for (dg, sg) in (&mut d).zip(&mut s) {
        for (dw, sw) in dg.chunks_exact_mut(8).zip(sg.chunks_exact(8)) {
            let x = u64::from_ne_bytes(dw.try_into().expect("8 bytes"))
                ^ u64::from_ne_bytes(sw.try_into().expect("8 bytes"));
            dw.copy_from_slice(&x.to_ne_bytes());
        }
    }
    for (db, sb) in d.into_remainder().iter_mut().zip(s.remainder()) {
        *db ^= *sb;
    }
}

/// The XOR of every row but `rows[skip]`: that row as the others say it should be (a data
/// block rebuilt, or the parity recomputed).
pub fn xor_except(rows: &[&[u8]], skip: usize) -> Vec<u8> {
    let others: Vec<&[u8]> = rows
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != skip)
        .map(|(_, r)| *r)
        .collect();
    let mut out = vec![0u8; rows.first().map_or(0, |r| r.len())];
    xor_many(&mut out, &others);
    out
}

/// `dst = src[0] ^ src[1] ^ …` in one pass over the output (better cache use than
/// repeated `xor_into`). `dst` is overwritten.
pub fn xor_many(dst: &mut [u8], srcs: &[&[u8]]) {
    match srcs.split_first() {
        None => dst.fill(0),
        Some((first, rest)) => {
            dst.copy_from_slice(first);
            // Blocks of 4 KiB keep the output hot in L1 while every source passes over it.
            const STEP: usize = 4096;
            let mut at = 0;
            while at < dst.len() {
                let end = (at + STEP).min(dst.len());
                for s in rest {
                    xor_into(&mut dst[at..end], &s[at..end]);
                }
                at = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Parity algebra: P = xor of data; any single missing source is the xor of P and
        /// the others; xor is its own inverse (RMW: P' = P ^ old ^ new).
        #[test]
        fn any_single_missing_source_is_recovered(
            n in 2usize..8, len in 0usize..300, seed in any::<u64>(), missing in 0usize..8)
        {
            let missing = missing % n;
            let mut x = seed | 1;
            let data: Vec<Vec<u8>> = (0..n).map(|_| (0..len).map(|_| {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17; x as u8
            }).collect()).collect();
            let refs: Vec<&[u8]> = data.iter().map(|d| d.as_slice()).collect();
            let mut parity = vec![0u8; len];
            xor_many(&mut parity, &refs);
            let mut rebuilt = parity.clone();
            for (i, d) in data.iter().enumerate() {
                if i != missing { xor_into(&mut rebuilt, d); }
            }
            prop_assert_eq!(&rebuilt, &data[missing]);
            // The stripe with parity as a row: leaving out any row, the rest rebuild it.
            let mut stripe: Vec<&[u8]> = refs.clone();
            stripe.push(&parity);
            prop_assert_eq!(&xor_except(&stripe, missing), &data[missing]);
            prop_assert_eq!(&xor_except(&stripe, n), &parity);
            // read-modify-write gives the same parity as recomputing
            let new: Vec<u8> = data[missing].iter().map(|b| b.wrapping_add(1)).collect();
            let mut rmw = parity.clone();
            xor_into(&mut rmw, &data[missing]);
            xor_into(&mut rmw, &new);
            let mut changed = data.clone();
            changed[missing] = new;
            let refs: Vec<&[u8]> = changed.iter().map(|d| d.as_slice()).collect();
            let mut full = vec![0u8; len];
            xor_many(&mut full, &refs);
            prop_assert_eq!(rmw, full);
        }
    }
}
