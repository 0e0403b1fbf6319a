//! Use cases: what the vault does for a caller, below every transport (gRPC, the CLI, a
//! future HTTP gateway) and free of them: no `tonic` here, errors are typed, and each is
//! testable with a vault, a broker and an [`Actor`]. A transport parses its request into
//! domain types, authorizes, calls one use case, records refusals, and maps the error.
//!
//! - [`registry`]: register, rotate, status, delete, read and list tenants, keeping the
//!   broker's cache true after each change;
//! - [`onboarding`]: Go's onboarding as a session state machine (begun → completing →
//!   completed, or failed), storing the keys Go hands over;
//! - [`integrations`]: set an environment's keys and switch the subscription key sent,
//!   each new key first checked with Go's gateway, keeping the broker's cache true;
//! - [`actor`]: who a use case acts for and how its records become durable;
//! - [`disclosures`]: which callers already hold which token (a first disclosure is
//!   recorded durably before the token leaves, a repeat without waiting);
//! - [`caller_budget`]: each caller's GetAccessToken budget, and its refusals counted into
//!   one record per caller per second;
//! - [`gateway`]: a caller's request for Go's API sent with the vault's token and
//!   subscription key (the HTTPS gateway's use case), its bodies in [`gateway_body`];
//! - [`storage_move`]: a vault and its audit log moved between SQLite files and PostgreSQL.

pub mod actor;
mod blocking;
pub mod caller_budget;
pub mod disclosures;
pub mod gateway;
pub mod gateway_body;
pub mod integrations;
pub mod onboarding;
pub mod registry;
pub mod storage_move;

pub use actor::{Actor, Entry};
pub use caller_budget::{Admission, Asker, CallerBudgets, Refusals};
pub use disclosures::{Disclosure, Disclosures, Pair};
pub use gateway::{ApiAnswer, ApiCaller, ApiGateway, ApiRequest, GatewayConfig, GatewayError, OutgoingBody};
pub use integrations::{IntegrationError, Integrations};
pub use onboarding::{Onboarding, OnboardingError};
pub use registry::{Registry, RegistryError};
