//! The golden base (seed §2): the root-side recipe, a builder of golden archives in vzdump
//! layout, and the inspection that says exactly what is wrong with any golden archive.
//!
//! The first-boot unit, the identity clean and the package lists are defined **once** here;
//! the recipe prints them and the builder writes them, so the two cannot drift apart.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use serde::Serialize;

/// The unit that makes SSH host keys when they are missing (F3). Conditioned on the key
/// files, never on `ConditionFirstBoot`: an empty machine-id is not a first boot, which is
/// exactly why Debian 13's own `sshd-keygen.service` skips (docs/guests.md, "Measured"). Debian's
/// guards and socket activation are covered (docs/lessons.md A5).
pub const FIRST_BOOT_UNIT_NAME: &str = "felhom-ssh-hostkeys.service";
pub const FIRST_BOOT_UNIT: &str = "\
[Unit]
Description=Generate SSH host keys when they are missing (felhom golden)
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
ConditionPathIsReadWrite=/etc/ssh
ConditionPathIsSymbolicLink=!/etc/ssh
Before=ssh.service ssh.socket sshd.service sshd@.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

/// What Debian's `minbase` lacks for a container with systemd as PID 1: the init itself
/// (`systemd-sysv` makes `/sbin/init` systemd), D-Bus for `systemctl`/logind, and `ip`.
/// PVE's Debian template has these; `felhom golden build` installs them explicitly.
pub const SYSTEM_PACKAGES: &[&str] = &["systemd", "systemd-sysv", "dbus", "iproute2"];

/// Packages the golden needs besides Docker: sshd, and ifupdown with a DHCP client, because
/// PVE writes `/etc/network/interfaces` with `iface eth0 inet dhcp` at every start
/// (docs/guests.md, "Start") and nothing else would bring eth0 up.
pub const BASE_PACKAGES: &[&str] = &[
    "openssh-server",
    "ifupdown",
    "isc-dhcp-client",
    "ca-certificates",
    "curl",
];
/// Docker from Docker's own apt repository (the seed's recipe).
pub const DOCKER_PACKAGES: &[&str] = &["docker-ce", "docker-ce-cli", "containerd.io"];
/// Debian's own Docker (`felhom golden build --docker debian`): it comes from the Debian
/// mirror, so a golden can be built where Docker's repository is not reachable. `docker.io`
/// brings the daemon (`/usr/sbin/dockerd`), containerd, runc and tini; the `docker` command
/// is in `docker-cli`, only a Recommends of `docker.io`, which mmdebstrap does not install.
pub const DEBIAN_DOCKER_PACKAGES: &[&str] = &["docker.io", "docker-cli"];
/// `overlay2` is the overlay storage driver Docker's graphdriver store uses; in an
/// unprivileged LXC guest with nesting=1 Docker 28+ reports the containerd `overlayfs`
/// snapshotter (F6). Pinning `overlay2` keeps Docker off `vfs` (a full copy per layer),
/// which is what it silently falls back to when overlay is unavailable.
pub const DOCKER_DAEMON_JSON: &str = "{\n  \"storage-driver\": \"overlay2\"\n}\n";
/// The DHCP clients ifupdown's `inet dhcp` method can run (dhclient, dhcpcd, udhcpc), by the
/// Debian package that installs them.
pub const DHCP_CLIENT_PACKAGES: &[&str] = &["isc-dhcp-client", "dhcpcd-base", "dhcpcd", "udhcpc"];
/// Storage drivers inspection accepts.
pub const OVERLAY_DRIVERS: &[&str] = &["overlay2", "overlayfs"];

/// The identity clean (seed §2 step 3), plus DHCP leases/DUIDs and the random seed
/// (docs/lessons.md A5), and the build machine's DNS servers (PVE writes `/etc/resolv.conf`
/// at every start; an offline build would otherwise ship the build host's resolver to every
/// customer).
/// Shell lines, run inside the build guest by [`guest_finish_script`].
pub const IDENTITY_CLEAN: &[&str] = &[
    "systemctl stop docker containerd || true",
    "apt-get clean",
    "rm -rf /var/lib/apt/lists/*",
    "rm -f /etc/ssh/ssh_host_*",
    "truncate -s 0 /etc/machine-id",
    "rm -f /var/lib/dbus/machine-id",
    "ln -sf /etc/machine-id /var/lib/dbus/machine-id",
    "rm -f /var/lib/dhcp/*.leases /var/lib/dhcpcd/* /etc/dhcpcd.duid",
    "rm -f /var/lib/systemd/random-seed",
    "find /var/log -type f -exec truncate -s 0 {} +",
    "rm -rf /var/log/journal/*",
    "rm -f /root/.bash_history /root/.zsh_history",
    "rm -f /etc/hostname",
    "rm -f /etc/resolv.conf",
    "touch /etc/resolv.conf",
];

/// Where the first-boot unit lives in the guest.
pub fn first_boot_unit_path() -> String {
    format!("/etc/systemd/system/{FIRST_BOOT_UNIT_NAME}")
}

/// The symlink `systemctl enable` makes for the first-boot unit (its `WantedBy=`).
pub fn first_boot_unit_wants_link() -> String {
    format!("/etc/systemd/system/multi-user.target.wants/{FIRST_BOOT_UNIT_NAME}")
}

/// Ends each here-document in [`guest_finish_script`]; no embedded file may contain it as a
/// line (tested).
pub const HEREDOC_END: &str = "FELHOM_EOF";

/// What the in-guest finishing step writes besides the identity clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GuestFinish {
    /// Write `/etc/docker/daemon.json` (overlay2 pinned).
    pub docker_daemon_json: bool,
    /// Write and enable the first-boot SSH host-key unit. Off only to build a broken golden
    /// on purpose (the failure tests).
    pub first_boot_unit: bool,
}

impl Default for GuestFinish {
    fn default() -> Self {
        GuestFinish {
            docker_daemon_json: true,
            first_boot_unit: true,
        }
    }
}

/// The last step of every golden build, as one POSIX shell script run inside the build
/// guest: Docker's `daemon.json`, the first-boot unit (written, then enabled with
/// `systemctl enable` so its `WantedBy=` link exists), then the identity clean.
///
/// This is the single source of the golden's finishing touches: `felhom golden recipe` pipes
/// it into `pct exec` on a PVE host, `felhom golden build` runs it in mmdebstrap's chroot.
/// Both run exactly this text, so the two kinds of golden cannot drift apart.
pub fn guest_finish_script(f: GuestFinish) -> String {
    let mut s = String::from(
        "# felhom golden: finish inside the build guest (generated by felhom)\nset -eu\n",
    );
    if f.docker_daemon_json {
        s.push_str(&format!(
            "mkdir -p /etc/docker\ncat > /etc/docker/daemon.json <<'{HEREDOC_END}'\n{DOCKER_DAEMON_JSON}{HEREDOC_END}\n"
        ));
    }
    if f.first_boot_unit {
        s.push_str(&format!(
            "cat > {} <<'{HEREDOC_END}'\n{FIRST_BOOT_UNIT}{HEREDOC_END}\nsystemctl enable {FIRST_BOOT_UNIT_NAME}\n",
            first_boot_unit_path()
        ));
    }
    for line in IDENTITY_CLEAN {
        s.push_str(line);
        s.push('\n');
    }
    s
}

#[derive(Debug, Clone, Serialize)]
pub struct RecipeParams {
    pub vmid: u32,
    pub storage: String,
    pub bridge: String,
    pub template: String,
    pub backup_storage: String,
}

impl Default for RecipeParams {
    fn default() -> Self {
        RecipeParams {
            vmid: 9100,
            storage: "local-lvm".into(),
            bridge: "vmbr0".into(),
            template: "local:vztmpl/debian-13-standard_13.1-2_amd64.tar.zst".into(),
            backup_storage: "local".into(),
        }
    }
}

impl RecipeParams {
    /// Every value is checked before it goes into a shell script.
    pub fn validate(&self) -> Result<(), Vec<crate::spec::FieldError>> {
        use crate::spec::{Bridge, FieldError, StorageId};
        let mut errs = Vec::new();
        let mut e = |field: &str, rule: String| {
            errs.push(FieldError {
                field: field.into(),
                rule,
            })
        };
        if pve_api::Vmid::try_from(self.vmid).is_err() {
            e(
                "--vmid",
                format!("must be 100–999999999; got {}", self.vmid),
            );
        }
        if let Err(r) = self.storage.parse::<StorageId>() {
            e("--storage", r);
        }
        if let Err(r) = self.backup_storage.parse::<StorageId>() {
            e("--backup-storage", r);
        }
        if let Err(r) = self.bridge.parse::<Bridge>() {
            e("--bridge", r);
        }
        let tpl_ok = self.template.split_once(':').is_some_and(|(sid, rest)| {
            sid.parse::<StorageId>().is_ok()
                && rest.strip_prefix("vztmpl/").is_some_and(|f| {
                    !f.is_empty()
                        && !f.starts_with('.')
                        && f.len() <= 200
                        && f.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+')
                        })
                        && (f.ends_with(".tar.zst")
                            || f.ends_with(".tar.gz")
                            || f.ends_with(".tar.xz"))
                })
        });
        if !tpl_ok {
            e("--template", format!("must be '<storage>:vztmpl/<file>.tar.(zst|gz|xz)' with a plain file name; got {}", crate::spec::show_value(&self.template)));
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

/// The root-side recipe as a POSIX shell script.
pub fn recipe(p: &RecipeParams) -> String {
    format!(
        r#"#!/bin/sh
# felhom golden base recipe (run as root on the PVE host). Generated by `felhom golden recipe`.
# Debian 13 (trixie), unprivileged, nesting=1,keyctl=1 (keyctl is root-only: F5), Docker from
# Docker's apt repository, identity cleaned, a first-boot unit for SSH host keys (F3).
set -eu

VMID={vmid}
TEMPLATE='{template}'
STORAGE='{storage}'
BRIDGE='{bridge}'
BACKUP_STORAGE='{backup}'

in_guest() {{
    pct exec "$VMID" -- sh -c "$1"
}}

# 1. Create the build guest (the one root step: keyctl=1 needs root@pam).
pct create "$VMID" "$TEMPLATE" \
    --hostname felhom-golden --unprivileged 1 --features nesting=1,keyctl=1 \
    --rootfs "$STORAGE:8" --cores 2 --memory 2048 \
    --net0 "name=eth0,bridge=$BRIDGE,ip=dhcp" --onboot 0
pct start "$VMID"
sleep 5

# 2. Base packages: sshd, and ifupdown + a DHCP client (PVE configures eth0 for DHCP at start).
in_guest 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {base}'

# 3. Docker from Docker's official apt repository for Debian 13 (trixie), with its signing key.
in_guest 'install -m 0755 -d /etc/apt/keyrings'
in_guest 'curl -fsSL https://download.docker.com/linux/debian/gpg -o /etc/apt/keyrings/docker.asc'
in_guest 'chmod a+r /etc/apt/keyrings/docker.asc'
# The $(…) is meant to run inside the guest, not here:
# shellcheck disable=SC2016
in_guest 'echo "deb [arch=$(dpkg --print-architecture) signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian trixie stable" > /etc/apt/sources.list.d/docker.list'
in_guest 'apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y {docker}'

# 4. Finish inside the guest: Docker's daemon.json, the first-boot unit that makes SSH host
#    keys when they are missing (not on ConditionFirstBoot), enabled, then the identity clean.
#    `felhom golden build` runs this same script in its build chroot.
pct exec "$VMID" -- sh -eu <<'FELHOM_GUEST'
{finish}FELHOM_GUEST

# 5. Stop and archive.
pct stop "$VMID"
vzdump "$VMID" --storage "$BACKUP_STORAGE" --mode stop --compress zstd
echo "golden archived; check it with: felhom golden inspect <archive>"
"#,
        vmid = p.vmid,
        template = p.template,
        storage = p.storage,
        bridge = p.bridge,
        backup = p.backup_storage,
        base = BASE_PACKAGES.join(" "),
        docker = DOCKER_PACKAGES.join(" "),
        finish = guest_finish_script(GuestFinish::default()),
    )
}

/// Defects a built archive can be given on purpose (tests, demos of inspection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Defect {
    SshKeysLeftIn,
    NoFirstBootUnit,
    FirstBootUnitConditionedOnFirstBoot,
    FirstBootUnitNotEnabled,
    MachineIdMissing,
    MachineIdNonEmpty,
    NestingOff,
    KeyctlOff,
    Privileged,
    DockerMissing,
    HistoryLeftIn,
    NoDhcpClient,
    NoIfupdown,
}

#[derive(Debug, Clone, Default)]
pub struct GoldenBuildOptions {
    pub defects: Vec<Defect>,
    /// A large incompressible file, streamed (for memory measurements).
    pub padding_bytes: u64,
}

/// The hostname a golden is archived with (PVE restores it unless the request sets one).
pub const GOLDEN_HOSTNAME: &str = "felhom-golden";

/// The golden's `pct.conf`, as vzdump writes it (seed §2 step 5), from the values that vary.
/// Every golden felhom writes (synthetic or built) renders its config here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoldenConf {
    /// `net0`'s MAC. PVE keeps it on a restore without `unique=1`; felhom sets its own.
    pub hwaddr: String,
    pub unprivileged: bool,
    pub nesting: bool,
    /// Root-only to set (F5), so it only reaches customer guests through the archive.
    pub keyctl: bool,
}

impl GoldenConf {
    /// Unprivileged, nesting=1, keyctl=1: what a customer guest needs for Docker.
    pub fn new(hwaddr: &str) -> GoldenConf {
        GoldenConf {
            hwaddr: hwaddr.to_string(),
            unprivileged: true,
            nesting: true,
            keyctl: true,
        }
    }

    pub fn render(&self) -> String {
        let b = |v: bool| u8::from(v);
        format!(
            "arch: amd64\ncores: 2\nfeatures: keyctl={keyctl},nesting={nesting}\nhostname: {GOLDEN_HOSTNAME}\nmemory: 2048\nnet0: name=eth0,bridge=vmbr0,hwaddr={hwaddr},ip=dhcp,type=veth\nonboot: 0\nostype: debian\nrootfs: local-lvm:vm-9100-disk-0,size=8G\nswap: 512\nunprivileged: {unpriv}\n",
            keyctl = b(self.keyctl),
            nesting = b(self.nesting),
            hwaddr = self.hwaddr,
            unpriv = b(self.unprivileged),
        )
    }
}

/// The synthetic golden's `pct.conf` (its defects applied).
pub fn golden_pct_conf(opts: &GoldenBuildOptions) -> String {
    let has = |d| opts.defects.contains(&d);
    GoldenConf {
        hwaddr: "BC:24:11:63:43:F4".into(),
        unprivileged: !has(Defect::Privileged),
        nesting: !has(Defect::NestingOff),
        keyctl: !has(Defect::KeyctlOff),
    }
    .render()
}

fn dpkg_status(packages: &[&str]) -> String {
    packages
        .iter()
        .map(|p| {
            format!(
                "Package: {p}\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.0\n\n"
            )
        })
        .collect()
}

/// Build a golden archive in vzdump layout: a small synthetic Debian 13 rootfs with the
/// recipe's packages, daemon.json, first-boot unit and identity clean applied.
pub fn build_golden_archive(
    path: &Path,
    opts: &GoldenBuildOptions,
) -> Result<(), vzdump::VzdumpError> {
    let has = |d| opts.defects.contains(&d);
    let mut w = vzdump::ArchiveWriter::create(path, vzdump::Compression::from_path(path)?)?;
    w.pct_conf(&golden_pct_conf(opts))?;
    for d in [
        "etc",
        "etc/ssh",
        "etc/systemd",
        "etc/systemd/system",
        "etc/systemd/system/multi-user.target.wants",
        "etc/network",
        "etc/docker",
        "root",
        "usr",
        "usr/bin",
        "usr/sbin",
        "var",
        "var/lib",
        "var/lib/dbus",
        "var/lib/dpkg",
        "var/log",
        "tmp",
    ] {
        w.dir(
            d,
            if d == "root" {
                0o700
            } else if d == "tmp" {
                0o1777
            } else {
                0o755
            },
        )?;
    }
    w.file("etc/os-release", 0o644, b"PRETTY_NAME=\"Debian GNU/Linux 13 (trixie)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"13\"\nVERSION_CODENAME=trixie\nID=debian\n")?;
    w.file("etc/debian_version", 0o644, b"13.1\n")?;
    w.file(
        "etc/network/interfaces",
        0o644,
        b"auto lo\niface lo inet loopback\n",
    )?;
    w.file(
        "etc/ssh/sshd_config",
        0o644,
        b"Include /etc/ssh/sshd_config.d/*.conf\nKbdInteractiveAuthentication no\nUsePAM yes\n",
    )?;
    let mut pkgs: Vec<&str> = vec![
        "systemd",
        "systemd-sysv",
        "dbus",
        "openssh-server",
        "ifupdown",
        "isc-dhcp-client",
        "ca-certificates",
        "curl",
    ];
    if has(Defect::NoDhcpClient) {
        pkgs.retain(|p| *p != "isc-dhcp-client");
    }
    if has(Defect::NoIfupdown) {
        pkgs.retain(|p| *p != "ifupdown");
    }
    if !has(Defect::DockerMissing) {
        pkgs.extend(DOCKER_PACKAGES);
        w.file(
            "usr/bin/dockerd",
            0o755,
            b"#!/bin/sh\n# stand-in for the docker daemon binary\nexit 0\n",
        )?;
        w.file(
            "etc/docker/daemon.json",
            0o644,
            DOCKER_DAEMON_JSON.as_bytes(),
        )?;
    }
    w.file("var/lib/dpkg/status", 0o644, dpkg_status(&pkgs).as_bytes())?;
    w.file("usr/sbin/sshd", 0o755, b"#!/bin/sh\nexit 0\n")?;
    if !has(Defect::NoFirstBootUnit) {
        let unit = if has(Defect::FirstBootUnitConditionedOnFirstBoot) {
            FIRST_BOOT_UNIT.replace(
                "ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key",
                "ConditionFirstBoot=yes",
            )
        } else {
            FIRST_BOOT_UNIT.to_string()
        };
        w.file(&first_boot_unit_path(), 0o644, unit.as_bytes())?;
        if !has(Defect::FirstBootUnitNotEnabled) {
            w.symlink(&first_boot_unit_wants_link(), &first_boot_unit_path())?;
        }
    }
    if has(Defect::SshKeysLeftIn) {
        let seed: [u8; 32] = rand::random();
        let key = russh::keys::PrivateKey::from(
            russh::keys::ssh_key::private::Ed25519Keypair::from_seed(&seed),
        );
        let pem = key
            .to_openssh(russh::keys::ssh_key::LineEnding::LF)
            .map_err(|e| vzdump::VzdumpError::BadEntry {
                path: "etc/ssh/ssh_host_ed25519_key".into(),
                message: e.to_string(),
            })?;
        let public = key.public_key().to_openssh().unwrap_or_default();
        w.file("etc/ssh/ssh_host_ed25519_key", 0o600, pem.as_bytes())?;
        w.file(
            "etc/ssh/ssh_host_ed25519_key.pub",
            0o644,
            format!("{public} root@felhom-golden\n").as_bytes(),
        )?;
    }
    if !has(Defect::MachineIdMissing) {
        let mid: &[u8] = if has(Defect::MachineIdNonEmpty) {
            b"0123456789abcdef0123456789abcdef\n"
        } else {
            b""
        };
        w.file("etc/machine-id", 0o444, mid)?;
    }
    w.symlink("var/lib/dbus/machine-id", "/etc/machine-id")?;
    if has(Defect::HistoryLeftIn) {
        w.file(
            "root/.bash_history",
            0o600,
            b"apt-get install -y docker-ce\ncat /etc/shadow\n",
        )?;
    }
    if opts.padding_bytes > 0 {
        // Pseudo-random bytes (xorshift) so zstd cannot squeeze them away; streamed.
        struct Noise(u64, u64);
        impl Read for Noise {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(self.1 as usize);
                for b in &mut buf[..n] {
                    self.0 ^= self.0 << 13;
                    self.0 ^= self.0 >> 7;
                    self.0 ^= self.0 << 17;
                    *b = self.0 as u8;
                }
                self.1 -= n as u64;
                Ok(n)
            }
        }
        w.dir("var/lib/felhom-padding", 0o755)?;
        w.file_from_reader(
            "var/lib/felhom-padding/blob",
            0o644,
            opts.padding_bytes,
            Noise(0x9E37_79B9_7F4A_7C15, opts.padding_bytes),
        )?;
    }
    w.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub id: &'static str,
    pub severity: Severity,
    pub path: String,
    pub message: String,
    pub fix: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
    pub entries: u64,
    pub bytes: u64,
}

impl Report {
    pub fn error_count(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Error)
            .count()
    }
    pub fn warning_count(&self) -> usize {
        self.findings
            .iter()
            .filter(|f| f.severity == Severity::Warning)
            .count()
    }
    pub fn ids(&self) -> Vec<&'static str> {
        self.findings.iter().map(|f| f.id).collect()
    }
    /// 0 clean (warnings allowed), 1 findings with errors.
    pub fn exit_code(&self) -> i32 {
        if self.error_count() > 0 {
            1
        } else {
            0
        }
    }
}

/// What the archive holds, gathered in one streaming pass.
#[derive(Default)]
struct Seen {
    pct_conf: Option<String>,
    ssh_keys: Vec<String>,
    units: BTreeMap<String, String>,
    wants: BTreeSet<String>,
    machine_id: Option<String>,
    dbus_machine_id: Option<(vzdump::EntryKind, u64)>,
    histories: Vec<String>,
    hostname: Option<String>,
    logs: Vec<String>,
    dockerd: bool,
    daemon_json: Option<String>,
    dpkg: BTreeSet<String>,
    leases: Vec<String>,
    duids: Vec<String>,
    random_seed: bool,
    authorized_keys: bool,
}

/// How many paths of one kind (logs, histories, key files…) a report lists, and how many
/// names a set (installed packages, enabled units) keeps: a hostile archive of millions of
/// tiny members must not grow the inspection without bound.
const MAX_LISTED: usize = 1000;
const MAX_NAMES: usize = 100_000;

fn push_listed(v: &mut Vec<String>, p: &str) {
    if v.len() < MAX_LISTED {
        v.push(p.to_string());
    }
}

/// Installed packages from dpkg's status file, one line at a time (lines capped at 64 KiB):
/// the file is megabytes on a real system and anything in a hostile archive.
fn read_dpkg_status(r: &mut dyn Read, out: &mut BTreeSet<String>) {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(r);
    let (mut pkg, mut installed) = (None::<String>, false);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = (&mut r)
            .take(64 * 1024)
            .read_until(b'\n', &mut line)
            .unwrap_or(0);
        let text = String::from_utf8_lossy(&line);
        let l = text.trim_end_matches('\n');
        if n == 0 || l.is_empty() {
            if let (Some(p), true) = (pkg.take(), installed) {
                if out.len() < MAX_NAMES {
                    out.insert(p);
                }
            }
            installed = false;
            if n == 0 {
                return;
            }
        } else if let Some(p) = l.strip_prefix("Package: ") {
            pkg = Some(p.trim().to_string());
        } else if l.starts_with("Status:") && l.ends_with(" installed") {
            installed = true;
        }
    }
}

fn read_small(r: &mut dyn Read, cap: u64) -> String {
    let mut s = String::new();
    let mut buf = Vec::new();
    let _ = r.take(cap).read_to_end(&mut buf);
    s.push_str(&String::from_utf8_lossy(&buf));
    s
}

/// Stream an archive and report what is wrong with it as a golden.
pub fn inspect<R: Read>(reader: R, c: vzdump::Compression) -> Result<Report, vzdump::VzdumpError> {
    let mut seen = Seen::default();
    let mut report = Report::default();
    vzdump::scan(reader, c, |e, r| {
        report.entries += 1;
        report.bytes += e.size;
        let p = e.path.as_str();
        let file = e.kind == vzdump::EntryKind::File;
        match p {
            vzdump::PCT_CONF if file => seen.pct_conf = Some(read_small(r, 1 << 20)),
            "etc/machine-id" if file => seen.machine_id = Some(read_small(r, 4096)),
            "var/lib/dbus/machine-id" => seen.dbus_machine_id = Some((e.kind, e.size)),
            "etc/hostname" if file => seen.hostname = Some(read_small(r, 4096)),
            "usr/bin/dockerd" | "usr/sbin/dockerd" => seen.dockerd = true,
            "etc/docker/daemon.json" if file => seen.daemon_json = Some(read_small(r, 1 << 20)),
            "var/lib/dpkg/status" if file => read_dpkg_status(r, &mut seen.dpkg),
            "var/lib/systemd/random-seed" => seen.random_seed = true,
            "root/.ssh/authorized_keys" if e.size > 0 => seen.authorized_keys = true,
            "etc/dhcpcd.duid" | "var/lib/dhcpcd/duid" => push_listed(&mut seen.duids, p),
            _ if p.starts_with("etc/ssh/ssh_host_") && file => push_listed(&mut seen.ssh_keys, p),
            _ if (p.ends_with("/.bash_history")
                || p.ends_with("/.zsh_history")
                || p.ends_with("/.ash_history"))
                && e.size > 0 =>
            {
                push_listed(&mut seen.histories, p)
            }
            _ if p.starts_with("var/log/") && file && e.size > 0 => push_listed(&mut seen.logs, p),
            _ if (p.starts_with("var/lib/dhcp/") && p.ends_with(".leases")
                || p.starts_with("var/lib/dhcpcd/"))
                && file
                && e.size > 0 =>
            {
                push_listed(&mut seen.leases, p)
            }
            _ if p.starts_with("etc/systemd/system/") => {
                let dir_is_wants = p.rsplit('/').nth(1).is_some_and(|d| d.ends_with(".wants"));
                if dir_is_wants && e.kind == vzdump::EntryKind::Symlink {
                    if let Some(t) = &e.link_target {
                        if seen.wants.len() < MAX_NAMES {
                            seen.wants
                                .insert(t.rsplit('/').next().unwrap_or(t).to_string());
                        }
                    }
                } else if file && p.ends_with(".service") && seen.units.len() < MAX_LISTED {
                    // Only the key units are checked further: keep no other unit's text.
                    let text = read_small(r, 64 * 1024);
                    if runs_keygen(&text) {
                        seen.units
                            .insert(p.rsplit('/').next().unwrap_or(p).to_string(), text);
                    }
                }
            }
            _ => {}
        }
        Ok(vzdump::Flow::Continue)
    })?;
    let Some(conf_text) = seen.pct_conf.take() else {
        return Err(vzdump::VzdumpError::NoPctConf);
    };
    let conf = vzdump::parse_pct_conf(&conf_text)?;
    let mut f = Findings(&mut report.findings);
    check_conf(&conf, &mut f);
    check_fs(&seen, &mut f);
    report
        .findings
        .sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(b.id)));
    Ok(report)
}

pub fn inspect_path(path: &Path) -> Result<Report, vzdump::VzdumpError> {
    let c = vzdump::Compression::from_path(path)?;
    inspect(std::io::BufReader::new(std::fs::File::open(path)?), c)
}

struct Findings<'a>(&'a mut Vec<Finding>);

impl Findings<'_> {
    fn add(
        &mut self,
        id: &'static str,
        severity: Severity,
        path: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Finding {
            id,
            severity,
            path: path.to_string(),
            message: message.into(),
            fix: fix.into(),
        });
    }
}

fn check_conf(conf: &vzdump::PctConf, f: &mut Findings<'_>) {
    let pc = vzdump::PCT_CONF;
    if conf.get("unprivileged") != Some("1") {
        f.add("privileged", Severity::Error, pc, "the golden is a privileged container; restoring it needs Sys.Modify on / and gives customers root on the host", "recreate the build guest with `pct create … --unprivileged 1`");
    }
    let features: pve_api::Features = conf
        .get("features")
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    if !features.nesting {
        f.add(
            "nesting-off",
            Severity::Error,
            pc,
            "features lack nesting=1: systemd and Docker in the guest need it",
            "pct set <vmid> --features nesting=1,keyctl=1 (as root) before vzdump",
        );
    }
    if !features.keyctl {
        f.add("keyctl-off", Severity::Error, pc, "features lack keyctl=1: Docker/runc fail with keyctl ENOSYS (F5); only root can set it, and it only reaches customer guests through the archive", "pct set <vmid> --features nesting=1,keyctl=1 (as root) before vzdump");
    }
    match conf.get("ostype") {
        Some("debian") => {}
        Some(other) => f.add(
            "ostype-not-debian",
            Severity::Warning,
            pc,
            format!("ostype is '{other}'; felhom's golden recipe is Debian 13"),
            "build the golden from the Debian 13 template",
        ),
        None => f.add(
            "ostype-missing",
            Severity::Warning,
            pc,
            "no ostype: PVE will guess it from the rootfs at every start",
            "pct set <vmid> --ostype debian",
        ),
    }
}

/// A unit that regenerates SSH host keys (`ExecStart=… ssh-keygen -A`).
fn runs_keygen(unit: &str) -> bool {
    unit.lines().any(|l| {
        l.trim_start().starts_with("ExecStart") && l.contains("ssh-keygen") && l.contains("-A")
    })
}

fn check_fs(s: &Seen, f: &mut Findings<'_>) {
    for k in &s.ssh_keys {
        f.add("ssh-host-keys-present", Severity::Error, k, "SSH host keys left in the golden: every guest restored from it shares this identity (F3)", "rm -f /etc/ssh/ssh_host_* in the build guest before vzdump");
    }
    let keygen: Vec<(&String, &String)> = s
        .units
        .iter()
        .filter(|(_, text)| runs_keygen(text))
        .collect();
    let unit_path = |n: &str| format!("etc/systemd/system/{n}");
    if keygen.is_empty() {
        f.add("first-boot-unit-missing", Severity::Error, &unit_path(FIRST_BOOT_UNIT_NAME), "no unit regenerates SSH host keys: restored guests boot without keys and ssh.service fails (F3)", format!("install {FIRST_BOOT_UNIT_NAME} from `felhom golden recipe` and `systemctl enable` it"));
    }
    for (name, text) in &keygen {
        let keyed_on_files = text.lines().any(|l| {
            l.trim_start()
                .starts_with("ConditionPathExists=!/etc/ssh/ssh_host_")
        });
        if text.lines().any(|l| l.trim() == "ConditionFirstBoot=yes") || !keyed_on_files {
            f.add("first-boot-unit-wrong-condition", Severity::Error, &unit_path(name), "the key unit is not conditioned on missing key files (ConditionFirstBoot never fires: an empty machine-id is not a first boot)", "use ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key as in `felhom golden recipe`");
        }
        if !s.wants.contains(*name) {
            f.add(
                "first-boot-unit-not-enabled",
                Severity::Error,
                &unit_path(name),
                "the key unit is not enabled (no multi-user.target.wants link)",
                format!("systemctl enable {name}"),
            );
        }
    }
    match &s.machine_id {
        None => f.add("machine-id-missing", Severity::Error, "etc/machine-id", "/etc/machine-id is missing: that is a first boot, which runs systemd-firstboot (it can wait for input on a console)", "truncate -s 0 /etc/machine-id (empty, not deleted)"),
        Some(m) if !m.trim().is_empty() => f.add("machine-id-not-empty", Severity::Error, "etc/machine-id", "/etc/machine-id holds an id: every guest shares it (and DHCP client ids derived from it)", "truncate -s 0 /etc/machine-id"),
        Some(_) => {}
    }
    if let Some((kind, size)) = s.dbus_machine_id {
        if kind == vzdump::EntryKind::File && size > 0 {
            f.add("dbus-machine-id-file", Severity::Error, "var/lib/dbus/machine-id", "/var/lib/dbus/machine-id is a file with an id; systemd reads it before generating one", "rm -f /var/lib/dbus/machine-id; ln -sf /etc/machine-id /var/lib/dbus/machine-id");
        }
    }
    for h in &s.histories {
        f.add(
            "shell-history",
            Severity::Error,
            h,
            "shell history left in the golden (the build's commands, possibly secrets)",
            format!("rm -f /{h}"),
        );
    }
    if s.hostname.as_deref().is_some_and(|h| !h.trim().is_empty()) {
        // PVE rewrites /etc/hostname at every start, so this cannot leak at runtime; it
        // still says the identity clean did not run.
        f.add("hostname-leftover", Severity::Warning, "etc/hostname", "/etc/hostname is left from the build guest (PVE overwrites it at start, but the identity clean did not run)", "rm -f /etc/hostname");
    }
    for l in &s.logs {
        f.add(
            "logs-not-truncated",
            Severity::Warning,
            l,
            "log file not truncated (carries the build guest's history)",
            "find /var/log -type f -exec truncate -s 0 {} +",
        );
    }
    // Docker's own docker-ce and Debian's docker.io both count; their dockerd lives in
    // /usr/bin and /usr/sbin respectively.
    let docker_pkg = s.dpkg.contains("docker-ce") || s.dpkg.contains("docker.io");
    if !s.dockerd && !docker_pkg {
        f.add(
            "docker-missing",
            Severity::Error,
            "usr/bin/dockerd",
            "Docker is not installed",
            "install docker-ce from Docker's apt repository (see `felhom golden recipe`), or build with `felhom golden build --docker debian`",
        );
    } else {
        let driver = s
            .daemon_json
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| {
                v.get("storage-driver")
                    .and_then(|d| d.as_str())
                    .map(str::to_string)
            });
        match driver {
            Some(d) if OVERLAY_DRIVERS.contains(&d.as_str()) => {}
            Some(d) => f.add(
                "docker-storage-driver",
                Severity::Error,
                "etc/docker/daemon.json",
                format!("Docker storage driver is '{d}', not overlay (F6)"),
                "set \"storage-driver\": \"overlay2\" in /etc/docker/daemon.json",
            ),
            None => f.add(
                "docker-storage-driver",
                Severity::Error,
                "etc/docker/daemon.json",
                "no overlay storage driver configured for Docker (it may fall back to vfs)",
                "write /etc/docker/daemon.json as in `felhom golden recipe`",
            ),
        }
    }
    // PVE writes `iface eth0 inet dhcp` into /etc/network/interfaces at every start
    // (docs/guests.md, "Start"); only ifupdown reads that file, and its dhcp method runs one of
    // these clients. Missing either, the guest never gets its DHCP address.
    if !s.dpkg.contains("ifupdown") {
        f.add("no-ifupdown", Severity::Error, "var/lib/dpkg/status", "ifupdown is not installed: PVE configures eth0 in /etc/network/interfaces at start, and nothing else reads that file, so the guest can never get its address", "apt-get install -y ifupdown");
    }
    if !DHCP_CLIENT_PACKAGES.iter().any(|p| s.dpkg.contains(*p)) {
        f.add("no-dhcp-client", Severity::Error, "var/lib/dpkg/status", format!("no DHCP client is installed (one of {}): ifupdown's `inet dhcp` has nothing to run, so the guest can never get its address", DHCP_CLIENT_PACKAGES.join(", ")), "apt-get install -y isc-dhcp-client");
    }
    for l in &s.leases {
        f.add(
            "dhcp-lease-left",
            Severity::Warning,
            l,
            "a DHCP lease from the build guest",
            format!("rm -f /{l}"),
        );
    }
    for d in &s.duids {
        f.add(
            "dhcp-duid-left",
            Severity::Warning,
            d,
            "a DHCP DUID: clones would share their DHCP identity",
            format!("rm -f /{d}"),
        );
    }
    if s.random_seed {
        f.add(
            "random-seed-left",
            Severity::Warning,
            "var/lib/systemd/random-seed",
            "systemd's random seed is shared by every guest made from the golden",
            "rm -f /var/lib/systemd/random-seed",
        );
    }
    if s.authorized_keys {
        f.add(
            "root-authorized-keys",
            Severity::Warning,
            "root/.ssh/authorized_keys",
            "root's authorized_keys is baked into every customer guest",
            "rm -f /root/.ssh/authorized_keys unless every guest should trust these keys",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipe_carries_the_one_unit_and_validates_inputs() {
        let r = recipe(&RecipeParams::default());
        assert!(r.contains(FIRST_BOOT_UNIT));
        assert!(r.contains("--features nesting=1,keyctl=1"));
        assert!(r.contains(
            "vzdump \"$VMID\" --storage \"$BACKUP_STORAGE\" --mode stop --compress zstd"
        ));
        let bad = RecipeParams {
            bridge: "vmbr0; rm -rf /".into(),
            template: "local:vztmpl/../x.tar.zst".into(),
            vmid: 5,
            ..RecipeParams::default()
        };
        let errs = bad.validate().unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["--vmid", "--bridge", "--template"]);
    }

    /// One source: the recipe carries the finish script verbatim, which carries the unit,
    /// daemon.json and every identity-clean line; `golden build` runs the same function.
    #[test]
    fn recipe_and_builder_share_one_finish_script() {
        let finish = guest_finish_script(GuestFinish::default());
        let r = recipe(&RecipeParams::default());
        assert!(r.contains(&format!("<<'FELHOM_GUEST'\n{finish}FELHOM_GUEST\n")));
        assert!(finish.contains(FIRST_BOOT_UNIT));
        assert!(finish.contains(DOCKER_DAEMON_JSON));
        assert!(finish.contains(&format!("systemctl enable {FIRST_BOOT_UNIT_NAME}")));
        for line in IDENTITY_CLEAN {
            assert!(finish.contains(&format!("\n{line}\n")), "{line}");
        }
        // The unit is written before the clean, and enabled after it is written.
        let at = |needle: &str| finish.find(needle).unwrap();
        assert!(at(&first_boot_unit_path()) < at("systemctl enable"));
        assert!(at("systemctl enable") < at(IDENTITY_CLEAN[0]));
        // No embedded file can end its here-document early.
        for text in [FIRST_BOOT_UNIT, DOCKER_DAEMON_JSON] {
            assert!(!text
                .lines()
                .any(|l| l == HEREDOC_END || l == "FELHOM_GUEST"));
            assert!(text.ends_with('\n'));
        }
        for line in IDENTITY_CLEAN {
            assert_ne!(*line, "FELHOM_GUEST");
        }
        let bare = guest_finish_script(GuestFinish {
            docker_daemon_json: false,
            first_boot_unit: false,
        });
        assert!(!bare.contains("daemon.json") && !bare.contains(FIRST_BOOT_UNIT_NAME));
        assert!(bare.ends_with(&format!("{}\n", IDENTITY_CLEAN.join("\n"))));
    }

    #[test]
    fn golden_conf_is_the_archived_config() {
        let text = GoldenConf::new("02:11:22:33:44:55").render();
        let conf = vzdump::parse_pct_conf(&text).unwrap();
        assert_eq!(conf.get("unprivileged"), Some("1"));
        assert_eq!(conf.get("features"), Some("keyctl=1,nesting=1"));
        assert_eq!(conf.get("ostype"), Some("debian"));
        assert_eq!(conf.get("arch"), Some("amd64"));
        assert_eq!(conf.get("hostname"), Some(GOLDEN_HOSTNAME));
        assert_eq!(
            conf.get("net0"),
            Some("name=eth0,bridge=vmbr0,hwaddr=02:11:22:33:44:55,ip=dhcp,type=veth")
        );
        assert!(conf.get("rootfs").is_some());
        assert_eq!(
            golden_pct_conf(&GoldenBuildOptions {
                defects: vec![Defect::KeyctlOff],
                padding_bytes: 0
            })
            .lines()
            .find(|l| l.starts_with("features")),
            Some("features: keyctl=0,nesting=1")
        );
    }
}
