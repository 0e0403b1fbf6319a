//! `pogo-vault sim`: a simulated PowerOffice Go on its own, with the demo clients, for
//! trying a vault and for tests. It prints the fixed public demo values a newcomer pastes
//! (base URLs, application and subscription keys, demo client keys) on standard output.

use std::net::SocketAddr;

use clap::Args;

use super::error::CliError;
use super::runtime::{StopSignals, runtime};
use crate::domain::Environment;

#[derive(Debug, Args)]
pub struct SimArgs {
    /// Address to listen on (port 0 picks a free one; the banner shows it).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Also accept this onboarding redirect URI, in both environments (only its scheme,
    /// host, port and path count). Loopback URIs are always accepted. Repeat for more.
    #[arg(long = "redirect-uri", value_name = "URL")]
    pub redirect_uris: Vec<String>,
}

/// `pogo-vault sim`: a simulated Go with the demo clients, until Ctrl-C or SIGTERM. Its
/// banner (standard output) holds what a newcomer pastes: base URLs, the application key,
/// the subscription keys and the demo client keys, all fixed public demo values.
pub fn sim(a: SimArgs) -> Result<(), CliError> {
    use crate::sim::{DEFAULT_APPLICATION_KEY, DEMO_CLIENTS, SimConfig};
    let mut config = SimConfig { loopback_redirects: true, ..SimConfig::default() };
    for uri in &a.redirect_uris {
        config.redirect_uris.extend(Environment::ALL.iter().map(|env| (*env, uri.clone())));
    }
    runtime()?.block_on(async move {
        let stop = StopSignals::listen();
        let sim = crate::sim::start(a.listen, config).await.map_err(|e| {
            let what = if e.kind() == std::io::ErrorKind::InvalidInput { "--redirect-uri" } else { "--listen" };
            CliError::new(format!("{what}: the simulator cannot start on {}: {e}", a.listen))
        })?;
        sim.add_demo_clients();
        let banner = (|| {
            outln!(
                "simulated PowerOffice Go on {} (fixed, public demo values: they work nowhere but in a simulator)",
                sim.addr()
            )?;
            outln!("  demo base URL:               {}", sim.base_url(Environment::Demo))?;
            outln!("  production base URL:         {}", sim.base_url(Environment::Production))?;
            outln!("  application key:             {DEFAULT_APPLICATION_KEY}")?;
            outln!("  demo subscription key:       {}", crate::sim::DEFAULT_DEMO_SUBSCRIPTION_KEY)?;
            outln!("    and its secondary:         {}", crate::sim::DEFAULT_DEMO_SECONDARY_SUBSCRIPTION_KEY)?;
            outln!("  production subscription key: {}", crate::sim::DEFAULT_PRODUCTION_SUBSCRIPTION_KEY)?;
            outln!("    and its secondary:         {}", crate::sim::DEFAULT_PRODUCTION_SECONDARY_SUBSCRIPTION_KEY)?;
            outln!("  demo clients (client key, organization number, name):")?;
            for c in DEMO_CLIENTS {
                let note = if c.onboarding { " (the approving user's: an onboarding activates it)" } else { "" };
                outln!("    {}  {}  {}{note}", c.client_key, c.organization_number, c.name)?;
            }
            let extra: String = a.redirect_uris.iter().map(|u| format!(", {u}")).collect();
            outln!("  onboarding redirect URIs accepted: any loopback URI (http://127.0.0.1:PORT/PATH, http://localhost:PORT/PATH){extra}")?;
            outln!("ready; Ctrl-C stops it")
        })();
        if banner.is_ok() {
            tracing::info!(addr = %sim.addr(), "simulated PowerOffice Go ready");
            stop.wait().await;
        }
        sim.shutdown().await;
        banner
    })
}
