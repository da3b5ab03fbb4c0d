//! Hostile archives as data: each kind written by streaming (a 512 MiB header bomb compresses
//! to a few KB, so nothing binary is committed), with the [`VzdumpError`] variant its
//! refusal must be. `felhom`'s tests, pve-sim's tests and `bench reliability` share them.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;

use crate::{ArchiveWriter, Compression, ExtKind, VzdumpError};

/// The size of a bomb's header entry: 512 MiB, what drove `golden inspect` to 1.84 GB.
pub const BOMB_SIZE: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// The first member is a GNU long name (`././@LongLink`, typeflag `L`) of 512 MiB.
    LongNameBomb,
    /// The first member's pax extended header (typeflag `x`) is 512 MiB.
    PaxBomb,
    /// A valid archive whose zstd stream is cut in the middle.
    TruncatedZstd,
    /// `pct.conf`, then a member named `./../../../tmp/felhom-escape`.
    Traversal,
}

impl Hostile {
    pub const ALL: [Hostile; 4] = [
        Hostile::LongNameBomb,
        Hostile::PaxBomb,
        Hostile::TruncatedZstd,
        Hostile::Traversal,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hostile::LongNameBomb => "long-name bomb",
            Hostile::PaxBomb => "pax bomb",
            Hostile::TruncatedZstd => "truncated zstd",
            Hostile::Traversal => "path traversal",
        }
    }

    /// Whether `e` is the refusal this kind must get.
    pub fn refused_by(self, e: &VzdumpError) -> bool {
        match (self, e) {
            (Hostile::LongNameBomb, VzdumpError::HeaderTooLarge { kind, size, .. }) => {
                *kind == ExtKind::LongName && *size == BOMB_SIZE
            }
            (Hostile::PaxBomb, VzdumpError::HeaderTooLarge { kind, size, .. }) => {
                *kind == ExtKind::PaxLocal && *size == BOMB_SIZE
            }
            (Hostile::TruncatedZstd, VzdumpError::Truncated { .. }) => true,
            (Hostile::Traversal, VzdumpError::UnsafePath { .. }) => true,
            _ => false,
        }
    }

    /// Write this archive to `path` (zstd; name it `*.tar.zst`), with `pct_conf` as its
    /// config where it has one.
    pub fn write(self, path: &Path, pct_conf: &str) -> Result<(), VzdumpError> {
        match self {
            Hostile::LongNameBomb => bomb(path, b'L', "././@LongLink", pct_conf),
            Hostile::PaxBomb => bomb(path, b'x', "./PaxHeaders/etc/vzdump/pct.conf", pct_conf),
            Hostile::TruncatedZstd => {
                let mut w = ArchiveWriter::create(path, Compression::Zstd)?;
                w.pct_conf(pct_conf)?;
                // Incompressible bytes, so that the cut falls inside member data.
                let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
                let noise: Vec<u8> = (0..(1 << 20))
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                w.file("usr/lib/filler.bin", 0o644, &noise)?;
                w.finish()?;
                let bytes = std::fs::read(path)?;
                std::fs::write(path, &bytes[..bytes.len() / 2])?;
                Ok(())
            }
            Hostile::Traversal => {
                let mut w = ArchiveWriter::create(path, Compression::Zstd)?;
                w.pct_conf(pct_conf)?;
                w.dir("etc/ssh", 0o755)?;
                w.file("../../../tmp/felhom-escape", 0o644, b"escaped\n")?;
                w.finish()
            }
        }
    }
}

/// A header entry of [`BOMB_SIZE`] first, streamed through zstd; then `pct.conf`.
fn bomb(path: &Path, typeflag: u8, name: &str, pct_conf: &str) -> Result<(), VzdumpError> {
    let enc = zstd::stream::write::Encoder::new(BufWriter::new(File::create(path)?), 3)?;
    let mut b = tar::Builder::new(enc);
    // GNU tar writes `L` in a GNU header, pax `x` in a ustar one.
    let mut h = if typeflag == b'L' {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_mode(0o644);
    h.set_size(BOMB_SIZE);
    h.set_entry_type(tar::EntryType::new(typeflag));
    h.set_cksum();
    b.append(&h, std::io::repeat(b'a').take(BOMB_SIZE))?;
    let mut h = tar::Header::new_ustar();
    h.set_mode(0o644);
    h.set_size(pct_conf.len() as u64);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, "etc/vzdump/pct.conf", pct_conf.as_bytes())?;
    let mut file = b.into_inner()?.finish()?;
    file.flush()?;
    Ok(())
}
