//! What `raid-sim status` prints: a text table for people, JSON for scripts.

use std::path::{Path, PathBuf};

use raid_sim::Inspection;

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The file that holds a member's data: the target when `member-K.img` is a link (as
/// `replace --with PATH` makes it), so that status names the file an operator must keep.
fn data_path(p: &Path) -> PathBuf {
    match p.symlink_metadata() {
        Ok(m) if m.file_type().is_symlink() => std::fs::canonicalize(p)
            .or_else(|_| std::fs::read_link(p))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

pub fn status_json(i: &Inspection, busy: bool) -> String {
    let g = i.geometry;
    let members: Vec<String> = i
        .members
        .iter()
        .map(|m| {
            format!(
                "{{\"index\":{},\"path\":{},\"state\":{},\"problem\":{},\"events\":{}}}",
                m.index,
                json_str(&data_path(&m.path).display().to_string()),
                json_str(&m.state),
                m.problem.as_deref().map(json_str).unwrap_or("null".into()),
                m.events.map(|e| e.to_string()).unwrap_or("null".into())
            )
        })
        .collect();
    let spares: Vec<String> = i
        .spares
        .iter()
        .map(|p| json_str(&p.display().to_string()))
        .collect();
    let rebuild = match i.rebuild {
        None => "null".to_string(),
        Some((m, s)) => format!(
            "{{\"member\":{m},\"next_stripe\":{s},\"stripes\":{},\"percent\":{:.1}}}",
            g.stripes,
            s as f64 * 100.0 / g.stripes as f64
        ),
    };
    let journal = match &i.journal {
        Ok(j) => format!(
            "{{\"pending_records\":{},\"dirty_stripes\":{}}}",
            j.pending_records, j.dirty_stripes
        ),
        Err(e) => format!("{{\"error\":{}}}", json_str(e)),
    };
    let scrub = match raid_sim::scrub_progress(&i.dir) {
        None => "null".to_string(),
        Some((d, t)) => format!("{{\"next_stripe\":{d},\"stripes\":{t}}}"),
    };
    format!(
        "{{\"kind\":\"raid5\",\"array_id\":\"{:032x}\",\"disks\":{},\"chunk_bytes\":{},\"stripes\":{},\
         \"capacity_bytes\":{},\"events\":{},\"degraded\":{},\"in_use\":{busy},\"members\":[{}],\
         \"spares\":[{}],\"rebuild\":{rebuild},\"scrub\":{scrub},\"journal\":{journal},\"rebuild_rate_bytes_per_s\":{}}}",
        i.array_id,
        g.disks,
        g.chunk_bytes,
        g.stripes,
        g.capacity_bytes(),
        i.events,
        i.degraded(),
        members.join(","),
        spares.join(","),
        i.rebuild_rate_kib_s as u64 * 1024
    )
}

pub fn status_text(i: &Inspection, busy: bool) -> String {
    let g = i.geometry;
    let mut s = format!(
        "{}: RAID-5, {} disks, chunk {} bytes, {} stripes, {} usable bytes, events {}\n",
        i.dir.display(),
        g.disks,
        g.chunk_bytes,
        g.stripes,
        g.capacity_bytes(),
        i.events
    );
    s.push_str(&format!(
        "state: {}{}\n",
        if i.degraded() { "DEGRADED" } else { "clean" },
        if busy {
            " (in use by another process)"
        } else {
            ""
        }
    ));
    for m in &i.members {
        let target = data_path(&m.path);
        let link = if target != m.path {
            format!(" -> {}", target.display())
        } else {
            String::new()
        };
        s.push_str(&format!(
            "  member {} {}{link}: {}{}\n",
            m.index,
            m.path.display(),
            m.state,
            m.problem
                .as_ref()
                .map(|p| format!(" ({p})"))
                .unwrap_or_default()
        ));
    }
    for p in &i.spares {
        s.push_str(&format!("  spare {}\n", p.display()));
    }
    for (p, why) in &i.ignored {
        s.push_str(&format!("  ignored {}: {why}\n", p.display()));
    }
    match i.rebuild {
        Some((m, next)) => s.push_str(&format!(
            "rebuild: member {m}, {next}/{} stripes ({:.1}%)\n",
            g.stripes,
            next as f64 * 100.0 / g.stripes as f64
        )),
        None => s.push_str("rebuild: none\n"),
    }
    if let Some((d, t)) = raid_sim::scrub_progress(&i.dir) {
        s.push_str(&format!("scrub: {d}/{t} stripes\n"));
    }
    match &i.journal {
        Ok(j) => s.push_str(&format!(
            "journal: {} record(s) to replay, {} stripe(s) in dirty regions to resync at the next assembly\n",
            j.pending_records, j.dirty_stripes
        )),
        Err(e) => s.push_str(&format!("journal: unreadable: {e}\n")),
    }
    s
}
