//! Arbitrary bytes through vzdump's bounded reader with small caps: the first byte picks
//! the compression (plain tar, gzip, zstd), the rest is the archive. Properties: no panic,
//! tar is never handed an extension above the cap, and every error is a named variant (an
//! in-memory input has no I/O errors).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vzdump::{Compression, Flow, Limits, VzdumpError};

fuzz_target!(|data: &[u8]| {
    let Some((first, archive)) = data.split_first() else {
        return;
    };
    let c = match first % 3 {
        0 => Compression::None,
        1 => Compression::Gzip,
        _ => Compression::Zstd,
    };
    let limits = Limits {
        header_cap: 1024,
        zstd_window_log_max: 20,
    };
    let (result, peak_ext) = vzdump::scan_measured(archive, c, &limits, |_, r| {
        let _ = std::io::copy(r, &mut std::io::sink());
        Ok(Flow::Continue)
    });
    assert!(peak_ext <= limits.header_cap, "tar was handed {peak_ext} bytes");
    if let Err(e) = result {
        assert!(!matches!(e, VzdumpError::Io(_)), "an unnamed error: {e:?}");
    }
});
