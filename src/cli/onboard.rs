//! `pogo-vault onboard begin|complete`: Go's onboarding for operators without a web app.
//! `begin` prints the URL to open in a browser; Go then redirects to the redirect URL with
//! `status`, `token` and `pogo_onboarding_id` in the query: paste that whole URL into
//! `complete` on standard input (the token is a secret: never in argv).
//!
//! The session is bound to a subject (BeginOnboarding's `subject`): by default the
//! operator's OS identity, so `complete` must run as the same user as `begin`.

use clap::Subcommand;

use super::connect::{ConnectArgs, code_name};
use super::error::CliError;
use super::runtime::runtime;
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
        /// Who the session is bound to (default: this operator's OS identity).
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
    /// Finish an onboarding with what Go sent back: the whole redirect URL on standard
    /// input (it carries the onboarding token, a secret); or, for a session Go did not
    /// approve, --onboarding-id and --status alone.
    Complete {
        /// The session, when no redirect URL is given (then --status is needed too).
        #[arg(long, requires = "status")]
        onboarding_id: Option<String>,
        /// Go's `status` value (Canceled, ClientNotFound, ...). With Success, Go's `token`
        /// value is read from standard input.
        #[arg(long, requires = "onboarding_id")]
        status: Option<String>,
        /// The subject `begin` was given (default: this operator's OS identity).
        #[arg(long)]
        subject: Option<String>,
        #[command(flatten)]
        conn: ConnectArgs,
    },
}

/// The subject a CLI onboarding is bound to: the operator's OS identity.
fn default_subject() -> String {
    super::operator::Operator::current().caller
}

/// The onboarding id, Go's status and its token from the redirect URL.
fn parse_redirect(u: &str) -> Result<(String, String, zeroize::Zeroizing<String>), CliError> {
    // The URL carries the token: errors must not repeat it.
    let url = reqwest::Url::parse(u)
        .map_err(|e| CliError::usage(format!("standard input: not the redirect URL ({e}); paste the whole URL")))?;
    let (mut id, mut st, mut token) = (String::new(), String::new(), zeroize::Zeroizing::new(String::new()));
    for (k, v) in url.query_pairs() {
        match k.as_ref() {
            "pogo_onboarding_id" => id = v.into_owned(),
            "status" => st = v.into_owned(),
            "token" => *token = v.into_owned(),
            _ => {}
        }
    }
    if id.is_empty() || st.is_empty() {
        return Err(CliError::usage(
            "standard input: the redirect URL has no pogo_onboarding_id or status; paste the whole URL Go redirected to",
        ));
    }
    Ok((id, st, token))
}

fn status(s: tonic::Status) -> CliError {
    CliError::new(format!("{}: {}", code_name(s.code()), s.message()))
}

pub fn run(c: OnboardCommand) -> Result<(), CliError> {
    runtime()?.block_on(async move {
        match c {
            OnboardCommand::Begin {
                environment,
                redirect_url,
                organization_number,
                tenant_id_prefix,
                subject,
                conn,
            } => {
                let mut client = OnboardingServiceClient::new(conn.channel().await?);
                let r = client
                    .begin_onboarding(pb::BeginOnboardingRequest {
                        environment,
                        redirect_url,
                        organization_number: organization_number.unwrap_or_default(),
                        tenant_id_prefix,
                        subject: subject.unwrap_or_else(default_subject),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                outln!(
                    "onboarding {} begun; open this URL in a browser and approve in PowerOffice Go:",
                    r.onboarding_id
                )?;
                outln!("{}", r.authorization_url)?;
                Ok(())
            }
            OnboardCommand::Complete { onboarding_id, status: go_status, subject, conn } => {
                let (id, st, token) = match (onboarding_id, go_status) {
                    (Some(id), Some(st)) if st != "Success" => (id, st, zeroize::Zeroizing::new(String::new())),
                    (Some(id), Some(st)) => {
                        let token = super::output::read_secret("onboarding token (input hidden): ")?;
                        (id, st, zeroize::Zeroizing::new(token.trim().to_owned()))
                    }
                    _ => {
                        let url = super::output::read_secret("the URL Go redirected the browser to (input hidden): ")?;
                        parse_redirect(url.trim())?
                    }
                };
                let mut client = OnboardingServiceClient::new(conn.channel().await?);
                let r = client
                    .complete_onboarding(pb::CompleteOnboardingRequest {
                        onboarding_id: id,
                        onboarding_token: token.to_string(),
                        go_status: st,
                        subject: subject.unwrap_or_else(default_subject),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                for t in r.tenants {
                    outln!(
                        "tenant {} ({}): client key {} version {}",
                        t.tenant_id,
                        t.display_name,
                        t.client_key_hint,
                        t.key_version
                    )?;
                }
                Ok(())
            }
        }
    })
}
