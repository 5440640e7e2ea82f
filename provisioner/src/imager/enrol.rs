//! `provisioner-imager enrol`: run once by `provisioner-enrol.service` on the installed system.
//! It presents the one-time enrolment secret the imager left in `/etc/provisioner/enrol.json`,
//! then deletes it and disables the unit.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::console::Console;
use crate::api::{EnrolRequest, EnrolResponse};
use crate::client::{Client, ClientError};
use crate::secret::Secret;

/// The enrolment file, relative to the installed system's root.
pub const ENROL_FILE: &str = "etc/provisioner/enrol.json";
/// The enrolment unit's name.
pub const UNIT_NAME: &str = "provisioner-enrol.service";
/// The enrolment unit (`templates/systemd/provisioner-enrol.service`).
pub const UNIT_TEXT: &str = include_str!("../../../templates/systemd/provisioner-enrol.service");
/// Where the unit is enabled, relative to the root.
pub(crate) const WANTS_DIR: &str = "etc/systemd/system/multi-user.target.wants";
/// Longest wait between two enrolment attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Contents of the enrolment file (a local file, not a wire type).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnrolFile {
    /// Base URL of the control node.
    pub(crate) url: String,
    /// The one-time enrolment secret.
    pub(crate) secret: String,
}

/// Errors of `enrol`.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// A local file could not be read or removed.
    #[error("failed to {what} `{path}`")]
    File {
        /// `read` or `remove`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: std::io::Error,
    },
    /// The enrolment file is malformed.
    #[error("invalid enrolment file `{path}`")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        err: serde_json::Error,
    },
    /// The control node refused the enrolment (a 4xx): retrying cannot help.
    #[error("the control node refused the enrolment")]
    Rejected {
        /// The answer.
        #[source]
        err: ClientError,
    },
}

fn read(path: &Path) -> Result<String, EnrolError> {
    std::fs::read_to_string(path).map_err(|err| EnrolError::File {
        what: "read",
        path: path.to_owned(),
        err,
    })
}

fn remove(path: &Path) -> Result<(), EnrolError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(EnrolError::File {
            what: "remove",
            path: path.to_owned(),
            err,
        }),
    }
}

/// Enrols the system rooted at `root` (`/` in production): reads the enrolment file, posts the
/// hostname and machine-id with the secret until the control node answers (backoff up to a
/// minute), prints `PROVISIONER-ENROLLED host=<id>` on `console`, then deletes the secret and
/// the unit's enablement link. A 4xx answer is final ([`EnrolError::Rejected`]).
pub async fn enrol(root: &Path, console: &Console) -> Result<EnrolResponse, EnrolError> {
    let file_path = root.join(ENROL_FILE);
    let file: EnrolFile =
        serde_json::from_str(&read(&file_path)?).map_err(|err| EnrolError::Parse {
            path: file_path.clone(),
            err,
        })?;
    let hostname = read(&root.join("etc/hostname"))?.trim().to_owned();
    let machine_id = read(&root.join("etc/machine-id"))?.trim().to_owned();
    let client = Client::new(&file.url, Some(Secret::from_plaintext(file.secret)));
    let req = EnrolRequest {
        hostname,
        machine_id,
    };
    let mut delay = Duration::from_secs(1);
    let resp = loop {
        match client.enrol(&req).await {
            Ok(resp) => break resp,
            Err(err) if err.status().is_some_and(|s| s.is_client_error()) => {
                warn!(error = %common::ErrorChain(&err), "enrolment refused");
                return Err(EnrolError::Rejected { err });
            }
            Err(err) => {
                warn!(error = %common::ErrorChain(&err), retry_secs = delay.as_secs(), "enrolment failed, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    };
    console.line(&format!("PROVISIONER-ENROLLED host={}", resp.host));
    remove(&file_path)?;
    remove(&root.join(WANTS_DIR).join(UNIT_NAME))?;
    Ok(resp)
}
