//! Hostile archives through the bounded reader: each refused with its named variant, the
//! member and the cap in the message, and the memory the scan allocates measured by a
//! counting allocator (per thread, so parallel tests do not disturb each other).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use proptest::prelude::*;
use vzdump::hostile::{Hostile, BOMB_SIZE};
use vzdump::{Compression, EntryKind, ExtKind, Flow, Limits, VzdumpError};

struct Counting;

thread_local! {
    static LIVE: Cell<i64> = const { Cell::new(0) };
    static PEAK: Cell<i64> = const { Cell::new(0) };
}

fn account(delta: i64) {
    let _ = LIVE.try_with(|l| {
        let now = l.get() + delta;
        l.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            account(l.size() as i64);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        account(-(l.size() as i64));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            account(new as i64 - l.size() as i64);
        }
        q
    }
}

#[global_allocator]
static A: Counting = Counting;

/// The most this thread had allocated at once while `f` ran, above what it held before.
fn peak_alloc<T>(f: impl FnOnce() -> T) -> (T, u64) {
    let base = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(base));
    let out = f();
    let peak = PEAK.with(|p| p.get());
    (out, (peak - base).max(0) as u64)
}

/// Scan reading every member's data; read errors are swallowed as a careless caller would,
/// so any error is the scan's own.
fn scan_all(bytes: &[u8], c: Compression, limits: &Limits) -> (Result<(), VzdumpError>, u64) {
    vzdump::scan_measured(bytes, c, limits, |_, r| {
        let _ = std::io::copy(r, &mut std::io::sink());
        Ok(Flow::Continue)
    })
}

fn conf() -> String {
    "arch: amd64\nhostname: golden\nnet0: name=eth0,bridge=vmbr0,ip=dhcp,type=veth\nrootfs: local-lvm:vm-9100-disk-0,size=8G\nunprivileged: 1\n".into()
}

#[test]
fn each_hostile_kind_is_refused_with_its_variant_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    for kind in Hostile::ALL {
        let p = dir.path().join(format!("{:?}.tar.zst", kind));
        kind.write(&p, &conf()).unwrap();
        let size = std::fs::metadata(&p).unwrap().len();
        if matches!(kind, Hostile::LongNameBomb | Hostile::PaxBomb) {
            assert!(
                size < 1 << 20,
                "{kind:?}: the bomb compresses ({size} bytes)"
            );
        }
        let (r, peak) = peak_alloc(|| vzdump::scan_path(&p, |_, _| Ok(Flow::Continue)));
        let e = r.expect_err(kind.name());
        assert!(kind.refused_by(&e), "{kind:?}: {e:?}");
        assert!(peak < 8 << 20, "{kind:?}: the scan allocated {peak} bytes");
        let msg = e.to_string();
        match kind {
            Hostile::LongNameBomb => assert_eq!(
                msg,
                format!("archive member #0 \"././@LongLink\": GNU long name (typeflag L) of {BOMB_SIZE} bytes is over the cap of 65536 bytes")
            ),
            Hostile::PaxBomb => assert_eq!(
                msg,
                format!("archive member #0 \"./PaxHeaders/etc/vzdump/pct.conf\": pax extended header (typeflag x) of {BOMB_SIZE} bytes is over the cap of 65536 bytes")
            ),
            Hostile::TruncatedZstd => {
                assert!(msg.contains("\"./usr/lib/filler.bin\""), "{msg}");
                assert!(msg.contains("truncated"), "{msg}");
            }
            Hostile::Traversal => assert!(
                msg.contains("\"./../../../tmp/felhom-escape\": unsafe member name: a '..' component"),
                "{msg}"
            ),
        }
        // extractconfig's reader: the bombs come before pct.conf, the rest after it.
        let conf_read = vzdump::read_pct_conf(&p);
        match kind {
            Hostile::LongNameBomb | Hostile::PaxBomb => {
                assert!(kind.refused_by(&conf_read.unwrap_err()))
            }
            _ => assert_eq!(conf_read.unwrap(), conf()),
        }
    }
}

/// Raw tar blocks, built by hand where the tar crate's builder would refuse the shape.
struct Raw(Vec<u8>);

impl Raw {
    fn header(&mut self, h: &mut tar::Header) {
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
    }
    fn entry(&mut self, flag: u8, name: &str, gnu: bool, data: &[u8]) {
        self.entry_sized(flag, name, gnu, data.len() as u64, data)
    }
    fn entry_sized(&mut self, flag: u8, name: &str, gnu: bool, size: u64, data: &[u8]) {
        let mut h = if gnu {
            tar::Header::new_gnu()
        } else {
            tar::Header::new_ustar()
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_mode(0o644);
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(flag));
        self.header(&mut h);
        self.data(data);
    }
    fn data(&mut self, data: &[u8]) {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0, pad));
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

fn pax(records: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (k, v) in records {
        let body = format!(" {k}={v}\n");
        let mut len = body.len() + 1;
        while format!("{len}{body}").len() != len {
            len += 1;
        }
        out.extend(format!("{len}{body}").bytes());
    }
    out
}

/// A member as seen: index, path, kind, data.
type Seen = (u64, String, EntryKind, Vec<u8>);

fn seen(bytes: &[u8]) -> Result<Vec<Seen>, VzdumpError> {
    let mut out = Vec::new();
    vzdump::scan(bytes, Compression::None, |e, r| {
        let mut data = Vec::new();
        r.read_to_end(&mut data)?;
        out.push((e.index, e.path.clone(), e.kind, data));
        Ok(Flow::Continue)
    })?;
    Ok(out)
}

#[test]
fn valid_extensions_are_followed_exactly_as_tar_reads_them() {
    let mut r = Raw(Vec::new());
    // A pax `size` overrides the header's (0 here): the guard must skip 1000 bytes.
    r.entry(b'x', "./PaxHeaders/a", false, &pax(&[("size", "1000")]));
    r.entry_sized(b'0', "a", false, 0, &[b'A'; 1000]);
    // A long name and a long link within the cap.
    let long = format!("./{}/file", "d".repeat(300));
    r.entry(b'L', "././@LongLink", true, format!("{long}\0").as_bytes());
    r.entry(b'0', "short", true, b"long");
    r.entry(b'K', "././@LongLink", true, format!("{long}\0").as_bytes());
    r.entry(b'1', "hard", true, b"");
    // A global pax header is a member of its own.
    r.entry(
        b'g',
        "./PaxHeaders/global",
        false,
        &pax(&[("comment", "x")]),
    );
    // A GNU sparse file whose map continues in one extension block: 512 bytes at 0, 512
    // at 4096 (real size 4608).
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(1024);
    {
        let g = h.as_gnu_mut().unwrap();
        g.sparse[0].offset = *b"00000000000\0";
        g.sparse[0].numbytes = *b"00000001000\0";
        g.set_real_size(4608);
        g.set_is_extended(true);
    }
    r.header(&mut h);
    let mut ext = tar::GnuExtSparseHeader::new();
    ext.sparse[0].offset = *b"00000010000\0";
    ext.sparse[0].numbytes = *b"00000001000\0";
    r.0.extend_from_slice(ext.as_bytes());
    r.data(&[b'S'; 1024]);
    r.entry(b'0', "last", true, b"end");
    let got = seen(&r.end()).unwrap();
    let names: Vec<(u64, &str, EntryKind)> = got
        .iter()
        .map(|(i, p, k, _)| (*i, p.as_str(), *k))
        .collect();
    let long_path = long.trim_start_matches("./");
    assert_eq!(
        names,
        [
            (0, "a", EntryKind::File),
            (1, long_path, EntryKind::File),
            (2, "hard", EntryKind::Hardlink),
            (3, "PaxHeaders/global", EntryKind::Other),
            (4, "sparse", EntryKind::File),
            (5, "last", EntryKind::File),
        ]
    );
    assert_eq!(got[0].3, vec![b'A'; 1000]);
    assert_eq!(got[1].3, b"long");
    assert_eq!(got[4].3.len(), 4608);
    assert_eq!(got[5].3, b"end");
}

fn refused(bytes: &[u8], limits: &Limits) -> VzdumpError {
    scan_all(bytes, Compression::None, limits)
        .0
        .expect_err("refused")
}

#[test]
fn every_header_kind_is_capped_and_configurable() {
    let small = Limits {
        header_cap: 4096,
        ..Limits::default()
    };
    for (flag, gnu, kind) in [
        (b'L', true, ExtKind::LongName),
        (b'K', true, ExtKind::LongLink),
        (b'x', false, ExtKind::PaxLocal),
        (b'g', false, ExtKind::PaxGlobal),
    ] {
        let mut r = Raw(Vec::new());
        r.entry(b'0', "first", true, b"1");
        r.entry(flag, "././@LongLink", gnu, &vec![b'7'; 4097]);
        r.entry(b'0', "second", true, b"2");
        let bytes = r.end();
        match refused(&bytes, &small) {
            VzdumpError::HeaderTooLarge {
                index,
                kind: k,
                size,
                cap,
                ..
            } => assert_eq!((index, k, size, cap), (1, kind, 4097, 4096)),
            e => panic!("{kind:?}: {e:?}"),
        }
        // The default cap (64 KiB) lets the same entry through.
        let (r, peak_ext) = scan_all(&bytes, Compression::None, &Limits::default());
        assert!(r.is_ok() || !matches!(r, Err(VzdumpError::HeaderTooLarge { .. })));
        assert!(peak_ext <= 4097);
    }
    // A sparse map of 20 extension blocks (10 KiB) against a 4 KiB cap.
    let mut r = Raw(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.as_old_mut().name[..6].copy_from_slice(b"sparse");
    h.set_entry_type(tar::EntryType::GNUSparse);
    h.set_size(0);
    h.as_gnu_mut().unwrap().set_is_extended(true);
    r.header(&mut h);
    for _ in 0..20 {
        let mut ext = tar::GnuExtSparseHeader::new();
        ext.set_is_extended(true);
        r.0.extend_from_slice(ext.as_bytes());
    }
    match refused(&r.end(), &small) {
        VzdumpError::HeaderTooLarge {
            index: 0,
            kind: ExtKind::SparseMap,
            name,
            cap: 4096,
            ..
        } => assert_eq!(name, "sparse"),
        e => panic!("{e:?}"),
    }
}

#[test]
fn paths_links_types_and_damage_are_named() {
    let d = Limits::default();
    let one = |flag: u8, name: &str, link: Option<&str>| {
        let mut r = Raw(Vec::new());
        r.entry(b'5', "./", true, b"");
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(flag));
        h.set_size(0);
        if let Some(l) = link {
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
        }
        r.header(&mut h);
        r.end()
    };
    match refused(&one(b'0', "/etc/passwd", None), &d) {
        VzdumpError::UnsafePath {
            index: 1,
            name,
            reason,
        } => assert_eq!((name.as_str(), reason), ("/etc/passwd", "an absolute path")),
        e => panic!("{e:?}"),
    }
    assert!(matches!(
        refused(&one(b'5', "./a/../../b", None), &d),
        VzdumpError::UnsafePath { index: 1, .. }
    ));
    for target in ["../../etc/shadow", "/etc/shadow"] {
        match refused(&one(b'1', "./x", Some(target)), &d) {
            VzdumpError::UnsafeLink {
                index: 1,
                target: t,
                ..
            } => assert_eq!(t, target),
            e => panic!("{e:?}"),
        }
    }
    // Symbolic links resolve inside the guest: absolute and `..` targets are ordinary.
    assert!(seen(&one(b'2', "./lib64", Some("/usr/lib64"))).is_ok());
    assert!(seen(&one(b'2', "./x", Some("../y"))).is_ok());
    // GNU multi-volume continuation: no extraction expects it.
    match refused(&one(b'M', "./vol", None), &d) {
        VzdumpError::UnsupportedEntry {
            index: 1, typeflag, ..
        } => assert_eq!(typeflag, 'M'),
        e => panic!("{e:?}"),
    }
    // A corrupt header checksum.
    let mut bytes = one(b'0', "./f", None);
    bytes[512 + 10] ^= 1;
    assert!(matches!(
        refused(&bytes, &d),
        VzdumpError::Corrupt { index: 1, .. }
    ));
    // Plain tar cut inside a member's data: tar alone would hand out a short file.
    let mut r = Raw(Vec::new());
    r.entry(b'0', "./big", true, &[1u8; 5000]);
    let bytes = r.end();
    match refused(&bytes[..3000], &d) {
        VzdumpError::Truncated {
            index: 0,
            name,
            offset: 3000,
        } => assert_eq!(name, "./big"),
        e => panic!("{e:?}"),
    }
    // Garbage where zstd should be.
    assert!(matches!(
        scan_all(b"\x28\xb5\x2f\xfd garbage garbage", Compression::Zstd, &d).0,
        Err(VzdumpError::Decompress { format: "zstd", .. } | VzdumpError::Truncated { .. })
    ));
}

#[test]
fn a_fifo_where_pct_conf_belongs_is_not_a_config() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fifo.tar");
    let mut r = Raw(Vec::new());
    r.entry(b'6', "./etc/vzdump/pct.conf", true, b"");
    std::fs::write(&p, r.end()).unwrap();
    match vzdump::read_pct_conf(&p) {
        Err(VzdumpError::NotRegular {
            index: 0,
            name,
            found,
        }) => assert_eq!(
            (name.as_str(), found),
            ("etc/vzdump/pct.conf", "a special file")
        ),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_window_over_the_limit_is_refused() {
    // zstd level 19 on 10 MiB picks a 2^23 window; a limit of 2^20 refuses the frame.
    let data: Vec<u8> = {
        let mut r = Raw(Vec::new());
        let mut x: u32 = 1;
        let noise: Vec<u8> = (0..(10 << 20))
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 4096 < 2048 {
                    (x >> 24) as u8
                } else {
                    0
                }
            })
            .collect();
        r.entry(b'0', "./f", true, &noise);
        r.end()
    };
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).unwrap();
    enc.include_contentsize(false).unwrap();
    enc.write_all(&data).unwrap();
    let z = enc.finish().unwrap();
    let tight = Limits {
        zstd_window_log_max: 20,
        ..Limits::default()
    };
    assert!(matches!(
        scan_all(&z, Compression::Zstd, &tight).0,
        Err(VzdumpError::Decompress { format: "zstd", .. })
    ));
    assert!(scan_all(&z, Compression::Zstd, &Limits::default())
        .0
        .is_ok());
}

/// One generated header: its typeflag, magic, declared size, the data actually present,
/// and pax records when it is a pax header.
#[derive(Debug, Clone)]
struct Gen {
    flag: u8,
    magic: u8,
    size: u64,
    data: usize,
    pax_size: Option<u64>,
    bad_sum: bool,
}

fn gen() -> impl Strategy<Value = Gen> {
    let flags = prop::sample::select(b"0125673LKxgSMV\0Zz".to_vec());
    let size = prop_oneof![
        Just(0u64),
        0u64..600,
        3000u64..9000,
        Just(1u64 << 20),
        Just(u64::MAX / 2),
    ];
    (
        flags,
        0u8..3,
        size,
        0usize..(1 << 20),
        prop::option::of(0u64..20_000),
        prop::bool::weighted(0.03),
    )
        .prop_map(|(flag, magic, size, data, pax_size, bad_sum)| Gen {
            flag,
            magic,
            size,
            data,
            pax_size,
            bad_sum,
        })
}

fn build(headers: &[Gen]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, g) in headers.iter().enumerate() {
        let mut h = match g.magic {
            0 => tar::Header::new_gnu(),
            1 => tar::Header::new_ustar(),
            _ => tar::Header::new_old(),
        };
        let name = format!("./m{i}");
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(tar::EntryType::new(g.flag));
        let body: Vec<u8> = match (g.flag, g.pax_size) {
            (b'x', Some(s)) => pax(&[("size", &s.to_string()), ("path", &name)]),
            _ => vec![b'n'; g.data.min(g.size as usize)],
        };
        let size = if g.flag == b'x' && g.pax_size.is_some() {
            body.len() as u64
        } else {
            g.size
        };
        h.set_size(size);
        if g.flag == b'S' {
            if let Some(gnu) = h.as_gnu_mut() {
                gnu.set_is_extended(g.data % 3 == 0);
                gnu.set_real_size(size);
            }
        }
        h.set_cksum();
        if g.bad_sum {
            h.as_mut_bytes()[0] ^= 0x40;
        }
        out.extend_from_slice(h.as_bytes());
        if g.flag == b'S' && g.data % 3 == 0 {
            for k in 0..(g.data % 7) {
                let mut ext = tar::GnuExtSparseHeader::new();
                ext.set_is_extended(k + 1 < g.data % 7);
                out.extend_from_slice(ext.as_bytes());
            }
        }
        out.extend_from_slice(&body);
        out.extend(std::iter::repeat_n(0u8, (512 - body.len() % 512) % 512));
    }
    out.extend([0u8; 1024]);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Hostile header sequences, plain or zstd, cut anywhere: never a panic, never an
    /// extension above the cap handed to tar, the scan's allocations bounded by the cap plus
    /// a fixed overhead (the generated entries reach 1 MiB: tar buffering one whole would
    /// break the bound), and every error one of the named variants.
    #[test]
    fn hostile_headers_stay_bounded(
        headers in prop::collection::vec(gen(), 1..6),
        cut in prop::option::of(0.0f64..1.0),
        zstd in any::<bool>(),
    ) {
        let cap = 4096u64;
        let limits = Limits { header_cap: cap, ..Limits::default() };
        let mut bytes = build(&headers);
        let c = if zstd {
            bytes = zstd::encode_all(&bytes[..], 1).unwrap();
            Compression::Zstd
        } else {
            Compression::None
        };
        if let Some(f) = cut {
            bytes.truncate((bytes.len() as f64 * f) as usize);
        }
        let ((result, peak_ext), peak) = peak_alloc(|| scan_all(&bytes, c, &limits));
        prop_assert!(peak_ext <= cap, "tar was handed an extension of {} bytes", peak_ext);
        // zstd's decoder context and window (level 1: 2^19) come on top of the fixed part.
        let overhead: u64 = if zstd { (256 << 10) + (1 << 20) } else { 256 << 10 };
        prop_assert!(peak <= cap + overhead, "the scan allocated {} bytes", peak);
        if let Err(e) = result {
            prop_assert!(
                matches!(
                    e,
                    VzdumpError::HeaderTooLarge { .. }
                        | VzdumpError::Truncated { .. }
                        | VzdumpError::Decompress { .. }
                        | VzdumpError::Corrupt { .. }
                        | VzdumpError::UnsafePath { .. }
                        | VzdumpError::UnsafeLink { .. }
                        | VzdumpError::UnsupportedEntry { .. }
                ),
                "an unnamed error: {:?}", e
            );
        }
    }
}
