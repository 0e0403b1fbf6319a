//! `pogo-vault onboard begin|complete`: Go's onboarding for operators without a web app.
//! `begin` prints the URL to open in a browser; Go then redirects to the redirect URL with
//! `status`, `token` and `pogo_onboarding_id` in the query: paste that whole URL (or the
//! values) into `complete`.

use clap::Subcommand;

use super::CliError;
use super::serve::{ConnectArgs, code_name, runtime};
use crate::proto::v1 as pb;
use crate::proto::v1::onboarding_service_client::OnboardingServiceClient;

#[derive(Debug, Subcommand)]
pub enum OnboardCommand {
    /// Start an onboarding; prints the URL the customer's administrator must open.
    Begin {
        /// `demo` or `production`.
        #[arg(long)]
        environment: String,
        /// Where Go sends the browser back (whitelisted with PowerOffice).
        #[arg(long)]
        redirect_url: String,
        /// Only this client (nine digits) can be activated.
        #[arg(long)]
        organization_number: Option<String>,
        /// New tenants are named `<prefix><organization number>`.
        #[arg(long, default_value = "")]
        tenant_id_prefix: String,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Finish an onboarding with what Go sent back.
    Complete {
        /// The whole URL Go redirected the browser to (carries all three values).
        #[arg(long, conflicts_with_all = ["onboarding_id", "status"])]
        redirect: Option<String>,
        #[arg(long)]
        onboarding_id: Option<String>,
        /// Go's `status` value (Success, Canceled, ...).
        #[arg(long)]
        status: Option<String>,
        /// Read Go's `token` value from standard input (it is a secret).
        #[arg(long)]
        token_from_stdin: bool,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

fn status(s: tonic::Status) -> CliError {
    CliError::new(format!("{}: {}", code_name(s.code()), s.message()))
}

pub fn run(c: OnboardCommand) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        match c {
            OnboardCommand::Begin { environment, redirect_url, organization_number, tenant_id_prefix, conn } => {
                let mut client = OnboardingServiceClient::new(conn.channel().await?);
                let r = client
                    .begin_onboarding(pb::BeginOnboardingRequest {
                        environment,
                        redirect_url,
                        organization_number: organization_number.unwrap_or_default(),
                        tenant_id_prefix,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                println!(
                    "onboarding {} begun; open this URL in a browser and approve in PowerOffice Go:",
                    r.onboarding_id
                );
                println!("{}", r.authorization_url);
                Ok(())
            }
            OnboardCommand::Complete { redirect, onboarding_id, status: go_status, token_from_stdin, conn } => {
                let (mut id, mut st, mut token) =
                    (onboarding_id.unwrap_or_default(), go_status.unwrap_or_default(), String::new());
                if let Some(u) = redirect {
                    let url = reqwest::Url::parse(&u).map_err(|e| CliError::usage(format!("--redirect: {e}")))?;
                    for (k, v) in url.query_pairs() {
                        match k.as_ref() {
                            "pogo_onboarding_id" => id = v.into_owned(),
                            "status" => st = v.into_owned(),
                            "token" => token = v.into_owned(),
                            _ => {}
                        }
                    }
                }
                if token_from_stdin {
                    token = super::output::read_secret("onboarding token (input hidden): ")?.trim().to_owned();
                }
                let mut client = OnboardingServiceClient::new(conn.channel().await?);
                let r = client
                    .complete_onboarding(pb::CompleteOnboardingRequest {
                        onboarding_id: id,
                        onboarding_token: token,
                        go_status: st,
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for t in r.tenants {
                    println!(
                        "tenant {} ({}): client key {} version {}",
                        t.tenant_id, t.display_name, t.client_key_hint, t.key_version
                    );
                }
                Ok(())
            }
        }
    })
}
