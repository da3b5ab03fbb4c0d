use super::*;

pub(crate) fn permissions(sim: &Sim, req: &Req) -> HResult {
    validate(
        req,
        &[("path", Kind::Str(512)), ("userid", Kind::Str(128))],
        &[],
    )?;
    if req
        .get("userid")
        .is_some_and(|u| u != req.who.userid && Some(u) != req.who.token.as_deref())
    {
        sim.read(|st| need(st, &req.who, "/access", "Sys.Audit"))?;
    }
    Ok(sim
        .read(|st| {
            let paths: Vec<String> = match req.get("path") {
                Some(p) => vec![p.to_string()],
                None => auth::permission_paths(st).into_iter().collect(),
            };
            let mut out = serde_json::Map::new();
            for p in paths {
                let privs = auth::privileges(st, &req.who, &p);
                if privs.is_empty() && req.get("path").is_none() {
                    continue;
                }
                let prop = auth::propagates(st, &req.who, &p);
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
