//! Mirroring options on the command line, and the commands that move a volume between
//! nodes: `recover` (from the mirror), `takeover` (on the peer) and `giveback`.

use std::path::{Path, PathBuf};

use super::{exit, node_name, open_error, CliError, VolumeLock};
use crate::core::superblock::Superblock;
use crate::core::{Fs, FsConfig};
use crate::mirror::{MirrorMode, MirrorOptions, OnLoss};
use crate::progress::Progress;

/// The mirror flags shared by mount, recover and takeover.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct MirrorArgs {
    /// The mirror agent: HOST:PORT, then alternate routes to the same agent.
    #[arg(long)]
    pub mirror: Option<String>,
    /// sync: answer only once the agent acknowledged (default); async: answer at once.
    #[arg(long, value_parser = ["sync", "async"])]
    pub mirror_mode: Option<String>,
    /// When the agent is unreachable: wait (block, then EIO after --mirror-wait-ms) or degrade.
    #[arg(long, value_parser = ["wait", "degrade"])]
    pub on_mirror_loss: Option<String>,
    /// Under --on-mirror-loss wait: how long a write blocks before failing with EIO.
    #[arg(long)]
    pub mirror_wait_ms: Option<u64>,
    /// Heartbeat interval.
    #[arg(long)]
    pub heartbeat_ms: Option<u64>,
    /// Failure-detection timeout of a route.
    #[arg(long)]
    pub detect_ms: Option<u64>,
    /// File holding the secret shared with the agent.
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node: Option<String>,
}

impl MirrorArgs {
    /// The same flags as arguments, to hand to the background daemon.
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let mut push = |k: &str, val: Option<String>| {
            if let Some(val) = val {
                v.push(k.to_string());
                v.push(val);
            }
        };
        push("--mirror", self.mirror.clone());
        push("--mirror-mode", self.mirror_mode.clone());
        push("--on-mirror-loss", self.on_mirror_loss.clone());
        push(
            "--mirror-wait-ms",
            self.mirror_wait_ms.map(|x| x.to_string()),
        );
        push("--heartbeat-ms", self.heartbeat_ms.map(|x| x.to_string()));
        push("--detect-ms", self.detect_ms.map(|x| x.to_string()));
        push(
            "--secret-file",
            self.secret_file.as_ref().map(|p| p.display().to_string()),
        );
        push("--node", self.node.clone());
        v
    }

    /// The parsed options, or None without --mirror.
    pub fn options(&self) -> Result<Option<MirrorOptions>, CliError> {
        let Some(list) = &self.mirror else {
            if self.secret_file.is_some() || self.mirror_mode.is_some() {
                return Err(CliError::new(
                    exit::USAGE,
                    "--secret-file and --mirror-mode need --mirror HOST:PORT",
                ));
            }
            return Ok(None);
        };
        let routes =
            MirrorOptions::parse_routes(list).map_err(|e| CliError::new(exit::USAGE, e))?;
        let secret = match &self.secret_file {
            Some(p) => {
                Some(MirrorOptions::read_secret(p).map_err(|e| CliError::new(exit::USAGE, e))?)
            }
            None => None,
        };
        let heartbeat_ms = self.heartbeat_ms.unwrap_or(1000).max(10);
        let timeout_ms = self.detect_ms.unwrap_or(5000).max(heartbeat_ms + 1);
        Ok(Some(MirrorOptions {
            routes,
            mode: if self.mirror_mode.as_deref() == Some("async") {
                MirrorMode::Async
            } else {
                MirrorMode::Sync
            },
            on_loss: if self.on_mirror_loss.as_deref() == Some("degrade") {
                OnLoss::Degrade
            } else {
                OnLoss::Wait
            },
            loss_timeout_ms: self.mirror_wait_ms.unwrap_or(30_000),
            heartbeat_ms,
            timeout_ms,
            secret,
            node: node_name(self.node.as_deref()),
        }))
    }
}

fn read_superblock(
    voldir: &Path,
) -> Result<(Box<dyn raid_sim::BlockVolume>, Superblock), CliError> {
    let vol = raid_sim::open_volume(voldir).map_err(|e| open_error(e.into()))?;
    let sb = Superblock::read(vol.as_ref())
        .map_err(|e| super::status::no_superblock(voldir, vol.as_ref(), e))?;
    Ok((vol, sb))
}

/// Refuses a mount by a node other than the one that took the volume over.
pub fn check_owner(voldir: &Path, node: &str) -> Result<(), CliError> {
    // Without assembling: the node holding the volume now keeps its lock.
    let sb = super::status::read_superblock_offline(voldir)?;
    if !sb.owner.is_empty() && sb.owner != node {
        return Err(CliError::new(
            exit::FENCED,
            format!(
                "volume {} was taken over by node {:?} (epoch {}); this node ({node:?}) is fenced. \
                 Run `smlogfs giveback MOUNTPOINT` on {:?} first",
                voldir.display(),
                sb.owner,
                sb.epoch,
                sb.owner
            ),
        ));
    }
    Ok(())
}

/// `smlogfs recover VOLDIR --mirror …`: replays the agent's copy offline and checkpoints.
pub fn recover(voldir: &Path, args: &MirrorArgs) -> Result<String, CliError> {
    let options = args
        .options()?
        .ok_or_else(|| CliError::new(exit::USAGE, "recover needs --mirror HOST:PORT"))?;
    let _lock = VolumeLock::acquire(voldir)?;
    check_owner(voldir, &options.node)?;
    let fs = Fs::open_volume(
        voldir,
        FsConfig::default(),
        &Progress::new,
        Some(options),
        false,
    )
    .map_err(open_error)?;
    let r = fs.recovery.clone();
    fs.shutdown()
        .map_err(|e| CliError::new(exit::IO, format!("checkpoint after recovery failed: {e}")))?;
    Ok(format!(
        "recovered {}: {} ops replayed ({} entries read), {} discarded; checkpoint written",
        voldir.display(),
        r.replayed,
        r.entries_scanned,
        r.discarded
    ))
}

/// Raises the volume's epoch at the agent and on the volume, naming this node the owner.
pub fn take_ownership(voldir: &Path, args: &MirrorArgs) -> Result<u64, CliError> {
    let options = args
        .options()?
        .ok_or_else(|| CliError::new(exit::USAGE, "takeover needs --mirror HOST:PORT"))?;
    let (vol, mut sb) = read_superblock(voldir)?;
    let cfg = options.client_config(sb.volume_id, sb.epoch);
    let epoch = smlog_wire::MirrorClient::raise_epoch(&cfg, sb.epoch + 1).map_err(|e| {
        CliError::new(
            exit::MIRROR,
            format!(
                "raising the epoch at the agent {}: {e}",
                options.routes_text()
            ),
        )
    })?;
    let epoch = epoch.max(sb.epoch + 1);
    sb.epoch = epoch;
    sb.owner = options.node.clone();
    sb.generation += 1;
    sb.write(vol.as_ref())
        .map_err(|e| CliError::new(exit::IO, format!("writing the superblock: {e}")))?;
    log::warn!(
        "takeover: node {:?} owns {} from epoch {epoch}",
        options.node,
        voldir.display()
    );
    Ok(epoch)
}

/// After `giveback` unmounted the volume: releases ownership under a new epoch.
pub fn release_ownership(voldir: &Path) -> Result<u64, CliError> {
    let (vol, mut sb) = read_superblock(voldir)?;
    sb.epoch += 1;
    sb.owner.clear();
    sb.generation += 1;
    sb.write(vol.as_ref())
        .map_err(|e| CliError::new(exit::IO, format!("writing the superblock: {e}")))?;
    Ok(sb.epoch)
}
