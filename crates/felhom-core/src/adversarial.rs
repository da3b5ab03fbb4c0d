//! Bad input, kept as data: hostile or broken guest specs, each with the field its error
//! must name. The integration tests run every one through `provision` and `plan` and the
//! reliability benchmark counts the writes they cause (both must see zero), so the list of
//! attacks the product is proven against lives in one place.

/// A data mount point in the spec text [`base_spec`] makes.
pub const BASE_MOUNT: &str =
    "\n[[mount]]\nstorage = \"local-lvm\"\nsize = \"4G\"\npath = \"/srv/data\"\n";

/// A valid spec for one guest on the simulator's default node, storage and bridge; `extra`
/// is appended (e.g. mount tables).
pub fn base_spec(customer: &str, vmid: &str, golden: &str, extra: &str) -> String {
    format!(
        "customer = \"{customer}\"\nhostname = \"{customer}-app\"\nvmid = {vmid}\ngolden = \"{golden}\"\nnode = \"pve\"\nstorage = \"local-lvm\"\nrootfs_size = \"12G\"\nbridge = \"vmbr0\"\n{extra}"
    )
}

/// One bad spec.
#[derive(Debug, Clone)]
pub struct HostileSpec {
    pub name: &'static str,
    pub text: String,
    /// The field the error message must name.
    pub field: &'static str,
}

/// Every bad spec, built around a valid one at VMID 1300 restoring `golden` (which must
/// exist, so that only the injected fault is wrong).
pub fn hostile_specs(golden: &str) -> Vec<HostileSpec> {
    let base = |customer: &str, vmid: &str| base_spec(customer, vmid, golden, BASE_MOUNT);
    let with = |from: &str, to: &str| base("acme", "1300").replacen(from, to, 1);
    let add = |line: &str| with("bridge = \"vmbr0\"", &format!("bridge = \"vmbr0\"\n{line}"));
    let cases: Vec<(&'static str, String, &'static str)> = vec![
        (
            "hostname comma injection",
            with("hostname = \"acme-app\"", "hostname = \"acme,ip=10.0.0.1\""),
            "hostname",
        ),
        (
            "hostname newline injection",
            with(
                "hostname = \"acme-app\"",
                "hostname = \"acme\\nnet1: name=eth1\"",
            ),
            "hostname",
        ),
        (
            "hostname equals",
            with("hostname = \"acme-app\"", "hostname = \"acme=1\""),
            "hostname",
        ),
        (
            "hostname semicolon",
            with("hostname = \"acme-app\"", "hostname = \"acme;reboot\""),
            "hostname",
        ),
        (
            "hostname underscore",
            with("hostname = \"acme-app\"", "hostname = \"acme_app\""),
            "hostname",
        ),
        (
            "hostname label too long",
            with(
                "hostname = \"acme-app\"",
                &format!("hostname = \"{}\"", "a".repeat(64)),
            ),
            "hostname",
        ),
        (
            "hostname leading dash",
            with("hostname = \"acme-app\"", "hostname = \"-acme\""),
            "hostname",
        ),
        (
            "hostname empty",
            with("hostname = \"acme-app\"", "hostname = \"\""),
            "hostname",
        ),
        (
            "mount path injection",
            with("path = \"/srv/data\"", "path = \"/srv,mp=/etc\""),
            "mount[0].path",
        ),
        (
            "mount path relative",
            with("path = \"/srv/data\"", "path = \"srv/data\""),
            "mount[0].path",
        ),
        (
            "mount path traversal",
            with("path = \"/srv/data\"", "path = \"/srv/../etc\""),
            "mount[0].path",
        ),
        (
            "mount path system dir",
            with("path = \"/srv/data\"", "path = \"/etc\""),
            "mount[0].path",
        ),
        (
            "mount path newline",
            with("path = \"/srv/data\"", "path = \"/srv/data\\n\""),
            "mount[0].path",
        ),
        (
            "duplicate mount path",
            format!("{}{}", base("acme", "1300"), BASE_MOUNT),
            "mount[1].path",
        ),
        (
            "storage injection",
            with("storage = \"local-lvm\"", "storage = \"local-lvm,size=1\""),
            "storage",
        ),
        (
            "storage upper case",
            with("storage = \"local-lvm\"", "storage = \"Local\""),
            "storage",
        ),
        (
            "mount storage injection",
            base("acme", "1300").replace(
                "[[mount]]\nstorage = \"local-lvm\"",
                "[[mount]]\nstorage = \"x;y\"",
            ),
            "mount[0].storage",
        ),
        (
            "bridge injection",
            with("bridge = \"vmbr0\"", "bridge = \"vmbr0,firewall=1\""),
            "bridge",
        ),
        (
            "bridge too long",
            with("bridge = \"vmbr0\"", "bridge = \"averyveryverylongbridge\""),
            "bridge",
        ),
        ("cores zero", add("cores = 0"), "cores"),
        ("cores above PVE's maximum", add("cores = 8193"), "cores"),
        ("memory below PVE's minimum", add("memory = 15"), "memory"),
        (
            "memory as a string",
            add("memory = \"2048,swap=0\""),
            "memory",
        ),
        ("swap negative", add("swap = -1"), "swap"),
        ("onboot not a boolean", add("onboot = \"yes\""), "onboot"),
        ("VLAN tag out of range", add("tag = 4095"), "tag"),
        ("VLAN tag injection", add("tag = \"10,trunks=20\""), "tag"),
        (
            "ip injection",
            add("ip = \"10.0.0.5/24,gw=10.0.0.1\""),
            "ip",
        ),
        ("ip without prefix", add("ip = \"10.0.0.5\""), "ip"),
        ("ip network address", add("ip = \"10.0.0.0/24\""), "ip"),
        ("gw without a static ip", add("gw = \"10.0.0.1\""), "gw"),
        (
            "gw outside the subnet",
            add("ip = \"10.0.0.5/24\"\ngw = \"10.0.9.1\""),
            "gw",
        ),
        (
            "ip6 newline injection",
            add("ip6 = \"2001:db8::5/64\\nnet1: name=eth1\""),
            "ip6",
        ),
        (
            "gw6 outside the subnet",
            add("ip6 = \"2001:db8::5/64\"\ngw6 = \"2001:db9::1\""),
            "gw6",
        ),
        ("firewall not a boolean", add("firewall = 1"), "firewall"),
        (
            "nameserver injection",
            add("nameserver = [\"1.1.1.1;searchdomain=x\"]"),
            "nameserver[0]",
        ),
        (
            "searchdomain equals",
            add("searchdomain = [\"acme.example=1\"]"),
            "searchdomain[0]",
        ),
        ("vmid below PVE minimum", base("acme", "99"), "vmid"),
        ("vmid outside felhom range", base("acme", "5000"), "vmid"),
        ("vmid not a number", base("acme", "\"12a\""), "vmid"),
        ("vmid negative", base("acme", "-1"), "vmid"),
        (
            "rootfs shrink below golden",
            with("rootfs_size = \"12G\"", "rootfs_size = \"4G\""),
            "rootfs_size",
        ),
        (
            "rootfs relative size",
            with("rootfs_size = \"12G\"", "rootfs_size = \"+2G\""),
            "rootfs_size",
        ),
        (
            "rootfs bare bytes",
            with("rootfs_size = \"12G\"", "rootfs_size = \"10\""),
            "rootfs_size",
        ),
        (
            "rootfs zero",
            with("rootfs_size = \"12G\"", "rootfs_size = \"0G\""),
            "rootfs_size",
        ),
        (
            "rootfs wrong type",
            with("rootfs_size = \"12G\"", "rootfs_size = 12"),
            "rootfs_size",
        ),
        (
            "mount size fraction of KiB",
            with("size = \"4G\"", "size = \"0.5K\""),
            "mount[0].size",
        ),
        (
            "missing hostname",
            with("hostname = \"acme-app\"\n", ""),
            "hostname",
        ),
        (
            "missing golden",
            with(&format!("golden = \"{golden}\"\n"), ""),
            "golden",
        ),
        (
            "golden path traversal",
            with(golden, "local:backup/../../etc/passwd"),
            "golden",
        ),
        (
            "golden does not exist",
            with(
                golden,
                "local:backup/vzdump-lxc-9100-2020_01_01-00_00_00.tar.zst",
            ),
            "golden",
        ),
        (
            "unknown field",
            with("bridge = \"vmbr0\"", "bridge = \"vmbr0\"\nhostnmae = \"x\""),
            "hostnmae",
        ),
        (
            "tag with space",
            with(
                "bridge = \"vmbr0\"",
                "bridge = \"vmbr0\"\ntags = [\"bad tag\"]",
            ),
            "tags[0]",
        ),
        ("customer upper case", base("ACME", "1300"), "customer"),
        (
            "node injection",
            with("node = \"pve\"", "node = \"pve/../../x\""),
            "node",
        ),
        (
            "pool does not exist",
            with(
                "bridge = \"vmbr0\"",
                "bridge = \"vmbr0\"\npool = \"nosuchpool\"",
            ),
            "pool",
        ),
        (
            "bridge does not exist on the node",
            with("bridge = \"vmbr0\"", "bridge = \"vmbr9\""),
            "bridge",
        ),
        (
            "storage without rootdir",
            with("storage = \"local-lvm\"", "storage = \"local\""),
            "storage",
        ),
        (
            "not TOML",
            "customer = \"acme\nhostname = ".to_string(),
            "(file)",
        ),
        (
            "guest list with bad entry",
            format!(
                "[[guest]]\n{}\n[[guest]]\ncustomer = 1\n",
                base_spec("acme", "1300", golden, "")
            ),
            "guest[1].customer",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, text, field)| HostileSpec { name, text, field })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::GuestSpec;

    const GOLDEN: &str = "local:backup/vzdump-lxc-9100-2026_06_09-20_41_10.tar.zst";

    #[test]
    fn the_base_spec_is_valid() {
        GuestSpec::parse_many(&base_spec("acme", "1300", GOLDEN, BASE_MOUNT)).unwrap();
    }

    #[test]
    fn every_case_names_a_field_once() {
        let cases = hostile_specs(GOLDEN);
        let mut names = std::collections::BTreeSet::new();
        for c in &cases {
            assert!(names.insert(c.name), "two cases named {}", c.name);
        }
        // The fields a customer buys each have a case.
        for f in [
            "cores",
            "memory",
            "swap",
            "onboot",
            "tag",
            "ip",
            "gw",
            "ip6",
            "gw6",
            "firewall",
            "nameserver[0]",
            "searchdomain[0]",
        ] {
            assert!(
                cases.iter().any(|c| c.field == f),
                "no hostile case for {f}"
            );
        }
    }

    /// Cases that need the host (golden/pool existence, storage content, VMID range) are
    /// refused later; every other case must already fail to parse, naming its field.
    #[test]
    fn offline_cases_fail_to_parse_naming_the_field() {
        let cases = hostile_specs(GOLDEN);
        assert!(cases.len() >= 30);
        let mut parsed_fail = 0;
        for c in &cases {
            if let Err(e) = GuestSpec::parse_many(&c.text) {
                assert!(e.to_string().contains(c.field), "{}: {e}", c.name);
                parsed_fail += 1;
            }
        }
        assert!(parsed_fail >= 25, "only {parsed_fail} cases fail offline");
    }
}
