use super::*;

pub(crate) fn permissions(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("path", Kind::Str(512)), ("userid", Kind::Str(128))],
        &[],
    )?;
    // Free only for oneself (the user or token id that authenticated) and, for a user, its
    // own tokens; anything else (a token asking about its user, too) needs `Sys.Audit` on
    // `/access` (A:API2/AccessControl.pm `permissions`, `$check_self`,
    // `$check_owned_token`; audit A3). The answer is the asked subject's.
    let authid = req.who.upid_user();
    let asked = req.get("userid").unwrap_or(&authid).to_string();
    let owned = asked
        .split_once('!')
        .is_some_and(|(user, _)| user == authid);
    if asked != authid && !owned {
        sim.read(|st| need(st, &req.who, "/access", "Sys.Audit"))?;
    }
    let subject = match asked.split_once('!') {
        None => auth::Subject {
            userid: asked.clone(),
            token: None,
            privsep: false,
        },
        Some((user, _)) => auth::Subject {
            userid: user.to_string(),
            privsep: sim.read(|st| {
                st.tokens
                    .iter()
                    .find(|t| t.id == asked)
                    .is_none_or(|t| t.privsep)
            }),
            token: Some(asked.clone()),
        },
    };
    let who = &subject;
    Ok(sim
        .read(|st| {
            let paths: Vec<String> = match req.get("path") {
                Some(p) => vec![p.to_string()],
                None => auth::permission_paths(st).into_iter().collect(),
            };
            let mut out = serde_json::Map::new();
            for p in paths {
                let privs = auth::privileges(st, who, &p);
                if privs.is_empty() && req.get("path").is_none() {
                    continue;
                }
                let prop = auth::propagates(st, who, &p);
                out.insert(
                    p,
                    json!(privs
                        .into_iter()
                        .map(|v| (v, prop))
                        .collect::<BTreeMap<_, _>>()),
                );
            }
            Value::Object(out)
        })
        .into())
}

pub(crate) fn create_pool(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("poolid", Kind::PoolId), ("comment", Kind::Str(8192))],
        &["poolid"],
    )?;
    let p = req.get("poolid").unwrap_or_default().to_string();
    sim.mutate(|st| {
        need(st, &req.who, &format!("/pool/{p}"), "Pool.Allocate")?;
        if st.pools.contains_key(&p) {
            return Err(die(format!("pool '{p}' already exists")));
        }
        st.pools.insert(p, Vec::new());
        Ok(Value::Null.into())
    })
}

/// `GET /pools`: the pools the caller may audit.
pub(crate) fn pools(sim: &Sim, req: &Req) -> HResult {
    Ok(sim
        .read(|st| {
            json!(st
                .pools
                .keys()
                .filter(|p| auth::has(st, &req.who, &format!("/pool/{p}"), "Pool.Audit"))
                .map(|p| json!({ "poolid": p }))
                .collect::<Vec<_>>())
        })
        .into())
}
