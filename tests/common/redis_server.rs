//! A real `redis-server` for the remote tier's tests: started on a unix
//! socket in a temporary directory (no TCP port, nothing beyond this
//! machine), without persistence, stopped when dropped.
//!
//! When `redis-server` is not installed, it is installed with the system
//! package manager (Debian's `redis-server`; `.ci/run` does the same).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

fn binary() -> PathBuf {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let find = || {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|p| p.join("redis-server"))
                        .find(|p| p.is_file())
                })
            };
            if let Some(path) = find() {
                return path;
            }
            // Installed once, by the project's own files (see .ci/run).
            let status = Command::new("sh")
                .arg("-c")
                .arg("(apt-get install -y --no-install-recommends redis-server || (apt-get update && apt-get install -y --no-install-recommends redis-server)) >/dev/null 2>&1")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status();
            match (status, find()) {
                (Ok(s), Some(path)) if s.success() => path,
                _ => panic!("redis-server is not installed and could not be installed with apt-get; run .ci/run as root or install Debian's redis-server"),
            }
        })
        .clone()
}

impl RedisServer {
    /// A fresh, empty server.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// A server with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut server = Self {
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.launch();
        server
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("redis.sock")
    }

    /// `redis+unix://` address of the server.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    fn launch(&mut self) {
        let _ = std::fs::remove_file(self.socket());
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--unixsocket",
            self.socket().to_str().unwrap(),
            "--unixsocketperm",
            "700",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            self.dir.path().to_str().unwrap(),
            "--logfile",
            self.dir.path().join("redis.log").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(self.extra.iter().cloned());
        let child = Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        // Ready when it answers on its socket (or refuses for want of a
        // password, which is an answer too).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = self.try_command(&["PING"]) {
                if reply.starts_with('+') || reply.starts_with('-') {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Stops the server at once (SIGKILL): everything it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Kills the server and starts an empty one on the same socket.
    pub fn restart_empty(&mut self) {
        self.kill();
        self.launch();
    }

    fn try_command(&self, args: &[&str]) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(self.socket())?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(&encode(args))?;
        let mut reader = BufReader::new(stream);
        read_reply(&mut reader)
    }

    /// Runs one command (binary-safe arguments), returning the reply in a
    /// simple text form: `+OK`, `:1`, `-ERR ..`, `$<bytes as lossy text>`,
    /// `*<n>` followed by the elements on their own lines, `$nil`.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args).expect("redis command")
    }

    /// Keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let reply = self.command(&["KEYS", pattern]);
        reply
            .lines()
            .skip(1)
            .map(|l| l.trim_start_matches('$').to_string())
            .collect()
    }
}

fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend(format!("${}\r\n", a.len()).bytes());
        out.extend(a.as_bytes());
        out.extend(b"\r\n");
    }
    out
}

fn read_reply(reader: &mut impl BufRead) -> std::io::Result<String> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end().to_string();
    match line.chars().next() {
        Some('$') => {
            let n: i64 = line[1..].parse().unwrap_or(-1);
            if n < 0 {
                return Ok("$nil".into());
            }
            let mut buf = vec![0; n as usize + 2];
            reader.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Ok(format!("${}", String::from_utf8_lossy(&buf)))
        }
        Some('*') => {
            let n: i64 = line[1..].parse().unwrap_or(-1);
            let mut out = line.clone();
            for _ in 0..n.max(0) {
                out.push('\n');
                out.push_str(&read_reply(reader)?);
            }
            Ok(out)
        }
        _ => Ok(line),
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The directory a test server runs in, for tests that need a path there.
pub fn dir_of(server: &RedisServer) -> &Path {
    server.dir.path()
}

/// A Redis Cluster of three masters on loopback ports (a cluster bus needs
/// TCP), each in its own temporary directory, created with
/// `redis-cli --cluster create`; stopped when dropped.
pub struct RedisCluster {
    nodes: Vec<(Child, tempfile::TempDir, u16)>,
}

fn free_port() -> u16 {
    // The bus port is the node's port + 10000: both must be free.
    loop {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        if port < 55_000 && std::net::TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

fn tcp_command(port: u16, args: &[&str]) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(&encode(args))?;
    read_reply(&mut BufReader::new(stream))
}

/// Starts one cluster node on `port`, its files in `dir`.
fn cluster_node(dir: &tempfile::TempDir, port: u16) -> Child {
    Command::new(binary())
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            dir.path().join("nodes.conf").to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            dir.path().to_str().unwrap(),
            "--logfile",
            dir.path().join("redis.log").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server")
}

impl RedisCluster {
    pub fn start() -> Self {
        let mut nodes: Vec<(Child, tempfile::TempDir, u16)> = (0..3)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let port = free_port();
                (cluster_node(&dir, port), dir, port)
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        for (child, dir, port) in &mut nodes {
            while !tcp_command(*port, &["PING"]).is_ok_and(|r| r.starts_with('+')) {
                assert!(Instant::now() < deadline, "a cluster node did not start");
                // `free_port` only found the port free: a test running
                // alongside may have taken it (or its bus port) since, and
                // the node then exits. Another port, then.
                if child.try_wait().is_ok_and(|exited| exited.is_some()) {
                    *port = free_port();
                    *child = cluster_node(dir, *port);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let cli = binary().with_file_name("redis-cli");
        let addresses: Vec<String> = nodes
            .iter()
            .map(|(_, _, p)| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new(cli)
            .arg("--cluster")
            .arg("create")
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        let cluster = Self { nodes };
        // Ready once every node sees every slot served.
        for (_, _, port) in &cluster.nodes {
            while !tcp_command(*port, &["CLUSTER", "INFO"])
                .is_ok_and(|r| r.contains("cluster_state:ok"))
            {
                assert!(
                    Instant::now() < deadline + Duration::from_secs(20),
                    "the cluster never became ready"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    /// The seed nodes, comma-separated (`remote.url` with `remote.cluster`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(|(_, _, p)| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Keys matching `pattern` on each master.
    pub fn keys_per_node(&self, pattern: &str) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|(_, _, p)| tcp_command(*p, &["KEYS", pattern]).unwrap().lines().count() - 1)
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (child, _, _) in &mut self.nodes {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A TLS-only server on a loopback port, with a certificate for
/// `localhost` and `127.0.0.1` signed by a private CA, whose PEM file is
/// `ca_file()`. Clients are not asked for certificates.
pub struct TlsRedisServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl TlsRedisServer {
    pub fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("ca.pem"), ca.pem()).unwrap();
        std::fs::write(path("server.pem"), cert.pem()).unwrap();
        std::fs::write(path("server.key"), key.serialize_pem()).unwrap();
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            "0".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.pem").display().to_string(),
            "--tls-key-file".into(),
            path("server.key").display().to_string(),
            "--tls-ca-cert-file".into(),
            path("ca.pem").display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir.path().display().to_string(),
            "--logfile".into(),
            path("redis.log").display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(binary())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server with TLS");
        // Ready once it accepts connections on its TLS port.
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server with TLS did not start: {}",
                std::fs::read_to_string(path("redis.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        Self { child, dir, port }
    }

    /// `rediss://` address, with `userinfo` (e.g. `"app:pw@"`) if given.
    pub fn url(&self, userinfo: &str) -> String {
        format!("rediss://{userinfo}127.0.0.1:{}", self.port)
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
