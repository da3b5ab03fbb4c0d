use super::*;

pub(crate) fn nextid(sim: &Sim, req: &Req) -> HResult {
    validate(req, &[VMID], &[])?;
    sim.read(|st| {
        if let Some(v) = req.get("vmid") {
            let v: u32 = v.parse().unwrap_or(0);
            if st.guests.contains_key(&v) {
                return Err(param1("vmid", texts::vmid_in_use(v)));
            }
            return Ok(json!(v.to_string()).into());
        }
        let free = (100u32..1_000_000)
            .find(|v| !st.guests.contains_key(v))
            .ok_or_else(|| die("unable to get any free VMID in range [100, 1000000]"))?;
        Ok(json!(free.to_string()).into())
    })
}
