//! The `blackhole-node` command: run a node, and talk to a running one.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, bail};
use blackhole_node::{Config, DataDir, Node, client::Client, config::DEFAULT_TOML};
use clap::{Parser, Subcommand};

// mimalloc instead of glibc malloc: bulk transfers allocate and free frame
// buffers at a high rate, and glibc's trimming turned that into page faults
// (`cargo xtask bench`: ~7 -> ~9 Gbit/s on one TCP+Noise+Yamux stream).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "blackhole-node",
    version,
    about = "A Blackhole peer-to-peer node"
)]
struct Cli {
    /// The data directory (key, config, API address).
    #[arg(long, global = true, env = "BLACKHOLE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The control API of the running node (default: the address the node
    /// in the data directory recorded, else the configured one).
    #[arg(long, global = true, env = "BLACKHOLE_API")]
    api: Option<String>,
    /// Bearer token for the control API (default: the configured one).
    #[arg(
        long,
        global = true,
        env = "BLACKHOLE_API_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create the data directory with a new identity and a default config.
    Init {
        /// Listen addresses to write into the config (repeatable);
        /// default: the documented defaults.
        #[arg(long = "listen")]
        listen: Vec<String>,
        /// The control API address to write into the config.
        #[arg(long)]
        api_listen: Option<String>,
        /// Any other setting, as `section.key=value` (a TOML value, or a
        /// plain string), e.g. `--set overlay.mode=server` (repeatable).
        #[arg(long = "set")]
        sets: Vec<String>,
    },
    /// Run the node until SIGINT or SIGTERM.
    Run {
        /// A config file to use instead of the data directory's.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print our peer id (from the key file; the node need not run).
    Id,
    /// Configuration helpers.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List connected peers.
    Peers,
    /// Show reachability, NAT type, external and relayed addresses, relays,
    /// hole punching and UPnP state.
    Nat,
    /// Connect to a peer.
    Dial { addr: String },
    /// Close the connections to a peer.
    Disconnect { peer: String },
    /// Measure a round trip to a peer (id or address).
    Ping { target: String },
    /// Measure throughput with the libp2p perf protocol.
    Perf {
        target: String,
        /// Bytes to upload.
        #[arg(long, default_value_t = 10 << 20)]
        upload: u64,
        /// Bytes to download.
        #[arg(long, default_value_t = 10 << 20)]
        download: u64,
    },
    /// Ask the running node to shut down.
    Shutdown,
    /// DHT operations.
    #[command(subcommand)]
    Dht(DhtCli),
    /// Rendezvous: register in a namespace at a point, or discover peers there.
    #[command(subcommand)]
    Rendezvous(RendezvousCli),
    /// Ask a connected peer for the good peers it knows (peer exchange).
    Px { peer: String },
    /// Keep connections to a peer through pruning (`--off` to undo).
    Protect {
        peer: String,
        #[arg(long)]
        off: bool,
    },
    /// Print messages on a topic or pattern (`a/*/c`, `a/**`) as JSON
    /// lines until interrupted (or `--count` messages).
    Subscribe {
        pattern: String,
        /// Stop after this many messages.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish a message (text, or `@file` for a file's bytes).
    Publish {
        topic: String,
        data: String,
        /// `normal` or `high`.
        #[arg(long, default_value = "normal")]
        priority: String,
        /// Expiry after publishing, e.g. `30s`.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// Topics active in the network (under a prefix), and wildcard patterns.
    Topics { prefix: Option<String> },
    /// Mesh peers and scores of a topic or pattern this node subscribes to.
    Mesh { topic: String },
    /// Remote procedure calls.
    #[command(subcommand)]
    Rpc(RpcCli),
}

#[derive(Subcommand)]
enum RpcCli {
    /// Call a method at a peer with a JSON request (try `_bh/echo` and
    /// `_bh/info`).
    Call {
        peer: String,
        method: String,
        /// The request, as JSON (default `null`).
        #[arg(default_value = "null")]
        request: String,
        /// The deadline, e.g. `5s`.
        #[arg(long)]
        deadline: Option<String>,
        /// Retry on retryable failures.
        #[arg(long)]
        idempotent: bool,
    },
}

#[derive(Subcommand)]
enum RendezvousCli {
    /// Register this node in a namespace.
    Register {
        namespace: String,
        /// The rendezvous point's peer id.
        #[arg(long)]
        point: String,
        /// Lifetime in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// List the peers registered in a namespace (all namespaces if absent).
    Discover {
        namespace: Option<String>,
        #[arg(long)]
        point: String,
        /// The cookie printed by the previous page.
        #[arg(long)]
        cookie: Option<String>,
        #[arg(long)]
        limit: Option<u64>,
    },
}

#[derive(Subcommand)]
enum DhtCli {
    /// Store a value (text, or `@file` for a file's bytes).
    Put { key: String, value: String },
    /// Look a key up.
    Get { key: String },
    /// Remove a key from the local store.
    Remove { key: String },
    /// Announce this node as a provider of a key.
    Provide { key: String },
    /// Stop announcing this node as a provider of a key.
    StopProviding { key: String },
    /// Find the providers of a key.
    Providers { key: String },
    /// Look for a peer.
    FindPeer { peer: String },
    /// The peers closest to a key.
    Closest { key: String },
    /// The routing table.
    Table,
    /// Refresh the routing table now.
    Bootstrap,
    /// Store and routing-table counters.
    Stats,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the documented default configuration.
    Default,
    /// Check a config file (default: the data directory's).
    Check { file: Option<PathBuf> },
}

/// `subscribe` fails if the node sends nothing, not even its keep-alive,
/// for this long.
const SUBSCRIBE_IDLE: Duration = Duration::from_secs(60);

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match build_runtime(&cli) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The runtime: for `run`, as the config's `[runtime]` section says
/// (a config that cannot be read is reported by `run` itself); otherwise
/// a small one for the client commands.
fn build_runtime(cli: &Cli) -> std::io::Result<tokio::runtime::Runtime> {
    let threads = match &cli.command {
        Command::Run { config } => {
            let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(DataDir::default_path));
            let path = config.clone().unwrap_or_else(|| data_dir.config_path());
            Config::load(&path).map_or(0, |c| c.runtime.worker_threads)
        }
        _ => 1,
    };
    if threads == 1 {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
    }
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if threads > 1 {
        b.worker_threads(threads);
    }
    b.enable_all().build()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let data_dir = DataDir::new(cli.data_dir.clone().unwrap_or_else(DataDir::default_path));
    match &cli.command {
        Command::Init {
            listen,
            api_listen,
            sets,
        } => init(&data_dir, listen, api_listen.as_deref(), sets, cli.json),
        Command::Run { config } => run_node(&data_dir, config.as_deref()).await,
        Command::Id => {
            let config = Config::load(&data_dir.config_path())?;
            let key = blackhole_security::identity::load(&data_dir.key_path(&config))?;
            print(
                cli.json,
                &serde_json::json!({ "peer_id": key.public().to_peer_id() }),
                || key.public().to_peer_id().to_string(),
            )
        }
        Command::Config(ConfigCommand::Default) => {
            print!("{DEFAULT_TOML}");
            Ok(())
        }
        Command::Config(ConfigCommand::Check { file }) => {
            let path = file.clone().unwrap_or_else(|| data_dir.config_path());
            Config::load(&path)?;
            println!("{}: ok", path.display());
            Ok(())
        }
        _ => client_command(&cli, &data_dir).await,
    }
}

fn print(
    json: bool,
    value: &serde_json::Value,
    text: impl FnOnce() -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", text());
    }
    Ok(())
}

fn init(
    data_dir: &DataDir,
    listen: &[String],
    api_listen: Option<&str>,
    sets: &[String],
    json: bool,
) -> anyhow::Result<()> {
    // Edit the documented default in place, so its comments survive.
    let mut doc: toml_edit::DocumentMut = DEFAULT_TOML
        .parse()
        .context("the built-in default config")?;
    if !listen.is_empty() {
        for a in listen {
            a.parse::<blackhole_node::Multiaddr>()
                .with_context(|| format!("--listen {a}"))?;
        }
        let array: toml_edit::Array = listen.iter().map(String::as_str).collect();
        set(&mut doc, "network.listen", toml_edit::value(array));
    }
    if let Some(api) = api_listen {
        api.parse::<std::net::SocketAddr>()
            .with_context(|| format!("--api-listen {api}"))?;
        set(&mut doc, "api.listen", toml_edit::value(api));
    }
    for s in sets {
        let (key, raw) = s
            .split_once('=')
            .with_context(|| format!("--set {s}: expected key=value"))?;
        // A TOML value (number, bool, array, quoted string), else a bare string.
        let value = format!("v = {raw}")
            .parse::<toml_edit::DocumentMut>()
            .ok()
            .and_then(|d| d.get("v").cloned())
            .unwrap_or_else(|| toml_edit::value(raw));
        set(&mut doc, key.trim(), value);
    }
    let text = doc.to_string();
    let config = Config::from_toml(&text, &data_dir.config_path())?;
    let peer = data_dir.init(&config, &text)?;
    print(
        json,
        &serde_json::json!({ "peer_id": peer, "data_dir": data_dir.path() }),
        || {
            format!(
                "initialized {} with peer id {peer}",
                data_dir.path().display()
            )
        },
    )
}

/// Sets the dotted `key` (`overlay.mode`) in `doc`; unknown keys are
/// caught by the config's validation afterwards.
fn set(doc: &mut toml_edit::DocumentMut, key: &str, value: toml_edit::Item) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or_default();
    let mut item = doc.as_item_mut();
    for p in parts {
        item = &mut item[p];
    }
    item[last] = value;
}

async fn run_node(data_dir: &DataDir, config_path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let (config, key) = data_dir.load(config_path)?;
    let node = Node::start_in(config, key, data_dir.path()).await?;
    let handle = node.handle();
    if let Some(addr) = handle.api_addr() {
        data_dir.write_api_addr(addr)?;
    }
    println!("peer id: {}", handle.peer_id());
    for addr in handle.listen_addrs().await? {
        println!("listening on {addr}/p2p/{}", handle.peer_id());
    }
    if let Some(addr) = handle.api_addr() {
        println!("control API on http://{addr}");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = handle.stopped() => {}
    }
    handle.shutdown().await;
    data_dir.remove_api_addr();
    node.wait().await;
    Ok(())
}

fn api_client(cli: &Cli, data_dir: &DataDir, timeout: Duration) -> anyhow::Result<Client> {
    let config = Config::load(&data_dir.config_path()).ok();
    let base = match (&cli.api, data_dir.read_api_addr(), &config) {
        (Some(url), _, _) => url.clone(),
        (None, Some(addr), _) => format!("http://{addr}"),
        (None, None, Some(c)) => format!("http://{}", c.api.listen),
        (None, None, None) => format!("http://{}", Config::default().api.listen),
    };
    let base = if base.starts_with("http://") || base.starts_with("https://") {
        base
    } else {
        format!("http://{base}")
    };
    let token = cli
        .token
        .clone()
        .or_else(|| config.and_then(|c| c.api.token));
    Ok(Client::new(base, token, timeout)?)
}

async fn client_command(cli: &Cli, data_dir: &DataDir) -> anyhow::Result<()> {
    let client = api_client(cli, data_dir, Duration::from_secs(150))?;
    match &cli.command {
        Command::Nat => {
            let s = client.nat().await?;
            print(cli.json, &serde_json::to_value(&s)?, || {
                let list = |v: &[blackhole_node::Multiaddr]| {
                    if v.is_empty() {
                        "none".to_owned()
                    } else {
                        v.iter()
                            .map(|a| a.to_string())
                            .collect::<Vec<_>>()
                            .join(" ")
                    }
                };
                let h = &s.hole_punch;
                let r = &s.relay_server;
                format!(
                    "reachability: {}\nNAT type: {}\nexternal: {}\nrelayed: {}\nrelays: {}\nautonat tests: {} reachable, {} unreachable\nhole punching: {} ({} attempts, {} direct, {} failed)\nrelay server: {} ({} reservations, {} circuits, {} denied)\nupnp: {}",
                    s.reachability,
                    s.nat_type,
                    list(&s.external_addrs),
                    list(&s.relayed_addrs),
                    s.relays.len(),
                    s.autonat_reachable,
                    s.autonat_unreachable,
                    if h.active { "on" } else { "off" },
                    h.attempts,
                    h.successes,
                    h.failures,
                    if r.serving {
                        "serving"
                    } else if r.enabled {
                        "not serving (not reachable)"
                    } else {
                        "off"
                    },
                    r.reservations,
                    r.circuits,
                    r.denied,
                    serde_json::to_string(&s.upnp).unwrap_or_default(),
                )
            })
        }
        Command::Peers => {
            let peers = client.peers().await?;
            print(cli.json, &serde_json::to_value(&peers)?, || {
                let mut out = format!("{} connected peer(s)", peers.len());
                for p in &peers {
                    out.push_str(&format!(
                        "\n{}  agent={}  rtt={}",
                        p.peer_id,
                        p.agent_version.as_deref().unwrap_or("?"),
                        p.rtt_ms.map_or("?".into(), |r| format!("{r:.2}ms")),
                    ));
                    for c in &p.connections {
                        out.push_str(&format!(
                            "\n    {} {:?} {} {} {}",
                            c.remote_addr,
                            c.direction,
                            c.transport.name(),
                            c.security.map_or("?", |s| s.name()),
                            c.muxer.map_or("native", |m| m.name()),
                        ));
                    }
                }
                out
            })
        }
        Command::Dial { addr } => {
            let r = client.dial(addr).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                format!("connected to {}", r.peer_id)
            })
        }
        Command::Disconnect { peer } => {
            let peer = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            let r = client.disconnect(peer).await?;
            if !r.disconnected {
                bail!("not connected to {peer}");
            }
            print(cli.json, &serde_json::to_value(&r)?, || {
                format!("disconnected from {peer}")
            })
        }
        Command::Ping { target } => {
            let r = client.ping(target).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                format!("{}: rtt {:.3} ms", r.peer_id, r.rtt_ms)
            })
        }
        Command::Perf {
            target,
            upload,
            download,
        } => {
            let r = client.perf(target, *upload, *download).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                format!(
                    "{}: upload {} bytes in {:.3}s ({:.1} Mbit/s), download {} bytes in {:.3}s ({:.1} Mbit/s)",
                    r.peer_id,
                    r.report.upload_bytes,
                    r.report.upload_seconds,
                    r.report.upload_bps() / 1e6,
                    r.report.download_bytes,
                    r.report.download_seconds,
                    r.report.download_bps() / 1e6,
                )
            })
        }
        Command::Shutdown => {
            let r = client.shutdown().await?;
            print(cli.json, &r, || "node is shutting down".into())
        }
        Command::Protect { peer, off } => {
            let peer = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            let r = client.protect(peer, !off).await?;
            print(cli.json, &r, || format!("{peer}: protected = {}", !off))
        }
        Command::Dht(d) => dht_command(cli, &client, d).await,
        Command::Px { peer } => {
            let peer = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            let r = client.peer_exchange(peer).await?;
            print(cli.json, &r, || {
                let peers = r["peers"].as_array().cloned().unwrap_or_default();
                let mut out = format!("{} peer(s)", peers.len());
                for p in peers {
                    out.push_str(&format!("\n{}", p["peer_id"].as_str().unwrap_or("?")));
                }
                out
            })
        }
        Command::Rendezvous(RendezvousCli::Register {
            namespace,
            point,
            ttl,
        }) => {
            let point = point
                .parse()
                .with_context(|| format!("{point:?} is not a peer id"))?;
            let req = blackhole_node::api::RegisterRequest {
                point,
                namespace: namespace.clone(),
                ttl_secs: *ttl,
            };
            let r = client.rendezvous_register(&req).await?;
            print(cli.json, &r, || {
                format!(
                    "registered in {namespace:?} at {point} for {}s",
                    r["ttl_secs"]
                )
            })
        }
        Command::Rendezvous(RendezvousCli::Discover {
            namespace,
            point,
            cookie,
            limit,
        }) => {
            let point = point
                .parse()
                .with_context(|| format!("{point:?} is not a peer id"))?;
            let req = blackhole_node::api::DiscoverRequest {
                point,
                namespace: namespace.clone(),
                cookie: cookie.clone(),
                limit: *limit,
            };
            let r = client.rendezvous_discover(&req).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                let mut out = format!("{} registration(s)", r.registrations.len());
                for reg in &r.registrations {
                    out.push_str(&format!(
                        "\n{} {} ttl {}s",
                        reg.peer_id, reg.namespace, reg.ttl_secs
                    ));
                    for a in &reg.addrs {
                        out.push_str(&format!("\n    {a}"));
                    }
                }
                out.push_str(&format!("\nnext page: --cookie {}", r.cookie));
                out
            })
        }
        Command::Subscribe { pattern, count } => {
            let mut seen = 0u64;
            let stdout = std::io::stdout();
            client
                .subscribe(pattern, SUBSCRIBE_IDLE, |m| {
                    use std::io::Write as _;
                    let line = serde_json::to_string(&m).unwrap_or_default();
                    let mut out = stdout.lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                    seen += 1;
                    count.is_none_or(|c| seen < c)
                })
                .await?;
            Ok(())
        }
        Command::Publish {
            topic,
            data,
            priority,
            ttl,
        } => {
            use base64::Engine as _;
            let priority = match priority.as_str() {
                "normal" => blackhole_node::Priority::Normal,
                "high" => blackhole_node::Priority::High,
                other => anyhow::bail!("--priority must be normal or high, not {other:?}"),
            };
            let mut req = blackhole_node::api::PublishRequest {
                topic: topic.clone(),
                priority,
                ttl: ttl.clone(),
                ..Default::default()
            };
            match data.strip_prefix('@') {
                Some(path) => {
                    let bytes =
                        std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
                    req.data_base64 = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
                }
                None => req.data = Some(data.clone()),
            }
            let r = client.publish(&req).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                let mut out = format!("published {} on {}", r.id, r.sent_on.join(", "));
                if r.local {
                    out.push_str(" (and delivered here)");
                }
                if !r.unreached.is_empty() {
                    out.push_str(&format!("; nobody reached on {}", r.unreached.join(", ")));
                }
                out
            })
        }
        Command::Topics { prefix } => {
            let r = client.topics(prefix.as_deref().unwrap_or(""), 1000).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                let mut out = format!("{} topic(s)", r.topics.len());
                for t in &r.topics {
                    out.push_str(&format!(
                        "\n{}  subscribers {}  publishers {}",
                        t.topic, t.subscribers, t.publishers
                    ));
                }
                for (p, n) in &r.patterns {
                    out.push_str(&format!("\npattern {p}  subscribers {n}"));
                }
                if !r.subscriptions.is_empty() {
                    out.push_str(&format!("\nthis node: {}", r.subscriptions.join(", ")));
                }
                out
            })
        }
        Command::Mesh { topic } => {
            let r = client.mesh(topic).await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                let mut out = format!(
                    "{}: {} mesh peer(s), {} connected subscriber(s)",
                    r.topic,
                    r.mesh.len(),
                    r.topic_peers
                );
                for p in &r.mesh {
                    let score = r.scores.iter().find(|(q, _)| q == p).map(|(_, s)| *s);
                    match score {
                        Some(s) => out.push_str(&format!("\n{p}  score {s:.2}")),
                        None => out.push_str(&format!("\n{p}")),
                    }
                }
                out
            })
        }
        Command::Rpc(RpcCli::Call {
            peer,
            method,
            request,
            deadline,
            idempotent,
        }) => {
            let peer_id = peer
                .parse()
                .with_context(|| format!("{peer:?} is not a peer id"))?;
            let request: serde_json::Value = serde_json::from_str(request)
                .with_context(|| format!("the request is not JSON: {request}"))?;
            let r = client
                .rpc_call(&blackhole_node::api::RpcCallRequest {
                    peer_id,
                    method: method.clone(),
                    request,
                    deadline: deadline.clone(),
                    idempotent: *idempotent,
                })
                .await?;
            print(cli.json, &serde_json::to_value(&r)?, || {
                format!("{} ({:.2} ms)", r.response, r.ms)
            })
        }
        Command::Init { .. } | Command::Run { .. } | Command::Id | Command::Config(_) => Ok(()),
    }
}

async fn dht_command(cli: &Cli, client: &Client, d: &DhtCli) -> anyhow::Result<()> {
    use blackhole_node::{api::DhtRequest, dht::Reply};
    let key = |k: &str| DhtRequest {
        key: k.to_owned(),
        ..DhtRequest::default()
    };
    let reply = match d {
        DhtCli::Put { key: k, value } => {
            let mut req = key(k);
            match value.strip_prefix('@') {
                Some(path) => {
                    let bytes =
                        std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
                    req.value_hex = Some(bytes.iter().map(|b| format!("{b:02x}")).collect());
                }
                None => req.value = Some(value.clone()),
            }
            client.dht("put", &req).await?
        }
        DhtCli::Get { key: k } => client.dht("get", &key(k)).await?,
        DhtCli::Remove { key: k } => client.dht("remove", &key(k)).await?,
        DhtCli::Provide { key: k } => client.dht("provide", &key(k)).await?,
        DhtCli::StopProviding { key: k } => client.dht("stop-providing", &key(k)).await?,
        DhtCli::Providers { key: k } => client.dht("providers", &key(k)).await?,
        DhtCli::Closest { key: k } => client.dht("closest", &key(k)).await?,
        DhtCli::FindPeer { peer } => {
            client
                .find_peer(
                    peer.parse()
                        .with_context(|| format!("{peer:?} is not a peer id"))?,
                )
                .await?
        }
        DhtCli::Table => client.dht("table", &DhtRequest::default()).await?,
        DhtCli::Bootstrap => client.dht("bootstrap", &DhtRequest::default()).await?,
        DhtCli::Stats => client.dht("stats", &DhtRequest::default()).await?,
    };
    print(cli.json, &serde_json::to_value(&reply)?, || match &reply {
        Reply::Found { value, from, .. } => match std::str::from_utf8(value) {
            Ok(text) => format!(
                "{text}\n(from {})",
                from.map_or("the local store".into(), |p| p.to_string())
            ),
            Err(_) => format!("{} bytes (binary; use --json for hex)", value.len()),
        },
        Reply::Providers { providers, .. } => {
            let mut out = format!("{} provider(s)", providers.len());
            for p in providers {
                out.push_str(&format!("\n{p}"));
            }
            out
        }
        Reply::Table { buckets } => {
            let mut out = String::new();
            for b in buckets {
                out.push_str(&format!(
                    "bucket {:3}: {} peer(s)\n",
                    b.index,
                    b.peers.len()
                ));
                for p in &b.peers {
                    let seen = p
                        .last_seen_ms
                        .map_or(String::new(), |ms| format!(" last seen {ms} (unix ms)"));
                    let state = if p.connected { "connected" } else { "" };
                    out.push_str(&format!("    {} {state}{seen}\n", p.peer_id));
                }
            }
            if buckets.is_empty() {
                out.push_str("the routing table is empty (no DHT server peer known yet)");
            }
            out.trim_end().to_owned()
        }
        other => serde_json::to_string_pretty(other).unwrap_or_default(),
    })
}
