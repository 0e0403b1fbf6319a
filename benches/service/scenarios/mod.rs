//! The scenarios, in two phases with a server each (main.rs lists them and their sizes).

mod default_limiter;
pub mod disclosure;
mod gateway;
mod hot;
mod postgres;

pub use default_limiter::phase_default;
pub use gateway::phase_gateway;
pub use hot::phase_hot;
pub use postgres::phase_postgres;
