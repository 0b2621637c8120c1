//! `raid-sim bench`: write and read throughput of a scratch array (never run by tests).

use std::path::Path;
use std::time::Instant;

use raid_sim::CreateOptions;

use super::failure::{exit, Failure};
use super::offline_opts;

pub fn bench(bytes: u64, disks: u32) -> Result<(), Failure> {
    if !(3..=16).contains(&disks) {
        return Err(Failure::new(
            exit::USAGE,
            format!("bench --disks {disks}: use 3 to 16"),
        ));
    }
    let chunk = 64 << 10;
    let data: Vec<Vec<u8>> = (0..disks - 1)
        .map(|d| {
            (0..chunk)
                .map(|i| (i * 31 + d as usize * 7) as u8)
                .collect()
        })
        .collect();
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0u8; chunk];
    let stripe_in = chunk as u64 * (disks as u64 - 1);
    let rounds = (bytes / stripe_in).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        raid_sim::parity::xor_many(&mut out, &refs);
        std::hint::black_box(&mut out);
    }
    let secs = t.elapsed().as_secs_f64();
    let xor_gbs = (rounds * stripe_in) as f64 / secs / 1e9;
    let t = Instant::now();
    let mut acc = 0u32;
    let crc_rounds = rounds.min(bytes / chunk as u64).max(1);
    for _ in 0..crc_rounds {
        for b in out.chunks(4096) {
            acc ^= raid_sim::format::block_crc(b);
        }
    }
    std::hint::black_box(acc);
    let crc_gbs = (crc_rounds * chunk as u64) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "xor parity: {xor_gbs:.2} GB/s of data input per core ({} data chunks of {} KiB per stripe, {:.2} GB in {secs:.2}s)",
        disks - 1,
        chunk >> 10,
        (rounds * stripe_in) as f64 / 1e9
    );
    // The same over buffers far larger than the caches: memory bandwidth bound.
    let big = 32usize << 20;
    let data: Vec<Vec<u8>> = (0..disks - 1).map(|d| vec![d as u8 + 1; big]).collect();
    let refs: Vec<&[u8]> = data.iter().map(|v| v.as_slice()).collect();
    let mut out = vec![0u8; big];
    let rounds = (bytes / (big as u64 * (disks as u64 - 1))).max(1);
    let t = Instant::now();
    for _ in 0..rounds {
        raid_sim::parity::xor_many(&mut out, &refs);
        std::hint::black_box(&mut out);
    }
    let big_gbs =
        (rounds * big as u64 * (disks as u64 - 1)) as f64 / t.elapsed().as_secs_f64() / 1e9;
    println!(
        "xor parity over {} x {} MiB buffers (memory bound): {big_gbs:.2} GB/s of data input",
        disks - 1,
        big >> 20
    );
    println!("crc32c block checksums: {crc_gbs:.2} GB/s per core");
    Ok(())
}

fn mb_s(bytes: u64, t: Instant) -> f64 {
    bytes as f64 / t.elapsed().as_secs_f64() / 1e6
}

/// Sequential write and read of a plain file and of a RAID-5 volume of the same usable
/// size in `dir`, then an unthrottled rebuild of one member.
pub fn bench_volume(dir: &Path, disks: u32, size: u64, io: u64) -> Result<(), Failure> {
    use raid_sim::BlockVolume;
    if io == 0 || !io.is_multiple_of(4096) || size < io {
        return Err(Failure::new(
            exit::USAGE,
            format!("--io {io}: use a positive multiple of 4096 no larger than --size ({size})"),
        ));
    }
    let size = size / io * io;
    let work = dir.join(format!("raid-sim-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| Failure::io(&work, e))?;
    let result = (|| -> Result<(), Failure> {
        let buf: Vec<u8> = (0..io).map(|i| (i * 131 % 251) as u8).collect();
        let mut back = vec![0u8; io as usize];
        // Native file.
        let native = work.join("native.img");
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&native)
            .map_err(|e| Failure::io(&native, e))?;
        use std::os::unix::fs::FileExt;
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            f.write_all_at(&buf, off)
                .map_err(|e| Failure::io(&native, e))?;
        }
        f.sync_all().map_err(|e| Failure::io(&native, e))?;
        let native_w = mb_s(size, t);
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            f.read_exact_at(&mut back, off)
                .map_err(|e| Failure::io(&native, e))?;
        }
        let native_r = mb_s(size, t);
        drop(f);
        let _ = std::fs::remove_file(&native);
        // RAID-5.
        let vdir = work.join("raid");
        let opts = CreateOptions {
            capacity_bytes: size,
            disks,
            chunk_bytes: 64 << 10,
            spares: 0,
        };
        let vol = raid_sim::create_raid(&vdir, &opts, &offline_opts())?;
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            vol.write_at(off, &buf)?;
        }
        vol.flush()?;
        let raid_w = mb_s(size, t);
        let t = Instant::now();
        for off in (0..size).step_by(io as usize) {
            vol.read_at(off, &mut back)?;
        }
        let raid_r = mb_s(size, t);
        if back != buf {
            return Err(Failure::new(
                exit::CORRUPT,
                format!(
                    "{}: the RAID volume read back different data",
                    vdir.display()
                ),
            ));
        }
        vol.fail_member(1, "bench")?;
        vol.start_rebuild(1, None)?;
        let member_bytes = vol.geometry().stripes * vol.geometry().chunk_bytes;
        let t = Instant::now();
        vol.run_rebuild(|_, _| {})?;
        let rebuild = mb_s(member_bytes, t);
        println!("sequential, {} KiB per call, {} MiB:", io >> 10, size >> 20);
        println!("  native file  write {native_w:8.1} MB/s   read {native_r:8.1} MB/s");
        println!(
            "  raid5 x{disks}     write {raid_w:8.1} MB/s   read {raid_r:8.1} MB/s   ({:.2}x / {:.2}x of native)",
            raid_w / native_w,
            raid_r / native_r
        );
        println!(
            "  rebuild      {rebuild:8.1} MB/s of member data ({:.2}x of native write)",
            rebuild / native_w
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    result
}
