//! A network namespace joined to this one by a veth pair, for tests that need a server
//! to drop off the network: [`NetNamespace::blackhole`] makes the namespace drop
//! everything, in and out, without a reset or an ICMP error, as a real partition does
//! (an open session then hangs until keepalives or `tcp_user_timeout` notice);
//! [`NetNamespace::heal`] undoes it. Needs root and iproute2.
//!
//! How the drop is done, and why: packets coming in are refused by an `ip rule …
//! blackhole` inside the namespace, packets going out are discarded by a `pfifo limit 0`
//! qdisc on the namespace's end of the pair, and both ends have permanent neighbour
//! entries so that no failing ARP tells the sender anything. Dropping on the client's own
//! side would not do: the sender's kernel sees its own drops. (`tc netem` is not needed.)

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::localpg::LocalPgError;

/// A namespace with one veth link to the host: the host end is `host_addr`, the
/// namespace end `ns_addr`, a /30 of `10.231.0.0/16`.
#[derive(Debug)]
pub struct NetNamespace {
    name: String,
    host_if: String,
    ns_if: String,
    pub host_addr: Ipv4Addr,
    pub ns_addr: Ipv4Addr,
}

/// Why namespaces cannot be used here, if they cannot (not root, no `ip`).
pub fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    match Command::new("ip").arg("-V").output() {
        Ok(o) if o.status.success() => None,
        _ => Some("the `ip` command (iproute2) is not available".into()),
    }
}

fn ip(args: &[&str]) -> Result<String, LocalPgError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LocalPgError::Spawn {
            program: "ip".into(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LocalPgError::Command {
            command: format!("ip {}", args.join(" ")),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn tc_in(ns: &str, args: &[&str]) -> Result<String, LocalPgError> {
    let mut all = vec!["netns", "exec", ns, "tc"];
    all.extend_from_slice(args);
    ip(&all)
}

fn mac(ns: Option<&str>, dev: &str) -> Result<String, LocalPgError> {
    let text = match ns {
        Some(ns) => ip(&["-n", ns, "link", "show", dev])?,
        None => ip(&["link", "show", dev])?,
    };
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .map(str::to_string)
        .ok_or_else(|| LocalPgError::Command {
            command: format!("ip link show {dev}"),
            status: "no MAC address".into(),
            stderr: text.clone(),
        })
}

impl NetNamespace {
    /// Creates namespace number `index` (0..=3) of this process.
    pub fn create(index: u8) -> Result<NetNamespace, LocalPgError> {
        let pid = std::process::id();
        // One /30 per namespace, chosen from the pid so that test processes running at
        // the same time do not collide.
        let block = (pid % 60) as u8 * 4 + (index % 4);
        let name = format!("pgconvoy-{pid}-{index}");
        let host_if = format!("pgc{}h{index}", pid % 100_000);
        let ns_if = format!("pgc{}n{index}", pid % 100_000);
        let host_addr = Ipv4Addr::new(10, 231, block, 1);
        let ns_addr = Ipv4Addr::new(10, 231, block, 2);
        // Leftovers of a killed earlier run with the same pid.
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        ip(&["netns", "add", &name])?;
        let ns = NetNamespace {
            name,
            host_if,
            ns_if,
            host_addr,
            ns_addr,
        };
        // From here on, Drop removes the namespace (and with it the pair).
        let n = ns.name.as_str();
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &ns.ns_if,
        ])?;
        ip(&["link", "set", &ns.ns_if, "netns", n])?;
        ip(&[
            "addr",
            "add",
            &format!("{host_addr}/30"),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        ip(&[
            "-n",
            n,
            "addr",
            "add",
            &format!("{ns_addr}/30"),
            "dev",
            &ns.ns_if,
        ])?;
        ip(&["-n", n, "link", "set", &ns.ns_if, "up"])?;
        ip(&["-n", n, "link", "set", "lo", "up"])?;
        let host_mac = mac(None, &ns.host_if)?;
        let ns_mac = mac(Some(n), &ns.ns_if)?;
        ip(&[
            "neigh",
            "replace",
            &ns_addr.to_string(),
            "lladdr",
            &ns_mac,
            "dev",
            &ns.host_if,
            "nud",
            "permanent",
        ])?;
        ip(&[
            "-n",
            n,
            "neigh",
            "replace",
            &host_addr.to_string(),
            "lladdr",
            &host_mac,
            "dev",
            &ns.ns_if,
            "nud",
            "permanent",
        ])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's handle, for `setns(2)`.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    /// Drops every packet into and out of the namespace.
    pub fn blackhole(&self) -> Result<(), LocalPgError> {
        ip(&[
            "-n",
            &self.name,
            "rule",
            "add",
            "iif",
            &self.ns_if,
            "priority",
            "10",
            "blackhole",
        ])?;
        tc_in(
            &self.name,
            &[
                "qdisc",
                "replace",
                "dev",
                &self.ns_if,
                "root",
                "pfifo",
                "limit",
                "0",
            ],
        )
        .map(drop)
    }

    /// Lets packets through again.
    pub fn heal(&self) -> Result<(), LocalPgError> {
        let rule = ip(&[
            "-n",
            &self.name,
            "rule",
            "del",
            "iif",
            &self.ns_if,
            "priority",
            "10",
            "blackhole",
        ]);
        let qdisc = tc_in(&self.name, &["qdisc", "del", "dev", &self.ns_if, "root"]);
        rule.and(qdisc).map(drop)
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
