//! The daemon: opens the state directory, serves the REST API, shuts down gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use camino::Utf8PathBuf;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use std::sync::Arc;

use crate::boot::{ControlBoot, RAMDISK_INITRD, RAMDISK_KERNEL, RAMDISK_PATH};
use crate::config::{BootSettings, Settings};
use crate::control::{Control, ControlError};
use crate::dns::InventoryDns;
use crate::images::ImageStore;
use crate::secret::{Secret, SecretHash};
use crate::store::{SqliteStore, Store, StoreError};

/// How long in-flight requests may take to finish after shutdown is asked.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state directory could not be created.
    #[error("failed to create state directory `{path}`")]
    StateDir {
        /// The directory.
        path: Utf8PathBuf,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// The admin token file could not be read or written.
    #[error("failed to access admin token file `{path}`")]
    Token {
        /// The file.
        path: Utf8PathBuf,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// The inventory database could not be opened.
    #[error("failed to open the inventory")]
    Store {
        /// Cause.
        #[source]
        err: StoreError,
    },
    /// Crash recovery failed.
    #[error("failed to recover interrupted work")]
    Recover {
        /// Cause.
        #[source]
        err: ControlError,
    },
    /// The listen address could not be bound.
    #[error("failed to listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// The embedded rack network services did not start.
    #[error("failed to start the rack network services")]
    Netsvc {
        /// Cause.
        #[source]
        err: netsvc::RunError,
    },
    /// The HTTP boot server listens on a wildcard address, so machines get no usable URL.
    #[error("the HTTP boot server listens on {addr}: set `public_url` to the address machines use")]
    NoPublicUrl {
        /// The bound address.
        addr: SocketAddr,
    },
    /// The HTTP server failed.
    #[error("HTTP server on {addr} failed")]
    Serve {
        /// The address.
        addr: SocketAddr,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to bind (port 0 picks a free port; see [`ServerHandle::local_addr`]).
    pub listen: SocketAddr,
}

/// What the server serves.
#[derive(Debug)]
pub struct Deps<S> {
    /// The control-node operations.
    pub control: Control<S>,
    /// Hash of the admin token.
    pub admin: SecretHash,
}

/// The REST API server.
#[derive(Debug)]
pub struct Server;

/// A running server; dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Server {
    /// Binds and starts serving; logs one `listening` line with the bound address.
    pub async fn start<S: Store>(cfg: Config, deps: Deps<S>) -> Result<ServerHandle, ServeError> {
        let listener = tokio::net::TcpListener::bind(cfg.listen)
            .await
            .map_err(|err| ServeError::Bind {
                addr: cfg.listen,
                err,
            })?;
        let local_addr = listener.local_addr().map_err(|err| ServeError::Bind {
            addr: cfg.listen,
            err,
        })?;
        let cancel = CancellationToken::new();
        let app = crate::http::router(deps.control, deps.admin, cancel.clone());
        info!(proto = "http", addr = %local_addr, "listening");
        let token = cancel.clone();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await
                .map_err(|err| ServeError::Serve {
                    addr: local_addr,
                    err,
                })
        });
        Ok(ServerHandle {
            local_addr,
            cancel,
            task: Some(task),
        })
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, lets in-flight requests finish (bounded by a timeout), and returns the
    /// server's error if it failed.
    pub async fn shutdown(mut self) -> Result<(), ServeError> {
        self.cancel.cancel();
        let Some(task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(DRAIN_TIMEOUT, task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                warn!(error = %common::ErrorChain(&join), "HTTP server task failed");
                Ok(())
            }
            Err(_) => {
                warn!(
                    timeout_secs = DRAIN_TIMEOUT.as_secs(),
                    "requests still running at shutdown"
                );
                Ok(())
            }
        }
    }

    /// Waits until the server stops on its own (an error) or `shutdown` is cancelled, then shuts
    /// down.
    pub async fn run_until(mut self, shutdown: CancellationToken) -> Result<(), ServeError> {
        let task = self
            .task
            .as_mut()
            .expect("invariant: the task is only taken by shutdown, which consumes the handle");
        tokio::select! {
            () = shutdown.cancelled() => self.shutdown().await,
            r = task => {
                self.task = None;
                match r {
                    Ok(result) => result,
                    Err(join) => {
                        warn!(error = %common::ErrorChain(&join), "HTTP server task failed");
                        Ok(())
                    }
                }
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The admin token: read from its file, or created (mode 0600) at first start. Returns the
/// token's hash and, only when it was just created, the plaintext to show the operator once.
pub fn load_or_create_token(
    path: &camino::Utf8Path,
) -> Result<(SecretHash, Option<Secret>), ServeError> {
    let token_err = |err| ServeError::Token {
        path: path.to_owned(),
        err,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(token_err)?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                warn!(path = %path, mode = format!("{:o}", mode & 0o777), "admin token file is readable by others");
            }
            Ok((Secret::from_plaintext(text.trim()).hash(), None))
        }
        Ok(_) => create_token(path),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => create_token(path),
        Err(err) => Err(token_err(err)),
    }
}

fn create_token(path: &camino::Utf8Path) -> Result<(SecretHash, Option<Secret>), ServeError> {
    let token = Secret::generate();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|err| ServeError::Token {
            path: path.to_owned(),
            err,
        })?;
    }
    common::write_atomic(
        path.as_std_path(),
        format!("{}\n", token.expose()).as_bytes(),
        0o600,
    )
    .map_err(|err| ServeError::Token {
        path: path.to_owned(),
        err,
    })?;
    info!(path = %path, "admin token created");
    Ok((token.hash(), Some(token)))
}

/// Opens the state directory (inventory, image store, admin token) and recovers interrupted
/// work. The second value is the admin token if it was just created.
pub async fn open(settings: &Settings) -> Result<(Deps<SqliteStore>, Option<Secret>), ServeError> {
    std::fs::create_dir_all(&settings.state_dir).map_err(|err| ServeError::StateDir {
        path: settings.state_dir.clone(),
        err,
    })?;
    let (admin, new_token) = load_or_create_token(&settings.token_file)?;
    let store = SqliteStore::open(settings.db_path().as_std_path())
        .map_err(|err| ServeError::Store { err })?;
    let control = Control::with_ssh_keys(
        store,
        ImageStore::new(settings.image_dir()),
        settings.ssh_authorized_keys.clone(),
    );
    control
        .recover()
        .await
        .map_err(|err| ServeError::Recover { err })?;
    Ok((Deps { control, admin }, new_token))
}

/// Runs the daemon until `shutdown` is cancelled. `on_new_token` is called once with the admin
/// token when it was just created (the CLI prints it). With [`Settings::boot`] the rack network
/// services run too, their HTTP boot server carrying the API, images and deploy ramdisk.
pub async fn serve(
    settings: &Settings,
    shutdown: CancellationToken,
    on_new_token: impl FnOnce(&Secret),
) -> Result<(), ServeError> {
    let (deps, new_token) = open(settings).await?;
    if let Some(token) = &new_token {
        on_new_token(token);
    }
    let control = deps.control.clone();
    let admin = deps.admin.clone();
    let handle = Server::start(
        Config {
            listen: settings.listen,
        },
        deps,
    )
    .await?;
    let net = match &settings.boot {
        Some(boot) => Some(start_boot(boot, control, admin, shutdown.child_token()).await?),
        None => None,
    };
    // Tell systemd (Type=notify) every socket is bound; a no-op outside systemd.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let result = handle.run_until(shutdown).await;
    if let Some(net) = net {
        net.shutdown().await;
    }
    result
}

/// Starts the rack network services with the control node plugged in: iPXE scripts from the
/// inventory, and the API, image store and deploy ramdisk on the HTTP boot server.
async fn start_boot<S: Store>(
    boot: &BootSettings,
    control: Control<S>,
    admin: SecretHash,
    shutdown: CancellationToken,
) -> Result<netsvc::Services, ServeError> {
    let scripts = Arc::new(ControlBoot::new(
        control.clone(),
        boot.ramdisk_cmdline.clone(),
    ));
    let set_base_url = scripts.base_url_setter();
    let control_for_dns = control.clone();
    let shutdown_for_dns = shutdown.clone();
    let routes = crate::http::router(control, admin, shutdown).nest_service(
        RAMDISK_PATH,
        tower_http::services::ServeDir::new(&boot.ramdisk_dir),
    );
    let dns = InventoryDns::new();
    let deps = netsvc::RunDeps {
        scripts,
        extra_routes: Some(routes),
        dhcp_hooks: Some(dns.clone()),
    };
    let services = netsvc::Services::start(boot.netsvc.clone(), deps)
        .await
        .map_err(|err| ServeError::Netsvc { err })?;
    let http = services
        .http_addr()
        .expect("invariant: BootSettings always has the HTTP boot server");
    let url = match &boot.public_url {
        Some(url) => url.clone(),
        None if http.ip().is_unspecified() => {
            services.shutdown().await;
            return Err(ServeError::NoPublicUrl { addr: http });
        }
        None => format!("http://{http}"),
    };
    if let Some(records) = services.dns_records() {
        dns.attach(records);
    }
    tokio::spawn(dns.follow(control_for_dns, shutdown_for_dns));
    for file in [RAMDISK_KERNEL, RAMDISK_INITRD] {
        let path = boot.ramdisk_dir.join(file);
        if !path.is_file() {
            warn!(path = %path, "deploy ramdisk file missing: new hosts cannot be imaged until it is there");
        }
    }
    info!(url = %url, "machines reach the control node here");
    set_base_url(url);
    Ok(services)
}
