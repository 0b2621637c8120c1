//! Shared-secret challenge–response, in both directions.
//!
//! ```text
//! client                                   agent
//!   Hello{epoch, mode, node, client_nonce} ─►
//!                                          ◄─ Challenge{agent_nonce, agent_proof}
//!   (client checks agent_proof)
//!   Proof{client_proof}                    ─►
//!                                          (agent checks client_proof)
//!                                          ◄─ Welcome{...}
//! ```
//!
//! `proof = HMAC-SHA256(secret, label || transcript)`, where the labels differ per
//! direction (so one side's proof can never be replayed as the other's) and the transcript
//! binds both fresh nonces, the volume, the node, the epoch and the mode.

use crate::format::{VolumeId, NONCE_BYTES, PROOF_BYTES};
use crate::message::Mode;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::io::Read;

const AGENT_LABEL: &[u8] = b"smlog-mirror v1 agent proof\0";
const CLIENT_LABEL: &[u8] = b"smlog-mirror v1 client proof\0";

/// Everything both proofs cover.
pub struct Transcript<'a> {
    pub volume_id: &'a VolumeId,
    pub node: &'a str,
    pub epoch: u64,
    pub mode: Mode,
    pub client_nonce: &'a [u8; NONCE_BYTES],
    pub agent_nonce: &'a [u8; NONCE_BYTES],
}

impl Transcript<'_> {
    fn mac(&self, secret: &[u8], label: &[u8]) -> Hmac<Sha256> {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
        mac.update(label);
        mac.update(self.volume_id);
        mac.update(&(self.node.len() as u16).to_le_bytes());
        mac.update(self.node.as_bytes());
        mac.update(&self.epoch.to_le_bytes());
        mac.update(&[self.mode as u8]);
        mac.update(self.client_nonce);
        mac.update(self.agent_nonce);
        mac
    }

    pub fn agent_proof(&self, secret: &[u8]) -> [u8; PROOF_BYTES] {
        self.mac(secret, AGENT_LABEL).finalize().into_bytes().into()
    }

    pub fn client_proof(&self, secret: &[u8]) -> [u8; PROOF_BYTES] {
        self.mac(secret, CLIENT_LABEL)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Constant-time check of the agent's proof.
    pub fn verify_agent(&self, secret: &[u8], proof: &[u8; PROOF_BYTES]) -> bool {
        self.mac(secret, AGENT_LABEL).verify_slice(proof).is_ok()
    }

    /// Constant-time check of the client's proof.
    pub fn verify_client(&self, secret: &[u8], proof: &[u8; PROOF_BYTES]) -> bool {
        self.mac(secret, CLIENT_LABEL).verify_slice(proof).is_ok()
    }
}

/// A fresh random nonce from the kernel.
pub fn fresh_nonce() -> std::io::Result<[u8; NONCE_BYTES]> {
    let mut nonce = [0u8; NONCE_BYTES];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut nonce)?;
    Ok(nonce)
}

/// Reads a secret file: its bytes with trailing newlines removed; an empty secret is refused.
pub fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut secret = std::fs::read(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    while matches!(secret.last(), Some(b'\n' | b'\r')) {
        secret.pop();
    }
    if secret.is_empty() {
        return Err(format!("secret file {} is empty", path.display()));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_secret_and_direction() {
        let t = Transcript {
            volume_id: &[1; 16],
            node: "a",
            epoch: 2,
            mode: Mode::Writer,
            client_nonce: &[3; 32],
            agent_nonce: &[4; 32],
        };
        let agent = t.agent_proof(b"secret");
        assert!(t.verify_agent(b"secret", &agent));
        assert!(!t.verify_agent(b"other", &agent));
        assert!(!t.verify_client(b"secret", &agent));
        let client = t.client_proof(b"secret");
        assert!(t.verify_client(b"secret", &client));
        assert_ne!(agent, client);
    }
}
