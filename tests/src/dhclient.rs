//! A stock ISC dhclient run once in a client namespace, with our own hook script (the default
//! one would rewrite the host's resolv.conf): what it was given when it reached BOUND.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

/// Runs `dhclient -1` on `iface` in namespace `ns` until it is BOUND (at most 30 s) with
/// `conf` as its config file text, then stops it. With `configure`, the hook adds the address
/// to the interface. Returns the hook's environment at BOUND (`new_ip_address`, ...), quotes
/// trimmed. Files go in `dir`.
pub async fn dhclient_bound(
    ns: &str,
    iface: &str,
    dir: &Path,
    conf: &str,
    configure: bool,
) -> anyhow::Result<BTreeMap<String, String>> {
    let out = dir.join("hook.out");
    let hook = dir.join("hook.sh");
    let add = if configure {
        "if [ \"$reason\" = BOUND ]; then ip addr add \"$new_ip_address/$new_subnet_mask\" dev \"$interface\"; fi\n"
    } else {
        ""
    };
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\n{add}env >> {0}\necho --- >> {0}\n",
            out.display()
        ),
    )?;
    common::run_cmd(Command::new("chmod").arg("+x").arg(&hook))?;
    let conf_file = dir.join("dhclient.conf");
    std::fs::write(&conf_file, conf)?;
    let lease_file = dir.join("dhclient.leases");
    std::fs::write(&lease_file, "")?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "dhclient", "-d", "-1", "-cf"])
        .arg(&conf_file)
        .arg("-sf")
        .arg(&hook)
        .arg("-lf")
        .arg(&lease_file)
        .arg("-pf")
        .arg(dir.join("dhclient.pid"))
        .arg(iface)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("spawn dhclient (isc-dhcp-client)")?;
    let bound = common::wait_for(Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        async move {
            text.split("---\n")
                .find(|run| run.contains("reason=BOUND"))
                .map(str::to_owned)
        }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    let bound = bound.context("dhclient never reached BOUND")?;
    Ok(bound
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect())
}
