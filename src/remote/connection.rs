//! One handle for a single server or a Redis Cluster. Both are the `redis`
//! crate's own reconnecting, multiplexed connections; with a cluster, the
//! client follows slots and redirections itself, so adding capacity means
//! adding Redis nodes, with no coordinator on spillway's side.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to use for one call (cheap to clone).
#[derive(Clone)]
pub(crate) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Where connections come from.
pub(crate) enum Connector {
    Single(ConnectionManager),
    /// Connected on first use (and again after a failed attempt): a
    /// cluster's topology is read when connecting.
    Cluster(Box<ClusterConnector>),
}

pub(crate) struct ClusterConnector {
    client: ClusterClient,
    connection: tokio::sync::Mutex<Option<ClusterConnection>>,
}

impl Connector {
    /// `urls`: one server, or the seed nodes of a cluster (`cluster`);
    /// `root_cert`: the PEM of a certificate authority to trust for TLS.
    pub(crate) fn new(
        urls: &[&str],
        cluster: bool,
        root_cert: Option<&[u8]>,
        timeout: Duration,
        max_backoff: Duration,
    ) -> redis::RedisResult<Self> {
        if cluster {
            let mut builder = ClusterClient::builder(urls.iter().copied());
            if let Some(root) = root_cert {
                builder = builder.certs(certificates(root));
            }
            let client = builder
                .connection_timeout(timeout)
                .response_timeout(timeout)
                .retries(1)
                .min_retry_wait(10)
                .max_retry_wait(max_backoff.as_millis() as u64)
                .build()?;
            return Ok(Connector::Cluster(Box::new(ClusterConnector {
                client,
                connection: tokio::sync::Mutex::new(None),
            })));
        }
        let client = client(urls.first().copied().unwrap_or_default(), root_cert)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(max_backoff);
        Ok(Connector::Single(ConnectionManager::new_lazy_with_config(
            client, config,
        )?))
    }

    /// A connection for one call.
    pub(crate) async fn get(&self) -> redis::RedisResult<Connection> {
        match self {
            Connector::Single(manager) => Ok(Connection::Single(manager.clone())),
            Connector::Cluster(cluster) => {
                let mut held = cluster.connection.lock().await;
                if let Some(c) = held.as_ref() {
                    return Ok(Connection::Cluster(c.clone()));
                }
                let fresh = cluster.client.get_async_connection().await?;
                *held = Some(fresh.clone());
                Ok(Connection::Cluster(fresh))
            }
        }
    }
}

fn certificates(root: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(root.to_vec()),
    }
}

/// A client for one address, trusting `root_cert` for TLS when given.
pub(crate) fn client(url: &str, root_cert: Option<&[u8]>) -> redis::RedisResult<redis::Client> {
    match root_cert {
        Some(root) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, certificates(root))
        }
        _ => redis::Client::open(url),
    }
}
