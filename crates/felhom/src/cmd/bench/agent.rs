//! `felhom bench agent`: the agent under load. N guests are PUT and reconcile while C API
//! clients each follow `/v1/events` and read `/v1/guests` and one guest in a loop. Figures,
//! side by side with targets; nothing is asserted.
//!
//! | figure | how |
//! |---|---|
//! | PUT latency p50/p99 | each PUT, until its 202 |
//! | read latency p50/p99 | every GET the clients made while the guests reconciled |
//! | events delivered | what each client's stream received ÷ what the agent emitted (a reference stream) |
//! | converged | wall time until every guest is `running` |
//! | agent RSS, CPU | the agent process's peak RSS (VmHWM) and user+system CPU (`/proc`) |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{json, Value};

use super::sim_child::SimChild;
use crate::error::CliError;
use crate::output::{self, outln, OutputFormat};

const TOKEN: &str = "bench-agent-token-0123456789";
/// Each client's pause between two rounds of reads (`/v1/guests`, then one guest).
const READ_PAUSE: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct AgentBenchArgs {
    /// Guests to reconcile.
    #[arg(long, default_value_t = 100)]
    pub guests: usize,
    /// Concurrent API clients (each follows the events and reads guests).
    #[arg(long, default_value_t = 100)]
    pub clients: usize,
    /// Simulator time scale (1.0 = PVE-like task durations).
    #[arg(long, default_value_t = 0.05)]
    pub time_scale: f64,
    /// The agent's concurrency (and felhom's max_parallel).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Peak RSS (bytes) and CPU seconds of `pid`, from /proc.
fn proc_usage(pid: u32) -> (u64, f64) {
    let hwm = super::peak_rss_kib(&pid.to_string()).unwrap_or(0) * 1024;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rfind(')').map(|i| &stat[i + 2..]).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // SAFETY: sysconf has no preconditions.
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let ticks = f.get(11).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (hwm, ticks / tick)
}

/// Count the SSE events of one stream until `stop`.
async fn follow(http: reqwest::Client, url: String, stop: Arc<AtomicBool>, count: Arc<AtomicU64>) {
    let Ok(mut resp) = http
        .get(format!("{url}/v1/events"))
        .bearer_auth(TOKEN)
        .send()
        .await
    else {
        return;
    };
    let mut tail = String::new();
    while !stop.load(Ordering::SeqCst) {
        match tokio::time::timeout(Duration::from_millis(200), resp.chunk()).await {
            Ok(Ok(Some(c))) => {
                tail.push_str(&String::from_utf8_lossy(&c));
                while let Some(i) = tail.find("\n\n") {
                    if tail[..i].contains("data:") {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    tail.drain(..i + 2);
                }
            }
            Ok(_) => return,
            Err(_) => {}
        }
    }
}

async fn bench(args: &AgentBenchArgs) -> anyhow::Result<Value> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = SimChild::start(args.time_scale, "")?;
    let dir = sim.dir();
    let token = dir.join("api.token");
    std::fs::write(&token, TOKEN)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600))?;
    }
    let specs_dir = dir.join("guests.d");
    std::fs::create_dir_all(&specs_dir)?;
    let mut t: toml::Table = std::fs::read_to_string(sim.config())?.parse()?;
    t["felhom"]["max_parallel"] = (args.concurrency as i64).into();
    t["felhom"]["max_parallel_per_node"] = (args.concurrency as i64).into();
    t["felhom"]["max_parallel_per_storage"] = (args.concurrency as i64).into();
    let mut agent = toml::Table::new();
    agent.insert("listen".into(), "127.0.0.1:0".into());
    agent.insert("interval_secs".into(), 600.into());
    agent.insert("specs_dir".into(), specs_dir.display().to_string().into());
    agent.insert("token_file".into(), token.display().to_string().into());
    agent.insert("concurrency".into(), (args.concurrency as i64).into());
    t.insert("agent".into(), toml::Value::Table(agent));
    let config = dir.join("agent.toml");
    std::fs::write(&config, toml::to_string(&t)?)?;

    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--config")
        .arg(&config)
        .args(["agent", "--log-format", "json"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("start felhom agent")?;
    let pid = child.id();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().context("agent stdout")?),
        &mut line,
    )?;
    let ready: Value = serde_json::from_str(&line).context("the agent's ready line")?;
    let url = ready["url"].as_str().context("url")?.to_string();
    let result = run_load(args, &url).await;
    let (rss, cpu) = proc_usage(pid);
    let _ = child.kill();
    let _ = child.wait();
    let mut v = result?;
    v["agent_peak_rss_mb"] = json!(rss as f64 / 1048576.0);
    v["agent_cpu_s"] = json!(cpu);
    Ok(v)
}

async fn run_load(args: &AgentBenchArgs, url: &str) -> anyhow::Result<Value> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .pool_max_idle_per_host(args.clients * 2)
        .build()?;
    let stop = Arc::new(AtomicBool::new(false));
    // A reference stream and one per client.
    let reference = Arc::new(AtomicU64::new(0));
    let mut streams = vec![tokio::spawn(follow(
        http.clone(),
        url.to_string(),
        stop.clone(),
        reference.clone(),
    ))];
    let counts: Vec<Arc<AtomicU64>> = (0..args.clients).map(|_| Arc::default()).collect();
    for c in &counts {
        streams.push(tokio::spawn(follow(
            http.clone(),
            url.to_string(),
            stop.clone(),
            c.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reads = Arc::new(Mutex::new(Vec::<f64>::new()));
    let mut readers = Vec::new();
    for i in 0..args.clients {
        let (http, url, stop, reads) = (http.clone(), url.to_string(), stop.clone(), reads.clone());
        let n = args.guests.max(1);
        readers.push(tokio::spawn(async move {
            let mut k = i;
            while !stop.load(Ordering::SeqCst) {
                for path in [
                    "/v1/guests".to_string(),
                    format!("/v1/guests/ab{}/ab{}", k % n, k % n),
                ] {
                    let t0 = Instant::now();
                    let ok = http
                        .get(format!("{url}{path}"))
                        .bearer_auth(TOKEN)
                        .send()
                        .await
                        .and_then(|r| r.error_for_status())
                        .is_ok();
                    let ms = t0.elapsed().as_secs_f64() * 1000.0;
                    if ok || path.ends_with(&format!("ab{}", k % n)) {
                        reads.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                    }
                }
                k += 1;
                tokio::time::sleep(READ_PAUSE).await;
            }
        }));
    }
    let golden = format!("local:backup/{}", crate::cmd::sim::SEED_GOLDEN);
    let t0 = Instant::now();
    let mut puts = Vec::new();
    let mut put_handles = Vec::new();
    for i in 0..args.guests {
        let (http, url, golden) = (http.clone(), url.to_string(), golden.clone());
        put_handles.push(tokio::spawn(async move {
            let body = json!({ "customer": format!("ab{i}"), "hostname": format!("ab{i}"), "vmid": "auto", "golden": golden, "node": "pve", "storage": "local-lvm", "rootfs_size": "12G", "bridge": "vmbr0" });
            let t = Instant::now();
            let r = http.put(format!("{url}/v1/guests/ab{i}/ab{i}")).bearer_auth(TOKEN).json(&body).send().await;
            (t.elapsed().as_secs_f64() * 1000.0, r.map(|r| r.status().as_u16()).unwrap_or(0))
        }));
    }
    let mut accepted = 0;
    for h in put_handles {
        let (ms, status) = h.await?;
        puts.push(ms);
        if status == 202 || status == 200 {
            accepted += 1;
        }
    }
    // Converged: every guest running.
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut running = 0;
    while Instant::now() < deadline {
        let list: Value = http
            .get(format!("{url}/v1/guests"))
            .bearer_auth(TOKEN)
            .send()
            .await?
            .json()
            .await?;
        running = list["guests"]
            .as_array()
            .map(|g| g.iter().filter(|g| g["state"] == "running").count())
            .unwrap_or(0);
        if running == args.guests {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let converged = t0.elapsed().as_secs_f64();
    // Let the last events reach every stream.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for h in readers.into_iter().chain(streams) {
        let _ = h.await;
    }
    let emitted = reference.load(Ordering::SeqCst);
    let delivered: Vec<u64> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let total: u64 = delivered.iter().sum();
    let min = delivered.iter().copied().min().unwrap_or(0);
    let mut reads = reads.lock().unwrap_or_else(|p| p.into_inner()).clone();
    Ok(json!({
        "guests": args.guests, "clients": args.clients, "concurrency": args.concurrency, "time_scale": args.time_scale,
        "accepted": accepted, "running": running, "converged_s": converged,
        "put_ms_p50": percentile(&mut puts.clone(), 0.5), "put_ms_p99": percentile(&mut puts, 0.99),
        "reads": reads.len(), "read_ms_p50": percentile(&mut reads.clone(), 0.5), "read_ms_p99": percentile(&mut reads, 0.99),
        "events_emitted": emitted, "events_delivered": total,
        "events_delivered_ratio": if emitted == 0 { f64::NAN } else { total as f64 / (emitted as f64 * args.clients as f64) },
        "events_min_per_client": min,
    }))
}

pub async fn run(args: AgentBenchArgs, format: OutputFormat) -> Result<(), CliError> {
    if !(args.time_scale > 0.0
        && (1..=500).contains(&args.guests)
        && (1..=1000).contains(&args.clients)
        && (1..=1024).contains(&args.concurrency))
    {
        return Err(CliError::bad_input(
            "--guests 1–500, --clients 1–1000, --concurrency 1–1024, --time-scale > 0",
        ));
    }
    let v = bench(&args)
        .await
        .map_err(|e| CliError::failed(format!("bench agent: {e:#}")))?;
    match format {
        OutputFormat::Json => output::json(&json!({ "agent": v })),
        OutputFormat::Human => {
            outln!(
                "felhom bench agent: {} guests, {} clients following /v1/events and reading /v1/guests and one guest every {} ms (time scale {}, concurrency {})",
                args.guests, args.clients, READ_PAUSE.as_millis(), args.time_scale, args.concurrency
            );
            let mut t = output::table(["FIGURE", "MEASURED", "TARGET"]);
            let f = |k: &str, p: usize| format!("{:.p$}", v[k].as_f64().unwrap_or(f64::NAN));
            for (name, got, target) in [
                (
                    "guests running",
                    format!("{}/{}", v["running"], v["guests"]),
                    "all".to_string(),
                ),
                (
                    "PUTs accepted",
                    format!("{}/{}", v["accepted"], v["guests"]),
                    "all".into(),
                ),
                ("converged (s)", f("converged_s", 1), "-".into()),
                ("PUT latency p50 (ms)", f("put_ms_p50", 1), "≤ 100".into()),
                ("PUT latency p99 (ms)", f("put_ms_p99", 1), "≤ 1000".into()),
                ("read latency p50 (ms)", f("read_ms_p50", 1), "≤ 50".into()),
                ("read latency p99 (ms)", f("read_ms_p99", 1), "≤ 250".into()),
                ("reads", v["reads"].to_string(), "-".into()),
                (
                    "events emitted",
                    v["events_emitted"].to_string(),
                    "-".into(),
                ),
                (
                    "events delivered (all clients)",
                    v["events_delivered"].to_string(),
                    "emitted × clients".into(),
                ),
                (
                    "delivered ratio",
                    f("events_delivered_ratio", 3),
                    "1.000".into(),
                ),
                (
                    "fewest events one client got",
                    v["events_min_per_client"].to_string(),
                    "= emitted".into(),
                ),
                (
                    "agent peak RSS (MB)",
                    f("agent_peak_rss_mb", 1),
                    "≤ 200".into(),
                ),
                ("agent CPU (s)", f("agent_cpu_s", 2), "-".into()),
            ] {
                t.add_row([name.to_string(), got, target]);
            }
            output::print_table(&t);
        }
    }
    Ok(())
}
