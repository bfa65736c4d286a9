//! What a network is: its spec ([`NetSpec`]) and the layout of its parameter vector θ
//! ([`ThetaLayout`]). Depends on nothing else in wgnn.

mod params;
mod spec;

pub use params::{Init, ThetaLayout};
pub use spec::{Activation, MAX_PARAMETERS, NetSpec, Output, Sparsity, SpecError};
