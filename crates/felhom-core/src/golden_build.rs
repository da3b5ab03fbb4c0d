//! `felhom golden build`: a real golden archive without a PVE host.
//!
//! mmdebstrap makes a Debian rootfs (minbase plus systemd, D-Bus, sshd, ifupdown and a DHCP
//! client, optionally Debian's `docker.io`) in a directory beside the output. Inside its
//! chroot, a customize hook runs [`golden::guest_finish_script`], the very script the PVE
//! recipe pipes into `pct exec`: daemon.json, the first-boot SSH host-key unit (enabled), and
//! the identity clean. The directory is then streamed into a vzdump-layout `.tar.zst`
//! (`./etc/vzdump/pct.conf` first, rootfs after, vzdump's excludes) that PVE's restore reads,
//! and removed.
//!
//! Every user value ends up on mmdebstrap's command line, and the mirror also in the golden's
//! `sources.list`, so each is checked against a strict rule first and passed as a single
//! argument, never through a shell.

use std::collections::{BTreeSet, VecDeque};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::golden::{self, GoldenConf, GuestFinish};
use crate::spec::{show_value, FieldError};

/// The Debian mirror used when none is given.
pub const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// Debian 13, what felhom's golden is made for.
pub const DEFAULT_SUITE: &str = "trixie";
/// Bumped whenever the builder's output changes for the same inputs, so cached goldens
/// keyed by [`BuildOptions::input_hash`] are rebuilt.
const BUILD_FORMAT: &str = "felhom golden build, format 1";
/// The environment variable that carries the finish script into mmdebstrap's hook; the hook
/// text itself is a constant, so nothing variable is ever parsed by a shell.
const FINISH_ENV: &str = "FELHOM_GUEST_FINISH";
const FINISH_HOOK: &str = "chroot \"$1\" /bin/sh -eu -c \"$FELHOM_GUEST_FINISH\"";
/// The mmdebstrap options that never vary. `minbase` keeps the golden small (173 MB
/// uncompressed without Docker, docs/guests.md, "Measured"); apt's package lists and cache
/// are removed by mmdebstrap's own cleanup after the hook. Its `cleanup/reproducible` step is
/// skipped: it runs after the hook and deletes `/var/lib/dbus/machine-id`, the link to
/// `/etc/machine-id` that the identity clean just made; the logs it would delete the clean
/// has truncated.
const MMDEBSTRAP_FIXED: &[&str] = &[
    "--mode=root",
    "--format=directory",
    "--variant=minbase",
    "--skip=cleanup/reproducible",
];

/// Docker in the golden. Debian's `docker.io` is the default: it comes from the same mirror,
/// so a build needs nothing but a Debian mirror, and inspection of the result is clean
/// (a golden without Docker is reported as `docker-missing`: customer guests run Docker).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum DockerChoice {
    None,
    #[default]
    Debian,
}

impl DockerChoice {
    pub fn as_str(self) -> &'static str {
        match self {
            DockerChoice::None => "none",
            DockerChoice::Debian => "debian",
        }
    }
    fn packages(self) -> &'static [&'static str] {
        match self {
            DockerChoice::None => &[],
            DockerChoice::Debian => golden::DEBIAN_DOCKER_PACKAGES,
        }
    }
}

impl std::fmt::Display for DockerChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DockerChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(DockerChoice::None),
            "debian" => Ok(DockerChoice::Debian),
            other => Err(format!("must be none or debian; got {}", show_value(other))),
        }
    }
}

/// What to build. Everything but `out` decides the archive's content (see
/// [`BuildOptions::input_hash`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// The archive to write: `.tar.zst` (PVE's default), `.tar.gz` or `.tar`.
    pub out: PathBuf,
    /// Debian suite or codename.
    pub suite: String,
    /// Debian mirror; [`DEFAULT_MIRROR`] when `None`. It stays in the golden's sources.list.
    pub mirror: Option<String>,
    pub docker: DockerChoice,
    /// Extra Debian packages.
    pub packages: Vec<String>,
    /// Install and enable the first-boot SSH host-key unit. Only the failure tests turn it
    /// off (a golden whose guests boot without host keys).
    pub first_boot_unit: bool,
}

impl BuildOptions {
    /// Debian 13, the default mirror, Debian's Docker, no extra packages, the first-boot unit.
    pub fn new(out: impl Into<PathBuf>) -> BuildOptions {
        BuildOptions {
            out: out.into(),
            suite: DEFAULT_SUITE.into(),
            mirror: None,
            docker: DockerChoice::default(),
            packages: Vec::new(),
            first_boot_unit: true,
        }
    }

    pub fn mirror(&self) -> &str {
        self.mirror.as_deref().unwrap_or(DEFAULT_MIRROR)
    }

    /// Every package mmdebstrap is asked to include, in order, without duplicates.
    pub fn include(&self) -> Vec<String> {
        let mut seen = BTreeSet::new();
        golden::SYSTEM_PACKAGES
            .iter()
            .chain(golden::BASE_PACKAGES)
            .chain(self.docker.packages())
            .map(|p| p.to_string())
            .chain(self.packages.iter().cloned())
            .filter(|p| seen.insert(p.clone()))
            .collect()
    }

    pub fn finish(&self) -> GuestFinish {
        GuestFinish {
            docker_daemon_json: self.docker != DockerChoice::None,
            first_boot_unit: self.first_boot_unit,
        }
    }

    /// Check every value before anything runs. Each error names the field and the rule.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errs = Vec::new();
        let mut e = |field: &str, rule: String| {
            errs.push(FieldError {
                field: field.into(),
                rule,
            })
        };
        if let Err(r) = check_out(&self.out) {
            e("--out", r);
        }
        if let Err(r) = check_suite(&self.suite) {
            e("--suite", r);
        }
        if let Some(m) = &self.mirror {
            if let Err(r) = check_mirror(m) {
                e("--mirror", r);
            }
        }
        if self.packages.len() > 200 {
            e(
                "--packages",
                format!("at most 200 packages; got {}", self.packages.len()),
            );
        }
        for p in &self.packages {
            if let Err(r) = check_package(p) {
                e("--packages", r);
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }

    /// A hex SHA-256 of everything that decides the archive's content: suite, mirror, Docker
    /// choice, the package list, the first-boot unit switch, and felhom-core's golden data
    /// (the finish script with the unit text, daemon.json and identity clean; the pct.conf
    /// template; mmdebstrap's fixed options; the archive excludes; a format version). Not
    /// the output path, so a test can cache a build anywhere under this key. Packages are
    /// hashed as a set: their order does not change what apt installs. It does not capture
    /// the mirror's content changing over time.
    pub fn input_hash(&self) -> String {
        let mut h = Sha256::new();
        let mut field = |k: &str, v: &str| {
            h.update(k.as_bytes());
            h.update([0]);
            h.update((v.len() as u64).to_le_bytes());
            h.update(v.as_bytes());
        };
        field("format", BUILD_FORMAT);
        field("suite", &self.suite);
        field("mirror", self.mirror());
        field("docker", self.docker.as_str());
        let include: BTreeSet<String> = self.include().into_iter().collect();
        field(
            "include",
            &include.into_iter().collect::<Vec<_>>().join(","),
        );
        field("first_boot_unit", &self.first_boot_unit.to_string());
        field("finish", &golden::guest_finish_script(self.finish()));
        field("hook", FINISH_HOOK);
        field("mmdebstrap", &MMDEBSTRAP_FIXED.join(" "));
        field("conf", &GoldenConf::new("HWADDR").render());
        field("excludes", &vzdump::EXCLUDES.join(" "));
        hex::encode(h.finalize())
    }

    /// `net0`'s MAC: locally administered (`02:…`, never a vendor's range) and derived from
    /// the inputs, so the same inputs give the same archive.
    pub fn hwaddr(&self) -> String {
        let d = Sha256::digest(format!("hwaddr {}", self.input_hash()));
        format!(
            "02:{:02X}:{:02X}:{:02X}:{:02X}:{:02X}",
            d[0], d[1], d[2], d[3], d[4]
        )
    }

    /// The mmdebstrap arguments (after the program name) for a rootfs at `target`.
    pub fn mmdebstrap_args(&self, target: &Path) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = MMDEBSTRAP_FIXED.iter().map(Into::into).collect();
        a.push(format!("--include={}", self.include().join(",")).into());
        a.push(format!("--customize-hook={FINISH_HOOK}").into());
        // Positional arguments after `--`: none can be taken for an option.
        a.push("--".into());
        a.push(self.suite.clone().into());
        a.push(target.as_os_str().to_owned());
        a.push(self.mirror().into());
        a
    }
}

fn check_out(out: &Path) -> Result<(), String> {
    if vzdump::Compression::from_path(out).is_err() {
        return Err(format!(
            "must name a .tar.zst, .tar.gz or .tar file (PVE picks the decompressor by name); got {}",
            show_value(&out.display().to_string())
        ));
    }
    if out.is_dir() {
        return Err(format!("{} is a directory", out.display()));
    }
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        return Err(format!(
            "the directory {} does not exist",
            show_value(&parent.display().to_string())
        ));
    }
    Ok(())
}

/// Debian suites and codenames (`trixie`, `sid`, `stable`): lowercase letters and digits.
pub fn check_suite(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be a Debian suite or codename: 1–32 lowercase letters and digits (e.g. trixie); got {}",
            show_value(s)
        ))
    }
}

/// An `http://` or `https://` mirror URL: no whitespace, quotes or shell characters, no
/// credentials (they would be baked into every customer guest's sources.list), no query or
/// fragment.
pub fn check_mirror(m: &str) -> Result<(), String> {
    let shown = show_value(m);
    let rule = "must be an http:// or https:// URL of a Debian mirror, made of letters, digits and - . _ ~ : / % + [ ] only (no whitespace, quotes or shell characters)";
    let chars_ok = !m.is_empty()
        && m.len() <= 512
        && m.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.' | b'_' | b'~' | b':' | b'/' | b'%' | b'+' | b'[' | b']' | b'@'
                )
        });
    if !chars_ok || !(m.starts_with("http://") || m.starts_with("https://")) {
        return Err(format!("{rule}; got {shown}"));
    }
    let url = url::Url::parse(m).map_err(|e| format!("{rule}; got {shown} ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() || m.contains('@') {
        return Err(format!(
            "must not carry credentials (they would be written into the golden's /etc/apt/sources.list, in every customer guest); got {shown}"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{rule}: it has no host; got {shown}"));
    }
    Ok(())
}

/// Debian policy §5.6.1: at least two characters, lowercase letters, digits, `+ - .`,
/// starting with a letter or digit. This also keeps apt patterns and file paths out.
pub fn check_package(p: &str) -> Result<(), String> {
    let b = p.as_bytes();
    let ok = b.len() >= 2
        && b.len() <= 128
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{} is not a Debian package name: 2–128 of a-z 0-9 + - ., starting with a letter or digit (Debian policy 5.6.1)",
            show_value(p)
        ))
    }
}

/// What a build did, with its measurements.
#[derive(Debug, Clone, Serialize)]
pub struct BuildReport {
    pub archive: PathBuf,
    pub input_hash: String,
    pub suite: String,
    pub mirror: String,
    pub docker: DockerChoice,
    pub first_boot_unit: bool,
    /// Everything mmdebstrap was asked to include.
    pub packages: Vec<String>,
    /// `net0`'s MAC in the archived pct.conf.
    pub hwaddr: String,
    pub mmdebstrap_secs: f64,
    pub archive_secs: f64,
    /// Regular-file bytes in the rootfs as archived.
    pub uncompressed_bytes: u64,
    /// Regular files in the rootfs as archived.
    pub files: u64,
    /// Every archive entry of the rootfs (directories, links, files).
    pub entries: u64,
    pub archive_bytes: u64,
    /// Things the archive could not carry or the build could not tidy up.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("invalid build options; nothing was run:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
    #[error("golden build must run as root: mmdebstrap's root mode chroots into the new system to run package scripts and writes files owned by other users; run it with sudo or as root")]
    NotRoot,
    #[error("mmdebstrap is not installed (not found in PATH); install it with `apt-get install mmdebstrap` (Debian package mmdebstrap)")]
    MmdebstrapMissing,
    #[error("mmdebstrap failed ({status}); the last lines it printed:\n{tail}")]
    Mmdebstrap { status: String, tail: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the archive: {0}")]
    Archive(#[from] vzdump::VzdumpError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
    let context = context.into();
    move |source| BuildError::Io { context, source }
}

/// The first executable `name` in `PATH`.
fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| d.is_absolute())
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Remove a build directory without ever leaving its file system: if mmdebstrap left
/// anything mounted inside (a bind-mounted /dev or /proc after a crash), removing through
/// it would delete the host's files, so that is refused and reported instead.
pub fn remove_build_dir(dir: &Path) -> Result<(), String> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) => remove_tree_on(dir, m.dev()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("{}: {e}", dir.display())),
    }
}

/// Remove `dir` and everything in it that is on the file system `dev`; stop at the first
/// directory on another one, before touching anything inside it.
fn remove_tree_on(dir: &Path, dev: u64) -> Result<(), String> {
    let err = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    for e in std::fs::read_dir(dir).map_err(|e| err(dir, e))? {
        let child = e.map_err(|e| err(dir, e))?.path();
        let m = std::fs::symlink_metadata(&child).map_err(|e| err(&child, e))?;
        if m.is_dir() {
            if m.dev() != dev {
                return Err(format!(
                    "{} is a mount point (still mounted); unmount it, then remove the directory",
                    child.display()
                ));
            }
            remove_tree_on(&child, dev)?;
        } else {
            std::fs::remove_file(&child).map_err(|e| err(&child, e))?;
        }
    }
    std::fs::remove_dir(dir).map_err(|e| err(dir, e))
}

/// A directory beside the output for mmdebstrap's rootfs (same file system as the archive,
/// not a possibly small /tmp), removed afterwards whatever happens.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create(out: &Path) -> Result<WorkDir, BuildError> {
        let parent = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = parent.join(format!(
            ".felhom-golden-build-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::DirBuilder::new()
            // apt drops to its _apt user for downloads; it must be able to reach the rootfs.
            .mode(0o755)
            .create(&dir)
            .map_err(io(format!("create the build directory {}", dir.display())))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = remove_build_dir(&self.0) {
            tracing::warn!("left the build directory {} behind: {e}", self.0.display());
        }
    }
}

/// Run mmdebstrap, passing each line it prints to `progress` and keeping the last ones for
/// an error.
fn run_mmdebstrap(
    program: &Path,
    opts: &BuildOptions,
    target: &Path,
    progress: &dyn Fn(&str),
) -> Result<(), BuildError> {
    const TAIL: usize = 30;
    let mut child = Command::new(program)
        .env_clear()
        .envs(crate::secrets::minimal_vars(crate::secrets::PROXY_VARS))
        .args(opts.mmdebstrap_args(target))
        .env(FINISH_ENV, golden::guest_finish_script(opts.finish()))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(io(format!("start {}", program.display())))?;
    let tail = Arc::new(Mutex::new(VecDeque::<String>::new()));
    let push = |tail: &Mutex<VecDeque<String>>, line: String| {
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == TAIL {
            t.pop_front();
        }
        t.push_back(line);
    };
    let stdout = child.stdout.take();
    let out_tail = Arc::clone(&tail);
    let reader = std::thread::spawn(move || {
        if let Some(s) = stdout {
            for line in BufReader::new(s).lines().map_while(Result::ok) {
                push(&out_tail, line);
            }
        }
    });
    if let Some(s) = child.stderr.take() {
        for line in BufReader::new(s).lines().map_while(Result::ok) {
            let shown = line.strip_prefix("I: ").unwrap_or(&line);
            progress(&format!("mmdebstrap: {shown}"));
            push(&tail, line);
        }
    }
    let _ = reader.join();
    let status = child.wait().map_err(io("wait for mmdebstrap"))?;
    if status.success() {
        return Ok(());
    }
    let tail = tail.lock().unwrap_or_else(|p| p.into_inner());
    Err(BuildError::Mmdebstrap {
        status: status.to_string(),
        tail: tail.iter().cloned().collect::<Vec<_>>().join("\n"),
    })
}

/// Build a golden archive at `opts.out`. Blocking; needs root and mmdebstrap. The archive
/// appears only when complete (written beside it, then renamed).
pub fn build(opts: &BuildOptions, progress: &dyn Fn(&str)) -> Result<BuildReport, BuildError> {
    opts.validate().map_err(BuildError::Invalid)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(BuildError::NotRoot);
    }
    let program = find_in_path("mmdebstrap").ok_or(BuildError::MmdebstrapMissing)?;
    let compression = vzdump::Compression::from_path(&opts.out)?;
    let work = WorkDir::create(&opts.out)?;
    let rootfs = work.0.join("rootfs");

    progress(&format!(
        "mmdebstrap: {} from {} with {}",
        opts.suite,
        opts.mirror(),
        opts.include().join(",")
    ));
    let t = Instant::now();
    run_mmdebstrap(&program, opts, &rootfs, progress)?;
    let mmdebstrap_secs = t.elapsed().as_secs_f64();

    progress(&format!("archive: writing {}", opts.out.display()));
    let t = Instant::now();
    let partial = work.0.join("archive.partial");
    let hwaddr = opts.hwaddr();
    let mut w = vzdump::ArchiveWriter::create(&partial, compression)?;
    w.pct_conf(&GoldenConf::new(&hwaddr).render())?;
    let stats = w.add_tree(&rootfs)?;
    w.finish()?;
    std::fs::rename(&partial, &opts.out)
        .map_err(io(format!("move the archive to {}", opts.out.display())))?;
    let archive_secs = t.elapsed().as_secs_f64();
    let archive_bytes = std::fs::metadata(&opts.out)
        .map_err(io(format!("stat {}", opts.out.display())))?
        .len();

    let mut warnings = Vec::new();
    if !stats.acls_dropped.is_empty() {
        warnings.push(format!(
            "{} path(s) had an ACL that could not be decoded, left out: {}",
            stats.acls_dropped.len(),
            stats
                .acls_dropped
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if !stats.other_fs_skipped.is_empty() {
        warnings.push(format!(
            "mounted file systems inside the rootfs were not archived: {}",
            stats.other_fs_skipped.join(", ")
        ));
    }
    if stats.sockets_skipped > 0 {
        warnings.push(format!(
            "{} socket(s) skipped (not archivable)",
            stats.sockets_skipped
        ));
    }
    progress("cleanup: removing the build directory");
    let dir = work.0.clone();
    drop(work);
    if dir.exists() {
        warnings.push(format!(
            "the build directory {} could not be removed (see the log)",
            dir.display()
        ));
    }
    Ok(BuildReport {
        archive: opts.out.clone(),
        input_hash: opts.input_hash(),
        suite: opts.suite.clone(),
        mirror: opts.mirror().to_string(),
        docker: opts.docker,
        first_boot_unit: opts.first_boot_unit,
        packages: opts.include(),
        hwaddr,
        mmdebstrap_secs,
        archive_secs,
        uncompressed_bytes: stats.bytes,
        files: stats.files,
        entries: stats.entries,
        archive_bytes,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(o: &BuildOptions) -> Vec<String> {
        o.validate()
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.field)
            .collect()
    }

    #[test]
    fn defaults_validate_and_include_everything_a_guest_needs() {
        let o = BuildOptions::new("/tmp/golden.tar.zst");
        assert_eq!(o.validate(), Ok(()));
        let inc = o.include();
        for p in [
            "systemd",
            "systemd-sysv",
            "dbus",
            "iproute2",
            "openssh-server",
            "ifupdown",
            "isc-dhcp-client",
            "docker.io",
            "docker-cli",
        ] {
            assert!(inc.iter().any(|i| i == p), "{p} in {inc:?}");
        }
        let none = BuildOptions {
            docker: DockerChoice::None,
            packages: vec!["vim".into(), "openssh-server".into()],
            ..o.clone()
        };
        let inc = none.include();
        assert!(!inc.iter().any(|i| i == "docker.io"));
        assert_eq!(inc.iter().filter(|i| *i == "openssh-server").count(), 1);
        assert_eq!(inc.last().map(String::as_str), Some("vim"));
    }

    #[test]
    fn hostile_values_are_refused_with_the_field_named() {
        let base = BuildOptions::new("/tmp/golden.tar.zst");
        for suite in [
            "",
            "Trixie",
            "trixie;reboot",
            "../x",
            "-x",
            "trixie ",
            "a".repeat(33).as_str(),
            "stable-backports",
        ] {
            let o = BuildOptions {
                suite: suite.into(),
                ..base.clone()
            };
            assert_eq!(fields(&o), vec!["--suite"], "{suite:?}");
        }
        for mirror in [
            "ftp://deb.debian.org/debian",
            "http://deb.debian.org/debian $(reboot)",
            "http://deb.debian.org/debian'",
            "http://deb.debian.org/\"debian",
            "http://deb.debian.org/debian\nhttp://evil",
            "http://user:secret@mirror.example/debian",
            "http://deb.debian.org/debian?x=1",
            "http://deb.debian.org/debian#x",
            "http://deb.debian.org/debian;reboot",
            "http://deb.debian.org/debian|x",
            "http://deb.debian.org/`id`",
            "http://",
            "--help",
            "",
        ] {
            let o = BuildOptions {
                mirror: Some(mirror.into()),
                ..base.clone()
            };
            assert_eq!(fields(&o), vec!["--mirror"], "{mirror:?}");
        }
        for ok in [
            "https://deb.debian.org/debian",
            "http://10.0.0.1:3142/debian",
            "http://[fd00::1]/debian",
            "http://mirror.example/debian-archive/debian/",
        ] {
            assert_eq!(check_mirror(ok), Ok(()), "{ok}");
        }
        for p in [
            "",
            "a",
            "Vim",
            "-vim",
            "+vim",
            "vim;reboot",
            "vim,curl",
            "vim curl",
            "?name(vim)",
            "./x.deb",
            "/tmp/x.deb",
            "vim=1.0",
            "vim/trixie",
        ] {
            let o = BuildOptions {
                packages: vec![p.into()],
                ..base.clone()
            };
            assert_eq!(fields(&o), vec!["--packages"], "{p:?}");
        }
        for ok in ["vim", "g++", "libc6", "docker.io", "0ad", "lib32gcc-s1"] {
            assert_eq!(check_package(ok), Ok(()), "{ok}");
        }
        for out in [
            "/tmp/golden.zip",
            "/tmp/golden",
            "/nonexistent-dir/golden.tar.zst",
            "/tmp",
        ] {
            let o = BuildOptions {
                out: out.into(),
                ..base.clone()
            };
            assert_eq!(fields(&o), vec!["--out"], "{out:?}");
        }
        let all = BuildOptions {
            out: "/tmp/x.zip".into(),
            suite: "X".into(),
            mirror: Some("x".into()),
            packages: vec!["ok".into(), "B".into(), "c;d".into()],
            ..base
        };
        assert_eq!(
            fields(&all),
            vec!["--out", "--suite", "--mirror", "--packages", "--packages"]
        );
        let msg = BuildError::Invalid(all.validate().unwrap_err()).to_string();
        assert!(
            msg.contains("nothing was run") && msg.contains("Debian policy"),
            "{msg}"
        );
    }

    #[test]
    fn input_hash_covers_every_input_but_the_path() {
        let a = BuildOptions::new("/a/golden.tar.zst");
        let h = a.input_hash();
        assert_eq!(h.len(), 64);
        assert_eq!(
            h,
            BuildOptions::new("/b/other.tar.gz").input_hash(),
            "the path is not an input"
        );
        assert_eq!(
            h,
            BuildOptions {
                mirror: Some(DEFAULT_MIRROR.into()),
                ..a.clone()
            }
            .input_hash(),
            "the default mirror, given or not, is the same input"
        );
        let variants = [
            BuildOptions {
                suite: "sid".into(),
                ..a.clone()
            },
            BuildOptions {
                mirror: Some("http://ftp.de.debian.org/debian".into()),
                ..a.clone()
            },
            BuildOptions {
                docker: DockerChoice::None,
                ..a.clone()
            },
            BuildOptions {
                packages: vec!["vim".into()],
                ..a.clone()
            },
            BuildOptions {
                first_boot_unit: false,
                ..a.clone()
            },
        ];
        let mut all: BTreeSet<String> = variants.iter().map(|v| v.input_hash()).collect();
        all.insert(h.clone());
        assert_eq!(all.len(), variants.len() + 1, "each input changes the hash");
        let ab = BuildOptions {
            packages: vec!["vim".into(), "less".into()],
            ..a.clone()
        };
        let ba = BuildOptions {
            packages: vec!["less".into(), "vim".into(), "vim".into()],
            ..a.clone()
        };
        assert_eq!(ab.input_hash(), ba.input_hash(), "packages are a set");
    }

    #[test]
    fn hwaddr_is_locally_administered_unicast_and_stable() {
        let a = BuildOptions::new("/a/g.tar.zst");
        let mac = a.hwaddr();
        assert_eq!(mac, a.hwaddr());
        assert!(mac.starts_with("02:"), "{mac}");
        assert!(mac.parse::<pve_api::MacAddr>().is_ok(), "{mac}");
        let other = BuildOptions {
            docker: DockerChoice::None,
            ..a
        }
        .hwaddr();
        assert_ne!(mac, other);
    }

    #[test]
    fn mmdebstrap_gets_one_argument_per_value_and_the_shared_finish_script() {
        let o = BuildOptions {
            packages: vec!["vim".into()],
            ..BuildOptions::new("/x/g.tar.zst")
        };
        let args: Vec<String> = o
            .mmdebstrap_args(Path::new("/x/dir with space/rootfs"))
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        let dd = args.iter().position(|a| a == "--").unwrap();
        assert_eq!(
            &args[dd + 1..],
            &["trixie", "/x/dir with space/rootfs", DEFAULT_MIRROR]
        );
        assert!(args.contains(&"--variant=minbase".to_string()));
        assert!(args.iter().any(
            |a| a.starts_with("--include=systemd,") && a.ends_with(",docker.io,docker-cli,vim")
        ));
        // The hook is constant; the script reaches it through the environment.
        assert!(args.contains(&format!("--customize-hook={FINISH_HOOK}")));
        let script = golden::guest_finish_script(o.finish());
        assert!(script.contains(golden::FIRST_BOOT_UNIT));
        assert!(script.contains(golden::DOCKER_DAEMON_JSON));
        let no_unit = BuildOptions {
            first_boot_unit: false,
            docker: DockerChoice::None,
            ..o
        };
        let s = golden::guest_finish_script(no_unit.finish());
        assert!(!s.contains(golden::FIRST_BOOT_UNIT_NAME) && !s.contains("daemon.json"));
        assert!(s.contains("truncate -s 0 /etc/machine-id"));
    }

    #[test]
    fn errors_name_what_to_do() {
        assert!(BuildError::MmdebstrapMissing
            .to_string()
            .contains("apt-get install mmdebstrap"));
        assert!(BuildError::NotRoot.to_string().contains("root"));
    }

    #[test]
    fn build_dir_removal_stays_on_its_file_system() {
        let d = tempfile::tempdir().unwrap();
        let w = d.path().join("w");
        std::fs::create_dir_all(w.join("a/b")).unwrap();
        std::fs::write(w.join("a/b/f"), b"x").unwrap();
        // A symlink to outside is removed as a link; its target stays.
        std::fs::write(d.path().join("outside"), b"keep").unwrap();
        std::os::unix::fs::symlink(d.path().join("outside"), w.join("a/link")).unwrap();
        std::os::unix::fs::symlink(d.path(), w.join("a/dirlink")).unwrap();
        // A directory on another file system (simulated: a device number nothing has) is
        // refused before anything inside it is touched.
        let e = remove_tree_on(&w, u64::MAX).unwrap_err();
        assert!(e.contains("mount point"), "{e}");
        assert!(w.join("a/b/f").exists());
        remove_build_dir(&w).unwrap();
        assert!(!w.exists());
        assert_eq!(std::fs::read(d.path().join("outside")).unwrap(), b"keep");
        assert!(d.path().exists());
        remove_build_dir(&w).unwrap();
    }
}
