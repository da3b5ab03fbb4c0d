//! The bounded reader: a `Read` adapter between the decompressor and `tar::Archive`, so that
//! no input, however hostile, makes reading an archive hold more than a small, fixed amount
//! of memory.
//!
//! Why it exists: the `tar` crate reads a GNU long name (`L`), a GNU long link (`K`) and a
//! pax extended header (`x`) whole into a `Vec` before it hands out the member they describe,
//! and it keeps every block of a GNU sparse map. An 18 KB `.tar.zst` whose first member is a
//! 512 MiB long name drove `felhom golden inspect` to 1.84 GB. A customer's own backup (the
//! DR path) is untrusted input, so every archive goes through this guard.
//!
//! How: the guard follows the tar stream block by block exactly as `tar::Archive` will read
//! it (each 512-byte header is read whole and looked at *before* tar sees a byte of it; the
//! sizes come from the tar crate's own header parsing, a pending pax `size` overrides the
//! next member's as tar does) and refuses, with a [`VzdumpError`] naming the member and the
//! cap:
//!
//! | what                                  | rule                                    |
//! |---------------------------------------|-----------------------------------------|
//! | `L` / `K` / `x` / `g` entry           | content ≤ [`Limits::header_cap`]        |
//! | GNU sparse map (its extension blocks) | 512 × blocks ≤ [`Limits::header_cap`]   |
//! | header checksum / numeric fields      | as tar computes them, else `Corrupt`    |
//! | input ending inside a header or data  | `Truncated` (tar would accept it short) |
//! | the decompressor failing              | `Decompress`, or `Truncated` at EOF     |
//! | a zstd frame's window                 | ≤ 2^[`Limits::zstd_window_log_max`]     |
//!
//! The guard buffers one header block, and the content of a long name or pax header
//! (both ≤ the cap) to learn the member's name and a pax `size`. The first refusal is kept in
//! [`Shared`]; every later read fails too, so a caller that swallows a read error cannot
//! read on past it. Path rules (absolute names, `..`) and entry types are checked by
//! [`crate::scan_with`], which sees the names tar assembles.

use std::cell::RefCell;
use std::io::{self, Read};
use std::rc::Rc;

use crate::{Compression, VzdumpError};

/// The default cap on every header-like entry: 64 KiB. GNU tar's long names are a path
/// (`PATH_MAX` is 4 KiB) and its pax records a few attributes, ACLs and xattrs.
pub const DEFAULT_HEADER_CAP: u64 = 64 * 1024;

/// The default largest zstd window: 2^24 = 16 MiB. `zstd` levels 1-19 use at most 2^23
/// (PVE's vzdump uses the default level 3: 2^21); only `--ultra` or `--long` need more.
pub const DEFAULT_ZSTD_WINDOW_LOG_MAX: u32 = 24;

const BLOCK: usize = 512;

/// What reading an archive may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest GNU long name or long link, pax extended header (local or global) or GNU
    /// sparse map, in bytes.
    pub header_cap: u64,
    /// The largest zstd window accepted, as a power of two.
    pub zstd_window_log_max: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_cap: DEFAULT_HEADER_CAP,
            zstd_window_log_max: DEFAULT_ZSTD_WINDOW_LOG_MAX,
        }
    }
}

/// The header-like entries the cap applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtKind {
    LongName,
    LongLink,
    PaxLocal,
    PaxGlobal,
    SparseMap,
}

impl std::fmt::Display for ExtKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ExtKind::LongName => "GNU long name (typeflag L)",
            ExtKind::LongLink => "GNU long link (typeflag K)",
            ExtKind::PaxLocal => "pax extended header (typeflag x)",
            ExtKind::PaxGlobal => "pax global header (typeflag g)",
            ExtKind::SparseMap => "GNU sparse map",
        })
    }
}

/// What the guard knows of the member being read (for errors) and its first refusal.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub index: u64,
    pub name: String,
    pub refusal: Option<VzdumpError>,
    /// The largest extension content (long name, pax) handed to tar: what tar buffers.
    pub peak_ext: u64,
}

enum State {
    /// The next block is a header.
    Header,
    /// `left` bytes of data (padding included) pass through.
    Data { left: u64 },
    /// The next block extends a GNU sparse map; `data` bytes of data follow the map.
    SparseExt { blocks: u64, data: u64 },
}

/// The content of a long name or pax header, kept (≤ the cap) for the member it describes.
struct Capture {
    kind: ExtKind,
    buf: Vec<u8>,
    left: u64,
}

pub(crate) struct Guard<R> {
    inner: R,
    limits: Limits,
    compression: Compression,
    shared: Rc<RefCell<Shared>>,
    state: State,
    block: [u8; BLOCK],
    filled: usize,
    /// `block` was inspected and is being handed out from `given`.
    ready: bool,
    given: usize,
    /// Members (entries tar hands out) whose header was seen.
    members: u64,
    long_name: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
    capture: Option<Capture>,
    /// Bytes of the tar stream read from `inner`.
    offset: u64,
}

impl<R: Read> Guard<R> {
    pub(crate) fn new(
        inner: R,
        limits: Limits,
        compression: Compression,
        shared: Rc<RefCell<Shared>>,
    ) -> Guard<R> {
        Guard {
            inner,
            limits,
            compression,
            shared,
            state: State::Header,
            block: [0; BLOCK],
            filled: 0,
            ready: false,
            given: 0,
            members: 0,
            long_name: None,
            pax: None,
            capture: None,
            offset: 0,
        }
    }

    fn here(&self) -> (u64, String) {
        let s = self.shared.borrow();
        (s.index, s.name.clone())
    }

    fn truncated(&self) -> VzdumpError {
        let (index, name) = self.here();
        VzdumpError::Truncated {
            index,
            name,
            offset: self.offset,
        }
    }

    /// An error of the decompressor (or of the file, for a plain tar).
    fn inner_error(&self, e: io::Error) -> VzdumpError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return self.truncated();
        }
        let format = match self.compression {
            Compression::None => return VzdumpError::Io(e),
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        };
        let (index, name) = self.here();
        VzdumpError::Decompress {
            index,
            name,
            format,
            message: e.to_string(),
        }
    }

    /// Read from the decompressor into `out`, or (`out` = None) into the header block.
    fn pull(&mut self, mut out: Option<&mut [u8]>) -> Result<usize, VzdumpError> {
        loop {
            let r = match out {
                Some(ref mut b) => self.inner.read(b),
                None => self.inner.read(&mut self.block[self.filled..]),
            };
            match r {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.inner_error(e)),
            }
        }
    }

    fn set_here(&self, index: u64, name: String) {
        let mut s = self.shared.borrow_mut();
        s.index = index;
        s.name = name;
    }

    /// The name known for what a header starts: a pending pax `path` or long name, or the
    /// header's own name field.
    fn known_name(&self, h: &tar::Header) -> String {
        let bytes = self
            .pax
            .as_deref()
            .and_then(|p| pax_value(p, "path"))
            .map(|v| v.to_vec())
            .or_else(|| {
                self.long_name.as_ref().map(|n| {
                    let n = n.strip_suffix(&[0]).unwrap_or(n);
                    n.to_vec()
                })
            })
            .unwrap_or_else(|| h.path_bytes().into_owned());
        display_name(&bytes)
    }

    fn step(&mut self, out: &mut [u8]) -> Result<usize, VzdumpError> {
        loop {
            if self.ready {
                let n = out.len().min(BLOCK - self.given);
                out[..n].copy_from_slice(&self.block[self.given..self.given + n]);
                self.given += n;
                if self.given == BLOCK {
                    (self.ready, self.given, self.filled) = (false, 0, 0);
                }
                return Ok(n);
            }
            match self.state {
                State::Header | State::SparseExt { .. } => {
                    while self.filled < BLOCK {
                        let n = self.pull(None)?;
                        if n == 0 {
                            if self.filled == 0 && matches!(self.state, State::Header) {
                                // The end at a block boundary: tar reads it as the end.
                                return Ok(0);
                            }
                            return Err(self.truncated());
                        }
                        self.filled += n;
                    }
                    self.inspect()?;
                    self.ready = true;
                }
                State::Data { left: 0 } => self.end_data(),
                State::Data { left } => {
                    let want = (out.len() as u64).min(left) as usize;
                    let n = self.pull(Some(&mut out[..want]))?;
                    if n == 0 {
                        return Err(self.truncated());
                    }
                    if let Some(c) = &mut self.capture {
                        let take = (n as u64).min(c.left) as usize;
                        c.buf.extend_from_slice(&out[..take]);
                        c.left -= take as u64;
                    }
                    self.state = State::Data {
                        left: left - n as u64,
                    };
                    if left == n as u64 {
                        self.end_data();
                    }
                    return Ok(n);
                }
            }
        }
    }

    fn end_data(&mut self) {
        self.state = State::Header;
        if let Some(c) = self.capture.take() {
            let mut s = self.shared.borrow_mut();
            s.peak_ext = s.peak_ext.max(c.buf.len() as u64);
            drop(s);
            match c.kind {
                ExtKind::LongName => self.long_name = Some(c.buf),
                ExtKind::PaxLocal => self.pax = Some(c.buf),
                _ => {}
            }
        }
    }

    /// Look at a whole block before tar sees it; decide what follows it.
    fn inspect(&mut self) -> Result<(), VzdumpError> {
        let cap = self.limits.header_cap;
        if let State::SparseExt { blocks, data } = self.state {
            let blocks = blocks + 1;
            if blocks * BLOCK as u64 > cap {
                let (index, name) = self.here();
                return Err(VzdumpError::HeaderTooLarge {
                    index,
                    name,
                    kind: ExtKind::SparseMap,
                    size: blocks * BLOCK as u64,
                    cap,
                });
            }
            // GnuExtSparseHeader: 21 entries of 24 bytes, then `isextended`.
            self.state = if self.block[504] == 1 {
                State::SparseExt { blocks, data }
            } else {
                State::Data { left: data }
            };
            return Ok(());
        }
        let block = self.block;
        if block.iter().all(|b| *b == 0) {
            // The end-of-archive marker: tar stops here.
            return Ok(());
        }
        let h = tar::Header::from_byte_slice(&block);
        let corrupt = |g: &Self, message: String| VzdumpError::Corrupt {
            index: g.members,
            name: g.known_name(h),
            message,
        };
        let sum = block[..148]
            .iter()
            .chain(&block[156..])
            .fold(0u32, |a, b| a + *b as u32)
            + 8 * 32;
        match h.cksum() {
            Ok(c) if c == sum => {}
            _ => return Err(corrupt(self, "header checksum mismatch".into())),
        }
        let flag = h.entry_type().as_byte();
        let recognized = h.as_gnu().is_some() || h.as_ustar().is_some();
        let ext = match flag {
            b'L' => Some(ExtKind::LongName),
            b'K' => Some(ExtKind::LongLink),
            b'x' => Some(ExtKind::PaxLocal),
            b'g' => Some(ExtKind::PaxGlobal),
            _ => None,
        };
        let mut size = h
            .entry_size()
            .map_err(|e| corrupt(self, format!("size field: {e}")))?;
        if ext.is_none() {
            // tar: a pending pax `size` overrides the next member's header.
            if let Some(s) = self.pax.as_deref().and_then(pax_size) {
                size = s;
            }
        }
        let padded = size
            .checked_add(BLOCK as u64 - 1)
            .map(|s| s & !(BLOCK as u64 - 1))
            .ok_or_else(|| corrupt(self, "size overflow".into()))?;
        if let Some(kind) = ext {
            if size > cap {
                return Err(VzdumpError::HeaderTooLarge {
                    index: self.members,
                    name: self.known_name(h),
                    kind,
                    size,
                    cap,
                });
            }
            // tar applies `L`, `K` and `x` to the next member only in a GNU or ustar
            // header; otherwise (and for `g` always) the entry is a member of its own.
            if recognized && kind != ExtKind::PaxGlobal {
                self.set_here(self.members, self.known_name(h));
                self.capture =
                    matches!(kind, ExtKind::LongName | ExtKind::PaxLocal).then(|| Capture {
                        kind,
                        buf: Vec::with_capacity(size as usize),
                        left: size,
                    });
            } else {
                self.begin_member(h);
            }
            self.state = State::Data { left: padded };
            return Ok(());
        }
        self.begin_member(h);
        let extended = flag == b'S' && h.as_gnu().is_some_and(|g| g.is_extended());
        self.state = if extended {
            State::SparseExt {
                blocks: 0,
                data: padded,
            }
        } else {
            State::Data { left: padded }
        };
        Ok(())
    }

    fn begin_member(&mut self, h: &tar::Header) {
        self.set_here(self.members, self.known_name(h));
        self.members += 1;
        self.long_name = None;
        self.pax = None;
    }
}

impl<R: Read> Read for Guard<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.shared.borrow().refusal {
            return Err(io::Error::other(e.to_string()));
        }
        if out.is_empty() {
            return Ok(0);
        }
        self.step(out).map_err(|e| {
            let msg = e.to_string();
            self.shared.borrow_mut().refusal = Some(e);
            io::Error::other(msg)
        })
    }
}

/// The first value of `key` in pax records, as tar reads it (a malformed record ends the
/// search).
fn pax_value<'a>(pax: &'a [u8], key: &str) -> Option<&'a [u8]> {
    for ext in tar::PaxExtensions::new(pax) {
        let ext = ext.ok()?;
        if ext.key() == Ok(key) {
            return Some(ext.value_bytes());
        }
    }
    None
}

/// A pax `size` as tar applies it: the first `size` record parsed as a decimal `u64`.
fn pax_size(pax: &[u8]) -> Option<u64> {
    std::str::from_utf8(pax_value(pax, "size")?)
        .ok()?
        .parse()
        .ok()
}

/// A member name for messages: lossy UTF-8, at most 200 characters.
pub(crate) fn display_name(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    if s.chars().count() > 200 {
        let mut t: String = s.chars().take(200).collect();
        t.push('…');
        t
    } else {
        s.into_owned()
    }
}
