//! IPv6 router advertisements from the real `netsvc` binary, received by stock clients in a
//! network namespace: `rdisc6` gets an answer to its solicitation and the kernel autoconfigures
//! an address in the advertised unique-local prefix without a default route. Needs root.

mod support;

use std::time::Duration;

use anyhow::{Context, ensure};
use support::{Link, Netsvc, config_dir, sh};

/// Turns IPv6 back on in both namespaces of `link` (its constructor turns it off).
fn enable_ipv6(link: &Link) -> anyhow::Result<()> {
    for (ns, iface) in [(&link.srv, &link.srv_if), (&link.cli, &link.cli_if)] {
        for key in ["all", "default", iface.as_str()] {
            sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{key}.disable_ipv6=0"),
            ])?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn rdisc6_and_slaac_get_the_ula_prefix_without_default_route() -> anyhow::Result<()> {
    let link = Link::new()?;
    enable_ipv6(&link)?;
    let state = tempfile::tempdir()?;
    // A long interval: rdisc6 only gets an answer if solicitations are answered.
    let (_dir, cfg) = config_dir(&format!(
        "state_dir = \"{}\"\n[dhcp]\ninterfaces = [\"{}\"]\nra_interval_secs = 3600\n\
         [[dhcp.subnet]]\nnet = \"10.61.1.0/24\"\npools = [\"10.61.1.100-10.61.1.110\"]\n",
        state.path().to_str().context("utf8")?,
        link.srv_if
    ))?;
    let mut srv = Netsvc::start(Some(&link.srv), &["--config", &cfg]).await?;
    let prefix = netsvc::ra::default_prefix(&link.srv_if);
    let net = prefix.trunc().addr().to_string();
    let net = net.trim_end_matches(':');

    let advert = common::wait_for(Duration::from_secs(15), || {
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &link.cli,
            "rdisc6",
            "-1",
            "-r",
            "1",
            "-w",
            "1000",
            &link.cli_if,
        ]);
        async move { out.ok().filter(|o| o.contains("Prefix")) }
    })
    .await;
    let log = srv.log();
    let advert = advert.with_context(|| format!("rdisc6 got no advertisement; log:\n{log}"))?;
    let words = advert.split_whitespace().collect::<Vec<_>>().join(" ");
    ensure!(
        advert.contains(&format!("{prefix}")),
        "prefix {prefix} not advertised:\n{advert}"
    );
    ensure!(
        words.contains("Router lifetime : 0 (0x00000000) seconds"),
        "router lifetime is not 0:\n{advert}"
    );
    ensure!(
        words.contains("Autonomous address conf.: Yes"),
        "prefix is not autonomous:\n{advert}"
    );
    ensure!(log.contains("\"ra\""), "no RA listening line:\n{log}");

    let addr = common::wait_for(Duration::from_secs(15), || {
        let out = sh(&[
            "ip",
            "-n",
            &link.cli,
            "-6",
            "addr",
            "show",
            "dev",
            &link.cli_if,
            "scope",
            "global",
        ]);
        async move { out.ok().filter(|o| o.contains(net)) }
    })
    .await;
    ensure!(
        addr.is_some(),
        "no autoconfigured address in {prefix}; log:\n{}",
        srv.log()
    );
    let routes = sh(&["ip", "-n", &link.cli, "-6", "route", "show", "default"])?;
    ensure!(
        routes.trim().is_empty(),
        "a default route appeared: {routes}"
    );
    srv.term()?;
    Ok(())
}
