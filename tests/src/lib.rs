//! End-to-end harness: the whole suite in one process over a private redis-server.
//!
//! [`Suite::start`] runs TaskService on `127.0.0.1:0` and a worker against a fresh `redis-server`, so a test
//! (or a client in another language) talks to real services over real sockets.

use std::collections::HashMap;
use std::net::SocketAddr;

use redline_taskqueue::testing::RedisServer;
use tokio_util::sync::CancellationToken;

/// A running suite; stopped when dropped.
pub struct Suite {
    /// The private Redis.
    pub redis: RedisServer,
    /// TaskService's address.
    pub tasks_addr: SocketAddr,
    stop: CancellationToken,
}

impl Suite {
    /// Starts Redis, TaskService and one worker (concurrency 4) with data tasks under `./data`.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None, None).await
    }

    /// Starts the suite with the worker's data root at `data_dir` and downloads from `download_url`.
    pub async fn start_with(
        data_dir: Option<&std::path::Path>,
        download_url: Option<&str>,
    ) -> std::io::Result<Self> {
        let redis = RedisServer::start();
        let stop = CancellationToken::new();
        let no_env: HashMap<String, String> = HashMap::new();
        let tasks_args = redline_tasks::config::Args {
            redis_url: Some(redis.url()),
            ..Default::default()
        };
        let config = redline_tasks::Config::from_args(tasks_args, &no_env)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let tasks_addr = listener.local_addr()?;
        tokio::spawn(redline_tasks::run(config, listener, stop.clone()));
        let worker_args = redline_worker::config::Args {
            redis_url: Some(redis.url()),
            concurrency: Some("4".into()),
            cancel_grace: Some("500ms".into()),
            data_dir: data_dir.map(|d| d.display().to_string()),
            download_base_url: download_url.map(str::to_owned),
            ..Default::default()
        };
        let worker = redline_worker::Config::from_args(worker_args, &no_env)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let registry = redline_worker::registry_for(&worker);
        tokio::spawn(redline_worker::run(worker, registry, stop.clone()));
        Ok(Self {
            redis,
            tasks_addr,
            stop,
        })
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
