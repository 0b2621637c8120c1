//! `/proc/self/mounts` read into entries: source, mount point, file system type, options.
//! The kernel writes a space, tab, newline or backslash inside a field as a three-digit octal
//! escape (`\040`, `\011`, `\012`, `\134`); they are decoded here, in one pass, so that a
//! backslash followed by digits in a real path never decodes twice.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// Where the kernel lists this process's mounts, oldest first.
pub const PROC_SELF_MOUNTS: &str = "/proc/self/mounts";

/// One line of the mount table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountEntry {
    /// What is mounted: a device, a directory (smlogfs names its volume directory), a word.
    pub source: OsString,
    pub mount_point: PathBuf,
    pub fs_type: String,
    pub options: Vec<String>,
}

impl MountEntry {
    /// True for a FUSE file system (`fuse`, `fuse.NAME`, `fuseblk`; not the `fusectl`
    /// control file system).
    pub fn is_fuse(&self) -> bool {
        matches!(self.fs_type.as_str(), "fuse" | "fuseblk") || self.fs_type.starts_with("fuse.")
    }

    /// One line of the table; None when it lacks the four fields this type holds.
    fn parse(line: &str) -> Option<MountEntry> {
        let mut fields = line.split(' ');
        let source = OsString::from_vec(decode(fields.next()?));
        let mount_point = PathBuf::from(OsString::from_vec(decode(fields.next()?)));
        let fs_type = String::from_utf8_lossy(&decode(fields.next()?)).into_owned();
        let options = String::from_utf8_lossy(&decode(fields.next()?))
            .split(',')
            .map(str::to_string)
            .collect();
        Some(MountEntry {
            source,
            mount_point,
            fs_type,
            options,
        })
    }
}

/// The mount table, oldest mount first.
#[derive(Clone, Debug, Default)]
pub struct MountTable {
    entries: Vec<MountEntry>,
}

impl MountTable {
    /// This process's mount table.
    pub fn read() -> std::io::Result<MountTable> {
        std::fs::read_to_string(PROC_SELF_MOUNTS).map(|text| MountTable::parse(&text))
    }

    /// A table in the format of `/proc/self/mounts`; lines without four fields are skipped.
    pub fn parse(text: &str) -> MountTable {
        MountTable {
            entries: text.lines().filter_map(MountEntry::parse).collect(),
        }
    }

    pub fn entries(&self) -> &[MountEntry] {
        &self.entries
    }

    /// The mounts at `mount_point`, oldest first: the last one hides the others.
    pub fn at<'a>(
        &'a self,
        mount_point: &'a Path,
    ) -> impl DoubleEndedIterator<Item = &'a MountEntry> + 'a {
        self.entries
            .iter()
            .filter(move |m| m.mount_point == mount_point)
    }

    /// The mount a lookup of `mount_point` sees: the last one mounted there.
    pub fn find(&self, mount_point: &Path) -> Option<&MountEntry> {
        self.entries
            .iter()
            .rev()
            .find(|m| m.mount_point == mount_point)
    }
}

/// A field with its octal escapes (a backslash and three octal digits) turned back into the
/// bytes they stand for; anything else, a lone backslash included, is kept as it is.
fn decode(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if let Some(byte) = octal_escape(&bytes[i..]) {
            out.push(byte);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}

/// The byte `\NNN` at the start of `s` stands for, if it starts with one that fits a byte.
fn octal_escape(s: &[u8]) -> Option<u8> {
    let [b'\\', digits @ ..] = s.get(..4)? else {
        return None;
    };
    let mut value: u32 = 0;
    for &d in digits {
        if !(b'0'..=b'7').contains(&d) {
            return None;
        }
        value = value * 8 + u32::from(d - b'0');
    }
    u8::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_of_space_tab_newline_and_backslash_decode() {
        assert_eq!(decode(r"/mnt/a\040b"), b"/mnt/a b");
        assert_eq!(decode(r"/mnt/a\011b"), b"/mnt/a\tb");
        assert_eq!(decode(r"/mnt/a\012b"), b"/mnt/a\nb");
        assert_eq!(decode(r"/mnt/a\134b"), b"/mnt/a\\b");
        assert_eq!(decode(r"\040\011\012\134"), b" \t\n\\");
    }

    #[test]
    fn an_escaped_backslash_before_digits_decodes_once() {
        // The path `/mnt/x\040` (a backslash, then "040") is written `/mnt/x\134040`.
        assert_eq!(decode(r"/mnt/x\134040"), br"/mnt/x\040");
    }

    #[test]
    fn what_is_not_an_escape_is_kept() {
        assert_eq!(decode(r"a\b"), br"a\b");
        assert_eq!(decode(r"a\09"), br"a\09");
        assert_eq!(decode(r"a\04"), br"a\04");
        assert_eq!(decode("a\\"), b"a\\");
        // Beyond a byte: not something the kernel writes; kept as it stands.
        assert_eq!(decode(r"\777"), br"\777");
        assert_eq!(decode("plain"), b"plain");
    }

    const TABLE: &str = "\
proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0
/srv/vol\\040one /mnt/my\\040files fuse.smlogfs rw,nosuid,nodev,user_id=0,group_id=0 0 0
fusectl /sys/fs/fuse/connections fusectl rw,relatime 0 0
short line
tmpfs /mnt/my\\040files tmpfs rw 0 0
";

    #[test]
    fn entries_hold_decoded_fields_and_short_lines_are_skipped() {
        let table = MountTable::parse(TABLE);
        assert_eq!(table.entries().len(), 4);
        let vol = &table.entries()[1];
        assert_eq!(vol.source, OsString::from("/srv/vol one"));
        assert_eq!(vol.mount_point, Path::new("/mnt/my files"));
        assert_eq!(vol.fs_type, "fuse.smlogfs");
        assert_eq!(vol.options[..2], ["rw", "nosuid"]);
        assert!(vol.is_fuse());
        assert!(!table.entries()[2].is_fuse(), "fusectl is no FUSE mount");
    }

    #[test]
    fn find_gives_the_newest_mount_at_a_point_and_at_lists_all() {
        let table = MountTable::parse(TABLE);
        let at = Path::new("/mnt/my files");
        assert_eq!(table.find(at).unwrap().fs_type, "tmpfs");
        let types: Vec<_> = table.at(at).map(|m| m.fs_type.as_str()).collect();
        assert_eq!(types, ["fuse.smlogfs", "tmpfs"]);
        assert!(table.find(Path::new("/mnt/my")).is_none());
        assert!(table.find(Path::new("/mnt/my\\040files")).is_none());
    }

    #[test]
    fn this_process_has_a_root_mount() {
        let table = MountTable::read().unwrap();
        assert!(table.find(Path::new("/")).is_some(), "{table:?}");
    }
}
