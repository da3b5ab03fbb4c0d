//! LXC endpoints (reference §1–§8).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{check_disk, check_node, PveClient};
use crate::error::ApiError;
use crate::property_string::{MountConfig, NetConfig, PropertyError};
use crate::task::Upid;
use crate::vmid::Vmid;
use std::time::Instant;

/// A guest config as `GET .../config` returns it: the key/value map and its `digest`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LxcConfig {
    pub values: BTreeMap<String, Value>,
    pub digest: Option<String>,
}

impl LxcConfig {
    /// A key that PVE sends as a JSON string (`hostname`, `netN`, `description`, …). Integer
    /// and boolean keys arrive as JSON numbers (reference §0); use [`LxcConfig::get_string`].
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).and_then(Value::as_str)
    }
    /// A key as text whatever its JSON type (`memory` → `"512"`).
    pub fn get_string(&self, key: &str) -> Option<String> {
        match self.values.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(u8::from(*b).to_string()),
            _ => None,
        }
    }
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.values.get(key)
    }
    pub fn net(&self, n: u32) -> Option<Result<NetConfig, PropertyError>> {
        self.get_str(&format!("net{n}")).map(str::parse)
    }
    /// `rootfs` or `mpN`.
    pub fn mount(&self, key: &str) -> Option<Result<MountConfig, PropertyError>> {
        let v = self.get_str(key)?;
        Some(if key == "rootfs" {
            MountConfig::parse_rootfs(v)
        } else {
            MountConfig::parse_mp(v)
        })
    }
    pub fn hostname(&self) -> Option<&str> {
        self.get_str("hostname")
    }
}

/// `GET /nodes/{node}/lxc` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LxcSummary {
    #[serde(deserialize_with = "int_or_string")]
    pub vmid: u32,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
}

/// One entry of `GET .../pending`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingEntry {
    pub key: String,
    /// The value in force now.
    #[serde(default)]
    pub value: Option<Value>,
    /// The value that takes effect at the next start.
    #[serde(default)]
    pub pending: Option<Value>,
    /// 1 (or 2, forced) when a delete of the key is pending.
    #[serde(default)]
    pub delete: Option<Value>,
}

impl PendingEntry {
    /// Whether the key's delete waits for the next start.
    pub fn delete_pending(&self) -> bool {
        match &self.delete {
            Some(Value::Number(n)) => n.as_u64().is_some_and(|d| d > 0),
            Some(Value::String(s)) => s != "0" && !s.is_empty(),
            Some(Value::Bool(b)) => *b,
            _ => false,
        }
    }
    /// The value in force now, as a string.
    pub fn value_str(&self) -> Option<&str> {
        self.value.as_ref().and_then(Value::as_str)
    }
}

/// `GET .../status/current` (reference §6.2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LxcStatus {
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub maxdisk: Option<u64>,
    #[serde(default)]
    pub uptime: Option<u64>,
    #[serde(default)]
    pub pid: Option<u64>,
}

/// One entry of `GET .../interfaces` (reference §7). Both the old (`hwaddr`, `inet`) and the
/// PVE 8.4+ fields (`hardware-address`, `ip-addresses`) are read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default)]
    pub hwaddr: Option<String>,
    #[serde(default, rename = "hardware-address")]
    pub hardware_address: Option<String>,
    #[serde(default)]
    pub inet: Option<String>,
    #[serde(default)]
    pub inet6: Option<String>,
    #[serde(default, rename = "ip-addresses")]
    pub ip_addresses: Vec<IpAddress>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpAddress {
    #[serde(rename = "ip-address")]
    pub ip_address: String,
    #[serde(rename = "ip-address-type")]
    pub ip_address_type: String,
    #[serde(default)]
    pub prefix: Option<u32>,
}

impl Interface {
    /// The MAC, from whichever field the server sent.
    pub fn mac(&self) -> Option<&str> {
        self.hwaddr.as_deref().or(self.hardware_address.as_deref())
    }
    /// The IPv4 address (`a.b.c.d/nn`), from `inet` or `ip-addresses`.
    pub fn ipv4(&self) -> Option<String> {
        self.inet.clone().or_else(|| {
            self.ip_addresses
                .iter()
                .rev()
                .find(|a| a.ip_address_type == "inet")
                .map(|a| match a.prefix {
                    Some(p) => format!("{}/{p}", a.ip_address),
                    None => a.ip_address.clone(),
                })
        })
    }
}

pub(crate) fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| serde::de::Error::custom("not a u32")),
        Value::String(s) => s.parse().map_err(serde::de::Error::custom),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

pub(crate) fn opt_int_or_string<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<u32>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => int_or_string(v).map(Some).map_err(serde::de::Error::custom),
    }
}

fn as_refs(params: &[(String, String)]) -> Vec<(&str, String)> {
    params
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect()
}

impl PveClient {
    /// The UPID an async call answered, noted with the moment its request was sent (the
    /// origin [`crate::durations`] measures task durations from).
    fn task_started(&self, answer: String, sent: Instant) -> Result<Upid, ApiError> {
        let upid: Upid = answer
            .parse()
            .map_err(|e: crate::task::UpidError| ApiError::Decode {
                message: e.to_string(),
            })?;
        self.durations().dispatched(&upid.to_string(), sent);
        Ok(upid)
    }

    pub async fn lxc_list(&self, node: &str) -> Result<Vec<LxcSummary>, ApiError> {
        check_node(node)?;
        self.get(&format!("/nodes/{node}/lxc"), &[]).await
    }

    /// `POST /nodes/{node}/lxc` (create, or restore with `restore=1`); returns the UPID.
    pub async fn lxc_create(
        &self,
        node: &str,
        params: &[(String, String)],
    ) -> Result<Upid, ApiError> {
        check_node(node)?;
        let sent = Instant::now();
        let answer = self
            .post(&format!("/nodes/{node}/lxc"), &as_refs(params))
            .await?;
        self.task_started(answer, sent)
    }

    pub async fn lxc_config(&self, node: &str, vmid: Vmid) -> Result<LxcConfig, ApiError> {
        check_node(node)?;
        let mut values: BTreeMap<String, Value> = self
            .get(&format!("/nodes/{node}/lxc/{vmid}/config"), &[])
            .await?;
        let digest = values
            .remove("digest")
            .and_then(|d| d.as_str().map(str::to_string));
        Ok(LxcConfig { values, digest })
    }

    /// `PUT .../config` (synchronous; LXC has no async POST). `digest` guards against a
    /// concurrent change.
    pub async fn lxc_update_config(
        &self,
        node: &str,
        vmid: Vmid,
        params: &[(String, String)],
        digest: Option<&str>,
    ) -> Result<(), ApiError> {
        check_node(node)?;
        let mut form = as_refs(params);
        if let Some(d) = digest {
            form.push(("digest", d.to_string()));
        }
        let _: Value = self
            .put(&format!("/nodes/{node}/lxc/{vmid}/config"), &form)
            .await?;
        Ok(())
    }

    /// `PUT .../resize` (async). `size` is PVE's: absolute unless it starts with `+`.
    pub async fn lxc_resize(
        &self,
        node: &str,
        vmid: Vmid,
        disk: &str,
        size: &str,
    ) -> Result<Upid, ApiError> {
        check_node(node)?;
        check_disk(disk)?;
        if crate::property_string::parse_disk_size(size).is_err() {
            return Err(ApiError::InvalidInput {
                field: "size".into(),
                message: format!("{size:?} does not match \\+?\\d+(\\.\\d+)?[KMGT]?"),
            });
        }
        let sent = Instant::now();
        let answer = self
            .put(
                &format!("/nodes/{node}/lxc/{vmid}/resize"),
                &[("disk", disk.to_string()), ("size", size.to_string())],
            )
            .await?;
        self.task_started(answer, sent)
    }

    async fn power(&self, node: &str, vmid: Vmid, action: &str) -> Result<Upid, ApiError> {
        check_node(node)?;
        let sent = Instant::now();
        let answer = self
            .post(&format!("/nodes/{node}/lxc/{vmid}/status/{action}"), &[])
            .await?;
        self.task_started(answer, sent)
    }

    pub async fn lxc_start(&self, node: &str, vmid: Vmid) -> Result<Upid, ApiError> {
        self.power(node, vmid, "start").await
    }
    pub async fn lxc_stop(&self, node: &str, vmid: Vmid) -> Result<Upid, ApiError> {
        self.power(node, vmid, "stop").await
    }
    pub async fn lxc_shutdown(&self, node: &str, vmid: Vmid) -> Result<Upid, ApiError> {
        self.power(node, vmid, "shutdown").await
    }

    pub async fn lxc_status(&self, node: &str, vmid: Vmid) -> Result<LxcStatus, ApiError> {
        check_node(node)?;
        self.get(&format!("/nodes/{node}/lxc/{vmid}/status/current"), &[])
            .await
    }

    /// `GET .../pending`: every key with its current value, its pending value, and whether
    /// a delete of it is pending (on a running guest, what cannot be hot-unplugged waits for
    /// the next start, reference §3.2).
    pub async fn lxc_pending(&self, node: &str, vmid: Vmid) -> Result<Vec<PendingEntry>, ApiError> {
        check_node(node)?;
        self.get(&format!("/nodes/{node}/lxc/{vmid}/pending"), &[])
            .await
    }

    /// `None` when the guest is stopped (PVE answers 200 with `data: null`, reference §7).
    pub async fn lxc_interfaces(
        &self,
        node: &str,
        vmid: Vmid,
    ) -> Result<Option<Vec<Interface>>, ApiError> {
        check_node(node)?;
        self.get(&format!("/nodes/{node}/lxc/{vmid}/interfaces"), &[])
            .await
    }

    /// `POST /nodes/{node}/lxc/{vmid}/clone` (async `vzclone`); returns the UPID, whose id
    /// is the **source** VMID (audit §2 (b)). `params` are the optional ones (`hostname`,
    /// `description`, `pool`, `storage`, `full`, …); `newid` is sent from `newid`. While it
    /// runs the source has `lock: disk` (a second clone of it fails at once with
    /// [`ApiError::Locked`]) and the target `lock: create`.
    pub async fn lxc_clone(
        &self,
        node: &str,
        vmid: Vmid,
        newid: Vmid,
        params: &[(String, String)],
    ) -> Result<Upid, ApiError> {
        check_node(node)?;
        if let Some((k, _)) = params.iter().find(|(k, _)| k == "newid" || k == "vmid") {
            return Err(ApiError::InvalidInput {
                field: k.clone(),
                message: "is given by the vmid and newid arguments".into(),
            });
        }
        let mut form = vec![("newid", newid.to_string())];
        form.extend(as_refs(params));
        let sent = Instant::now();
        let answer = self
            .post(&format!("/nodes/{node}/lxc/{vmid}/clone"), &form)
            .await?;
        self.task_started(answer, sent)
    }

    /// `POST /nodes/{node}/lxc/{vmid}/template`: PVE starts a `vztemplate` worker but
    /// answers `null`, not its UPID (audit §2 (b)). The client then looks for the task in the
    /// node's task list (the newest `vztemplate` of this VMID by this token that started
    /// with the request or later): `Some(upid)` to wait on, `None` when it is not listed
    /// (yet), after which the caller polls the config for `template: 1`.
    pub async fn lxc_template(&self, node: &str, vmid: Vmid) -> Result<Option<Upid>, ApiError> {
        check_node(node)?;
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
            .saturating_sub(1);
        let _: Value = self
            .post(&format!("/nodes/{node}/lxc/{vmid}/template"), &[])
            .await?;
        let tasks: Vec<Value> = self
            .get(
                &format!("/nodes/{node}/tasks"),
                &[
                    ("vmid", vmid.to_string()),
                    ("typefilter", "vztemplate".into()),
                    // Tasks.pm lists only finished tasks by default; the worker may still run.
                    ("source", "all".into()),
                    ("limit", "20".into()),
                ],
            )
            .await?;
        let user = self.token_id().to_string();
        Ok(tasks
            .iter()
            .filter(|t| t["type"] == "vztemplate" && t["id"] == vmid.to_string().as_str())
            .filter(|t| t["starttime"].as_u64().is_some_and(|s| s >= since))
            .filter_map(|t| t["upid"].as_str()?.parse::<Upid>().ok())
            .find(|u| u.user == user))
    }

    /// `DELETE /nodes/{node}/lxc/{vmid}` (async `vzdestroy`).
    pub async fn lxc_delete(
        &self,
        node: &str,
        vmid: Vmid,
        purge: bool,
        destroy_unreferenced_disks: bool,
    ) -> Result<Upid, ApiError> {
        check_node(node)?;
        let q = [
            ("purge", u8::from(purge).to_string()),
            (
                "destroy-unreferenced-disks",
                u8::from(destroy_unreferenced_disks).to_string(),
            ),
        ];
        let sent = Instant::now();
        let answer = self
            .delete(&format!("/nodes/{node}/lxc/{vmid}"), &q)
            .await?;
        self.task_started(answer, sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_lxc_answers() {
        // Reference §7: PVE 8.4+ sends both the old and the new fields; MACs lower-case.
        let v: Vec<Interface> = serde_json::from_str(
            r#"[{"name":"lo","hwaddr":"00:00:00:00:00:00","inet":"127.0.0.1/8","inet6":"::1/128",
                 "hardware-address":"00:00:00:00:00:00",
                 "ip-addresses":[{"ip-address":"127.0.0.1","ip-address-type":"inet","prefix":8}]},
                {"name":"eth0","hardware-address":"bc:24:11:5e:0a:1f",
                 "ip-addresses":[{"ip-address":"10.0.0.5","ip-address-type":"inet","prefix":24},
                                 {"ip-address":"fe80::1","ip-address-type":"inet6","prefix":64}]},
                {"name":"eth1","hwaddr":"bc:24:11:5e:0a:20","inet":"10.0.1.5/24"}]"#,
        )
        .unwrap();
        assert_eq!(v[1].mac(), Some("bc:24:11:5e:0a:1f"));
        assert_eq!(v[1].ipv4().as_deref(), Some("10.0.0.5/24"));
        assert_eq!(v[2].mac(), Some("bc:24:11:5e:0a:20"));
        assert_eq!(v[2].ipv4().as_deref(), Some("10.0.1.5/24"));
        let stopped: Option<Vec<Interface>> = serde_json::from_str("null").unwrap();
        assert!(stopped.is_none());

        let s: LxcStatus = serde_json::from_str(
            r#"{"vmid":101,"type":"lxc","status":"stopped","name":"web1","lock":"create","tags":"felhom;prod","maxdisk":8589934592,"uptime":0,"ha":{"managed":0}}"#,
        )
        .unwrap();
        assert_eq!(s.lock.as_deref(), Some("create"));
        assert_eq!(s.maxdisk, Some(8 << 30));
        let l: Vec<LxcSummary> = serde_json::from_str(
            r#"[{"vmid":101,"status":"running","name":"web1"},{"vmid":"102","status":"stopped"}]"#,
        )
        .unwrap();
        assert_eq!(l[1].vmid, 102);
    }

    #[test]
    fn config_helpers() {
        let cfg = LxcConfig {
            values: serde_json::from_str(
                r#"{"hostname":"web1","memory":512,"onboot":1,"description":"felhom: x\n",
                    "net0":"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:5E:0A:1F,ip=dhcp,type=veth",
                    "net1":"name=eth1,bogus=1",
                    "rootfs":"local-lvm:vm-101-disk-0,size=8G",
                    "mp0":"local-lvm:vm-101-disk-1,mp=/srv/data,backup=1,size=4G"}"#,
            )
            .unwrap(),
            digest: Some("d".into()),
        };
        assert_eq!(cfg.hostname(), Some("web1"));
        assert_eq!(cfg.get_str("memory"), None);
        assert_eq!(cfg.get_string("memory").as_deref(), Some("512"));
        assert_eq!(cfg.get_string("onboot").as_deref(), Some("1"));
        let n = cfg.net(0).unwrap().unwrap();
        assert_eq!(n.hwaddr.unwrap().to_string(), "BC:24:11:5E:0A:1F");
        assert!(matches!(
            cfg.net(1),
            Some(Err(PropertyError::UnknownKey(_)))
        ));
        assert!(cfg.net(2).is_none());
        assert_eq!(cfg.mount("rootfs").unwrap().unwrap().size, Some(8 << 30));
        assert_eq!(
            cfg.mount("mp0").unwrap().unwrap().mp.as_deref(),
            Some("/srv/data")
        );
        assert!(cfg.mount("mp1").is_none());
    }
}

/// Whatever JSON a server answers, decoding it into the LXC answer types and using their
/// accessors returns values or errors, never a panic.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            "\\PC{0,40}".prop_map(Value::String),
            // Property-string-like text, so the parsers behind the accessors get exercised.
            "([a-z0-9-]{1,8}(=[A-Za-z0-9:/._-]{0,12})?,){0,5}".prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            let keys = prop_oneof![
                Just("net0".to_string()),
                Just("rootfs".to_string()),
                Just("mp0".to_string()),
                Just("hostname".to_string()),
                Just("name".to_string()),
                Just("vmid".to_string()),
                Just("status".to_string()),
                Just("hwaddr".to_string()),
                Just("inet".to_string()),
                Just("ip-addresses".to_string()),
                Just("ip-address".to_string()),
                Just("ip-address-type".to_string()),
                Just("prefix".to_string()),
                "[a-z-]{1,10}",
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]
        #[test]
        fn arbitrary_answers_never_panic(v in json()) {
            let text = v.to_string();
            if let Ok(values) = serde_json::from_value::<BTreeMap<String, Value>>(v.clone()) {
                let cfg = LxcConfig { values, digest: None };
                let _ = cfg.hostname();
                let _ = cfg.get_string("memory");
                let _ = cfg.net(0);
                let _ = cfg.mount("rootfs");
                let _ = cfg.mount("mp0");
            }
            if let Ok(list) = serde_json::from_str::<Option<Vec<Interface>>>(&text) {
                for i in list.into_iter().flatten() {
                    let _ = (i.mac(), i.ipv4());
                }
            }
            let _ = serde_json::from_str::<LxcStatus>(&text);
            let _ = serde_json::from_str::<Vec<LxcSummary>>(&text);
            let _ = serde_json::from_str::<LxcSummary>(&text);
        }
    }
}
