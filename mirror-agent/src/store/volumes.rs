//! Every volume the agent serves, each store behind its own lock: opened on first use (or at
//! start-up, so that damage is reported at once), limited in number, and synced in the
//! background without holding a store's lock during the `fdatasync`.
//!
//! A client that needs durability now (`Sync`) does not sync on its connection's thread: it
//! wakes the background sync and waits for a round that started after its request. So
//! requests that meet (several volumes, several connections) share one round, and one
//! `fdatasync` per volume.

use super::{hex, io_err, parse_hex, StoreError, VolumeStore};
use smlog_wire::format::VolumeId;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Every volume the agent serves, opened on first use and kept open.
pub struct Volumes {
    root: PathBuf,
    sync_each_batch: bool,
    max_volumes: usize,
    open: Mutex<HashMap<VolumeId, Arc<Mutex<VolumeStore>>>>,
    /// Wakes the background sync early.
    kick: (Mutex<bool>, Condvar),
    /// Counts finished sync rounds; `make_durable` waits on it. Lock order: this, then a
    /// store (the sync thread never holds both).
    rounds: (Mutex<u64>, Condvar),
}

/// Locks a store; a panic elsewhere while holding it is a bug, the data is still on disk.
pub fn lock(store: &Mutex<VolumeStore>) -> MutexGuard<'_, VolumeStore> {
    store.lock().unwrap_or_else(|p| p.into_inner())
}

impl Volumes {
    pub fn new(root: PathBuf, sync_each_batch: bool, max_volumes: usize) -> Volumes {
        Volumes {
            root,
            sync_each_batch,
            max_volumes,
            open: Mutex::new(HashMap::new()),
            kick: (Mutex::new(false), Condvar::new()),
            rounds: (Mutex::new(0), Condvar::new()),
        }
    }

    /// The store of `volume_id`, opened if needed. A volume the agent has never seen is
    /// created only when `create` (a writer, an epoch raise) and while under the volume
    /// limit; otherwise `None`, so that readers and strangers leave nothing on disk.
    pub fn get(
        &self,
        volume_id: VolumeId,
        create: bool,
    ) -> Result<Option<Arc<Mutex<VolumeStore>>>, StoreError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(store) = open.get(&volume_id) {
            return Ok(Some(Arc::clone(store)));
        }
        let exists = self.root.join(format!("vol-{}", hex(&volume_id))).exists();
        if !exists && !create {
            return Ok(None);
        }
        if !exists && open.len() >= self.max_volumes {
            return Err(StoreError::TooManyVolumes {
                max: self.max_volumes,
            });
        }
        let store = Arc::new(Mutex::new(VolumeStore::open(
            &self.root,
            volume_id,
            self.sync_each_batch,
        )?));
        log::info!("volume {}: opened", hex(&volume_id));
        open.insert(volume_id, Arc::clone(&store));
        Ok(Some(store))
    }

    /// Opens every volume directory found under the root, so that damage is reported at
    /// start-up. A damaged volume is logged and left closed; the others are served.
    pub fn open_existing(&self) -> io::Result<usize> {
        let mut opened = 0;
        for item in fs::read_dir(&self.root)? {
            let item = item?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(hex_id) = name.strip_prefix("vol-") else {
                continue;
            };
            let Some(volume_id) = parse_hex(hex_id) else {
                log::warn!(
                    "{}: not a volume directory name, ignored",
                    item.path().display()
                );
                continue;
            };
            match self.get(volume_id, true) {
                Ok(_) => opened += 1,
                Err(e) => log::error!("volume {hex_id}: not served: {e}"),
            }
        }
        Ok(opened)
    }

    /// Syncs every volume with unsynced writes (the background flush). The fdatasync runs
    /// without the store's lock, so that appends (and their acks) go on meanwhile.
    pub fn sync_all(&self) {
        let stores: Vec<_> = self
            .open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for store in stores {
            let Some(handle) = lock(&store).sync_handle() else {
                continue;
            };
            match handle.file.sync_data() {
                Ok(()) => lock(&store).synced(&handle),
                Err(e) => {
                    let mut st = lock(&store);
                    let e = st.poison(io_err("sync", &handle.path)(e));
                    log::error!("background sync: {e}");
                }
            }
        }
        let (count, done) = &self.rounds;
        *count.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        done.notify_all();
    }

    /// Waits until every seq up to `through_seq` of `store` is on the disk, waking the
    /// background sync for it. The caller makes sure the store holds `through_seq`.
    /// `Ok(false)` when `limit` passed first (a disk that does not finish a sync).
    pub fn make_durable(
        &self,
        store: &Mutex<VolumeStore>,
        through_seq: u64,
        limit: Duration,
    ) -> Result<bool, StoreError> {
        let deadline = Instant::now() + limit;
        let (count, done) = &self.rounds;
        let mut rounds = count.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            {
                let s = lock(store);
                if s.durable_through().is_some_and(|d| d >= through_seq) {
                    return Ok(true);
                }
                if let Some(reason) = s.poisoned() {
                    return Err(StoreError::Poisoned(reason.to_string()));
                }
                assert!(
                    s.held_through().is_some_and(|h| h >= through_seq),
                    "make_durable for a seq the store does not hold"
                );
            }
            // A round already under way may have taken its handle before our entries were
            // written; the kick makes the next one start as soon as it ends.
            self.kick_sync();
            let now = Instant::now();
            if now >= deadline {
                return Ok(false);
            }
            rounds = done
                .wait_timeout(rounds, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Asks the background sync to run now (a store has a segment's worth unsynced).
    pub fn kick_sync(&self) {
        let (m, c) = &self.kick;
        *m.lock().unwrap_or_else(|p| p.into_inner()) = true;
        c.notify_one();
    }

    /// Waits until `kick_sync` or `timeout`, whichever comes first.
    pub fn wait_for_kick(&self, timeout: Duration) {
        let (m, c) = &self.kick;
        let mut kicked = m.lock().unwrap_or_else(|p| p.into_inner());
        if !*kicked {
            kicked = c
                .wait_timeout(kicked, timeout)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        *kicked = false;
    }
}
