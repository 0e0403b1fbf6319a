//! The scenarios, in two phases with a server each (main.rs lists them and their sizes).

mod default_limiter;
pub mod disclosure;
mod hot;

pub use default_limiter::phase_default;
pub use hot::phase_hot;
