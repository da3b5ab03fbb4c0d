#!/usr/bin/env python3
"""The naive baseline for `felhom bench perf`: what the seed's spike did, as a script.

Each call in turn, one guest after another, polling every task at a fixed 1 s, no
journal, no retries. It talks to the same simulator over HTTPS (pinned fingerprint).

usage: naive_bringup.py CONFIG GOLDEN_VOLID FIRST_VMID COUNT [TIME_SCALE]
prints one JSON line: {"guests": n, "ok": n, "wall_s": x, "requests": n}
"""
import hashlib
import http.client
import json
import socket
import ssl
import sys
import time
import tomllib
import urllib.parse


class Pve:
    def __init__(self, cfg_path):
        with open(cfg_path, "rb") as f:
            cfg = tomllib.load(f)
        url = urllib.parse.urlparse(cfg["pve"]["url"])
        self.host, self.port = url.hostname, url.port
        self.pin = cfg["pve"]["fingerprint"].replace(":", "").lower()
        with open(cfg["pve"]["token_secret_file"]) as f:
            secret = f.read().strip()
        self.auth = "PVEAPIToken=%s=%s" % (cfg["pve"]["token_id"], secret)
        self.requests = 0
        self.conn = None

    def _connect(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(self.host, self.port, context=ctx, timeout=30)
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
        if hashlib.sha256(der).hexdigest() != self.pin:
            raise SystemExit("certificate fingerprint mismatch")
        self.conn = conn

    def call(self, method, path, params=None):
        if self.conn is None:
            self._connect()
        body = None
        path = "/api2/json" + path
        headers = {"Authorization": self.auth}
        if params and method in ("GET", "DELETE"):
            path += "?" + urllib.parse.urlencode(params)
        elif params:
            body = urllib.parse.urlencode(params)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        self.requests += 1
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
        except (http.client.HTTPException, OSError, socket.timeout):
            self.conn = None
            raise
        if resp.status != 200:
            raise RuntimeError("%s %s: %s %s" % (method, path, resp.status, data[:200]))
        return json.loads(data)["data"]

    def wait(self, upid):
        path = "/nodes/pve/tasks/%s/status" % urllib.parse.quote(upid, safe="")
        while True:
            time.sleep(1.0)  # the spike's fixed 1 s polling
            st = self.call("GET", path)
            if st["status"] == "stopped":
                if st.get("exitstatus") != "OK" and not str(st.get("exitstatus", "")).startswith("WARNINGS"):
                    raise RuntimeError(st.get("exitstatus"))
                return


def bring_up(pve, golden, vmid):
    # The spike's order: restore, then reset MAC and hostname, resize, mount, start, link-up.
    pve.wait(pve.call("POST", "/nodes/pve/lxc", {"vmid": vmid, "ostemplate": golden, "restore": 1, "storage": "local-lvm"}))
    pve.call("PUT", "/nodes/pve/lxc/%d/config" % vmid, {"net0": "name=eth0,bridge=vmbr0,ip=dhcp", "hostname": "naive-%d" % vmid})
    pve.wait(pve.call("PUT", "/nodes/pve/lxc/%d/resize" % vmid, {"disk": "rootfs", "size": "12G"}))
    pve.call("PUT", "/nodes/pve/lxc/%d/config" % vmid, {"mp0": "local-lvm:4,mp=/srv/data"})
    pve.wait(pve.call("POST", "/nodes/pve/lxc/%d/status/start" % vmid))
    while True:
        time.sleep(1.0)
        ifs = pve.call("GET", "/nodes/pve/lxc/%d/interfaces" % vmid) or []
        if any(i.get("name") == "eth0" and i.get("inet") for i in ifs):
            return


def main():
    cfg, golden, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    pve = Pve(cfg)
    t0 = time.monotonic()
    ok = 0
    for i in range(count):
        try:
            bring_up(pve, golden, first + i)
            ok += 1
        except Exception as e:  # the spike had no retries: a failure is a failure
            print("guest %d failed: %s" % (first + i, e), file=sys.stderr)
    print(json.dumps({"guests": count, "ok": ok, "wall_s": time.monotonic() - t0, "requests": pve.requests}))


if __name__ == "__main__":
    main()
