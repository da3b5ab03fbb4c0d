//! Build a golden archive with a large incompressible file, to measure that
//! `felhom golden inspect` streams (flat memory) on multi-GB archives:
//!
//!     cargo run --release -p felhom-core --example padded_golden -- /tmp/big.tar.zst 1073741824
//!     /usr/bin/time -v target/release/felhom golden inspect /tmp/big.tar.zst

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(bytes)) = (args.next(), args.next().and_then(|b| b.parse::<u64>().ok()))
    else {
        eprintln!("usage: padded_golden ARCHIVE BYTES");
        std::process::exit(2);
    };
    let opts = felhom_core::golden::GoldenBuildOptions {
        defects: Vec::new(),
        padding_bytes: bytes,
    };
    if let Err(e) = felhom_core::golden::build_golden_archive(std::path::Path::new(&path), &opts) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
